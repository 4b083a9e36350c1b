"""Admission: which decrypted packets of a peer reach the local stack (cryptokey routing
inbound): IP, from the peer's allowed IPs, to one of our addresses (when the device is a
node, not a router), past the peer's packet filter. A refused packet is counted in the
device's drops by reason; a path MTU probe or its answer goes to `PathMtu`."""

from collections.abc import Iterable

from pilotif.packet.ip import IPV4_ADDRESS_BYTES, IPV4_SOURCE, BytesLike, packet_addresses
from pilotif.wg.allowed_ips import AllowedIPs
from pilotif.wg.drops import DropReason
from pilotif.wg.fastpath.rows import plain_rows
from pilotif.wg.path_mtu import MESSAGE, PathMtu, is_path_message
from pilotif.wg.peer import Peer


class Admission:
    """The inbound checks over the device's routes (`routes`) and local addresses."""

    def __init__(
        self, routes: AllowedIPs[Peer], drops: dict[DropReason, int], path_mtu: PathMtu
    ) -> None:
        self._routes = routes
        self._drops = drops
        self._path_mtu = path_mtu
        """Where path MTU probes and their answers among the plaintexts go (not IP, but
        not dropped)."""
        self.local_addresses: frozenset[bytes] | None = None
        """Packed addresses (4 or 16 bytes) that decrypted packets must be addressed to;
        None takes any destination (a plain WireGuard interface that may route)."""
        self._local_ipv4: bytes | None = None
        """Our one IPv4 address (packed) among `local_addresses`, if there is just one."""

    def accept_only_to(self, addresses: Iterable[bytes]) -> None:
        """Admit only packets addressed to one of `addresses` (packed)."""
        self.local_addresses = frozenset(addresses)
        ipv4 = [a for a in self.local_addresses if len(a) == IPV4_ADDRESS_BYTES]
        self._local_ipv4 = ipv4[0] if len(ipv4) == 1 else None

    def admitted(
        self, peer: Peer, plaintext: BytesLike, now: float, count: int = 1
    ) -> BytesLike | None:
        """The IP packet at the start of `plaintext` if it is one `peer` may send us (from
        its allowed IPs, to us, past its filter); else None, the drop counted `count`
        times (for packets that share this one's verdict)."""
        addresses = packet_addresses(plaintext)
        if addresses is None:
            if is_path_message(plaintext):
                self._path_mtu.received(peer, bytes(plaintext[: MESSAGE.size]), len(plaintext), now)
                return None
            reason = DropReason.NOT_IP
        elif self._routes.lookup(addresses[0]) is not peer:
            reason = DropReason.SOURCE_NOT_ALLOWED
        elif self.local_addresses is not None and addresses[1] not in self.local_addresses:
            reason = DropReason.DESTINATION_NOT_LOCAL
        else:
            packet = plaintext[: addresses[2]]
            if peer.packet_filter is None:
                return packet
            refused = peer.packet_filter.judge(packet, now)
            if refused is None:
                return packet
            reason = DropReason(refused)
            peer.policy_denied += count
        self._drops[reason] += count
        return None

    def admitted_rows(
        self, peer: Peer, plaintexts: memoryview, count: int, plain_size: int, last_plain: int
    ) -> list[memoryview] | None:
        """The packets of a decrypted batch (`count` rows of `plain_size` bytes, the last
        `last_plain`) when they are all plain IPv4 from one source of `peer` to this node
        and pass its filter (`pilotif.wg.fastpath.rows.plain_rows`); None: check them one
        by one."""
        if self.local_addresses is not None and self._local_ipv4 is None:
            return None
        packets = plain_rows(plaintexts, count, plain_size, last_plain, self._local_ipv4)
        if (
            packets is not None
            and self._routes.lookup(plaintexts[IPV4_SOURCE]) is peer
            and (
                peer.packet_filter is None
                or peer.packet_filter.passes_rows(plaintexts, count, plain_size)
            )
        ):
            return packets
        return None
