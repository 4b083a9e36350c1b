"""Issue 25 in the NAT lab: beta runs `pilotif up --userspace` as uid 65534 with no
capabilities (no TUN, no root) and alpha is an ordinary TUN node. They register, trust
and go direct as two TUN nodes do; unmodified programs on beta reach alpha through the
SOCKS5 server (`curl --socks5-hostname`), the HTTP proxy (`curl -x`) and a --forward
port; alpha reaches a local server of beta's through --expose and pings beta; beta's
CLI works against it (connect, send, inbox, send-file, bench, listen, events, ping,
peers, status, the MCP server), all as uid 65534."""

import asyncio
import contextlib
import json
import os
import select
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from pilotif_lab.nat import Agent, NatKind, NatLab, nat_lab, poll_until, trust
from pilotif_lab.netns import LabError
from pilotif_lab.pilotif_node import pilotif_executable
from pilotif_lab.unprivileged import NOBODY_UID, as_nobody
from test_pmtu_lab import black_hole, wait_for_found_mtu

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

PATH_TIMEOUT_S = 30.0
SOCKS5 = "127.0.0.1:1080"
HTTP_PROXY = "127.0.0.1:3128"
FORWARD_PORT = 9001
WEB_PORT = 8080
BETA_LOCAL_PORT = 8081
PAGE = "hello from the overlay\n"
LINE_PORT = 1000
LISTEN_PORT = 1500
_LINE_SERVER = """
import socketserver, sys
class Lines(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b"got " + line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), Lines).serve_forever()
"""
_WEB_SERVER = """
import http.server, sys
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[3].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Page).serve_forever()
"""


@contextlib.contextmanager
def nobody_state_dir() -> Iterator[Path]:
    """A state directory uid 65534 owns, under directories it may enter."""
    top = Path(tempfile.mkdtemp(prefix="pflab-us-"))
    try:
        top.chmod(0o755)
        state = top / "beta"
        state.mkdir(mode=0o700)
        os.chown(state, NOBODY_UID, NOBODY_UID)
        yield state
    finally:
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def userspace_pair(
    tmp_path: Path,
    *extra: str,
    nats: tuple[NatKind, NatKind] = (NatKind.CONE, NatKind.CONE),
    path: str = "direct",
    prepare: Callable[[NatLab], None] | None = None,
) -> Iterator[NatLab]:
    """alpha (TUN) and beta (userspace, nobody, `extra` options) trusting each other, on
    `path` (direct behind cone NATs; relay behind two symmetric ones); `prepare` shapes
    the lab before either node starts."""
    with (
        nobody_state_dir() as state,
        nat_lab(nats, (("alpha", 0), ("beta", 1)), tmp_path) as lab,
    ):
        if prepare is not None:
            prepare(lab)
        alpha, beta = lab["alpha"], lab["beta"]
        beta.state_dir = state
        beta.unprivileged = True
        alpha.up()
        beta.up(extra_args=("--userspace", *extra))
        trust(beta, alpha)
        beta.wait_for_path("alpha", (path,), PATH_TIMEOUT_S)
        alpha.wait_for_path("beta", (path,), PATH_TIMEOUT_S)
        yield lab


def curl(lab: NatLab, agent: str, *args: str) -> str:
    result = lab[agent].namespace.run(
        "curl", "--silent", "--show-error", "--max-time", "20", *args, check=False
    )
    if result.returncode != 0:
        raise LabError(f"curl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def socks5_fetch(lab: NatLab, url: str, what: str = "a SOCKS5 fetch from beta") -> str:
    """What beta fetches from `url` through its SOCKS5 server (the node resolves the
    name), once a fetch works (LabError after PATH_TIMEOUT_S)."""
    return poll_until(
        lambda: _try(lambda: curl(lab, "beta", "--socks5-hostname", SOCKS5, url)),
        PATH_TIMEOUT_S,
        what,
    )


def test_a_userspace_node_as_nobody_reaches_and_is_reached_by_a_tun_node(
    tmp_path: Path,
) -> None:
    options = (
        "--http-proxy",
        HTTP_PROXY,
        "--forward",
        f"{FORWARD_PORT}:alpha:{WEB_PORT}",
        "--expose",
        f"{WEB_PORT}={BETA_LOCAL_PORT}",
    )
    with userspace_pair(tmp_path, *options) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha_ip = alpha.status()["node"]["ipv4"]
        beta_status = beta.status()
        beta_ip = beta_status["node"]["ipv4"]
        assert beta_status["userspace"]["listening"]["socks5"] == SOCKS5
        python = shutil.which("python3") or "python3"
        alpha.namespace.spawn(python, "-c", _WEB_SERVER, alpha_ip, str(WEB_PORT), PAGE)
        beta.namespace.spawn(
            python, "-c", _WEB_SERVER, "127.0.0.1", str(BETA_LOCAL_PORT), "beta's page\n"
        )

        url = f"http://alpha.pilot:{WEB_PORT}/"
        fetched = socks5_fetch(lab, url)
        assert fetched == PAGE
        assert (
            curl(lab, "beta", "--socks5-hostname", SOCKS5, f"http://{alpha_ip}:{WEB_PORT}/") == PAGE
        )
        assert curl(lab, "beta", "-x", f"http://{HTTP_PROXY}", url) == PAGE
        assert curl(lab, "beta", f"http://127.0.0.1:{FORWARD_PORT}/") == PAGE
        assert curl(lab, "alpha", f"http://{beta_ip}:{WEB_PORT}/") == "beta's page\n"

        # A name that is no trusted peer: SOCKS5 says host unreachable, the proxy 502.
        with pytest.raises(LabError, match=r"SOCKS5 connection to nobody.pilot. \(4\)"):
            curl(lab, "beta", "--socks5-hostname", SOCKS5, "http://nobody.pilot/")
        with pytest.raises(LabError, match="502"):
            curl(lab, "beta", "--fail", "-x", f"http://{HTTP_PROXY}", "http://nobody.pilot/")

        # ICMP echo both ways.
        replies = alpha.json("ping", "beta", "--count", "2")["replies"]
        assert all(reply["rtt_ms"] is not None for reply in replies)
        replies = beta.json("ping", "alpha", "--count", "2")["replies"]
        assert all(reply["rtt_ms"] is not None for reply in replies)


def test_a_userspace_node_behind_a_symmetric_nat_is_relayed_like_any_node(
    tmp_path: Path,
) -> None:
    symmetric = (NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    with userspace_pair(tmp_path, nats=symmetric, path="relay") as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha_ip = alpha.status()["node"]["ipv4"]
        python = shutil.which("python3") or "python3"
        alpha.namespace.spawn(python, "-c", _WEB_SERVER, alpha_ip, str(WEB_PORT), PAGE)
        url = f"http://alpha.pilot:{WEB_PORT}/"
        fetched = socks5_fetch(lab, url, "a SOCKS5 fetch from beta over the relay")
        assert fetched == PAGE
        assert beta.peer("alpha")["path"] == "relay"  # type: ignore[index]
        replies = alpha.json("ping", "beta", "--count", "2")["replies"]
        assert any(reply["rtt_ms"] is not None for reply in replies)


def test_the_cli_works_against_a_userspace_node(tmp_path: Path) -> None:
    with userspace_pair(tmp_path) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha_ip = alpha.status()["node"]["ipv4"]
        python = shutil.which("python3") or "python3"
        alpha.namespace.spawn(python, "-c", _LINE_SERVER, alpha_ip, str(LINE_PORT))
        poll_until(
            lambda: (
                alpha.namespace.run(
                    "bash", "-c", f"echo >/dev/tcp/{alpha_ip}/{LINE_PORT}", check=False
                ).returncode
                == 0
                or None
            ),
            PATH_TIMEOUT_S,
            "alpha's line server",
        )

        # The seed's line, from the userspace node.
        line = '{"action":"start_stream", "parameters":"real_time"}'
        answer = beta.pilotif("connect", "alpha", str(LINE_PORT), input_text=line + "\n").stdout
        assert answer == "got " + line + "\n"

        assert beta.json("send", "alpha", "hello alpha") == {"peer": "alpha", "id": 1}
        assert [m["text"] for m in alpha.json("inbox")] == ["hello alpha"]
        assert alpha.json("send", "beta", "hello beta")["peer"] == "beta"
        assert [(m["sender"], m["text"]) for m in beta.json("inbox")] == [("alpha", "hello beta")]

        sent = beta.state_dir.parent / "report.txt"
        sent.write_bytes(os.urandom(300_000))
        sent.chmod(0o644)
        answer = beta.json("send-file", "alpha", str(sent))
        assert answer["size"] == 300_000
        assert beta.json("bench", "alpha", "1")["megabytes"] == 1

        peers = beta.peers()
        assert [(p["hostname"], p["path"]) for p in peers] == [("alpha", "direct")]
        status = beta.status()
        assert status["userspace"]["connections"] >= 0
        assert status["node"]["hostname"] == "beta"

        # `listen`: the daemon serves the port and passes each line on.
        listener = beta.namespace.spawn(
            *as_nobody(
                pilotif_executable(),
                "listen",
                str(LISTEN_PORT),
                "--count",
                "1",
                "--state-dir",
                str(beta.state_dir),
            ),
            pipes=True,
        )
        beta_ip = beta.status()["node"]["ipv4"]
        poll_until(
            lambda: (
                alpha.namespace.run(
                    "bash",
                    "-c",
                    f"echo hello listen >/dev/tcp/{beta_ip}/{LISTEN_PORT}",
                    check=False,
                ).returncode
                == 0
                or None
            ),
            PATH_TIMEOUT_S,
            "beta listening through its daemon",
        )
        out, _ = listener.communicate(timeout=PATH_TIMEOUT_S)
        assert json.loads(out) == {"peer": alpha_ip, "port": LISTEN_PORT, "data": "hello listen"}

        # `events`: a message from alpha shows up.
        events = beta.namespace.spawn(
            *as_nobody(
                pilotif_executable(), "events", "--json", "--state-dir", str(beta.state_dir)
            ),
            pipes=True,
        )
        assert events.stdout is not None

        def event_line() -> bytes | None:
            alpha.pilotif("send", "beta", "an event")
            ready, _, _ = select.select([events.stdout], [], [], 1.0)
            return events.stdout.readline() if ready else None  # type: ignore[union-attr]

        event = json.loads(poll_until(event_line, PATH_TIMEOUT_S, "beta's events"))
        assert event["event"] == "message_received" and event["peer"] == "alpha"
        beta.namespace.stop(events)

        # The MCP server of the userspace node, as nobody.
        seen = asyncio.run(_mcp_checks(beta))
        assert seen["status"]["node"]["hostname"] == "beta"
        assert seen["request"]["untrusted_reply"] == "got ping\n"

        # Not a peer: one line, the right code.
        with pytest.raises(LabError, match="not a trusted peer"):
            beta.pilotif("connect", "nobody", "1000")
        with pytest.raises(LabError, match=r"nothing listens"):
            beta.pilotif("connect", "alpha", "1999", input_text="x\n")


_DIGEST_SERVER = """
import hashlib, socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    conn, _ = server.accept()
    with conn:
        digest = hashlib.sha256()
        while chunk := conn.recv(65536):
            digest.update(chunk)
        conn.sendall(digest.hexdigest().encode())
"""
_DIGEST_CLIENT = """
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[2]))
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60) as conn:
    conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    answer = conn.recv(64).decode()
print(answer == hashlib.sha256(data).hexdigest())
"""
PMTU_TRANSFER_BYTES = 5 * 1024 * 1024


def test_a_userspace_node_fits_its_segments_to_a_small_path(tmp_path: Path) -> None:
    """Beta's path carries at most 1280-byte packets and drops the rest without a word:
    once the nodes found the path MTU, the data path tells beta's stack by ICMP and its
    segments fit; 5 MB from beta through a --forward port arrive intact."""
    forward = ("--forward", f"{FORWARD_PORT}:alpha:{WEB_PORT}")
    # The hole is there before the nodes start: made once the pair is direct, it raced
    # the search of the direct path (done at the full MTU first on a slow machine).
    with userspace_pair(tmp_path, *forward, prepare=lambda lab: black_hole(lab, 1)) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        wait_for_found_mtu(lab)
        alpha_ip = alpha.status()["node"]["ipv4"]
        python = shutil.which("python3") or "python3"
        alpha.namespace.spawn(python, "-c", _DIGEST_SERVER, alpha_ip, str(WEB_PORT))
        sent = poll_until(
            lambda: (
                beta.namespace.run(
                    python,
                    "-c",
                    _DIGEST_CLIENT,
                    str(FORWARD_PORT),
                    str(PMTU_TRANSFER_BYTES),
                    check=False,
                    timeout_s=120,
                ).stdout.strip()
                or None
            ),
            PATH_TIMEOUT_S,
            "a transfer from beta",
        )
        assert sent == "True"
        assert beta.status()["userspace"]["stack"]["mss_lowered"] >= 1


async def _mcp_checks(agent: Agent) -> dict[str, Any]:
    command = as_nobody(sys.executable, "-m", "pilotif", "mcp", "--state-dir", str(agent.state_dir))
    server = StdioServerParameters(
        command="ip", args=["netns", "exec", agent.namespace.name, *command], env=dict(os.environ)
    )
    seen: dict[str, Any] = {}
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        seen["status"] = (await session.call_tool("status", {})).structured_content
        request = {"peer": "alpha", "port": LINE_PORT, "data": "ping\n", "timeout_s": 3}
        seen["request"] = (await session.call_tool("request", request)).structured_content
    return seen


def _try(fetch: Callable[[], str]) -> str | None:
    try:
        return fetch()
    except LabError:
        return None
