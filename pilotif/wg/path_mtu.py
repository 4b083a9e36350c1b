"""Path MTU, the device's side: probes of how large a datagram reaches a peer (datagram
PLPMTUD, RFC 8899: no reliance on ICMP from the path), their answers, and keeping what
local programs send inside what reaches the peer.

Between pilotif peers a probe is a transport message whose plaintext is not an IP
packet: PROBE, its id and size, then zeros to `size` bytes (sealed unpadded: the
datagram is exactly TRANSPORT_OVERHEAD_BYTES more). The peer answers each with a small
PROBE_ACK carrying the same id and size, which the device reports (`PathProbeAcked`). A
plain WireGuard peer drops both as not IP, so the node probes only pilotif peers; it
decides what to probe and when, and sets each peer's `mtu` (pilotif.node.path_mtu).

A packet from the local stack larger than its peer's `mtu` is dropped (PACKET_TOO_BIG)
and answered into the local stack with an ICMP "fragmentation needed" / "packet too
big" (at most one per peer every TOO_BIG_INTERVAL_S): the sender's kernel lowers its
path MTU to that destination, and TCP its segment size.
"""

import struct
from collections.abc import Sequence
from typing import Final

from pilotif.packet.icmp import too_big_packet
from pilotif.packet.ip import BytesLike
from pilotif.wg.drops import DropReason
from pilotif.wg.events import PathProbeAcked
from pilotif.wg.keepalives import Keepalives
from pilotif.wg.outbox import Outbox
from pilotif.wg.peer import Keypair, Peer

PATH_MESSAGE_VERSION: Final = 15
"""What the "IP version" of both messages reads: one no IP packet has."""
PROBE: Final = PATH_MESSAGE_VERSION << 4 | 1
PROBE_ACK: Final = PATH_MESSAGE_VERSION << 4 | 2
MESSAGE: Final = struct.Struct("!BIH")
"""Kind, probe id, probe size (bytes of plaintext)."""
TOO_BIG_INTERVAL_S: Final = 0.1
"""The least time between two ICMP "too big" for one peer's packets: the sender's
kernel needs one to lower its path MTU, not one per packet."""


def is_path_message(plaintext: BytesLike) -> bool:
    """Whether a decrypted plaintext is a probe or a probe's answer."""
    return len(plaintext) >= MESSAGE.size and plaintext[0] in (PROBE, PROBE_ACK)


def _sending(peer: Peer, now: float) -> Keypair | None:
    """The session a probe or an answer goes out with now (None: none, or no endpoint)."""
    keypair = peer.current
    if keypair is None or not keypair.can_send(now) or peer.endpoint is None:
        return None
    return keypair


class PathMtu:
    """Probes and answers them for the device; drops and answers what does not fit."""

    def __init__(
        self, outbox: Outbox, keepalives: Keepalives, drops: dict[DropReason, int]
    ) -> None:
        self._outbox = outbox
        self._keepalives = keepalives
        self._drops = drops

    def probe(self, peer: Peer, probe_id: int, size: int, now: float) -> bool:
        """Send a probe of `size` plaintext bytes to the peer's endpoint; False when
        there is no session to send it with (or the size cannot hold a probe)."""
        keypair = _sending(peer, now)
        if keypair is None or size < MESSAGE.size:
            return False
        message = MESSAGE.pack(PROBE, probe_id, size) + bytes(size - MESSAGE.size)
        self._keepalives.send_with(peer, keypair, now, plaintext=message)
        return True

    def received(self, peer: Peer, header: bytes, length: int, now: float) -> None:
        """A probe of `length` bytes (answered at once, to the peer's endpoint) or a
        probe's answer (reported), from its first MESSAGE.size bytes, `header`."""
        kind, probe_id, size = MESSAGE.unpack(header)
        if kind == PROBE:
            keypair = _sending(peer, now)
            if size == length and keypair is not None:
                answer = MESSAGE.pack(PROBE_ACK, probe_id, size)
                self._keepalives.send_with(peer, keypair, now, plaintext=answer)
            return
        self._outbox.out.events.append(PathProbeAcked(peer.public_key, probe_id, size))

    def fitting(
        self, peer: Peer, mtu: int, packets: Sequence[BytesLike], now: float
    ) -> list[BytesLike]:
        """The packets no larger than `mtu`; each other one dropped and, now and then,
        answered with an ICMP "too big" into the local stack."""
        fit: list[BytesLike] = []
        for packet in packets:
            if len(packet) <= mtu:
                fit.append(packet)
            else:
                self._too_big(peer, packet, mtu, now)
        return fit

    def _too_big(self, peer: Peer, packet: BytesLike, mtu: int, now: float) -> None:
        """Drop `packet` (larger than `mtu`) and tell its sender, at most every
        TOO_BIG_INTERVAL_S for this peer."""
        self._drops[DropReason.PACKET_TOO_BIG] += 1
        if now - peer.too_big_sent_s < TOO_BIG_INTERVAL_S:
            return
        answer = too_big_packet(packet, mtu)
        if answer is not None:
            peer.too_big_sent_s = now
            self._outbox.out.packets.append(answer)
