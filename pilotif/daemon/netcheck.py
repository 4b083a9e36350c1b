"""`pilotif netcheck`'s asyncio shell: runs the probing core (pilotif.node.netcheck) on
one UDP socket per address family (DF set, no fragments: the padded probes measure the
path), and beside it, within the same time bound, asks the gateway for a port mapping
(deleted at once: PCP, NAT-PMP, UPnP IGD, pilotif.net.portmap) and sends one probe to
the registry over the stream transport (TCP, through the proxy when one is set), which
is what a node uses when UDP gets no answer. Needs no daemon and no root.
"""

import asyncio
import contextlib
import os
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Final

from pilotif.control.probe_answer import PROBE_ID_BYTES, pack_probe, parse_answer
from pilotif.control.wire import WireError
from pilotif.net.host_addresses import route_source
from pilotif.net.portmap.client import PortMapper, PortMapping
from pilotif.net.proxy import Proxy
from pilotif.net.stream_client import StreamLink
from pilotif.net.udp import resolve_endpoints
from pilotif.node.netcheck import (
    DEFAULT_TIMEOUT_S,
    NetcheckProbes,
    Server,
    ServerKind,
    UdpReport,
)
from pilotif.wg.events import Endpoint

IP_MTU_DISCOVER: Final = 10
IP_PMTUDISC_PROBE: Final = 3
IPV6_MTU_DISCOVER: Final = 23
IPV6_PMTUDISC_PROBE: Final = 3
"""Linux's socket options (not in Python's socket module): DF set, and the path MTU the
kernel cached ignored, so a probe goes out at its size or not at all."""
ANY_PORT: Final = 0


@dataclass(frozen=True)
class NetcheckOptions:
    """What to check: the registry (HOST, PORT each: every address of a name is probed),
    the relays, the proxy the stream would go through, and the time bound."""

    registries: tuple[tuple[str, int], ...]
    relays: tuple[tuple[str, int], ...] = ()
    proxy: Proxy | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    port_mapping: bool = True
    """Ask the gateway for a mapping (and delete it)."""


@dataclass(frozen=True)
class StreamCheck:
    """The registry over the stream transport."""

    works: bool
    rtt_ms: float | None


@dataclass(frozen=True)
class NetcheckReport:
    """Everything `pilotif netcheck` found."""

    udp: UdpReport
    port_mapping: PortMapping | None
    """The mapping the gateway granted (and that was deleted at once); None: none."""
    port_mapping_checked: bool
    stream: StreamCheck | None
    """None: not checked (no IPv4 registry address)."""
    proxy: Proxy | None
    ipv6_route: bool | None
    """Whether this host routes to a server's IPv6 address (None: no server has one);
    without a route, no IPv6 answer is no surprise."""
    ignored: dict[str, int]
    """Datagrams ignored by reason (forged, malformed, strays)."""

    @property
    def transport(self) -> str:
        """What a node here would carry its control and relayed datagrams on: `udp`, or
        `tcp` (the stream, through the proxy when one is set) when UDP gets nothing."""
        return "udp" if self.udp.udp_v4 or self.udp.udp_v6 else "tcp"


def servers_of(options: NetcheckOptions) -> list[Server]:
    """Every address of every registry and relay (UnderlayError: a name that does not
    resolve)."""
    found = [
        Server(ServerKind.REGISTRY, endpoint)
        for host, port in options.registries
        for endpoint in resolve_endpoints(host, port)
    ]
    found += [
        Server(ServerKind.RELAY, endpoint)
        for host, port in options.relays
        for endpoint in resolve_endpoints(host, port)
    ]
    return found


class _Receiver(asyncio.DatagramProtocol):
    """Hands what arrives to the core and wakes the run. A send that fails (EMSGSIZE: a
    probe larger than the local link; no route; an ICMP error) is as good as lost: the
    core's tries and deadline take care of it (DatagramProtocol.error_received ignores
    it)."""

    def __init__(self, core: NetcheckProbes, wake: asyncio.Event) -> None:
        self._core = core
        self._wake = wake

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        loop = asyncio.get_running_loop()
        self._core.receive(data, (str(addr[0]), int(addr[1])), loop.time())
        self._wake.set()


def _socket(family: socket.AddressFamily) -> socket.socket | None:
    """A UDP socket of `family` on any port that sends without fragments; None when the
    host has no such family."""
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
            sock.bind(("::", ANY_PORT))
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
            sock.bind(("0.0.0.0", ANY_PORT))
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


async def _probe_udp(
    servers: list[Server], timeout_s: float, mtu_target: Endpoint | None
) -> tuple[UdpReport, Counter[str]]:
    """Run the core to its end on our sockets; its report and what it ignored."""
    loop = asyncio.get_running_loop()
    core = NetcheckProbes(servers, loop.time(), timeout_s=timeout_s, mtu_target=mtu_target)
    wake = asyncio.Event()
    transports: dict[bool, asyncio.DatagramTransport] = {}
    try:
        for v6, family in ((False, socket.AF_INET), (True, socket.AF_INET6)):
            sock = _socket(family)
            if sock is not None:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Receiver(core, wake), sock=sock
                )
                transports[v6] = transport
        while not core.done(loop.time()):
            for datagram, endpoint in core.take_datagrams():
                sender = transports.get(":" in endpoint[0])
                if sender is not None:
                    sender.sendto(datagram, endpoint)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.0, core.get_timer() - loop.time()))
            wake.clear()
            core.handle_timer(loop.time())
    finally:
        for transport in transports.values():
            transport.close()
    return core.report(), core.ignored


async def _port_mapping(timeout_s: float) -> PortMapping | None:
    """The mapping the gateway grants for a port of ours (deleted at once), within
    `timeout_s`; None: none offered. A port of its own, so that the mapping cannot change
    how the NAT maps the probes' port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("0.0.0.0", ANY_PORT))
        mapper = PortMapper(holder.getsockname()[1], lambda _: None)
        try:
            mapper.mapping = await asyncio.wait_for(mapper.map_once(), timeout_s)
        except (TimeoutError, OSError):
            return None
        mapping = mapper.mapping
        await mapper.close()
        return mapping


async def _stream_check(registry: Endpoint, proxy: Proxy | None, timeout_s: float) -> StreamCheck:
    """Send one probe to the registry over the stream (through `proxy`); whether its
    answer came back within `timeout_s`, and when."""
    loop = asyncio.get_running_loop()
    probe_id = os.urandom(PROBE_ID_BYTES)
    answered: asyncio.Future[float] = loop.create_future()

    def deliver(datagram: bytes) -> None:
        with contextlib.suppress(WireError):
            if parse_answer(datagram).probe_id == probe_id and not answered.done():
                answered.set_result(loop.time())

    link = StreamLink(registry, proxy, deliver, Counter(), loop.time)
    sent_s = loop.time()
    link.send(pack_probe(probe_id))
    try:
        at = await asyncio.wait_for(answered, timeout_s)
    except TimeoutError:
        return StreamCheck(False, None)
    finally:
        link.close()
    return StreamCheck(True, round((at - sent_s) * 1000, 1))


async def _nothing() -> None:
    return None


async def run_netcheck(options: NetcheckOptions) -> NetcheckReport:
    """Check the network (within about `options.timeout_s`); UnderlayError if a server's
    name does not resolve."""
    servers = servers_of(options)
    registries = [s.endpoint for s in servers if s.kind is ServerKind.REGISTRY]
    registries_v4 = [e for e in registries if ":" not in e[0]]
    registry_v4 = registries_v4[0] if registries_v4 else None
    # The MTU is searched towards the registry's first IPv4 address, else its first.
    mtu_target = registry_v4 or (registries[0] if registries else None)
    timeout_s = options.timeout_s
    udp, mapping, stream = await asyncio.gather(
        _probe_udp(servers, timeout_s, mtu_target),
        _port_mapping(timeout_s) if options.port_mapping else _nothing(),
        _stream_check(registry_v4, options.proxy, timeout_s) if registry_v4 else _nothing(),
    )
    report, ignored = udp
    v6 = [s.endpoint for s in servers if ":" in s.endpoint[0]]
    return NetcheckReport(
        udp=report,
        port_mapping=mapping,
        port_mapping_checked=options.port_mapping,
        stream=stream,
        proxy=options.proxy,
        ipv6_route=any(route_source(*e) is not None for e in v6) if v6 else None,
        ignored=dict(ignored),
    )
