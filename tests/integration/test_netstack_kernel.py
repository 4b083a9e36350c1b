"""The userspace TCP/IP stack against the Linux kernel's TCP: in a namespace the test
creates, a TUN device (100.64.0.1/24 on the kernel's side) leads to our stack, which
answers on 100.64.0.2. The kernel's socket connects to our listener and our stack
connects to the kernel's listener; a few megabytes go each way on both, checked by
sha256, and both ends see the other close.

The stack and the kernel's sockets run in one child process inside the namespace
(`ip netns exec`): the stack's loop on the main thread, each kernel socket on a thread.
"""

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pilotif_lab.netns import Namespace, namespace

pytestmark = pytest.mark.integration

CHILD_TIMEOUT_S = 240
SIZE_BYTES = 4 * 1024 * 1024
SHORT_CONNECTIONS = 1000

_SETUP = r"""
import hashlib, json, random, select, socket, sys, threading, time
from ipaddress import IPv4Address, IPv4Interface
from pilotif.netstack import Stack, StackConfig, State
from pilotif.tun import TunDevice, configure_link

SIZE = int(sys.argv[1])
LIMIT_S = float(sys.argv[2])
tun = TunDevice.open("pn0")
configure_link("pn0", [IPv4Interface("100.64.0.1/24")], 1420, [])
stack = Stack([IPv4Address("100.64.0.2")], StackConfig(mtu=1420))
listener = stack.listen(8080)
buf = bytearray(65536)
start = time.monotonic()

def pump(app, done):
    # the stack's loop: TUN packets in, the application, packets out, until done()
    while time.monotonic() - start < LIMIT_S and not done():
        timer = stack.next_timer()
        now = time.monotonic()
        wait = 0.05 if timer is None else min(max(timer - now, 0), 0.05)
        select.select([tun], [], [], wait)
        now = time.monotonic()
        while True:
            try:
                n = tun.read_into(buf)
            except BlockingIOError:
                break
            stack.receive(memoryview(buf)[:n], now)
        app(now)
        for packet in stack.poll(now):
            tun.write(packet)
"""

_BULK = r"""
data = {name: random.Random(seed).randbytes(SIZE) for seed, name in enumerate("abcd")}
digest = {name: hashlib.sha256(value).hexdigest() for name, value in data.items()}
results = {}

def read_all(sock):
    h, n = hashlib.sha256(), 0
    while chunk := sock.recv(1 << 16):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n

def kernel_client():
    s = socket.create_connection(("100.64.0.2", 8080), timeout=LIMIT_S)
    s.sendall(data["a"])
    s.shutdown(socket.SHUT_WR)
    results["kernel_read_from_us"] = read_all(s)
    s.close()

def kernel_server(lsock):
    c, _ = lsock.accept()
    c.settimeout(LIMIT_S)
    results["kernel_server_read"] = read_all(c)
    c.sendall(data["d"])
    c.close()

lsock = socket.create_server(("100.64.0.1", 9000))
threads = [
    threading.Thread(target=kernel_client),
    threading.Thread(target=kernel_server, args=(lsock,)),
]
for t in threads:
    t.start()

ours_out = stack.connect(IPv4Address("100.64.0.1"), 9000, start)
accepted = None
sent = {"b": 0, "c": 0}
got = {"in": hashlib.sha256(), "out": hashlib.sha256()}
count = {"in": 0, "out": 0}

def feed(conn, name, key):
    if conn.state in (State.ESTABLISHED, State.CLOSE_WAIT) and sent[key] < SIZE:
        sent[key] += conn.send(memoryview(data[name])[sent[key]:sent[key] + 262144])
        if sent[key] == SIZE:
            conn.close()

def app(now):
    global accepted
    if accepted is None:
        accepted = listener.accept()
    if accepted is not None:
        chunk = accepted.receive()
        got["in"].update(chunk)
        count["in"] += len(chunk)
        if accepted.peer_closed and not accepted.readable_bytes:
            feed(accepted, "b", "b")  # answer only once the kernel finished sending
    feed(ours_out, "c", "c")
    chunk = ours_out.receive()
    got["out"].update(chunk)
    count["out"] += len(chunk)

def done():
    finished = all(not t.is_alive() for t in threads)
    ours = ours_out.peer_closed and accepted is not None
    return finished and ours and accepted.state is State.CLOSED

pump(app, done)
for t in threads:
    t.join(timeout=5)
print(json.dumps({
    "elapsed_s": time.monotonic() - start,
    "digest": digest,
    "we_read_from_kernel_client": [got["in"].hexdigest(), count["in"]],
    "we_read_from_kernel_server": [got["out"].hexdigest(), count["out"]],
    "kernel_read_from_us": results.get("kernel_read_from_us"),
    "kernel_server_read": results.get("kernel_server_read"),
    "accepted_state": accepted.state.value if accepted else None,
    "ours_out_state": ours_out.state.value,
    "counters": dict(stack.counters),
    "retransmissions": ours_out.retransmissions + (accepted.retransmissions if accepted else 0),
}))
"""

_SHORT = r"""
COUNT = SIZE
answers = {"right": 0, "wrong": []}

def kernel_client():
    for index in range(COUNT):
        with socket.create_connection(("100.64.0.2", 8080), timeout=LIMIT_S) as s:
            s.sendall(b"request %d" % index)
            s.shutdown(socket.SHUT_WR)  # half close: our answer comes after it
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        if answer == b"answer %d" % index:
            answers["right"] += 1
        else:
            answers["wrong"].append(index)

thread = threading.Thread(target=kernel_client)
thread.start()
open_connections = []
served = 0

def app(now):
    global served
    while (connection := listener.accept()) is not None:
        open_connections.append([connection, b""])
    for entry in open_connections:
        connection = entry[0]
        entry[1] += connection.receive()
        if connection.peer_closed and connection.state is State.CLOSE_WAIT:
            connection.send(b"answer" + entry[1][len(b"request"):])
            connection.close()
            served += 1
    open_connections[:] = [e for e in open_connections if e[0].state is not State.CLOSED]

pump(app, lambda: not thread.is_alive() and not open_connections)
thread.join(timeout=5)
print(json.dumps({
    "elapsed_s": time.monotonic() - start,
    "right": answers["right"],
    "wrong": answers["wrong"][:10],
    "served": served,
    "left": stack.connection_count,
    "counters": dict(stack.counters),
}))
"""


def _run(lab_namespace: Namespace, body: str, size: int) -> dict[str, Any]:
    """Run the shared setup and `body` in the namespace; the JSON it prints last."""
    done = subprocess.run(
        lab_namespace.command(
            sys.executable, "-c", _SETUP + body, str(size), str(CHILD_TIMEOUT_S - 30)
        ),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture
def lab_namespace() -> Iterator[Namespace]:
    with namespace(uuid.uuid4().hex[:8], "netstack") as created:
        yield created


def test_kernel_tcp_and_our_stack_move_megabytes_both_ways(lab_namespace: Namespace) -> None:
    report = _run(lab_namespace, _BULK, SIZE_BYTES)
    digest = report["digest"]
    assert report["we_read_from_kernel_client"] == [digest["a"], SIZE_BYTES], report
    assert report["kernel_read_from_us"] == [digest["b"], SIZE_BYTES], report
    assert report["kernel_server_read"] == [digest["c"], SIZE_BYTES], report
    assert report["we_read_from_kernel_server"] == [digest["d"], SIZE_BYTES], report
    assert report["accepted_state"] == "closed", report
    assert report["ours_out_state"] in ("time-wait", "closed"), report


def test_a_thousand_short_half_closed_connections_from_the_kernel(
    lab_namespace: Namespace,
) -> None:
    report = _run(lab_namespace, _SHORT, SHORT_CONNECTIONS)
    assert report["right"] == SHORT_CONNECTIONS, report
    assert report["served"] == SHORT_CONNECTIONS, report
    assert report["left"] == 0, report  # the kernel closed first: no TIME-WAIT here
