"""The TUN device and its link, as root, inside a network namespace each test creates.

Code that must hold the TUN open runs in a child `python3` started with
`ip netns exec`; the test inspects the namespace with `ip -n NS -j ...` and `ping`,
as a user would.
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

TUN = "pilot0"
STEP_TIMEOUT_S = 20


class Namespace:
    """A fresh network namespace; `run` executes Python in it and returns its JSON output."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.children: list[subprocess.Popen[str]] = []

    def ip_json(self, *args: str) -> Any:
        output = subprocess.run(
            ["ip", "-n", self.name, "-j", *args], check=True, capture_output=True, text=True
        ).stdout
        return json.loads(output) if output.strip() else []

    def sh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )

    def run(self, *code: str) -> Any:
        """Run the `code` pieces (the last prints one JSON line) in the namespace."""
        done = self.sh(sys.executable, "-c", _program(code))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def start(self, *code: str) -> "Child":
        """Start the `code` pieces in the namespace; they call ready() to pause for `finish`."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", _program(code)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.children.append(process)
        return Child(process)


class Child:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            _, stderr = self.process.communicate(timeout=STEP_TIMEOUT_S)
            pytest.fail(f"child did not get ready: {line!r} {stderr}")

    def finish(self) -> Any:
        """Let the child go on and return the JSON it prints last."""
        stdout, stderr = self.process.communicate("go\n", timeout=STEP_TIMEOUT_S)
        assert self.process.returncode == 0, stderr
        return json.loads(stdout.strip().splitlines()[-1])


_PRELUDE = """
    import json, os, select, socket, struct, sys, time
    from ipaddress import ip_interface, ip_network
    from pilotif.tun import (
        LinkError, TunDevice, TunError, configure_link, delete_link, link_exists
    )

    def ready():
        print("ready", flush=True)
        sys.stdin.readline()
    """


def _program(pieces: tuple[str, ...]) -> str:
    return "\n".join(textwrap.dedent(piece) for piece in (_PRELUDE, *pieces))


@pytest.fixture
def netns() -> Iterator[Namespace]:
    name = f"pilotif-tun-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    namespace = Namespace(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield namespace
    finally:
        for child in namespace.children:
            if child.poll() is None:
                child.kill()
            child.communicate()
        subprocess.run(["ip", "netns", "del", name], check=False)


_OPEN_AND_CONFIGURE = f"""
    tun = TunDevice.open({TUN!r})
    addresses = [ip_interface("100.64.0.1/24"), ip_interface("fd7a:115c:a1e0::1/64")]
    routes = [ip_network("100.64.0.0/24"), ip_network("100.96.0.0/16"), ip_network("fd7b::/64")]
    configure_link(tun.name, addresses, 1420, routes)
    configure_link(tun.name, addresses, 1420, routes)  # a rerun changes nothing
"""


def test_configured_link_has_addresses_mtu_routes_and_is_up(netns: Namespace) -> None:
    child = netns.start(_OPEN_AND_CONFIGURE, "ready()\nprint(json.dumps(tun.name))")
    child.wait_ready()

    (link,) = netns.ip_json("addr", "show", "dev", TUN)
    assert link["mtu"] == 1420
    assert "UP" in link["flags"]
    global_addresses = {
        (a["local"], a["prefixlen"]): a for a in link["addr_info"] if a["scope"] == "global"
    }
    assert set(global_addresses) == {("100.64.0.1", 24), ("fd7a:115c:a1e0::1", 64)}
    assert not global_addresses["fd7a:115c:a1e0::1", 64].get("tentative")

    v4_routes = {r["dst"] for r in netns.ip_json("route", "show", "dev", TUN)}
    v6_routes = {r["dst"] for r in netns.ip_json("-6", "route", "show", "dev", TUN)}
    assert v4_routes == {"100.64.0.0/24", "100.96.0.0/16"}
    assert {"fd7a:115c:a1e0::/64", "fd7b::/64"} <= v6_routes
    assert child.finish() == TUN


def test_ping_to_an_overlay_peer_is_read_from_the_tun(netns: Namespace) -> None:
    child = netns.start(
        _OPEN_AND_CONFIGURE,
        """
    ready()
    buffer = bytearray(2048)
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        select.select([tun], [], [], 0.2)
        try:
            length = tun.read_into(buffer)
        except BlockingIOError:
            continue
        seen.append(buffer[:length].hex())
        if buffer[0] >> 4 == 4:
            break
    print(json.dumps(seen))
    """,
    )
    child.wait_ready()
    ping = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns.name,
            "ping",
            "-c",
            "3",
            "-i",
            "0.5",
            "-W",
            "1",
            "100.64.0.2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        packets = [bytes.fromhex(p) for p in child.finish()]
    finally:
        ping.kill()
        ping.wait()

    ipv4 = [p for p in packets if p[0] >> 4 == 4]
    assert ipv4, f"no IPv4 packet among {len(packets)} read from the TUN"
    packet = ipv4[0]
    header_length = (packet[0] & 0x0F) * 4
    assert packet[9] == 1  # ICMP
    assert packet[12:16] == bytes([100, 64, 0, 1])
    assert packet[16:20] == bytes([100, 64, 0, 2])
    assert packet[header_length] == 8  # echo request


def test_packet_written_to_the_tun_reaches_a_local_socket(netns: Namespace) -> None:
    received = netns.run(
        _OPEN_AND_CONFIGURE,
        """
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("100.64.0.1", 4000))
    listener.settimeout(5)
    payload = b"hello from the overlay"
    udp = struct.pack("!HHHH", 5000, 4000, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
        bytes([100, 64, 0, 2]), bytes([100, 64, 0, 1]),
    )
    words = sum(struct.unpack("!10H", header))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    header = header[:10] + struct.pack("!H", ~words & 0xFFFF) + header[12:]
    written = tun.write(memoryview(header + udp))
    data, source = listener.recvfrom(2048)
    print(json.dumps([written, data.decode(), list(source)]))
    """,
    )
    assert received == [
        20 + 8 + len("hello from the overlay"),
        "hello from the overlay",
        ["100.64.0.2", 5000],
    ]


def test_open_gives_a_nonblocking_close_on_exec_fd(netns: Namespace) -> None:
    result = netns.run(
        f"""
    with TunDevice.open({TUN!r}) as tun:
        state = [tun.name, tun.fileno() == tun.fd, os.get_blocking(tun.fd),
                 os.get_inheritable(tun.fd)]
        try:
            tun.read_into(bytearray(2048))
            state.append("read something")
        except BlockingIOError:
            state.append("would block")
    state.append(link_exists({TUN!r}))
    print(json.dumps(state))
    """
    )
    assert result == [TUN, True, False, False, "would block", False]


def test_vnet_hdr_and_multi_queue_flags_reach_the_kernel(netns: Namespace) -> None:
    child = netns.start(
        f"""
    first = TunDevice.open({TUN!r}, vnet_hdr=True, multi_queue=True)
    second = TunDevice.open({TUN!r}, vnet_hdr=True, multi_queue=True)
    ready()
    print(json.dumps([first.name, second.name]))
    """
    )
    child.wait_ready()
    (link,) = netns.ip_json("-d", "link", "show", "dev", TUN)
    info = link["linkinfo"]["info_data"]
    assert info["type"] == "tun"
    assert info["vnet_hdr"] is True
    assert info["multi_queue"] is True
    assert info["numqueues"] == 2
    assert child.finish() == [TUN, TUN]


def test_delete_link_removes_an_open_device(netns: Namespace) -> None:
    child = netns.start(f"tun = TunDevice.open({TUN!r})\nready()\nprint(json.dumps(None))\n")
    child.wait_ready()
    result = netns.run(
        f"print(json.dumps([link_exists({TUN!r}), delete_link({TUN!r}), "
        f"link_exists({TUN!r}), delete_link({TUN!r})]))"
    )
    assert result == [True, True, False, False]
    assert TUN not in {link["ifname"] for link in netns.ip_json("link", "show")}
    child.finish()


@pytest.mark.parametrize(
    "stale",
    [
        ("tuntap", "add", TUN, "mode", "tun", "multi_queue"),
        ("link", "add", TUN, "type", "veth", "peer", "name", "pilot0peer"),
    ],
    ids=["persistent-multiqueue-tun", "veth"],
)
def test_stale_device_blocks_open_until_delete_link(
    netns: Namespace, stale: tuple[str, ...]
) -> None:
    subprocess.run(["ip", "-n", netns.name, *stale], check=True)
    result = netns.run(
        f"""
    try:
        TunDevice.open({TUN!r})
        first = "opened"
    except TunError as exc:
        first = str(exc)
    removed = delete_link({TUN!r})
    with TunDevice.open({TUN!r}) as tun:
        opened = tun.name
    print(json.dumps([first, removed, opened, link_exists({TUN!r})]))
    """
    )
    first_error, removed, opened, exists_after_close = result
    assert f"ip link delete {TUN}" in first_error
    assert removed is True
    assert opened == TUN
    assert exists_after_close is False


def test_open_errors_say_what_to_do(netns: Namespace) -> None:
    result = netns.run(
        f"""
    messages = []
    for name in ["a-name-too-long-for-linux", "", "bad/name"]:
        try:
            TunDevice.open(name)
        except TunError as exc:
            messages.append(str(exc))
    held = TunDevice.open({TUN!r})
    try:
        TunDevice.open({TUN!r})
    except TunError as exc:
        messages.append(str(exc))
    print(json.dumps(messages))
    """
    )
    too_long, empty, slash, busy = result
    assert "too long" in too_long
    assert "15 bytes" in too_long
    assert "invalid TUN name ''" in empty
    assert "'/'" in slash
    assert "already open" in busy


def test_link_errors_are_readable(netns: Namespace) -> None:
    result = netns.run(
        f"""
    messages = []
    tun = TunDevice.open({TUN!r})
    v6 = [ip_interface("fd7a::1/64")]
    for name, addresses, mtu in [("nothere0", [], 1420), ({TUN!r}, [], 40), ({TUN!r}, v6, 1200)]:
        try:
            configure_link(name, addresses, mtu, [])
        except LinkError as exc:
            messages.append(str(exc))
    print(json.dumps(messages))
    """
    )
    missing, bad_mtu, small_for_v6 = result
    assert "no network device named nothere0" in missing
    assert f"cannot set MTU 40 on {TUN}" in bad_mtu
    assert "1280" in small_for_v6
