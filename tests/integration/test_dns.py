"""`HOSTNAME.pilot` for unmodified programs, as root, in a network namespace each test creates.

The namespace gets its own resolv.conf in /etc/netns/NS/ before anything runs in it
(`ip netns exec` bind-mounts it over /etc/resolv.conf), so the machine's real
/etc/resolv.conf is never touched. In the namespace a child runs a fake upstream nameserver
(on `upstream0`, 198.18.53.1), the responder (on `pilot0`, 100.64.0.1; veth peers) and the
ResolverConfig; the test then resolves names with `getent`, as a user would.
"""

import contextlib
import json
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

NETNS_ETC = Path("/etc/netns")
REAL_RESOLV_CONF = Path("/etc/resolv.conf")
RESPONDER = "100.64.0.1"
UPSTREAM = "198.18.53.1"
SILENT_UPSTREAM = "198.18.53.2"
BETA_V4 = "100.64.0.2"
BETA_V6 = "fd50:696c:6f74::2"
EXAMPLE_V4 = "198.18.99.7"
ORIGINAL = f"# the namespace's own resolv.conf\nnameserver {UPSTREAM}\noptions timeout:3\n"
STEP_TIMEOUT_S = 20

_UPSTREAM = f"""
    import asyncio, json, os, sys, time
    from ipaddress import IPv4Address, IPv6Address
    from pathlib import Path

    import dns.message, dns.name, dns.rcode, dns.rdatatype, dns.rrset
    from pilotif.dns import DnsResponder, NameTable, ResolverConfig, serve_dns

    class Upstream(asyncio.DatagramProtocol):
        \"\"\"The fake upstream nameserver: example.test has an A record, nothing else exists.\"\"\"

        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            if question.name == dns.name.from_text("example.test"):
                if question.rdtype == dns.rdatatype.A:
                    response.answer.append(
                        dns.rrset.from_text(question.name, 60, "IN", "A", {EXAMPLE_V4!r})
                    )
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.transport.sendto(response.to_wire(), addr)

    def beta_table():
        table = NameTable()
        table.update({{"beta": (IPv4Address({BETA_V4!r}), IPv6Address({BETA_V6!r}))}})
        return table
"""

_NODE = f"""
    expected_inode, state_dir = int(sys.argv[1]), Path(sys.argv[2])

    async def main():
        if os.stat("/etc/resolv.conf").st_ino != expected_inode:
            sys.exit("/etc/resolv.conf is not the namespace's own: refusing to edit it")
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Upstream, local_addr=({UPSTREAM!r}, 53))
        resolver = ResolverConfig(state_dir)
        upstreams = resolver.original_nameservers()
        server = await serve_dns(DnsResponder(beta_table()), [({RESPONDER!r}, 53)], upstreams)
        resolver.apply("pilot0", {RESPONDER!r})
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        resolver.restore()
        server.close()
        print(json.dumps({{
            "upstreams": server.upstreams,
            "forwarded": server.forwarded,
            "counters": server.responder.counters,
        }}))

    asyncio.run(main())
"""

_FORWARDING = f"""
    class Client(asyncio.DatagramProtocol):
        def __init__(self, reply):
            self.reply = reply

        def datagram_received(self, data, addr):
            self.reply.set_result(data)

    async def ask(wire, port, timeout_s):
        \"\"\"The reply to `wire` sent to 127.0.0.1:port and the seconds it took, or None.\"\"\"
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Client(reply), remote_addr=("127.0.0.1", port)
        )
        started = time.monotonic()
        transport.sendto(wire)
        try:
            data = await asyncio.wait_for(reply, timeout_s)
        except TimeoutError:
            return None
        finally:
            transport.close()
        message = dns.message.from_wire(data)
        return {{
            "seconds": time.monotonic() - started,
            "rcode": dns.rcode.to_text(message.rcode()),
            "answer": [rdata.to_text() for rrset in message.answer for rdata in rrset],
        }}

    async def main():
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Upstream, local_addr=({UPSTREAM!r}, 53))
        fallback = await serve_dns(
            DnsResponder(beta_table()), [("127.0.0.1", 5300)], [{SILENT_UPSTREAM!r}, {UPSTREAM!r}]
        )
        silent = await serve_dns(
            DnsResponder(NameTable()), [("127.0.0.1", 5301)], [{SILENT_UPSTREAM!r}]
        )
        example = dns.message.make_query("example.test", "A").to_wire()
        results = await asyncio.gather(
            ask(example, 5300, 5),
            ask(example, 5301, 5),
            ask(dns.message.make_query("beta.pilot", "A").to_wire(), 5300, 1),
            ask(b"garbage", 5300, 0.5),
            ask(example + bytes(5000), 5300, 0.5),
        )
        keys = ["fallback", "silent", "pilot", "garbage", "oversize"]
        print(json.dumps({{
            **dict(zip(keys, results)),
            "fallback_counters": fallback.responder.counters,
            "silent_counters": silent.responder.counters,
        }}))

    asyncio.run(main())
"""


class Namespace:
    """A fresh namespace with `lo` and a veth pair inside it: `pilot0` (the overlay) and
    `upstream0` (the fake upstream's address)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.resolv_conf = NETNS_ETC / name / "resolv.conf"

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, timeout=STEP_TIMEOUT_S)

    def exec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )

    def getent(self, database: str, name: str) -> list[str]:
        """The addresses `getent` gives for `name` (first column), [] when it finds none."""
        done = self.exec("getent", database, name)
        return sorted({line.split()[0] for line in done.stdout.splitlines()})


@pytest.fixture
def netns() -> Iterator[Namespace]:
    name = f"pilotif-dns-{uuid.uuid4().hex[:8]}"
    namespace = Namespace(name)
    made_netns_etc = not NETNS_ETC.exists()
    namespace.resolv_conf.parent.mkdir(parents=True)
    try:
        namespace.resolv_conf.write_text(ORIGINAL)
        subprocess.run(["ip", "netns", "add", name], check=True)
        namespace.ip("link", "set", "lo", "up")
        namespace.ip("link", "add", "pilot0", "type", "veth", "peer", "name", "upstream0")
        namespace.ip("addr", "add", f"{RESPONDER}/32", "dev", "pilot0")
        namespace.ip("addr", "add", "fd50:696c:6f74::1/128", "dev", "pilot0", "nodad")
        namespace.ip("link", "set", "pilot0", "up")
        namespace.ip("addr", "add", f"{UPSTREAM}/32", "dev", "upstream0")
        namespace.ip("link", "set", "upstream0", "up")
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(namespace.resolv_conf.parent, ignore_errors=True)
        if made_netns_etc:
            with contextlib.suppress(OSError):  # another test's namespace uses it now
                NETNS_ETC.rmdir()


@pytest.fixture
def child(netns: Namespace, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """The responder, the fake upstream and the ResolverConfig, running in the namespace."""
    process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns.name,
            sys.executable,
            "-c",
            _program(_UPSTREAM, _NODE),
            str(netns.resolv_conf.stat().st_ino),
            str(tmp_path / "state"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            _, stderr = process.communicate(timeout=STEP_TIMEOUT_S)
            pytest.fail(f"the responder did not start: {line!r} {stderr}")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _program(*pieces: str) -> str:
    return "\n".join(textwrap.dedent(piece) for piece in pieces)


def finish(process: subprocess.Popen[str]) -> Any:
    """Let the child restore resolv.conf and stop; its report (JSON)."""
    stdout, stderr = process.communicate("go\n", timeout=STEP_TIMEOUT_S)
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def test_pilot_names_resolve_other_names_are_forwarded_and_resolv_conf_comes_back(
    netns: Namespace, child: subprocess.Popen[str]
) -> None:
    real_before = REAL_RESOLV_CONF.read_bytes()
    managed = netns.resolv_conf.read_text().splitlines()
    assert managed[0].startswith("# pilotif: managed")
    assert managed[1] == f"nameserver {RESPONDER}"

    assert netns.getent("ahostsv4", "beta.pilot") == [BETA_V4]
    assert netns.getent("ahostsv6", "BETA.pilot") == [BETA_V6]
    assert netns.getent("hosts", "beta.pilot")[0] in {BETA_V4, BETA_V6}
    assert netns.getent("hosts", "nobody.pilot") == []
    assert netns.getent("ahostsv4", "example.test") == [EXAMPLE_V4]

    report = finish(child)
    assert report["upstreams"] == [UPSTREAM]
    assert report["forwarded"] >= 1  # example.test came through the responder
    assert report["counters"] == {}
    assert netns.resolv_conf.read_text() == ORIGINAL
    assert REAL_RESOLV_CONF.read_bytes() == real_before


def test_forwarding_falls_through_silent_upstreams_and_drops_garbage(netns: Namespace) -> None:
    netns.ip("route", "add", f"{SILENT_UPSTREAM}/32", "dev", "upstream0")  # nobody answers
    done = netns.exec(sys.executable, "-c", _program(_UPSTREAM, _FORWARDING))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])

    fallback = result["fallback"]
    assert fallback["answer"] == [EXAMPLE_V4]
    assert 2 <= fallback["seconds"] < 4  # the silent upstream had its 2 s
    assert result["silent"]["rcode"] == "SERVFAIL"
    assert result["pilot"]["answer"] == [BETA_V4]
    assert result["pilot"]["seconds"] < 1
    assert result["garbage"] is None
    assert result["oversize"] is None
    assert result["fallback_counters"] == {"malformed": 1, "oversize": 1}
    assert result["silent_counters"] == {"upstream_failed": 1}
