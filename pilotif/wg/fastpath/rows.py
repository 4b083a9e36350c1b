"""The device's batch fast paths as functions over (keypair, rows): runs of packets cut
by destination and sealed back to back, a TCP super-packet sealed as it is cut, and the
checks that let a GRO receive of one session be opened and delivered at once.

They move bytes and read headers; what a batch means (which peer, which session, what
the counters and timers do) stays in `pilotif.wg.device.Device`. The loops themselves
are `batch_loops` (native, or plain Python through `cryptography`).
"""

import functools
import struct
from collections.abc import Sequence
from typing import Final

from pilotif.packet.ip import (
    IPV4_ADDRESS_BYTES,
    IPV4_DESTINATION_OFFSET,
    IPV4_MIN_HEADER_BYTES,
    IPV4_PLAIN_FIRST_BYTE,
    IPV4_SOURCE_OFFSET,
    IPV4_TOTAL_LENGTH_OFFSET,
    BytesLike,
    packet_addresses,
)
from pilotif.packet.segments import MAX_GSO_SEGMENTS, SuperPacket
from pilotif.wg.constants import (
    AEAD_TAG_SIZE,
    MESSAGE_TRANSPORT,
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from pilotif.wg.fastpath.batch_loops import seal_rows, seal_tso
from pilotif.wg.messages import TRANSPORT_HEADER
from pilotif.wg.peer import Keypair

TRANSPORT_OVERHEAD_BYTES: Final = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE
"""What a transport message adds to its (padded) plaintext: the header and the tag."""
_IPV4_FIRST_LENGTH_DESTINATION: Final = struct.Struct("!BxH12x4s")
_TYPE_MASK: Final = 0xFFFFFFFF
"""The first 8 bytes of a transport message, read as one little-endian integer: the type
word in the low 32 bits, the receiver index in the high ones."""
_INDEX_SHIFT: Final = 32
_HEADER_WORDS_BYTES: Final = 16
"""The two 8-byte words read per row: type and receiver index; counter."""
_VECTOR_MIN_DATAGRAMS: Final = 4
"""Below this many datagrams in one receive, the checks at once cost more than they save."""
_VECTOR_MIN_DATAGRAM_BYTES: Final = TRANSPORT_MIN_SIZE + IPV4_MIN_HEADER_BYTES
"""Each datagram of a batch taken at once carries at least an IPv4 header."""
_IPV4_PLAIN_FIRST_BYTES: Final = bytes([IPV4_PLAIN_FIRST_BYTE]) * 256
_IPV4_SOURCE_BYTES: Final = range(IPV4_SOURCE_OFFSET, IPV4_SOURCE_OFFSET + IPV4_ADDRESS_BYTES)
_IPV4_DESTINATION_BYTES: Final = range(
    IPV4_DESTINATION_OFFSET, IPV4_DESTINATION_OFFSET + IPV4_ADDRESS_BYTES
)


def padded_length(length: int, mtu: int) -> int:
    """A plaintext's length after WireGuard's padding: up to a multiple of 16, not past
    the MTU (a longer packet is not padded)."""
    padded = length + (-length % PADDING_MULTIPLE)
    return padded if padded <= mtu else max(length, mtu)


def sealed_bytes(packets: Sequence[BytesLike], mtu: int) -> int:
    """What sealing `packets` takes, each padded and framed."""
    return sum(padded_length(len(p), mtu) for p in packets) + len(packets) * (
        TRANSPORT_OVERHEAD_BYTES
    )


def runs(packets: Sequence[BytesLike]) -> list[tuple[int, bytes | None]]:
    """The packets cut into runs to one destination, in order: (end, destination) of
    each, the run starting where the previous one ended; a packet that is not
    well-formed IP is a run of its own with no destination. A plain IPv4 header is read
    here with one `struct` call; anything else by `packet_addresses`."""
    found: list[tuple[int, bytes | None]] = []
    unpack = _IPV4_FIRST_LENGTH_DESTINATION.unpack_from
    destination: bytes | None = None
    plain_ipv4 = False
    for position, packet in enumerate(packets):
        length = len(packet)
        if destination is not None and length >= IPV4_MIN_HEADER_BYTES:
            if plain_ipv4:
                first, total, to = unpack(packet)
                if (
                    to == destination
                    and first == IPV4_PLAIN_FIRST_BYTE
                    and IPV4_MIN_HEADER_BYTES <= total <= length
                ):
                    continue
            else:
                addresses = packet_addresses(packet)
                if addresses is not None and addresses[1] == destination:
                    continue
        if position:
            found.append((position, destination))
        addresses = packet_addresses(packet)
        destination = addresses[1] if addresses is not None else None
        plain_ipv4 = len(destination or b"") == IPV4_ADDRESS_BYTES
    if packets:
        found.append((len(packets), destination))
    return found


def seal_run(
    keypair: Keypair, packets: Sequence[BytesLike], mtu: int, sealed: memoryview, offset: int
) -> tuple[list[memoryview], int]:
    """Seal as many of `packets` as fit in `sealed` from `offset` (from the first on), with
    `keypair`'s next counters (not moved: the caller's), as transport messages back to
    back: the views of them and where the last one ends."""
    pack_header = TRANSPORT_HEADER.pack_into
    counter = keypair.send_counter
    index = keypair.remote_index
    capacity = len(sealed)
    rows: list[BytesLike] = []
    sizes: list[int] = []
    starts: list[int] = []
    views: list[memoryview] = []
    for packet in packets:
        length = len(packet)
        padded = length + (-length % PADDING_MULTIPLE)
        if padded > mtu:
            padded = length if length > mtu else mtu
        end = offset + padded + TRANSPORT_OVERHEAD_BYTES
        if end > capacity:
            break
        pack_header(sealed, offset, MESSAGE_TRANSPORT, index, counter)
        rows.append(packet)
        sizes.append(padded)
        starts.append(offset)
        views.append(sealed[offset:end])
        counter += 1
        offset = end
    if rows:
        seal_rows(
            keypair.send_key,
            keypair.send_counter,
            rows,
            sizes,
            starts,
            TRANSPORT_HEADER_SIZE,
            sealed,
        )
    return views, offset


def seal_super(
    keypair: Keypair, batch: SuperPacket, mtu: int, sealed: memoryview
) -> tuple[int, int, int] | None:
    """Cut a TCP or UDP super-packet and seal each segment as it is cut (natively) with
    `keypair`'s next counters, back to back in `sealed`: (count, datagram size, total
    bytes); None without the native loop, without room below the message limit, or when
    the headers do not describe the packet."""
    counter = keypair.send_counter
    if seal_tso is None or counter + MAX_GSO_SEGMENTS >= REJECT_AFTER_MESSAGES:
        return None
    try:
        return seal_tso(
            keypair.send_key,
            counter,
            keypair.remote_index,
            batch.packet,
            batch.transport_start,
            batch.segment_payload,
            mtu,
            sealed,
            batch.udp,
        )
    except ValueError:
        return None


@functools.cache
def _row_totals(plain_size: int, count: int) -> struct.Struct:
    """Reads the IPv4 total length of each of `count` packets laid `plain_size` bytes
    apart (from the first one's length field on)."""
    return struct.Struct("!" + f"{plain_size - 2}x".join(["H"] * count))


@functools.cache
def _row_headers(segment_size: int, count: int) -> struct.Struct:
    """Reads the first two 8-byte words (type and receiver index; counter) of each of
    `count` datagrams laid `segment_size` bytes apart, little-endian."""
    gap = f"{segment_size - _HEADER_WORDS_BYTES}x" if segment_size > _HEADER_WORDS_BYTES else ""
    return struct.Struct("<" + gap.join(["QQ"] * count))


def batch_session(
    buffer: memoryview, segment_size: int, count: int, last_size: int
) -> tuple[int, int] | None:
    """(receiver index, first counter) of a GRO receive that may be opened at once:
    enough datagrams, each a transport message to one receiver index, with consecutive
    counters below the message limit; None for anything else."""
    if count < _VECTOR_MIN_DATAGRAMS or last_size < _VECTOR_MIN_DATAGRAM_BYTES:
        return None
    fields = _row_headers(segment_size, count).unpack_from(buffer)
    headers, counters = fields[0::2], fields[1::2]
    first = counters[0]
    if (
        headers[0] & _TYPE_MASK != MESSAGE_TRANSPORT
        or headers.count(headers[0]) != count
        or counters != tuple(range(first, first + count))
        or first + count > REJECT_AFTER_MESSAGES
    ):
        return None
    return headers[0] >> _INDEX_SHIFT, first


def plain_rows(
    plaintexts: memoryview,
    count: int,
    plain_size: int,
    last_plain: int,
    local_ipv4: bytes | None,
) -> list[memoryview] | None:
    """The packets of a decrypted batch (one per `plain_size` bytes, the last row
    `last_plain`) when each is plain IPv4 within its row, all from the first one's
    source and (unless `local_ipv4` is None: any destination) to `local_ipv4`; else
    None. Each byte that must agree is read down the rows as one strided copy and
    compared with the first row's byte repeated: a few C-level scans, not a loop per
    packet."""
    totals = _row_totals(plain_size, count).unpack_from(plaintexts, IPV4_TOTAL_LENGTH_OFFSET)
    if min(totals) < IPV4_MIN_HEADER_BYTES or max(totals) > plain_size or totals[-1] > last_plain:
        return None
    end = count * plain_size
    if plaintexts[0:end:plain_size].tobytes() != _IPV4_PLAIN_FIRST_BYTES[:count]:
        return None
    agreeing = list(_IPV4_SOURCE_BYTES)
    if local_ipv4 is not None:
        agreeing += _IPV4_DESTINATION_BYTES
        destination = plaintexts[
            IPV4_DESTINATION_OFFSET : IPV4_DESTINATION_OFFSET + IPV4_ADDRESS_BYTES
        ]
        if destination != local_ipv4:
            return None
    for offset in agreeing:
        column = plaintexts[offset:end:plain_size].tobytes()
        if column.count(column[0]) != count:
            return None
    starts = range(0, end, plain_size)
    return [plaintexts[at : at + total] for at, total in zip(starts, totals, strict=True)]
