"""In-process costs of the fast path: per packet, one at a time against in batches.

No network and no root: two Devices get a session in memory, then each path moves the
same data (64 KiB TCP super-packets of MSS-sized segments, MTU 1420) through its own
steps and we time them on one core.

- per packet, send:  Device.send of one 1420-byte packet at a time;
- per packet, recv:  Device.receive of one datagram at a time;
- batch, send:       split_gso of one super-packet (a TSO read) + Device.send of them
                     into one buffer (what the daemon does);
- batch, recv:       Device.receive of one GRO receive (Coalesced) + coalesce into TUN
                     writes (what the daemon does).

With --udp it also times the UDP system calls on loopback: one sendto/recvmsg per
datagram against one GSO send and one GRO receive per 45 datagrams.

    python3 bench/fastpath_proto.py [--seconds 2] [--udp]
"""

import argparse
import array
import os
import time
from collections.abc import Callable
from ipaddress import IPv4Network

from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from pilotif.net.udp import UdpSockets
from pilotif.net.udp_batch import UdpBatch
from pilotif.tun.offload import (
    GSO_TCPV4,
    MAX_IP_PACKET_BYTES,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VirtioNetHdr,
    split_gso,
)
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.device import Device
from pilotif.wg.fastpath.batch_loops import coalesce
from pilotif.wg.messages import Coalesced

MTU = 1420
MSS = MTU - 20 - 32  # IPv4 and TCP with timestamps, as iperf3's stream has
SEGMENTS_PER_SUPER_PACKET = 45
NOW = 1000.0
A_ENDPOINT = ("198.18.0.1", 51820)
B_ENDPOINT = ("198.18.0.2", 51820)


def _session() -> tuple[Device, Device]:
    a = Device(generate_private_key(), mtu=MTU)
    b = Device(generate_private_key(), mtu=MTU)
    a.add_peer(
        b.public_key, allowed_ips=[IPv4Network("100.64.0.2/32")], endpoint=B_ENDPOINT, now=NOW
    )
    b.add_peer(
        a.public_key, allowed_ips=[IPv4Network("100.64.0.1/32")], endpoint=A_ENDPOINT, now=NOW
    )
    a.send((bytes(IP(src="100.64.0.1", dst="100.64.0.2") / Raw(b"hi")),), NOW)
    for _ in range(4):
        for source, target, endpoint in ((a, b, A_ENDPOINT), (b, a, B_ENDPOINT)):
            for datagram, _ in source.take_output().datagrams:
                target.receive((datagram,), endpoint, NOW)
    a.take_output()
    b.take_output()
    return a, b


def _super_packet() -> tuple[bytearray, VirtioNetHdr]:
    payload = os.urandom(MSS * SEGMENTS_PER_SUPER_PACKET)
    options = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    packet = IP(src="100.64.0.1", dst="100.64.0.2", flags="DF") / TCP(
        sport=40000, dport=5201, flags="A", options=options
    )
    raw = bytearray(bytes(packet / Raw(payload)))
    header = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV4, 52, MSS, 20, 16)
    return raw, header


def _rate(step: Callable[[], int], seconds: float) -> float:
    """Packets per second of `step`, which returns how many packets it moved."""
    moved = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        moved += step()
    return moved / elapsed


def _udp_costs(rounds: int = 400) -> None:
    """Microseconds per datagram of the UDP calls, plain against GSO/GRO, on loopback."""
    a, b = UdpSockets(None), UdpSockets(None)
    sender, receiver = UdpBatch(a), UdpBatch(b)
    endpoint = ("127.0.0.1", b.port)
    datagrams = [bytes(MTU + 32)] * (SEGMENTS_PER_SUPER_PACKET - 1) + [bytes(700)]
    buffer = b"".join(datagrams)

    def plain() -> None:
        for datagram in datagrams:
            a.v4.sendto(datagram, endpoint)

    def batched() -> None:
        sender.send_buffer(buffer, MTU + 32, endpoint)

    print(f"\n{'UDP on loopback, per datagram':44} {'send us':>10} {'recv us':>10}")
    for name, send in (("sendto / recvmsg each", plain), ("GSO send / GRO receive", batched)):
        sending = receiving = 0.0
        for _ in range(rounds):
            start = time.perf_counter()
            send()
            middle = time.perf_counter()
            while receiver.receive(b.v4) is not None:
                pass
            sending += middle - start
            receiving += time.perf_counter() - middle
        count = rounds * len(datagrams)
        print(f"{name:44} {sending / count * 1e6:10.2f} {receiving / count * 1e6:10.2f}")
    a.close()
    b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--udp", action="store_true", help="also time UDP calls on loopback")
    arguments = parser.parse_args()
    seconds = arguments.seconds
    a, b = _session()
    raw, header = _super_packet()
    split_buffer = bytearray(2 * MAX_IP_PACKET_BYTES)
    segments = [bytes(s) for s in split_gso(memoryview(raw), header, split_buffer)]
    sealed = memoryview(bytearray(SEGMENTS_PER_SUPER_PACKET * (MTU + 64)))
    plaintexts = memoryview(bytearray(SEGMENTS_PER_SUPER_PACKET * (MTU + 64)))
    receive_keypair = b.peer(a.public_key).current  # type: ignore[union-attr]
    assert receive_keypair is not None
    results: dict[str, float] = {}

    def current_send() -> int:
        for segment in segments:
            a.send((segment,), NOW)
        a.take_output()
        return len(segments)

    def batch_split() -> int:
        return len(split_gso(memoryview(raw), header, split_buffer))

    def batch_send() -> int:
        pieces = split_gso(memoryview(raw), header, split_buffer)
        a.send(pieces, NOW, sealed)
        a.take_output()
        return len(pieces)

    results["per packet send (Device.send of one)"] = _rate(current_send, seconds)
    results["batch send: split_gso only"] = _rate(batch_split, seconds)
    results["batch send: split_gso + send"] = _rate(batch_send, seconds)

    a.send(segments, NOW, sealed)
    datagrams = [bytes(d) for d, _ in a.take_output().datagrams]

    def current_receive() -> int:
        receive_keypair.replay = type(receive_keypair.replay)()
        for datagram in datagrams:
            b.receive((datagram,), A_ENDPOINT, NOW)
        assert len(b.take_output().packets) == len(datagrams)
        return len(datagrams)

    glued = memoryview(b"".join(datagrams))
    datagram_size = len(datagrams[0])

    def batch_receive(with_coalesce: bool) -> Callable[[], int]:
        def step() -> int:
            receive_keypair.replay = type(receive_keypair.replay)()
            receive_keypair.replay.update(0)
            b.receive(Coalesced(glued, datagram_size), A_ENDPOINT, NOW, plaintexts)
            packets = b.take_output().packets
            assert len(packets) == len(datagrams)
            if with_coalesce:
                assert coalesce is not None and len(coalesce(packets)) == 1
            return len(datagrams)

        return step

    results["per packet receive (Device.receive of one)"] = _rate(current_receive, seconds)
    results["batch receive: receive of a GRO batch only"] = _rate(batch_receive(False), seconds)
    results["batch receive: receive of a GRO batch + coalesce"] = _rate(
        batch_receive(True), seconds
    )

    sample = segments[0]
    checksum_ways: dict[str, Callable[[], int]] = {
        "int.from_bytes % 0xFFFF": lambda: int.from_bytes(sample, "little") % 0xFFFF,
        "sum(memoryview.cast('H'))": lambda: sum(memoryview(sample).cast("H")),
        "sum(array('H'))": lambda: sum(array.array("H", sample)),
    }
    print(f"{'path':44} {'packets/s':>10} {'us/packet':>10} {'Gbit/s':>7}")
    for name, rate in results.items():
        print(f"{name:44} {rate:10.0f} {1e6 / rate:10.2f} {rate * MTU * 8 / 1e9:7.2f}")
    print(f"\n{'checksum of a 1420-byte segment':44} {'us':>10}")
    for name, way in checksum_ways.items():
        print(f"{name:44} {1e6 / _rate(lambda w=way: (w(), 1)[1], seconds / 4):10.2f}")
    if arguments.udp:
        _udp_costs()


if __name__ == "__main__":
    main()
