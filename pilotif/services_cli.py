"""`pilotif send`, `inbox`, `send-file` and `received`: messages and files between trusted
peers, over the agent services (pilotif.services). Messages go through the running daemon;
a file goes straight from this command to the peer's port 1001, so that a progress bar can
follow it."""

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
from pilotif.services.server import MESSAGES_PORT
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
