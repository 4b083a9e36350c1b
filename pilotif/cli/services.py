"""`pilotif send`, `inbox`, `send-file`, `received`, `publish` and `subscribe`: messages,
files and events between trusted peers, over the agent services (pilotif.services).
Messages go through the running daemon; a file, a publish and a subscription go straight
from this command to the peer's port (a progress bar follows a file; a subscription prints
events as they come)."""

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from pilotif.cli.common import (
    DAEMON_ERRORS,
    SERVICE_ERRORS,
    CliError,
    echo_result,
    json_option,
    json_output,
    node_request,
    service_address,
    state_dir_option,
    terminal_safe,
    text_or_file,
    trusted_peer_address,
)
from pilotif.cli.overlay import overlay_dial
from pilotif.daemon.api import ControlError, stream
from pilotif.services import peer_client
from pilotif.services.client import ServiceError
from pilotif.util.paths import StatePaths


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
@json_output(
    '{"peer", "id"}',
    DAEMON_ERRORS + SERVICE_ERRORS + ("rate_limited", "too_large"),
)
def send(
    peer: str, text: str | None, text_file: Path | None, as_json: bool, state_dir: Path
) -> None:
    """Send TEXT to PEER's inbox (a trusted peer: hostname, virtual IP or key)."""
    text = text_or_file(text, text_file)
    reply = node_request(state_dir, "send", peer=peer, text=text)
    data = {"peer": reply.get("peer"), "id": reply.get("id")}
    echo_result(as_json, data, f"sent to {reply.get('peer')} (message {reply.get('id')})")


def _message_line(message: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(message.get("received", 0))))
    return terminal_safe(f"{stamp} {message.get('sender')}: {message.get('text')}")


@click.command()
@click.option("--follow", is_flag=True, help="Then print messages as they arrive (Ctrl-C).")
@click.option("--clear", is_flag=True, help="Forget every message.")
@json_option
@state_dir_option
@json_output(
    (
        '[{"id", "sender", "received", '
        '"text"}] (with --clear: {"cleared"}; with --follow: one object a line)'
    ),
    DAEMON_ERRORS,
)
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
        raise CliError.of(error) from None
    raise CliError("the daemon stopped", "not_running")


@contextmanager
def _as_cli_errors() -> Iterator[None]:
    """A peer service's refusal, as the CLI's one line with its code."""
    try:
        yield
    except ServiceError as error:
        raise CliError.of(error) from None


@click.command("send-file")
@click.argument("peer")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@state_dir_option
@json_output(
    '{"peer", "name", "size", "sha256"}',
    DAEMON_ERRORS
    + SERVICE_ERRORS
    + (
        "too_large",
        "over_quota",
        "no_space",
        "disk_full",
        "too_many_transfers",
        "rate_limited",
        "timeout",
        "write_failed",
        "truncated",
        "bad_hash",
    ),
)
def send_file(peer: str, path: Path, as_json: bool, state_dir: Path) -> None:
    """Send the file PATH to the trusted PEER; it keeps it once size and SHA-256 match."""
    address = trusted_peer_address(state_dir, peer)
    show = sys.stderr.isatty() and not as_json
    size = path.stat().st_size
    with (
        _as_cli_errors(),
        click.progressbar(length=size, label=path.name, file=sys.stderr, hidden=not show) as bar,
    ):
        answer = peer_client.send_file(address, path, bar.update, overlay_dial(state_dir))
    data = {"peer": peer, "name": answer.get("name"), "size": size, "sha256": answer.get("sha256")}
    text = f"sent {path.name} to {peer} ({size} bytes, sha256 {str(answer.get('sha256'))[:16]}...)"
    echo_result(as_json, data, text)


@click.command()
@json_option
@state_dir_option
@json_output(
    '{"directory", "files": [{"id", "sender", "name", "size", "sha256", "received"}]}',
    DAEMON_ERRORS,
)
def received(as_json: bool, state_dir: Path) -> None:
    """Files trusted peers sent this node: whole ones only, with sender, size and SHA-256."""
    reply = node_request(state_dir, "received")
    files = reply.get("files", [])
    lines = [
        terminal_safe(
            f"{f['name']:40} {f['size']:>12} from {f['sender']}  sha256 {f['sha256'][:16]}..."
        )
        for f in files
    ]
    text = "\n".join(lines) + f"\n(in {reply.get('directory')})" if files else "(no files)"
    echo_result(as_json, {"directory": reply.get("directory"), "files": files}, text)


@click.command()
@click.argument("peer")
@click.argument("topic")
@click.argument("data")
@json_option
@state_dir_option
@json_output(
    '{"topic", "delivered"}',
    DAEMON_ERRORS + SERVICE_ERRORS + ("bad_topic", "rate_limited"),
)
def publish(peer: str, topic: str, data: str, as_json: bool, state_dir: Path) -> None:
    """Publish DATA (JSON, or else taken as text) on TOPIC of PEER's broker (a trusted
    peer, or this node's own hostname)."""
    try:
        value: Any = json.loads(data)
    except json.JSONDecodeError:
        value = data
    with _as_cli_errors():
        delivered = peer_client.publish(
            service_address(state_dir, peer), topic, value, overlay_dial(state_dir)
        )
    echo_result(
        as_json,
        {"topic": topic, "delivered": delivered},
        terminal_safe(f"{topic}: {delivered} subscribers"),
    )


@click.command()
@click.argument("peer")
@click.argument("topic")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=0.1), help="Stop after this many seconds."
)
@state_dir_option
@json_output(
    (
        'one JSON object a line: {"time", "event": "published", "topic", "data", '
        '"sender"} or {"event": "events_dropped", "count"}'
    ),
    DAEMON_ERRORS + SERVICE_ERRORS + ("bad_topic", "too_many_subscriptions"),
)
def subscribe(
    peer: str, topic: str, count: int | None, timeout_s: float | None, state_dir: Path
) -> None:
    """Print one JSON line per event published on PEER's TOPIC (`*` matches any run of
    characters) from now on, until --count events, --timeout seconds or Ctrl-C."""

    def subscribed() -> None:
        print("pilotif: subscribed (Ctrl-C to stop)", file=sys.stderr, flush=True)

    address = service_address(state_dir, peer)
    with _as_cli_errors():
        for event in peer_client.subscribe(
            address, topic, count, timeout_s, subscribed, overlay_dial(state_dir)
        ):
            click.echo(json.dumps(event))
