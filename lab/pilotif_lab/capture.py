"""Capture the underlay's UDP datagrams with tcpdump and read them back from the pcap file.

Tests use it to see which side sent the first handshake initiation, and to collect real
WireGuard messages to replay at a daemon.
"""

import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from pilotif_lab.netns import LabError, Namespace

START_TIMEOUT_S = 5.0
SETTLE_S = 0.3
"""How long to let tcpdump write what it has seen before it is stopped."""
SNAPSHOT_BYTES = 2048
_POLL_INTERVAL_S = 0.05
_READY_MARKER = "listening on"
_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")
_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_LINKTYPE_ETHERNET = 1
_ETHERNET_HEADER_BYTES = 14
_ETHERTYPE_IPV4 = 0x0800
_IP_PROTOCOL_UDP = 17
_UDP_HEADER_BYTES = 8
_IHL_MASK = 0x0F
_IHL_UNIT_BYTES = 4
_NS_PER_S = 1e9
_US_PER_S = 1e6


@dataclass(frozen=True)
class UdpDatagram:
    """One captured IPv4 UDP datagram."""

    timestamp: float
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes


@contextmanager
def capture_udp(
    namespace: Namespace, interface: str, port: int, path: Path, max_packets: int = 0
) -> Iterator[Path]:
    """Capture UDP to or from `port` on `interface` into `path` while the block runs.

    `max_packets` (0: no limit) bounds the file; tcpdump stops by itself once it is reached.
    """
    log_path = path.with_suffix(".tcpdump.log")
    log_path.unlink(missing_ok=True)
    args = [
        "tcpdump",
        "-n",
        "-U",
        "--immediate-mode",
        "-Z",
        "root",
        "-i",
        interface,
        "-s",
        str(SNAPSHOT_BYTES),
        "-w",
        str(path),
    ]
    if max_packets:
        args += ["-c", str(max_packets)]
    process = namespace.spawn(*args, "udp", "port", str(port), log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while _READY_MARKER not in (log_path.read_text() if log_path.exists() else ""):
        if process.poll() is not None or time.monotonic() > deadline:
            namespace.stop(process)
            raise LabError(f"tcpdump did not start: {log_path.read_text()}")
        time.sleep(_POLL_INTERVAL_S)
    try:
        yield path
    finally:
        time.sleep(SETTLE_S)
        namespace.stop(process)


def read_udp(path: Path) -> list[UdpDatagram]:
    """The IPv4 UDP datagrams of a classic pcap file with Ethernet framing."""
    data = path.read_bytes()
    magic, _major, _minor, _zone, _sigfigs, _snaplen, linktype = _PCAP_HEADER.unpack_from(data)
    if magic not in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS) or linktype != _LINKTYPE_ETHERNET:
        raise LabError(f"{path} is not a little-endian Ethernet pcap file")
    fraction_per_s = _NS_PER_S if magic == _PCAP_MAGIC_NS else _US_PER_S
    datagrams = []
    offset = _PCAP_HEADER.size
    while offset + _PCAP_RECORD.size <= len(data):
        seconds, fraction, captured, _original = _PCAP_RECORD.unpack_from(data, offset)
        offset += _PCAP_RECORD.size
        frame = data[offset : offset + captured]
        offset += captured
        datagram = _parse_frame(frame, seconds + fraction / fraction_per_s)
        if datagram is not None:
            datagrams.append(datagram)
    return datagrams


def _parse_frame(frame: bytes, timestamp: float) -> UdpDatagram | None:
    (ethertype,) = struct.unpack_from("!H", frame, _ETHERNET_HEADER_BYTES - 2)
    if ethertype != _ETHERTYPE_IPV4:
        return None
    ip = frame[_ETHERNET_HEADER_BYTES:]
    header_bytes = (ip[0] & _IHL_MASK) * _IHL_UNIT_BYTES
    if ip[9] != _IP_PROTOCOL_UDP:
        return None
    source_ip, destination_ip = str(IPv4Address(ip[12:16])), str(IPv4Address(ip[16:20]))
    source_port, destination_port, length = struct.unpack_from("!HHH", ip, header_bytes)
    payload_start = header_bytes + _UDP_HEADER_BYTES
    payload = ip[payload_start : header_bytes + length]
    return UdpDatagram(
        timestamp=timestamp,
        source=(source_ip, source_port),
        destination=(destination_ip, destination_port),
        payload=payload,
    )
