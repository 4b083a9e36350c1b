"""The port mapping client, asyncio: asks the gateway to forward our UDP port (PCP first,
then NAT-PMP, then UPnP IGD; Tailscale's `portmapper` order), reports the mapping, renews
it at half its lifetime, and deletes it at `close` (lifetime 0), within bounded time.
A gateway that offers none is asked again after RETRY_S. The codecs are sans-IO
(natpmp.py, pcp.py, upnp.py); this is the shell that sends and waits.
"""

import asyncio
import contextlib
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final
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
"""The most `close` waits for the gateway to delete the mapping."""
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
                await asyncio.wait_for(self._delete(mapping), DELETE_TIMEOUT_S)
            log_event("port_mapping_deleted", protocol=mapping.protocol)
            self._on_change(None)

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
        """Ask for the mapping (or renew it) once: PCP, NAT-PMP, then UPnP."""
        gateway = self._gateway or await asyncio.get_running_loop().run_in_executor(
            None, default_gateway
        )
        self._asked = gateway
        if gateway is None:
            self.counters["no_gateway"] += 1
            return None
        for attempt in (self._pcp, self._natpmp, self._igd):
            try:
                mapping = await attempt(gateway, LIFETIME_S)
            except (PortMapError, OSError, TimeoutError) as error:
                code = error.code if isinstance(error, PortMapError) else "no_answer"
                self.counters[code] += 1
                continue
            self.counters["mapped"] += 1
            return mapping
        self.counters["none"] += 1
        return None

    async def _exchange(self, gateway: IPv4Address, request: bytes) -> tuple[bytes, str]:
        """Send `request` to the gateway's port and wait for one answer, retrying with
        doubling waits; the answer and the local address it came to."""
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
                wait *= 2
            raise TimeoutError("no answer from the gateway")
        finally:
            transport.close()

    async def _pcp(self, gateway: IPv4Address, lifetime_s: int) -> PortMapping:
        client = IPv4Address(_local(gateway))
        port = self.internal_port
        request = pcp.map_udp_request(client, self._nonce, port, port, lifetime_s)
        answer, _ = await self._exchange(gateway, request)
        mapped = pcp.parse_map_udp(answer, self._nonce)
        if not isinstance(mapped.external_address, IPv4Address):
            raise PortMapError("unexpected", "an IPv6 external address for an IPv4 mapping")
        external = (str(mapped.external_address), mapped.external_port)
        return PortMapping("pcp", external, mapped.lifetime_s, port)

    async def _natpmp(self, gateway: IPv4Address, lifetime_s: int) -> PortMapping:
        port = self.internal_port
        answer, _ = await self._exchange(gateway, natpmp.external_address_request())
        address = natpmp.parse_external_address(answer).address
        answer, _ = await self._exchange(gateway, natpmp.map_udp_request(port, port, lifetime_s))
        mapped = natpmp.parse_map_udp(answer)
        return PortMapping("nat-pmp", (str(address), mapped.external_port), mapped.lifetime_s, port)

    async def _igd(self, gateway: IPv4Address, lifetime_s: int) -> PortMapping:
        found = self._upnp or await self._discover()
        client = IPv4Address(_local(gateway))
        port = self.internal_port
        arguments = await _soap(found, upnp.external_address_call(found))
        address = upnp.parse_external_address(arguments)
        call = upnp.add_mapping_call(found, client, port, port, lifetime_s, DESCRIPTION)
        await _soap(found, call)
        self._upnp = found
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

    async def _delete(self, mapping: PortMapping) -> None:
        gateway = self._asked
        if gateway is None:
            return
        if mapping.protocol == "pcp":
            client = IPv4Address(_local(gateway))
            request = pcp.map_udp_request(client, self._nonce, mapping.internal_port, 0, 0)
            pcp.parse_map_udp((await self._exchange(gateway, request))[0], self._nonce)
        elif mapping.protocol == "nat-pmp":
            request = natpmp.map_udp_request(mapping.internal_port, 0, 0)
            natpmp.parse_map_udp((await self._exchange(gateway, request))[0])
        elif self._upnp is not None:
            await _soap(self._upnp, upnp.delete_mapping_call(self._upnp, mapping.external[1]))


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
