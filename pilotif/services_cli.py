"""`pilotif send` and `pilotif inbox`: messages between trusted peers, through the agent
services of the running daemon (pilotif.services)."""

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from pilotif.cli_common import CliError, echo_result, json_option, node_request, state_dir_option
from pilotif.control import ControlError, stream
from pilotif.paths import StatePaths


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
