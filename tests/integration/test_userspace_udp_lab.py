"""UDP through a userspace node in the NAT lab: beta runs `pilotif up --userspace` as
uid 65534 with no capabilities, alpha is an ordinary TUN node running a UDP echo server
on its overlay address. A SOCKS5 client on beta, written with plain sockets, asks beta's
SOCKS5 server for UDP ASSOCIATE and sends datagrams to `alpha.pilot` and to alpha's
numeric address; they come back intact with the SOCKS5 UDP header naming alpha. A
datagram to a port nobody serves on alpha gets nothing back, and the association ends
when the client's TCP connection does. Inbound: beta's `--expose-udp` port leads to a
UDP echo server on beta's loopback, and alpha's datagrams to it come back."""

import json
import os
import shutil
from pathlib import Path

import pytest
from pilotif_lab.nat import NatLab, poll_until
from test_userspace_lab import PATH_TIMEOUT_S, SOCKS5, userspace_pair

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

ECHO_PORT = 7007
SILENT_PORT = 7008
CLIENT_TIMEOUT_S = 120.0
EXPOSED_PORT = 7009
BETA_LOCAL_PORT = 7010
_UDP_ASK = """
import os, socket, sys
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(1.0)
payload = os.urandom(int(sys.argv[3]))
udp.sendto(payload, (sys.argv[1], int(sys.argv[2])))
try:
    answer, sender = udp.recvfrom(65535)
except socket.timeout:
    print("silent")
else:
    print("intact" if answer == payload and sender[0] == sys.argv[1] else "mangled")
"""
_UDP_ECHO = """
import socket, sys
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, sender = server.recvfrom(65535)
    server.sendto(data, sender)
"""
_SOCKS5_UDP_CLIENT = """
import ipaddress, json, os, socket, struct, sys
proxy_host, proxy_port = sys.argv[1].rsplit(":", 1)
targets = [(name, int(port)) for name, port in (t.split(":") for t in sys.argv[2].split(","))]
control = socket.create_connection((proxy_host, int(proxy_port)), timeout=10)
control.sendall(b"\\x05\\x01\\x00")
assert control.recv(2) == b"\\x05\\x00"
control.sendall(b"\\x05\\x03\\x00\\x01" + bytes(6))
reply = control.recv(10)
assert reply[:4] == b"\\x05\\x00\\x00\\x01", reply
relay = (str(ipaddress.IPv4Address(reply[4:8])), struct.unpack("!H", reply[8:10])[0])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(1.0)
results = []
for name, port in targets:
    try:
        address = b"\\x01" + ipaddress.IPv4Address(name).packed
    except ValueError:
        address = b"\\x03" + bytes([len(name)]) + name.encode()
    header = b"\\x00\\x00\\x00" + address + struct.pack("!H", port)
    for size in (1, 512, 1200):
        payload = os.urandom(size)
        answer = None
        for _ in range(3):
            udp.sendto(header + payload, relay)
            try:
                answer = udp.recv(65535)
                break
            except socket.timeout:
                continue
        if answer is None:
            results.append({"target": name, "size": size, "answer": None})
            continue
        peer = str(ipaddress.IPv4Address(answer[4:8]))
        (peer_port,) = struct.unpack("!H", answer[8:10])
        results.append({"target": name, "size": size, "head": answer[:4].hex(),
                        "peer": [peer, peer_port], "intact": answer[10:] == payload})
control.close()
print(json.dumps({"relay": relay, "results": results}))
"""


def _associate(lab: NatLab, *targets: str) -> dict[str, object]:
    """What the SOCKS5 UDP client on beta saw for `targets` (NAME:PORT each)."""
    python = shutil.which("python3") or "python3"
    result = lab["beta"].namespace.run(
        python, "-c", _SOCKS5_UDP_CLIENT, SOCKS5, ",".join(targets), timeout_s=CLIENT_TIMEOUT_S
    )
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_socks5_udp_associate_reaches_a_tun_node_and_back(tmp_path: Path) -> None:
    exposed = ("--expose-udp", f"{EXPOSED_PORT}={BETA_LOCAL_PORT}")
    with userspace_pair(tmp_path, *exposed) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha_ip = alpha.status()["node"]["ipv4"]
        python = shutil.which("python3") or "python3"
        alpha.namespace.spawn(python, "-c", _UDP_ECHO, alpha_ip, str(ECHO_PORT))

        def echoed() -> dict[str, object] | None:
            seen = _associate(lab, f"alpha.pilot:{ECHO_PORT}")
            results = seen["results"]
            assert isinstance(results, list)
            return seen if all(r.get("intact") for r in results) else None

        seen = poll_until(echoed, PATH_TIMEOUT_S, "UDP echoed through beta's SOCKS5")
        assert seen["relay"][0] == "127.0.0.1"  # type: ignore[index]

        seen = _associate(lab, f"{alpha_ip}:{ECHO_PORT}", f"alpha.pilot:{SILENT_PORT}")
        results = seen["results"]
        assert isinstance(results, list)
        by_name = [r for r in results if r["target"] == alpha_ip]
        assert [r["size"] for r in by_name] == [1, 512, 1200]
        for result in by_name:
            assert result["intact"] and result["head"] == "00000001"
            assert result["peer"] == [alpha_ip, ECHO_PORT]
        silent = [r for r in results if r["target"] == "alpha.pilot"]
        assert silent and all(r["answer"] is None for r in silent)

        counters = beta.status()["userspace"]["counters"]["socks5"]
        assert counters["associated"] >= 2
        assert counters["udp_sent"] >= 6 and counters["udp_received"] >= 6

        # The associations ended with their TCP connections: only the exposed port is open.
        poll_until(
            lambda: beta.status()["userspace"]["udp_sockets"] == 1 or None,
            PATH_TIMEOUT_S,
            "beta's UDP ports closed",
        )

        # Inbound: alpha reaches beta's local UDP server through --expose-udp.
        beta_ip = beta.status()["node"]["ipv4"]
        beta.namespace.spawn(python, "-c", _UDP_ECHO, "127.0.0.1", str(BETA_LOCAL_PORT))

        def asked(size: int) -> str | None:
            result = alpha.namespace.run(
                python, "-c", _UDP_ASK, beta_ip, str(EXPOSED_PORT), str(size)
            )
            answer = result.stdout.strip()
            return None if answer == "silent" else answer

        assert poll_until(lambda: asked(1), PATH_TIMEOUT_S, "beta's exposed UDP port") == ("intact")
        assert asked(1200) == "intact"
        exposer = beta.status()["userspace"]["counters"][f"expose-udp {EXPOSED_PORT}"]
        assert exposer["forwarded"] >= 2 and exposer["answered"] >= 2
