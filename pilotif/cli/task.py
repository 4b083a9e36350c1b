"""`pilotif task submit|list|accept|decline|result`: tasks between agents, through the
running daemon (pilotif.services.task_service)."""

from pathlib import Path
from typing import Any

import click

from pilotif.cli.common import (
    DAEMON_ERRORS,
    SERVICE_ERRORS,
    TASK_ERRORS,
    echo_result,
    json_option,
    json_output,
    node_request,
    state_dir_option,
    terminal_safe,
    text_or_file,
)


@click.group()
def task() -> None:
    """Tasks between agents: submit one to a peer, or accept, decline and answer yours."""


def _task_line(item: dict[str, Any]) -> str:
    arrow = "->" if item.get("role") == "outgoing" else "<-"
    line = f"{item.get('id')}  {item.get('state'):9} {arrow} {item.get('peer'):20}"
    line += f" {item.get('description')}"
    if item.get("reason"):
        line += f"  (reason: {item['reason']})"
    line = terminal_safe(line)
    if item.get("result"):
        line += f"\n    result: {terminal_safe(item['result'])}"
    return line


def _show_task(reply: dict[str, Any], as_json: bool) -> None:
    item = reply.get("task", {})
    echo_result(as_json, item, _task_line(item))


@task.command("submit")
@click.argument("peer")
@click.argument("description")
@json_option
@state_dir_option
@json_output(
    (
        'TASK: {"id", "role": "outgoing" | "incoming", "peer", "description", '
        '"state": "new" | "accepted" | "declined" | "done" | "expired", "created", "updated", '
        '"result", "reason", "notified"}'
    ),
    DAEMON_ERRORS + SERVICE_ERRORS + ("too_large", "too_many_tasks", "rate_limited"),
)
def task_submit(peer: str, description: str, as_json: bool, state_dir: Path) -> None:
    """Ask the trusted PEER to do DESCRIPTION; `task list` follows it."""
    _show_task(node_request(state_dir, "task_submit", peer=peer, description=description), as_json)


@task.command("list")
@json_option
@state_dir_option
@json_output(
    "[TASK]",
    DAEMON_ERRORS,
)
def task_list(as_json: bool, state_dir: Path) -> None:
    """Tasks you submitted (->) and tasks submitted to you (<-), with their states."""
    tasks = node_request(state_dir, "task_list").get("tasks", [])
    echo_result(as_json, tasks, "\n".join(_task_line(t) for t in tasks) or "(no tasks)")


@task.command("accept")
@click.argument("task_id", metavar="ID")
@json_option
@state_dir_option
@json_output(
    "TASK",
    DAEMON_ERRORS + TASK_ERRORS,
)
def task_accept(task_id: str, as_json: bool, state_dir: Path) -> None:
    """Accept the task ID submitted to you."""
    _show_task(node_request(state_dir, "task_decide", id=task_id, state="accepted"), as_json)


@task.command("decline")
@click.argument("task_id", metavar="ID")
@click.option("--reason", required=True, help="Why, for the submitter.")
@json_option
@state_dir_option
@json_output(
    "TASK",
    DAEMON_ERRORS + TASK_ERRORS + ("too_large",),
)
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
@json_output(
    "TASK",
    DAEMON_ERRORS + TASK_ERRORS + ("too_large",),
)
def task_result(
    task_id: str, text: str | None, text_file: Path | None, as_json: bool, state_dir: Path
) -> None:
    """Answer the task ID with TEXT (or --file): it is done, and its submitter has it."""
    text = text_or_file(text, text_file)
    reply = node_request(state_dir, "task_decide", id=task_id, state="done", result=text)
    _show_task(reply, as_json)
