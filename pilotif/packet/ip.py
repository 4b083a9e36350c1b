"""The IPv4, IPv6, TCP and UDP layouts, named once (every module that reads or writes a
header takes its offsets from here), and just enough parsing: addresses and the packet's
own length, and whether a packet is an ICMP echo reply.

Used on decrypted payloads (strip WireGuard's padding, check the source against
the peer's allowed IPs) and on packets from the TUN (destination picks the peer; an
echo reply asks for no answer).
"""

from typing import Final, TypeAlias

BytesLike: TypeAlias = bytes | bytearray | memoryview
"""What the packet functions (and the WireGuard core above them) accept wherever they
read bytes."""

IPV6_MIN_MTU: Final = 1280
"""The smallest MTU a link that carries IPv6 may have (RFC 8200 section 5)."""

# -- IPv4 (RFC 791) -------------------------------------------------------------------
IPV4_VERSION: Final = 4
IPV4_MIN_HEADER_BYTES: Final = 20
IPV4_PLAIN_FIRST_BYTE: Final = 0x45
"""Version 4, a 20-byte header (no options)."""
IPV4_IHL_MASK: Final = 0x0F
IPV4_MIN_IHL_WORDS: Final = 5
IPV4_WORD_BYTES: Final = 4
IPV4_TOS_OFFSET: Final = 1
IPV4_TOTAL_LENGTH_OFFSET: Final = 2
IPV4_ID_OFFSET: Final = 4
IPV4_FLAGS_FRAGMENT_OFFSET: Final = 6
IPV4_DONT_FRAGMENT: Final = 0x4000
IPV4_TTL_OFFSET: Final = 8
IPV4_PROTOCOL_OFFSET: Final = 9
IPV4_CHECKSUM_OFFSET: Final = 10
IPV4_SOURCE_OFFSET: Final = 12
IPV4_DESTINATION_OFFSET: Final = 16
IPV4_ADDRESS_BYTES: Final = 4
IPV4_SOURCE: Final = slice(IPV4_SOURCE_OFFSET, IPV4_SOURCE_OFFSET + IPV4_ADDRESS_BYTES)
IPV4_DESTINATION: Final = slice(
    IPV4_DESTINATION_OFFSET, IPV4_DESTINATION_OFFSET + IPV4_ADDRESS_BYTES
)
IPV4_ADDRESSES: Final = slice(IPV4_SOURCE_OFFSET, IPV4_DESTINATION_OFFSET + IPV4_ADDRESS_BYTES)

# -- IPv6 (RFC 8200) ------------------------------------------------------------------
IPV6_VERSION: Final = 6
IPV6_HEADER_BYTES: Final = 40
IPV6_PAYLOAD_LENGTH_OFFSET: Final = 4
IPV6_NEXT_HEADER_OFFSET: Final = 6
IPV6_HOP_LIMIT_OFFSET: Final = 7
IPV6_SOURCE_OFFSET: Final = 8
IPV6_DESTINATION_OFFSET: Final = 24
IPV6_ADDRESS_BYTES: Final = 16
IPV6_SOURCE: Final = slice(IPV6_SOURCE_OFFSET, IPV6_SOURCE_OFFSET + IPV6_ADDRESS_BYTES)
IPV6_DESTINATION: Final = slice(
    IPV6_DESTINATION_OFFSET, IPV6_DESTINATION_OFFSET + IPV6_ADDRESS_BYTES
)
IPV6_ADDRESSES: Final = slice(IPV6_SOURCE_OFFSET, IPV6_DESTINATION_OFFSET + IPV6_ADDRESS_BYTES)

# -- protocols ------------------------------------------------------------------------
PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMPV6: Final = 58

# -- TCP (RFC 9293) -------------------------------------------------------------------
TCP_MIN_HEADER_BYTES: Final = 20
TCP_SEQ_OFFSET: Final = 4
TCP_ACK_OFFSET: Final = 8
TCP_DATA_OFFSET_OFFSET: Final = 12
"""The byte whose high nibble is the header length in 32-bit words."""
TCP_FLAGS_OFFSET: Final = 13
TCP_CHECKSUM_OFFSET: Final = 16
TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_PSH: Final = 0x08
TCP_ACK: Final = 0x10
TCP_CWR: Final = 0x80

# -- UDP (RFC 768) --------------------------------------------------------------------
UDP_HEADER_BYTES: Final = 8
UDP_LENGTH_OFFSET: Final = 4
UDP_CHECKSUM_OFFSET: Final = 6

# -- ICMP -----------------------------------------------------------------------------
ICMP_ECHO_REPLY: Final = 0
ICMP_ECHO_REQUEST: Final = 8
ICMP_DESTINATION_UNREACHABLE: Final = 3
ICMP_FRAGMENTATION_NEEDED: Final = 4
"""The code of a destination unreachable that says "fragmentation needed and DF set"."""
ICMP_PORT_UNREACHABLE: Final = 3
"""The code of a destination unreachable that says no one listens on the UDP port."""
ICMPV6_DESTINATION_UNREACHABLE: Final = 1
ICMPV6_PORT_UNREACHABLE: Final = 4
ICMPV6_PACKET_TOO_BIG: Final = 2
ICMPV6_ECHO_REQUEST: Final = 128
ICMPV6_ECHO_REPLY: Final = 129

_IPV4_TOTAL_LENGTH: Final = slice(IPV4_TOTAL_LENGTH_OFFSET, IPV4_TOTAL_LENGTH_OFFSET + 2)
_IPV6_PAYLOAD_LENGTH: Final = slice(IPV6_PAYLOAD_LENGTH_OFFSET, IPV6_PAYLOAD_LENGTH_OFFSET + 2)


def packet_addresses(packet: BytesLike) -> tuple[bytes, bytes, int] | None:
    """(source, destination, total length) of a well-formed IPv4 or IPv6 packet, else None.

    Addresses are the raw 4 or 16 bytes. The total length may be less than
    len(packet): the bytes after it are padding.
    """
    if not packet:
        return None
    version = packet[0] >> 4
    if version == IPV4_VERSION:
        if len(packet) < IPV4_MIN_HEADER_BYTES:
            return None
        ihl_words = packet[0] & IPV4_IHL_MASK
        total_length = int.from_bytes(packet[_IPV4_TOTAL_LENGTH], "big")
        if ihl_words < IPV4_MIN_IHL_WORDS:
            return None
        if not ihl_words * IPV4_WORD_BYTES <= total_length <= len(packet):
            return None
        return bytes(packet[IPV4_SOURCE]), bytes(packet[IPV4_DESTINATION]), total_length
    if version == IPV6_VERSION:
        if len(packet) < IPV6_HEADER_BYTES:
            return None
        total_length = IPV6_HEADER_BYTES + int.from_bytes(packet[_IPV6_PAYLOAD_LENGTH], "big")
        if total_length > len(packet):
            return None
        return bytes(packet[IPV6_SOURCE]), bytes(packet[IPV6_DESTINATION]), total_length
    return None


def is_echo_reply(packet: BytesLike) -> bool:
    """Whether a well-formed packet is an ICMP (or ICMPv6) echo reply: an answer that
    asks for none (an IPv6 echo behind extension headers is not recognised)."""
    addresses = packet_addresses(packet)
    if addresses is None:
        return False
    if packet[0] >> 4 == IPV4_VERSION:
        header = (packet[0] & IPV4_IHL_MASK) * IPV4_WORD_BYTES
        return (
            packet[IPV4_PROTOCOL_OFFSET] == PROTO_ICMP
            and addresses[2] > header
            and packet[header] == ICMP_ECHO_REPLY
        )
    return (
        packet[IPV6_NEXT_HEADER_OFFSET] == PROTO_ICMPV6
        and addresses[2] > IPV6_HEADER_BYTES
        and packet[IPV6_HEADER_BYTES] == ICMPV6_ECHO_REPLY
    )
