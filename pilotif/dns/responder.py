"""The DNS responder of a node: answers `HOSTNAME.pilot` from a table of trusted peers (and
the reverse, PTR, for their overlay addresses) and forwards every other query, as raw
bytes, to the machine's original nameservers.

`DnsResponder` is the sans-IO core (bytes in, bytes out, no sockets, no clocks);
`serve_dns` is the thin asyncio adapter that the daemon runs. Hostile input is dropped and
counted in `DnsResponder.counters` (by `DnsDrop` reason), never raised.
"""

import asyncio
import ipaddress
from collections.abc import Callable, Mapping
from enum import Enum, StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

DOMAIN = "pilot"
TTL_S = 60
DNS_PORT = 53
MAX_QUERY_BYTES = 4096
MAX_FORWARDS_IN_FLIGHT = 256
UPSTREAM_TIMEOUT_S = 2.0

_ZONE = dns.name.from_text(DOMAIN)
_SOA = dns.rrset.from_text(
    _ZONE, TTL_S, "IN", "SOA", f"ns.{DOMAIN}. hostmaster.{DOMAIN}. 1 3600 600 86400 {TTL_S}"
)
_DNS_HEADER_BYTES = 12
_QR_BIT = 0x80  # in the third header byte
_ANSWERED_TYPES = {dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.ANY}
_REVERSE_ZONES = (dns.reversename.ipv4_reverse_domain, dns.reversename.ipv6_reverse_domain)

Addresses = tuple[IPv4Address | None, IPv6Address | None]
"""A peer's (IPv4, IPv6) addresses in the NameTable; either may be missing."""
_Address = tuple[str, int]


class DnsDrop(StrEnum):
    """Every reason a query goes unanswered (or, for UPSTREAM_FAILED, gets SERVFAIL);
    `DnsResponder.counters` is keyed by these."""

    MALFORMED = "malformed"
    """Not a DNS message dnspython can parse."""
    NOT_QUERY = "not_query"
    """A response (QR set) sent to the responder."""
    OPCODE = "opcode"
    """An opcode other than QUERY (NOTIFY, UPDATE, ...)."""
    QUESTION_COUNT = "question_count"
    """A query without exactly one question."""
    OVERSIZE = "oversize"
    """A datagram longer than MAX_QUERY_BYTES."""
    NOT_LOCAL = "not_local"
    """A query from another host: the responder serves this machine only."""
    FORWARD_LIMIT = "forward_limit"
    """A query to forward while MAX_FORWARDS_IN_FLIGHT forwards are still waiting."""
    UPSTREAM_FAILED = "upstream_failed"
    """No upstream answered a forwarded query in time: the client got SERVFAIL."""


class Action(Enum):
    """What the caller does with a query the responder does not answer itself."""

    FORWARD = "forward"
    """A well-formed query for a name outside `.pilot`: send it upstream unchanged."""
    DROP = "drop"
    """Garbage: counted, nothing is sent."""


class NameTable:
    """The hostnames (without `.pilot`) of the trusted peers and their addresses."""

    def __init__(self) -> None:
        self._names: dict[str, Addresses] = {}
        self._by_address: dict[IPv4Address | IPv6Address, str] = {}

    def update(self, names: Mapping[str, Addresses]) -> None:
        """Replace the whole table; hostnames are matched case-insensitively."""
        self._names = {name.lower(): addresses for name, addresses in names.items()}
        self._by_address = {
            address: name
            for name, addresses in self._names.items()
            for address in addresses
            if address is not None
        }

    def name_of(self, address: IPv4Address | IPv6Address) -> str | None:
        """The hostname that owns an overlay address, or None."""
        return self._by_address.get(address)

    def lookup(self, hostname: str) -> Addresses | None:
        """The (IPv4, IPv6) addresses of `hostname`, or None when it is not in the table."""
        return self._names.get(hostname.lower())


class DnsResponder:
    """Answers queries under `.pilot` from a NameTable.

    Input: query datagrams (`decide` or `answer`). Output: response datagrams, or what to do
    with a query that is not ours. Peer garbage increments `counters[reason]`.
    """

    def __init__(self, table: NameTable) -> None:
        self.table = table
        self.counters: dict[str, int] = {}

    def count(self, reason: DnsDrop) -> None:
        """Count one dropped datagram (the adapter counts its own reasons here too)."""
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def answer(self, query: bytes) -> bytes | None:
        """The response to a query under `.pilot`; None for other names and for garbage."""
        decision = self.decide(query)
        return decision if isinstance(decision, bytes) else None

    def decide(self, query: bytes) -> bytes | Action:
        """The response to a query under `.pilot`, else FORWARD (other names) or DROP."""
        message = self._parse(query)
        if message is None:
            return Action.DROP
        (question,) = message.question
        if question.name.is_subdomain(_ZONE):
            return self._respond(message, question).to_wire()
        reverse = self._reverse(message, question)
        return Action.FORWARD if reverse is None else reverse.to_wire()

    def _reverse(
        self, query: dns.message.Message, question: dns.rrset.RRset
    ) -> dns.message.Message | None:
        """The PTR answer for a peer's overlay address (`ping beta.pilot` prints the name
        without asking the upstream); None for every other reverse name."""
        if question.rdtype not in (dns.rdatatype.PTR, dns.rdatatype.ANY) or not any(
            question.name.is_subdomain(zone) for zone in _REVERSE_ZONES
        ):
            return None
        try:
            address = ipaddress.ip_address(dns.reversename.to_address(question.name))
        except (dns.exception.SyntaxError, ValueError):
            return None
        hostname = self.table.name_of(address)
        if hostname is None or question.rdclass != dns.rdataclass.IN:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        response.answer.append(
            dns.rrset.from_text(question.name, TTL_S, "IN", "PTR", f"{hostname}.{DOMAIN}.")
        )
        return response

    def _parse(self, query: bytes) -> dns.message.Message | None:
        try:
            message = dns.message.from_wire(query)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            self.count(DnsDrop.MALFORMED)
            return None
        if message.flags & dns.flags.QR:
            self.count(DnsDrop.NOT_QUERY)
        elif message.opcode() != dns.opcode.QUERY:
            self.count(DnsDrop.OPCODE)
        elif len(message.question) != 1:
            self.count(DnsDrop.QUESTION_COUNT)
        else:
            return message
        return None

    def _respond(
        self, query: dns.message.Message, question: dns.rrset.RRset
    ) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        if question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        addresses = self._addresses(question.name)
        if addresses is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype in _ANSWERED_TYPES:
            for address in addresses:
                if address is None:
                    continue
                if question.rdtype in (dns.rdatatype.ANY, _rdtype(address)):
                    response.answer.append(
                        dns.rrset.from_text(
                            question.name, TTL_S, "IN", _rdtype(address).name, str(address)
                        )
                    )
        if not response.answer:
            response.authority.append(_SOA)
        return response

    def _addresses(self, name: dns.name.Name) -> Addresses | None:
        """A name's addresses; the zone apex exists with none, deeper names do not exist."""
        relative = name.relativize(_ZONE)
        if relative == dns.name.empty:
            return (None, None)
        if len(relative.labels) != 1:
            return None
        try:
            hostname = relative.labels[0].decode("ascii")
        except UnicodeDecodeError:
            return None
        return self.table.lookup(hostname)


def _rdtype(address: IPv4Address | IPv6Address) -> dns.rdatatype.RdataType:
    return dns.rdatatype.A if address.version == 4 else dns.rdatatype.AAAA


def _servfail(query: bytes) -> bytes:
    """SERVFAIL for a query that `decide` already accepted, so it parses."""
    response = dns.message.make_response(dns.message.from_wire(query))
    response.flags |= dns.flags.RA
    response.set_rcode(dns.rcode.SERVFAIL)
    return response.to_wire()


class DnsServer:
    """The running responder: its UDP sockets and the forwards still in flight."""

    def __init__(self, responder: DnsResponder, upstreams: list[str], local: set[str]) -> None:
        self.responder = responder
        self.upstreams = upstreams
        self.forwarded = 0
        """Queries answered by an upstream and relayed to the client."""
        self._local = local
        self._transports: list[asyncio.DatagramTransport] = []
        self._forwards: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int) -> None:
        """Open one more UDP socket, on `host`:`port`."""
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _ListenProtocol(self._received), local_addr=(host, port)
        )
        self._transports.append(transport)

    def close(self) -> None:
        """Close the listening sockets and abandon the forwards in flight."""
        for transport in self._transports:
            transport.close()
        for task in self._forwards:
            task.cancel()

    def _received(
        self, query: bytes, client: _Address, transport: asyncio.DatagramTransport
    ) -> None:
        if len(query) > MAX_QUERY_BYTES:
            self.responder.count(DnsDrop.OVERSIZE)
            return
        if not (_is_loopback(client[0]) or _normalized(client[0]) in self._local):
            self.responder.count(DnsDrop.NOT_LOCAL)
            return
        decision = self.responder.decide(query)
        if isinstance(decision, bytes):
            transport.sendto(decision, client)
        elif decision is Action.FORWARD:
            if len(self._forwards) >= MAX_FORWARDS_IN_FLIGHT:
                self.responder.count(DnsDrop.FORWARD_LIMIT)
                return
            task = asyncio.create_task(self._forward(query, client, transport))
            self._forwards.add(task)
            task.add_done_callback(self._forwards.discard)

    async def _forward(
        self, query: bytes, client: _Address, transport: asyncio.DatagramTransport
    ) -> None:
        for upstream in self.upstreams:
            reply = await _ask_upstream(upstream, query)
            if reply is not None:
                self.forwarded += 1
                transport.sendto(reply, client)
                return
        self.responder.count(DnsDrop.UPSTREAM_FAILED)
        transport.sendto(_servfail(query), client)


def _normalized(host: str) -> str:
    """An IP address in canonical text, without an IPv6 zone; other text unchanged."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return host


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback


class _ListenProtocol(asyncio.DatagramProtocol):
    def __init__(
        self, on_query: Callable[[bytes, _Address, asyncio.DatagramTransport], None]
    ) -> None:
        self._on_query = on_query
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        assert self._transport is not None
        self._on_query(data, (str(addr[0]), int(addr[1])), self._transport)


class _UpstreamProtocol(asyncio.DatagramProtocol):
    """One forwarded query on its own connected socket (a fresh random source port)."""

    def __init__(self, query_id: bytes, reply: "asyncio.Future[bytes | None]") -> None:
        self._query_id = query_id
        self._reply = reply

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        is_reply = (
            len(data) >= _DNS_HEADER_BYTES
            and data[:2] == self._query_id
            and bool(data[2] & _QR_BIT)
        )
        if is_reply and not self._reply.done():
            self._reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        """ICMP unreachable: this upstream will not answer, try the next one now."""
        if not self._reply.done():
            self._reply.set_result(None)


async def _ask_upstream(upstream: str, query: bytes) -> bytes | None:
    """The upstream's reply to `query`, or None when it fails or is silent for the timeout."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes | None] = loop.create_future()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamProtocol(query[:2], reply), remote_addr=(upstream, DNS_PORT)
        )
    except OSError:
        return None
    try:
        transport.sendto(query)
        return await asyncio.wait_for(reply, UPSTREAM_TIMEOUT_S)
    except (OSError, TimeoutError):
        return None
    finally:
        transport.close()


async def serve_dns(
    responder: DnsResponder, listen: list[tuple[str, int]], upstreams: list[str]
) -> DnsServer:
    """Answer DNS over UDP on each `listen` address, forwarding other names to `upstreams`.

    Only queries from this machine (loopback or a `listen` address as source) are served.
    Upstreams that are one of our own `listen` hosts are skipped (no forwarding loops).
    """
    local = {_normalized(host) for host, _ in listen}
    usable = [upstream for upstream in upstreams if _normalized(upstream) not in local]
    server = DnsServer(responder, usable, local)
    try:
        for host, port in listen:
            await server.listen(host, port)
    except BaseException:
        server.close()
        raise
    return server
