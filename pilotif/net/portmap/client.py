"""The port mapping client, asyncio: asks the gateway to forward our UDP port by PCP,
NAT-PMP and UPnP IGD at once (as Tailscale's `portmapper` does), keeps the best mapping
granted (PCP > NAT-PMP > UPnP) and deletes any other, reports the mapping, renews it at
half its lifetime, and deletes it at `close` (lifetime 0), within bounded time. A gateway
that offers none is asked again after RETRY_S. When the caller gives up on `map_once`
(cancels it, or its timeout does), what was asked for is deleted, not left on the
gateway. The codecs are sans-IO (natpmp.py, pcp.py, upnp.py); this is the shell that
sends and waits.

PCP and NAT-PMP share the gateway's port 5351. RFC 6887 (version negotiation, section 9;
NAT-PMP transition, appendix A) has a PCP client learn that a gateway speaks only NAT-PMP
from its version-0 UNSUPP_VERSION answer and then fall back to NAT-PMP, so NAT-PMP is asked
only after PCP's first wait went unanswered or PCP failed, not at the same moment; each
asks from a socket of its own, and each codec checks the version byte of what it reads.
"""

import asyncio
import contextlib
import os
import socket
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Final
from urllib.parse import urlsplit

from pilotif.net.portmap import natpmp, pcp, upnp
from pilotif.net.portmap.errors import PortMapError
from pilotif.util.logs import log_event
from pilotif.wg.events import Endpoint

LIFETIME_S: Final = 7200
"""The lifetime asked for (RFC 6886 recommends two hours); renewed at half of what the
gateway grants."""
MIN_RENEW_S: Final = 30
"""The shortest wait before renewing, whatever lifetime the gateway grants."""
RETRY_S: Final = 120.0
"""How long after finding no mapping the gateway is asked again."""
ANSWER_WAIT_S: Final = 0.5
"""The first wait for a NAT-PMP or PCP answer; it doubles for each of ATTEMPTS."""
ATTEMPTS: Final = 3
SSDP_WAIT_S: Final = 2.0
"""How long gateways may take to answer an SSDP search (MX is 1 s)."""
HTTP_TIMEOUT_S: Final = 3.0
DELETE_TIMEOUT_S: Final = 2.0
"""The most `close` (or a given up `map_once`) waits for the gateway to delete a
mapping."""
PREFERRED_WAIT_S: Final = 0.25
"""Once a mapping is granted, until when (from the start of `map_once`) a more preferred
protocol not answered yet may still answer (Tailscale waits 250 ms for its probes); then
it is given up, long before its retries end."""
PREFERENCE: Final = ("pcp", "nat-pmp", "upnp")
"""The protocols, best first: the one whose mapping is kept when several are granted."""
DESCRIPTION: Final = "pilotif"
_HTTP_CHUNK_BYTES: Final = 16 * 1024
_HTTP_HEAD_MAX_BYTES: Final = 4096


@dataclass(frozen=True)
class PortMapping:
    """A UDP port the gateway forwards to us."""

    protocol: str
    """'pcp', 'nat-pmp' or 'upnp'."""
    external: Endpoint
    lifetime_s: int
    internal_port: int


def default_gateway() -> IPv4Address | None:
    """The IPv4 default route's gateway in this network namespace, if there is one (None
    where pyroute2 cannot be imported: a userspace node off Linux maps no port)."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return None
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET):
            gateway = route.get_attr("RTA_GATEWAY")
            if gateway:
                return IPv4Address(gateway)
    return None


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.queue.put_nowait(data)


class PortMapper:
    """See the module docstring. `on_change` gets each new mapping, and None when it is
    lost or deleted; `counters` counts what the gateways answered (codes of
    PortMapError, 'mapped', 'none')."""

    def __init__(
        self,
        internal_port: int,
        on_change: Callable[[PortMapping | None], None],
        *,
        gateway: IPv4Address | None = None,
        gateway_port: int = natpmp.PORT,
        ssdp_target: tuple[str, int] = (upnp.SSDP_ADDRESS, upnp.SSDP_PORT),
    ) -> None:
        self.internal_port = internal_port
        self._on_change = on_change
        self._gateway = gateway
        self._gateway_port = gateway_port
        self._ssdp_target = ssdp_target
        self.mapping: PortMapping | None = None
        self.counters: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._nonce = os.urandom(pcp.NONCE_BYTES)
        self._upnp: upnp.Gateway | None = None
        self._asked: IPv4Address | None = None
        """The gateway last asked (the one that holds the mapping)."""

    def start(self) -> None:
        """Ask for a mapping now, and keep it."""
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def close(self) -> None:
        """Stop renewing and delete the mapping (within DELETE_TIMEOUT_S)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        mapping, self.mapping = self.mapping, None
        if mapping is not None:
            with contextlib.suppress(OSError, PortMapError, TimeoutError):
                await asyncio.wait_for(self._delete_kept(mapping), DELETE_TIMEOUT_S)
            log_event("port_mapping_deleted", protocol=mapping.protocol)
            self._on_change(None)

    async def _delete_kept(self, mapping: PortMapping) -> None:
        if self._asked is not None:
            await self._delete(self._asked, mapping.protocol, mapping.external[1])

    def status(self) -> dict[str, object] | None:
        """What `pilotif status` shows of the mapping."""
        mapping = self.mapping
        if mapping is None:
            return None
        return {
            "protocol": mapping.protocol,
            "external": f"{mapping.external[0]}:{mapping.external[1]}",
            "lifetime_s": mapping.lifetime_s,
        }

    async def _keep(self) -> None:
        while True:
            mapping = await self.map_once()
            if mapping != self.mapping:
                self.mapping = mapping
                if mapping is None:
                    log_event("port_mapping_none", port=self.internal_port)
                else:
                    log_event(
                        "port_mapping",
                        protocol=mapping.protocol,
                        external=f"{mapping.external[0]}:{mapping.external[1]}",
                        lifetime_s=mapping.lifetime_s,
                    )
                self._on_change(mapping)
            wait = RETRY_S if mapping is None else max(MIN_RENEW_S, mapping.lifetime_s / 2)
            await asyncio.sleep(wait)

    async def map_once(self) -> PortMapping | None:
        """Ask for the mapping (or renew it) once, by the three protocols at once; the best
        granted is kept, any other deleted (counted 'deleted_extra'). Cancelled, it
        deletes what was granted or asked for (counted 'deleted_abandoned')."""
        gateway = self._gateway or await asyncio.get_running_loop().run_in_executor(
            None, default_gateway
        )
        self._asked = gateway
        if gateway is None:
            self.counters["no_gateway"] += 1
            return None
        pcp_unanswered = asyncio.Event()
        requested: set[str] = set()
        asks: dict[str, Coroutine[Any, Any, PortMapping]] = {
            "pcp": self._pcp(gateway, LIFETIME_S, requested, pcp_unanswered),
            "nat-pmp": self._natpmp(gateway, LIFETIME_S, requested, pcp_unanswered),
            "upnp": self._igd(gateway, LIFETIME_S, requested),
        }
        loop = asyncio.get_running_loop()
        tasks = {protocol: loop.create_task(ask) for protocol, ask in asks.items()}
        tasks["pcp"].add_done_callback(lambda _: pcp_unanswered.set())
        try:
            await _settle(tasks, loop.time() + PREFERRED_WAIT_S)
        except BaseException:
            await self._stop(gateway, tasks, requested, None, "abandoned")
            raise
        best = _best(tasks)
        await self._stop(gateway, tasks, requested, best, "extra")
        self._count(tasks)
        if best is None:
            self.counters["none"] += 1
            return None
        self.counters["mapped"] += 1
        return best

    def _count(self, tasks: dict[str, "asyncio.Task[PortMapping]"]) -> None:
        """Count why each protocol that failed gave no mapping."""
        for task in tasks.values():
            if task.cancelled():
                continue
            error = task.exception()
            if isinstance(error, PortMapError):
                self.counters[error.code] += 1
            elif error is not None:
                self.counters["no_answer"] += 1

    async def _stop(
        self,
        gateway: IPv4Address,
        tasks: dict[str, "asyncio.Task[PortMapping]"],
        requested: set[str],
        kept: PortMapping | None,
        reason: str,
    ) -> None:
        """Stop the protocols still asking, and delete what the gateway granted, or may
        have granted to a request still in flight, but `kept` (and what holds its
        external port: on one gateway that is the same forwarding); counted
        'deleted_' + `reason`."""
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for protocol, task in tasks.items():
            if _granted(task):
                mapping = task.result()
                port, answered = mapping.external[1], True
                if mapping is kept:
                    continue
            elif task.cancelled() and protocol in requested:
                port, answered = self.internal_port, False
            else:
                continue
            if kept is not None and port == kept.external[1]:
                continue
            self.counters[f"deleted_{reason}"] += 1
            log_event("port_mapping_deleted", protocol=protocol, port=port, reason=reason)
            if answered or protocol == "upnp":
                with contextlib.suppress(OSError, PortMapError, TimeoutError):
                    await asyncio.wait_for(self._delete(gateway, protocol, port), DELETE_TIMEOUT_S)
            else:
                self._send_delete(gateway, protocol)

    async def _exchange(
        self, gateway: IPv4Address, request: bytes, unanswered: asyncio.Event | None = None
    ) -> tuple[bytes, str]:
        """Send `request` to the gateway's port and wait for one answer, retrying with
        doubling waits (`unanswered` is set when the first wait ends with none); the
        answer and the local address it came to."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _Datagrams, remote_addr=(str(gateway), self._gateway_port)
        )
        try:
            local = transport.get_extra_info("sockname")[0]
            wait = ANSWER_WAIT_S
            for _ in range(ATTEMPTS):
                transport.sendto(request)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(protocol.queue.get(), wait), local
                if unanswered is not None:
                    unanswered.set()
                wait *= 2
            raise TimeoutError("no answer from the gateway")
        finally:
            transport.close()

    async def _pcp(
        self,
        gateway: IPv4Address,
        lifetime_s: int,
        requested: set[str],
        unanswered: asyncio.Event,
    ) -> PortMapping:
        client = IPv4Address(_local(gateway))
        port = self.internal_port
        request = pcp.map_udp_request(client, self._nonce, port, port, lifetime_s)
        requested.add("pcp")
        answer, _ = await self._exchange(gateway, request, unanswered)
        mapped = pcp.parse_map_udp(answer, self._nonce)
        if not isinstance(mapped.external_address, IPv4Address):
            raise PortMapError("unexpected", "an IPv6 external address for an IPv4 mapping")
        external = (str(mapped.external_address), mapped.external_port)
        return PortMapping("pcp", external, mapped.lifetime_s, port)

    async def _natpmp(
        self,
        gateway: IPv4Address,
        lifetime_s: int,
        requested: set[str],
        pcp_unanswered: asyncio.Event,
    ) -> PortMapping:
        """NAT-PMP, once PCP's first wait went unanswered or PCP failed (RFC 6887 section
        9, appendix A)."""
        await pcp_unanswered.wait()
        port = self.internal_port
        answer, _ = await self._exchange(gateway, natpmp.external_address_request())
        address = natpmp.parse_external_address(answer).address
        requested.add("nat-pmp")
        answer, _ = await self._exchange(gateway, natpmp.map_udp_request(port, port, lifetime_s))
        mapped = natpmp.parse_map_udp(answer)
        return PortMapping("nat-pmp", (str(address), mapped.external_port), mapped.lifetime_s, port)

    async def _igd(self, gateway: IPv4Address, lifetime_s: int, requested: set[str]) -> PortMapping:
        found = self._upnp or await self._discover()
        client = IPv4Address(_local(gateway))
        port = self.internal_port
        arguments = await _soap(found, upnp.external_address_call(found))
        address = upnp.parse_external_address(arguments)
        call = upnp.add_mapping_call(found, client, port, port, lifetime_s, DESCRIPTION)
        self._upnp = found
        requested.add("upnp")
        await _soap(found, call)
        return PortMapping("upnp", (str(address), port), lifetime_s, port)

    async def _discover(self) -> upnp.Gateway:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _Datagrams, family=socket.AF_INET, local_addr=("0.0.0.0", 0)
        )
        try:
            transport.sendto(upnp.search_request(), self._ssdp_target)
            answer = await asyncio.wait_for(protocol.queue.get(), SSDP_WAIT_S)
        finally:
            transport.close()
        location = upnp.parse_search_answer(answer)
        status, body = await _http("GET", location, {}, b"")
        if status != 200:
            raise PortMapError("unexpected", f"the gateway's description: HTTP {status}")
        return upnp.parse_description(body, location)

    def _deletion(self, gateway: IPv4Address, protocol: str) -> bytes:
        """The PCP or NAT-PMP request that deletes our mapping (lifetime 0)."""
        if protocol == "pcp":
            client = IPv4Address(_local(gateway))
            return pcp.map_udp_request(client, self._nonce, self.internal_port, 0, 0)
        return natpmp.map_udp_request(self.internal_port, 0, 0)

    async def _delete(self, gateway: IPv4Address, protocol: str, external_port: int) -> None:
        """Delete our mapping of `protocol` and wait for the gateway's answer."""
        if protocol == "pcp":
            request = self._deletion(gateway, protocol)
            pcp.parse_map_udp((await self._exchange(gateway, request))[0], self._nonce)
        elif protocol == "nat-pmp":
            request = self._deletion(gateway, protocol)
            natpmp.parse_map_udp((await self._exchange(gateway, request))[0])
        elif self._upnp is not None:
            await _soap(self._upnp, upnp.delete_mapping_call(self._upnp, external_port))

    def _send_delete(self, gateway: IPv4Address, protocol: str) -> None:
        """Send the PCP or NAT-PMP deletion once, not waiting: for a request that was
        never answered (a gateway that does not answer would hold up the caller)."""
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        ):
            sock.sendto(self._deletion(gateway, protocol), (str(gateway), self._gateway_port))


async def _settle(tasks: dict[str, "asyncio.Task[PortMapping]"], give_up_s: float) -> None:
    """Wait until the best mapping is known: every protocol preferred to a granted one
    has failed, or `give_up_s` (loop time) has passed since one was granted, or all
    have ended."""
    loop = asyncio.get_running_loop()
    while True:
        pending = [task for task in tasks.values() if not task.done()]
        granted = [p for p in PREFERENCE if _granted(tasks[p])]
        if not pending:
            return
        timeout: float | None = None
        if granted:
            preferred = PREFERENCE[: PREFERENCE.index(granted[0])]
            if all(tasks[p].done() for p in preferred):
                return
            timeout = give_up_s - loop.time()
            if timeout <= 0:
                return
        await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)


def _granted(task: "asyncio.Task[PortMapping]") -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _best(tasks: dict[str, "asyncio.Task[PortMapping]"]) -> PortMapping | None:
    """The mapping of the most preferred protocol that granted one."""
    return next((tasks[p].result() for p in PREFERENCE if _granted(tasks[p])), None)


def _local(gateway: IPv4Address) -> str:
    """Our address towards the gateway (what PCP's client field must say): a UDP
    socket's connect only asks the routing table, it does not block."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((str(gateway), natpmp.PORT))
        return str(sock.getsockname()[0])


async def _soap(gateway: upnp.Gateway, call: upnp.SoapCall) -> dict[str, str]:
    status, body = await _http("POST", gateway.control_url, call.headers, call.body)
    return upnp.parse_answer(status, body, call.action)


async def _http(method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange with the gateway (Connection: close); its status and body,
    at most MAX_DOCUMENT_BYTES read."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            await writer.drain()
            received = b""
            while chunk := await reader.read(_HTTP_CHUNK_BYTES):
                received += chunk
                if len(received) > upnp.MAX_DOCUMENT_BYTES + _HTTP_HEAD_MAX_BYTES:
                    raise PortMapError("malformed", "an HTTP answer too long for a gateway")
            return received
        finally:
            writer.close()

    answer = await asyncio.wait_for(exchange(), HTTP_TIMEOUT_S)
    head, _, content = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise PortMapError("malformed", "an HTTP answer without a status")
    return int(status_line[1]), content
