"""`pilotif send`, `inbox`, `send-file`, `received`, `publish`, `subscribe`, `task`,
`bench` and `listen`: messages, files, events, tasks and plain TCP between trusted peers,
over the agent services (pilotif.services).
Messages go through the running daemon; a file, a publish and a subscription go straight
from this command to the peer's port (a progress bar follows a file; a subscription prints
events as they come)."""

import contextlib
import hashlib
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import click

from pilotif.cli_common import (
    CliError,
    echo_result,
    json_option,
    node_request,
    state_dir_option,
    trusted_peer_address,
)
from pilotif.control import ControlError, stream
from pilotif.paths import StatePaths
from pilotif.services.broker import TopicError, check_topic
from pilotif.services.server import ECHO_PORT, EVENTS_PORT, MESSAGES_PORT
from pilotif.services.wire import MAX_LINE_BYTES, WireError, decode, encode


@click.command()
@click.argument("peer")
@click.argument("text", required=False)
@click.option(
    "--file",
    "text_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Send the text of this file (- for stdin) instead.",
)
@json_option
@state_dir_option
def send(
    peer: str, text: str | None, text_file: Path | None, as_json: bool, state_dir: Path
) -> None:
    """Send TEXT to PEER's inbox (a trusted peer: hostname, virtual IP or key)."""
    if (text is None) == (text_file is None):
        raise CliError("give TEXT or --file FILE (not both)", "bad_input")
    if text_file is not None:
        try:
            text = sys.stdin.read() if str(text_file) == "-" else text_file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise CliError(f"--file: cannot read {text_file}: {error}", "bad_input") from None
    reply = node_request(state_dir, "send", peer=peer, text=text)
    data = {"peer": reply.get("peer"), "id": reply.get("id")}
    echo_result(as_json, data, f"sent to {reply.get('peer')} (message {reply.get('id')})")


def _message_line(message: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(message.get("received", 0))))
    return f"{stamp} {message.get('sender')}: {message.get('text')}"


@click.command()
@click.option("--follow", is_flag=True, help="Then print messages as they arrive (Ctrl-C).")
@click.option("--clear", is_flag=True, help="Forget every message.")
@json_option
@state_dir_option
def inbox(follow: bool, clear: bool, as_json: bool, state_dir: Path) -> None:
    """Messages trusted peers sent this node, oldest first (kept across restarts)."""
    if clear:
        cleared = node_request(state_dir, "inbox", clear=True).get("cleared", 0)
        echo_result(as_json, {"cleared": cleared}, f"{cleared} messages cleared")
        return
    messages = node_request(state_dir, "inbox").get("messages", [])
    if as_json and not follow:
        echo_result(True, messages, "")
        return
    for message in messages:
        click.echo(json.dumps(message) if as_json else _message_line(message))
    if not follow:
        if not messages and not as_json:
            click.echo("(no messages)")
        return
    try:
        for event in stream(StatePaths(state_dir.absolute()).control_socket, "events"):
            if event.get("event") != "message_received":
                continue
            arrived = {
                "id": event.get("id"),
                "sender": event.get("peer"),
                "received": event.get("time"),
                "text": event.get("text"),
            }
            click.echo(json.dumps(arrived) if as_json else _message_line(arrived), nl=True)
    except ControlError as error:
        raise CliError(str(error), error.code, error.hint) from None
    raise CliError("the daemon stopped", "not_running")


CONNECT_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 60.0
CHUNK_BYTES = 256 * 1024


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _answer(stream: BinaryIO) -> dict[str, Any]:
    line = stream.readline(MAX_LINE_BYTES + 1)
    if not line:
        raise CliError("the peer closed the connection without an answer", "service_failed")
    try:
        answer = decode(line)
    except WireError as error:
        raise CliError(f"the peer answered garbage: {error}", "service_failed") from None
    if not answer.get("ok"):
        raise CliError(str(answer.get("error")), str(answer.get("code", "refused")))
    return answer


@click.command("send-file")
@click.argument("peer")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@state_dir_option
def send_file(peer: str, path: Path, as_json: bool, state_dir: Path) -> None:
    """Send the file PATH to the trusted PEER; it keeps it once size and SHA-256 match."""
    address = trusted_peer_address(state_dir, peer)
    try:
        size = path.stat().st_size
        sha256 = _sha256(path)
        source = path.open("rb")
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}", "bad_input") from None
    header = {"op": "file", "name": path.name, "size": size, "sha256": sha256}
    try:
        with source, socket.create_connection((address, MESSAGES_PORT), CONNECT_TIMEOUT_S) as conn:
            conn.settimeout(ANSWER_TIMEOUT_S)
            stream = conn.makefile("rb")
            conn.sendall(encode(header))
            _answer(stream)
            show = sys.stderr.isatty() and not as_json
            with click.progressbar(
                length=size, label=path.name, file=sys.stderr, hidden=not show
            ) as bar:
                while chunk := source.read(CHUNK_BYTES):
                    conn.sendall(chunk)
                    bar.update(len(chunk))
            answer = _answer(stream)
    except ConnectionRefusedError:
        raise CliError(
            f"nothing listens on {address}:{MESSAGES_PORT}",
            "service_closed",
            "the peer runs an older pilotif, or its port policy refuses that port",
        ) from None
    except OSError as error:
        raise CliError(f"{peer}: {error.strerror or error}", "peer_unreachable") from None
    data = {"peer": peer, "name": answer.get("name"), "size": size, "sha256": sha256}
    echo_result(
        as_json, data, f"sent {path.name} to {peer} ({size} bytes, sha256 {sha256[:16]}...)"
    )


@click.command()
@json_option
@state_dir_option
def received(as_json: bool, state_dir: Path) -> None:
    """Files trusted peers sent this node: whole ones only, with sender, size and SHA-256."""
    reply = node_request(state_dir, "received")
    files = reply.get("files", [])
    lines = [
        f"{f['name']:40} {f['size']:>12} from {f['sender']}  sha256 {f['sha256'][:16]}..."
        for f in files
    ]
    text = "\n".join(lines) + f"\n(in {reply.get('directory')})" if files else "(no files)"
    echo_result(as_json, {"directory": reply.get("directory"), "files": files}, text)


def _service_address(state_dir: Path, peer: str) -> str:
    """A trusted peer's virtual IPv4, or this node's own for its own hostname or address."""
    node = node_request(state_dir, "status").get("status", {}).get("node") or {}
    if peer.strip().lower().removesuffix(".pilot") in (node.get("hostname"), node.get("ipv4")):
        return str(node["ipv4"])
    return trusted_peer_address(state_dir, peer)


def _events_connection(state_dir: Path, peer: str, timeout_s: float) -> socket.socket:
    address = _service_address(state_dir, peer)
    try:
        return socket.create_connection((address, EVENTS_PORT), min(timeout_s, CONNECT_TIMEOUT_S))
    except ConnectionRefusedError:
        raise CliError(
            f"nothing listens on {address}:{EVENTS_PORT}",
            "service_closed",
            "the peer runs an older pilotif, or its port policy refuses that port",
        ) from None
    except OSError as error:
        raise CliError(f"{peer}: {error.strerror or error}", "peer_unreachable") from None


def _topic(text: str, *, pattern: bool = False) -> str:
    try:
        return check_topic(text, pattern=pattern)
    except TopicError as error:
        raise CliError(f"TOPIC: {error}", "bad_topic") from None


@click.command()
@click.argument("peer")
@click.argument("topic")
@click.argument("data")
@json_option
@state_dir_option
def publish(peer: str, topic: str, data: str, as_json: bool, state_dir: Path) -> None:
    """Publish DATA (JSON, or else taken as text) on TOPIC of PEER's broker (a trusted
    peer, or this node's own hostname)."""
    checked = _topic(topic)
    try:
        value: Any = json.loads(data)
    except json.JSONDecodeError:
        value = data
    with _events_connection(state_dir, peer, ANSWER_TIMEOUT_S) as conn:
        conn.settimeout(ANSWER_TIMEOUT_S)
        conn.sendall(encode({"op": "publish", "topic": checked, "data": value}))
        answer = _answer(conn.makefile("rb"))
    delivered = answer.get("delivered", 0)
    echo_result(
        as_json, {"topic": checked, "delivered": delivered}, f"{checked}: {delivered} subscribers"
    )


@click.command()
@click.argument("peer")
@click.argument("topic")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=0.1), help="Stop after this many seconds."
)
@state_dir_option
def subscribe(
    peer: str, topic: str, count: int | None, timeout_s: float | None, state_dir: Path
) -> None:
    """Print one JSON line per event published on PEER's TOPIC (`*` matches any run of
    characters) from now on, until --count events, --timeout seconds or Ctrl-C."""
    pattern = _topic(topic, pattern=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with _events_connection(state_dir, peer, timeout_s or CONNECT_TIMEOUT_S) as conn:
        conn.settimeout(ANSWER_TIMEOUT_S)
        conn.sendall(encode({"op": "subscribe", "topic": pattern}))
        stream = conn.makefile("rb")
        _answer(stream)
        print("pilotif: subscribed (Ctrl-C to stop)", file=sys.stderr, flush=True)
        seen = 0
        while count is None or seen < count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            conn.settimeout(remaining)
            try:
                line = stream.readline(MAX_LINE_BYTES + 1)
            except TimeoutError:
                return
            if not line:
                raise CliError("the peer closed the subscription", "service_failed")
            click.echo(line.decode().rstrip("\n"))
            seen += 1


@click.group()
def task() -> None:
    """Tasks between agents: submit one to a peer, or accept, decline and answer yours."""


def _task_line(item: dict[str, Any]) -> str:
    arrow = "->" if item.get("role") == "outgoing" else "<-"
    line = f"{item.get('id')}  {item.get('state'):9} {arrow} {item.get('peer'):20}"
    line += f" {item.get('description')}"
    if item.get("reason"):
        line += f"  (reason: {item['reason']})"
    if item.get("result"):
        line += f"\n    result: {item['result']}"
    return line


def _show_task(reply: dict[str, Any], as_json: bool) -> None:
    item = reply.get("task", {})
    echo_result(as_json, item, _task_line(item))


@task.command("submit")
@click.argument("peer")
@click.argument("description")
@json_option
@state_dir_option
def task_submit(peer: str, description: str, as_json: bool, state_dir: Path) -> None:
    """Ask the trusted PEER to do DESCRIPTION; `task list` follows it."""
    _show_task(node_request(state_dir, "task_submit", peer=peer, description=description), as_json)


@task.command("list")
@json_option
@state_dir_option
def task_list(as_json: bool, state_dir: Path) -> None:
    """Tasks you submitted (->) and tasks submitted to you (<-), with their states."""
    tasks = node_request(state_dir, "task_list").get("tasks", [])
    echo_result(as_json, tasks, "\n".join(_task_line(t) for t in tasks) or "(no tasks)")


@task.command("accept")
@click.argument("task_id", metavar="ID")
@json_option
@state_dir_option
def task_accept(task_id: str, as_json: bool, state_dir: Path) -> None:
    """Accept the task ID submitted to you."""
    _show_task(node_request(state_dir, "task_decide", id=task_id, state="accepted"), as_json)


@task.command("decline")
@click.argument("task_id", metavar="ID")
@click.option("--reason", required=True, help="Why, for the submitter.")
@json_option
@state_dir_option
def task_decline(task_id: str, reason: str, as_json: bool, state_dir: Path) -> None:
    """Decline the task ID submitted to you."""
    reply = node_request(state_dir, "task_decide", id=task_id, state="declined", reason=reason)
    _show_task(reply, as_json)


@task.command("result")
@click.argument("task_id", metavar="ID")
@click.argument("text", required=False)
@click.option(
    "--file",
    "text_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The result from a file (- for stdin).",
)
@json_option
@state_dir_option
def task_result(
    task_id: str, text: str | None, text_file: Path | None, as_json: bool, state_dir: Path
) -> None:
    """Answer the task ID with TEXT (or --file): it is done, and its submitter has it."""
    if (text is None) == (text_file is None):
        raise CliError("give TEXT or --file FILE (not both)", "bad_input")
    if text_file is not None:
        try:
            text = sys.stdin.read() if str(text_file) == "-" else text_file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise CliError(f"--file: cannot read {text_file}: {error}", "bad_input") from None
    reply = node_request(state_dir, "task_decide", id=task_id, state="done", result=text)
    _show_task(reply, as_json)


BENCH_RTT_ROUNDS = 20
BENCH_DEFAULT_MB = 10


@click.command()
@click.argument("peer")
@click.argument("megabytes", type=click.IntRange(1, 1024), default=BENCH_DEFAULT_MB)
@json_option
@state_dir_option
def bench(peer: str, megabytes: int, as_json: bool, state_dir: Path) -> None:
    """Round trip and throughput to PEER over the overlay, through its echo port (7):
    MEGABYTES go there and come back."""
    address = _service_address(state_dir, peer)
    size = megabytes * 10**6
    try:
        with socket.create_connection((address, ECHO_PORT), CONNECT_TIMEOUT_S) as conn:
            conn.settimeout(ANSWER_TIMEOUT_S)
            rtts = []
            for _ in range(BENCH_RTT_ROUNDS):
                started = time.perf_counter()
                conn.sendall(b"x")
                conn.recv(1)
                rtts.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            sender = threading.Thread(target=_send_zeros, args=(conn, size), daemon=True)
            sender.start()
            back = 0
            while back < size:
                chunk = conn.recv(CHUNK_BYTES)
                if not chunk:
                    raise CliError("the peer closed the echo early", "service_failed")
                back += len(chunk)
            seconds = time.perf_counter() - started
            sender.join()
    except ConnectionRefusedError:
        raise CliError(f"nothing listens on {address}:{ECHO_PORT}", "service_closed") from None
    except OSError as error:
        raise CliError(f"{peer}: {error.strerror or error}", "peer_unreachable") from None
    rtt_ms = sorted(rtts)[len(rtts) // 2]
    mbit_per_s = size * 8 / seconds / 1e6
    data = {
        "peer": peer,
        "rtt_ms": round(rtt_ms, 3),
        "megabytes": megabytes,
        "seconds": round(seconds, 3),
        "mbit_per_s": round(mbit_per_s, 1),
    }
    text = (
        f"{peer}: rtt {rtt_ms:.2f} ms (median of {BENCH_RTT_ROUNDS}), "
        f"{megabytes} MB there and back in {seconds:.2f} s = {mbit_per_s:.0f} Mbit/s each way"
    )
    echo_result(as_json, data, text)


def _send_zeros(conn: socket.socket, size: int) -> None:
    block = bytes(CHUNK_BYTES)
    sent = 0
    with contextlib.suppress(OSError):
        while sent < size:
            part = block[: min(CHUNK_BYTES, size - sent)]
            conn.sendall(part)
            sent += len(part)


@click.command()
@click.argument("port", type=click.IntRange(1, 65535))
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many lines.")
@state_dir_option
def listen(port: int, count: int | None, state_dir: Path) -> None:
    """Print what trusted peers send to PORT of this node's virtual address, one JSON line
    per line received (`{"peer", "port", "data"}`), until --count lines or Ctrl-C."""
    node = node_request(state_dir, "status").get("status", {}).get("node") or {}
    address = node.get("ipv4")
    if not address:
        raise CliError("this node has no virtual address yet", "not_joined")
    try:
        server = socket.create_server((str(address), port))
    except OSError as error:
        raise CliError(
            f"cannot listen on {address}:{port}: {error.strerror}", "bad_input"
        ) from None
    print(f"pilotif: listening on {address}:{port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    seen = 0
    with server:
        while count is None or seen < count:
            conn, (peer, _) = server.accept()
            with conn, conn.makefile("rb") as lines:
                for line in lines:
                    text = line.decode(errors="replace").rstrip("\n")
                    click.echo(json.dumps({"peer": peer, "port": port, "data": text}))
                    seen += 1
                    if count is not None and seen >= count:
                        return
