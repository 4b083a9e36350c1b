"""The Internet checksum (RFC 1071): the ones' complement sum of 16-bit words.

Python sums fastest as one big integer: `int.from_bytes(data, "little") % 0xFFFF` is
congruent to the sum of the byte-swapped 16-bit words (2**16 == 1 mod 0xFFFF, an odd
trailing byte is padded by itself), and the ones' complement sum does not care about
byte order (RFC 1071, 2.B), so the sums here are kept in that "little" domain and written
back little-endian.
"""

from typing import Final

from pilotif.packet.ip import BytesLike

ONES: Final = 0xFFFF
"""The modulus of a ones' complement 16-bit sum."""
_BYTE_BITS: Final = 8
_LOW_BYTE: Final = 0xFF


def sum_le(data: BytesLike) -> int:
    """The ones' complement sum of `data`'s byte-swapped 16-bit words, mod 0xFFFF."""
    return int.from_bytes(data, "little") % ONES


def swap16(value: int) -> int:
    """The 16-bit `value` with its two bytes swapped."""
    return ((value & _LOW_BYTE) << _BYTE_BITS) | (value >> _BYTE_BITS)


def internet_checksum(data: BytesLike, initial: int = 0) -> int:
    """The RFC 1071 checksum of `data` (big-endian, as written in a header).

    `initial` is a big-endian partial sum to add (a pseudo-header's)."""
    total = (sum_le(data) + swap16(initial)) % ONES
    return swap16(-total % ONES)


def pseudo_sum_le(addresses: BytesLike, protocol: int, length: int) -> int:
    """The pseudo-header sum (source, destination, protocol, length) in the little domain."""
    return int.from_bytes(addresses, "little") + (protocol << _BYTE_BITS) + swap16(length)


def fold_le(total: int) -> int:
    """A little-domain sum folded to 16 bits, as a partial checksum field holds it."""
    return total % ONES or ONES
