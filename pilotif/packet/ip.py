"""Just enough of the IPv4 and IPv6 headers: addresses and the packet's own length, and
whether a packet is an ICMP echo reply.

Used on decrypted payloads (strip WireGuard's padding, check the source against
the peer's allowed IPs) and on packets from the TUN (destination picks the peer; an
echo reply asks for no answer).
"""

from typing import Final

from pilotif.wg.crypto import BytesLike

IPV6_MIN_MTU: Final = 1280
"""The smallest MTU a link that carries IPv6 may have (RFC 8200 section 5)."""

_IPV4: Final = 4
_IPV6: Final = 6
_IPV4_MIN_HEADER_SIZE: Final = 20
_IPV4_IHL_MASK: Final = 0x0F
_IPV4_MIN_IHL_WORDS: Final = 5
_IPV4_WORD_SIZE: Final = 4
_IPV4_TOTAL_LENGTH: Final = slice(2, 4)
_IPV4_SOURCE: Final = slice(12, 16)
_IPV4_DESTINATION: Final = slice(16, 20)
_IPV6_HEADER_SIZE: Final = 40
_IPV6_PAYLOAD_LENGTH: Final = slice(4, 6)
_IPV6_SOURCE: Final = slice(8, 24)
_IPV6_DESTINATION: Final = slice(24, 40)
_IPV4_PROTOCOL: Final = 9
_IPV6_NEXT_HEADER: Final = 6
_PROTO_ICMP: Final = 1
_PROTO_ICMPV6: Final = 58
_ICMP_ECHO_REPLY: Final = 0
_ICMPV6_ECHO_REPLY: Final = 129


def packet_addresses(packet: BytesLike) -> tuple[bytes, bytes, int] | None:
    """(source, destination, total length) of a well-formed IPv4 or IPv6 packet, else None.

    Addresses are the raw 4 or 16 bytes. The total length may be less than
    len(packet): the bytes after it are padding.
    """
    if not packet:
        return None
    version = packet[0] >> 4
    if version == _IPV4:
        if len(packet) < _IPV4_MIN_HEADER_SIZE:
            return None
        ihl_words = packet[0] & _IPV4_IHL_MASK
        total_length = int.from_bytes(packet[_IPV4_TOTAL_LENGTH], "big")
        if ihl_words < _IPV4_MIN_IHL_WORDS:
            return None
        if not ihl_words * _IPV4_WORD_SIZE <= total_length <= len(packet):
            return None
        return bytes(packet[_IPV4_SOURCE]), bytes(packet[_IPV4_DESTINATION]), total_length
    if version == _IPV6:
        if len(packet) < _IPV6_HEADER_SIZE:
            return None
        total_length = _IPV6_HEADER_SIZE + int.from_bytes(packet[_IPV6_PAYLOAD_LENGTH], "big")
        if total_length > len(packet):
            return None
        return bytes(packet[_IPV6_SOURCE]), bytes(packet[_IPV6_DESTINATION]), total_length
    return None


def is_echo_reply(packet: BytesLike) -> bool:
    """Whether a well-formed packet is an ICMP (or ICMPv6) echo reply: an answer that
    asks for none (an IPv6 echo behind extension headers is not recognised)."""
    addresses = packet_addresses(packet)
    if addresses is None:
        return False
    if packet[0] >> 4 == _IPV4:
        header = (packet[0] & _IPV4_IHL_MASK) * _IPV4_WORD_SIZE
        return (
            packet[_IPV4_PROTOCOL] == _PROTO_ICMP
            and addresses[2] > header
            and packet[header] == _ICMP_ECHO_REPLY
        )
    return (
        packet[_IPV6_NEXT_HEADER] == _PROTO_ICMPV6
        and addresses[2] > _IPV6_HEADER_SIZE
        and packet[_IPV6_HEADER_SIZE] == _ICMPV6_ECHO_REPLY
    )
