"""TUN and UDP offloads against the real kernel, as root, in a namespace each test creates.

The TUN test plays the far end of two TCP connections by hand (with scapy) on a TUN
opened with IFF_VNET_HDR and TSO: the kernel's client must hand us super-packets larger
than the MTU that split into valid segments carrying exactly the bytes it sent, and the
kernel's server must accept one coalesced super-packet for many segments and deliver
every byte. The UDP test sends one GSO buffer over the namespace's loopback and reads
it back with GRO in one receive.
"""

import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.integration

STEP_TIMEOUT_S = 60

_TUN_PROGRAM = """
import json, os, select, socket, time
from ipaddress import ip_interface
from scapy.layers.inet import IP, TCP
from pilotif.tun import TunDevice, configure_link
from pilotif.tun.offload import (
    GSO_NONE, GSO_TCPV4, MAX_IP_PACKET_BYTES, VIRTIO_NET_HDR_SIZE, VirtioNetHdr,
    enable_offloads, split_gso,
)
from pilotif.wg.fastpath.batch_loops import coalesce

MTU = 1420
MSS = MTU - 40
ZERO = bytes(VIRTIO_NET_HDR_SIZE)
tun = TunDevice.open("pilot0", vnet_hdr=True)
offloads = enable_offloads(tun, tso=True)
configure_link(tun.name, [ip_interface("100.64.0.1/24")], MTU, [])
buffer = bytearray(VIRTIO_NET_HDR_SIZE + MAX_IP_PACKET_BYTES)

def read_tcp(deadline):
    while time.monotonic() < deadline:
        if not select.select([tun.fileno()], [], [], 0.2)[0]:
            continue
        n = os.readv(tun.fileno(), [buffer])
        packet = bytes(buffer[VIRTIO_NET_HDR_SIZE:n])
        if packet[0] >> 4 == 4 and packet[9] == 6:
            return VirtioNetHdr.unpack_from(buffer), packet
    return None, None

def write(packet):
    os.write(tun.fileno(), ZERO + bytes(packet))

def valid(segment):
    p = IP(segment)
    carried = (p.chksum, p[TCP].chksum)
    del p.chksum
    del p[TCP].chksum
    q = IP(bytes(p))
    return carried == (q.chksum, q[TCP].chksum)

# 1. Reads: the kernel's TCP client sends to 100.64.0.2, which we play.
sent = os.urandom(200_000)
client = socket.socket()
client.setblocking(False)
client.connect_ex(("100.64.0.2", 5201))
_, syn = read_tcp(time.monotonic() + 5)
syn = IP(syn)
write(IP(src="100.64.0.2", dst="100.64.0.1") / TCP(
    sport=5201, dport=syn[TCP].sport, seq=1000, ack=syn[TCP].seq + 1, flags="SA",
    window=65535, options=[("MSS", MSS)]))
select.select([], [client], [], 5)
queued = client.send(sent)
reads, by_offset, all_valid = [], {}, True
deadline = time.monotonic() + 1
while time.monotonic() < deadline:
    header, packet = read_tcp(deadline)
    if packet is None:
        break
    reads.append((header.gso_type, len(packet)))
    segments = split_gso(memoryview(bytearray(packet)), header, bytearray(2 * 65536))
    for segment in segments:
        all_valid = all_valid and valid(bytes(segment))
        tcp = IP(bytes(segment))[TCP]
        by_offset[tcp.seq - syn[TCP].seq - 1] = bytes(tcp.payload)
client.close()
received = b""
while len(received) in by_offset and by_offset[len(received)]:
    received += by_offset[len(received)]

# 2. Writes: we play 100.64.0.2 sending to the kernel's TCP server.
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("100.64.0.1", 7000))
server.listen()
write(IP(src="100.64.0.2", dst="100.64.0.1") / TCP(
    sport=40000, dport=7000, seq=5000, flags="S", window=65535, options=[("MSS", MSS)]))
_, synack = read_tcp(time.monotonic() + 5)
synack = IP(synack)
server_seq = synack[TCP].seq + 1
write(IP(src="100.64.0.2", dst="100.64.0.1") / TCP(
    sport=40000, dport=7000, seq=5001, ack=server_seq, flags="A", window=65535))
count = min(40, synack[TCP].window // MSS)
data = os.urandom(count * MSS)
segments = [
    bytes(IP(src="100.64.0.2", dst="100.64.0.1", flags="DF") / TCP(
        sport=40000, dport=7000, seq=5001 + i * MSS, ack=server_seq,
        flags="PA" if i == count - 1 else "A", window=65535) / data[i * MSS:(i + 1) * MSS])
    for i in range(count)
]
writes = coalesce(segments)
for w in writes:
    os.write(tun.fileno(), w)
connection, _ = server.accept()
connection.settimeout(5)
got = b""
while len(got) < len(data):
    chunk = connection.recv(65536)
    if not chunk:
        break
    got += chunk
print(json.dumps({
    "offloads": offloads.status(),
    "reads": reads,
    "valid": all_valid,
    "prefix_ok": len(received) > 0 and sent.startswith(received),
    "received": len(received),
    "segments": count,
    "writes": [VirtioNetHdr.unpack_from(w).gso_type for w in writes],
    "delivered": got == data,
}))
"""

_UDP_PROGRAM = """
import json, select
from pilotif.net.udp import UdpSockets
from pilotif.net.udp_batch import UdpBatch
from pilotif.wg.messages import split_coalesced

a, b = UdpSockets(None), UdpSockets(None)
sender, receiver = UdpBatch(a), UdpBatch(b)
datagrams = [bytes([i]) * 1452 for i in range(30)] + [b"z" * 100]
refused = sender.send_buffer(b"".join(datagrams), 1452, ("127.0.0.1", b.port))
received, calls = [], 0
while len(received) < len(datagrams) and select.select([b.v4], [], [], 2)[0]:
    batch = receiver.receive(b.v4)
    if batch is None:
        break
    calls += 1
    received += [bytes(d) for d in split_coalesced(batch[0], batch[1])]
print(json.dumps({
    "status": sender.status(),
    "refused": refused,
    "calls": calls,
    "same": received == datagrams,
}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pilotif-offload-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_in(netns: str, program: str) -> Any:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tun_reads_tso_super_packets_and_takes_coalesced_writes(netns: str) -> None:
    result = run_in(netns, _TUN_PROGRAM)
    assert result["offloads"]["tso"], result["offloads"]
    gso_type_tcpv4 = 1
    super_packets = [length for kind, length in result["reads"] if kind == gso_type_tcpv4]
    assert super_packets and max(super_packets) > 1420, result["reads"]
    assert result["valid"]
    assert result["prefix_ok"] and result["received"] > 1420
    assert result["segments"] > 1
    assert result["writes"] == [gso_type_tcpv4]
    assert result["delivered"]


def test_udp_gso_send_arrives_as_one_gro_receive(netns: str) -> None:
    result = run_in(netns, _UDP_PROGRAM)
    assert result["status"]["v4"]["gso"] and result["status"]["v4"]["gro"]
    assert result["refused"] == 0
    assert result["same"]
    assert result["calls"] < 31


_USO_PROGRAM = """
import json, select, socket, time
from ipaddress import ip_interface
from pilotif.packet.segments import SuperPacket, cut_segments
from pilotif.tun import TunDevice, configure_link
from pilotif.tun.offload import TunBatch, enable_offloads

UDP_SEGMENT = 103
tun = TunDevice.open("pilot0", vnet_hdr=True)
offloads = enable_offloads(tun, tso=True, uso=True)
configure_link(tun.name, [ip_interface("100.64.0.1/24")], 1420, [])
batch = TunBatch(tun, offloads)
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# Until a first datagram comes through, the new link may drop what is sent.
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    sender.sendto(b"?", ("100.64.0.2", 443))
    if select.select([tun.fileno()], [], [], 0.1)[0]:
        read = batch.read_batch(8)
        if isinstance(read, list) and any(bytes(p[28:]) == b"?" for p in read):
            break
while select.select([tun.fileno()], [], [], 0.2)[0]:
    batch.read_batch(8)
sender.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 1200)
payload = bytes(i % 251 for i in range(30000))
sender.sendto(payload, ("100.64.0.2", 443))
reads = []
while select.select([tun.fileno()], [], [], 1)[0]:
    read = batch.read_batch(8)
    if isinstance(read, SuperPacket):
        segments = cut_segments(
            read.packet, read.transport_start, read.segment_payload, bytearray(65536),
            udp=read.udp)
        reads.append({"udp": read.udp, "datagrams": [bytes(s[28:]).hex() for s in segments]})
print(json.dumps({"uso": offloads.uso, "reads": reads, "payload": payload.hex()}))
"""


def test_a_udp_gso_sender_reaches_the_device_as_one_udp_super_packet(netns: str) -> None:
    # USO granted: the kernel hands a UDP_SEGMENT send over whole; cut, it is the
    # datagrams the program sent, 1200 bytes each.
    result = run_in(netns, _USO_PROGRAM)
    assert result["uso"]
    (read,) = result["reads"]
    assert read["udp"]
    datagrams = [bytes.fromhex(d) for d in read["datagrams"]]
    payload = bytes.fromhex(result["payload"])
    assert datagrams == [payload[i : i + 1200] for i in range(0, len(payload), 1200)]
