"""`pilotif send`, `inbox`, `send-file`, `received`, `publish` and `subscribe`: messages,
files and events between trusted peers, over the agent services (pilotif.services).
Messages go through the running daemon; a file, a publish and a subscription go straight
from this command to the peer's port (a progress bar follows a file; a subscription prints
events as they come)."""

import hashlib
import json
import socket
import sys
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
from pilotif.services.server import EVENTS_PORT, MESSAGES_PORT
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


def service_address(state_dir: Path, peer: str) -> str:
    """A trusted peer's virtual IPv4, or this node's own for its own hostname or address."""
    node = node_request(state_dir, "status").get("status", {}).get("node") or {}
    if peer.strip().lower().removesuffix(".pilot") in (node.get("hostname"), node.get("ipv4")):
        return str(node["ipv4"])
    return trusted_peer_address(state_dir, peer)


def _events_connection(state_dir: Path, peer: str, timeout_s: float) -> socket.socket:
    address = service_address(state_dir, peer)
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
