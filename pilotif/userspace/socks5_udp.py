"""One SOCKS5 UDP association (RFC 1928 section 7): a relay UDP socket on the SOCKS5
server's own address, and a UDP port of the node on the overlay (`UdpNet.open_udp`).

The client's datagrams (RSV, FRAG, the destination, the data: socks5_wire.py) go to the
destination resolved by the node as CONNECT's are (`beta.pilot`, a numeric overlay
address of a trusted peer); what peers send to the node's port comes back to the client
with the header naming the peer. Datagrams are taken only from the client: the address
its TCP control connection came from, and the port it named in the request (or, if it
named none, the port of its first datagram). The association lasts as long as that TCP
connection. Fragments (FRAG != 0) are not supported: dropped. SOCKS5 has no way to tell
the client of an ICMP error about a datagram it sent (a port nobody listens on): it is
counted (`udp_unreachable`). Every dropped datagram is
counted by its reason (`udp_...`) in the server's counters; nothing is logged per
datagram.
"""

import asyncio
import contextlib
from collections import Counter
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final, Protocol

from pilotif.userspace.names import Resolve
from pilotif.userspace.socks5_wire import Socks5WireError, parse_udp_datagram, udp_datagram_header

CONTROL_READ_BYTES: Final = 4096
"""What the control connection is read by while the association waits for its end (the
client has nothing more to say on it: anything is discarded)."""

Address = IPv4Address | IPv6Address


class OverlayUdp(Protocol):
    """A UDP port of the node (pilotif.userspace.udp.UdpEndpoint)."""

    @property
    def port(self) -> int: ...

    def send(self, data: bytes, address: tuple[str | Address, int]) -> bool: ...

    async def recv(self) -> tuple[bytes, tuple[str, int]]: ...

    def close(self) -> None: ...


class UdpNet(Protocol):
    """What opens the node's UDP ports (pilotif.userspace.UserspaceStack)."""

    def open_udp(self, port: int | None = None) -> OverlayUdp: ...


class _Relay(asyncio.DatagramProtocol):
    """The relay socket's side: the client's datagrams to the overlay."""

    def __init__(
        self,
        client: tuple[Address, int],
        overlay: OverlayUdp,
        resolve: Resolve,
        counters: Counter[str],
    ) -> None:
        self.client_host, self.client_port = client
        """The port is 0 until the first datagram pins it (the client named none)."""
        self._overlay = overlay
        self._resolve = resolve
        self._counters = counters
        self.paused = False
        """Whether the relay socket's buffer towards the client is over asyncio's
        high-water mark (64 KiB): the peers' datagrams are dropped (`udp_client_slow`)."""

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        host, port = str(addr[0]), int(addr[1])
        if ip_address(host.partition("%")[0]) != self.client_host or (
            self.client_port and port != self.client_port
        ):
            self._counters["udp_not_client"] += 1
            return
        try:
            name, destination_port, payload = parse_udp_datagram(data)
        except Socks5WireError as error:
            self._counters[f"udp_{error.reason}"] += 1
            return
        self.client_port = port
        address = self._resolve(name)
        if address is None or destination_port == 0:
            self._counters["udp_unknown_host"] += 1
            return
        try:
            sent = self._overlay.send(bytes(payload), (address, destination_port))
        except ValueError:
            self._counters["udp_too_big"] += 1
            return
        self._counters["udp_sent" if sent else "udp_output_full"] += 1


async def associate(
    control: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    requested_port: int,
    net: UdpNet,
    resolve: Resolve,
    counters: Counter[str],
) -> tuple[asyncio.DatagramTransport, OverlayUdp, _Relay]:
    """Open the relay socket (on the control connection's local address) and the node's
    UDP port for a client that asked from `requested_port` (0: any); OSError when either
    cannot be had."""
    _, writer = control
    local = writer.get_extra_info("sockname")
    client = ip_address(str(writer.get_extra_info("peername")[0]).partition("%")[0])
    overlay = net.open_udp()
    try:
        relay = _Relay((client, requested_port), overlay, resolve, counters)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=(local[0], 0))
    except BaseException:
        overlay.close()
        raise
    return transport, overlay, relay


async def serve(
    control: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    transport: asyncio.DatagramTransport,
    overlay: OverlayUdp,
    relay: _Relay,
    counters: Counter[str],
) -> None:
    """Carry the peers' datagrams to the client until the control connection ends; then
    close both sockets."""
    back = asyncio.ensure_future(_to_client(transport, overlay, relay, counters))
    try:
        while await control[0].read(CONTROL_READ_BYTES):
            pass
    finally:
        back.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await back
        transport.close()
        overlay.close()


async def _to_client(
    transport: asyncio.DatagramTransport,
    overlay: OverlayUdp,
    relay: _Relay,
    counters: Counter[str],
) -> None:
    while True:
        try:
            data, (host, port) = await overlay.recv()
        except ConnectionAbortedError:
            raise
        except OSError:  # an ICMP error about a datagram sent: SOCKS5 cannot say so
            counters["udp_unreachable"] += 1
            continue
        if not relay.client_port:
            counters["udp_no_client_yet"] += 1
            continue
        if relay.paused:
            counters["udp_client_slow"] += 1
            continue
        header = udp_datagram_header(ip_address(host), port)
        transport.sendto(header + data, (str(relay.client_host), relay.client_port))
        counters["udp_received"] += 1
