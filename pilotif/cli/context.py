"""`pilotif context [--json]`: every command of this CLI, read from the CLI itself (click's
own description of it, never a copy kept by hand), for agents that discover what they can
do: its path, what it is for, its arguments and options (with types, choices, defaults
and environment variables), whether it prints JSON and the shape of that JSON and its
error codes (declared next to each command with `json_output`). Errors follow one
contract for every command, stated in `errors`."""

from typing import Any

import click

from pilotif.cli.common import (
    echo_result,
    json_option,
    json_output,
)

ERRORS = {
    "text": "one line on stderr: `pilotif: error: WHAT (HINT)`, and a non-zero exit status",
    "json": 'with --json, on stdout: {"error": WHAT, "code": CODE, "hint": HINT}',
}


def _parameter(parameter: click.Parameter) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": parameter.name,
        "required": parameter.required,
        "type": parameter.type.name,
    }
    if isinstance(parameter.type, click.Choice):
        described["choices"] = list(parameter.type.choices)
    if isinstance(parameter, click.Option):
        described["flags"] = parameter.opts
        described["is_flag"] = parameter.is_flag
        if parameter.envvar:
            described["envvar"] = parameter.envvar
        if parameter.help:
            described["help"] = parameter.help
        if parameter.default is not None and not callable(parameter.default):
            described["default"] = str(parameter.default)
    else:
        described["nargs"] = parameter.nargs
    return described


def _commands(command: click.Command, path: list[str]) -> list[dict[str, Any]]:
    found = []
    if not isinstance(command, click.Group) or command.invoke_without_command:
        parameters = [p for p in command.params if p.name != "help"]
        found.append(
            {
                "command": " ".join(path),
                "summary": command.get_short_help_str(limit=200),
                "help": command.help or "",
                "arguments": [_parameter(p) for p in parameters if isinstance(p, click.Argument)],
                "options": [_parameter(p) for p in parameters if isinstance(p, click.Option)],
                "json": any(p.name == "as_json" for p in parameters),
                "json_output": getattr(command.callback, "json_output", None),
                "error_codes": list(getattr(command.callback, "error_codes", ("bad_input",))),
            }
        )
    if isinstance(command, click.Group):
        # Through list_commands and get_command: a LazyGroup's commands are not loaded yet.
        context = click.Context(command)
        for name in sorted(command.list_commands(context)):
            subcommand = command.get_command(context, name)
            if subcommand is not None:
                found += _commands(subcommand, [*path, name])
    return found


@click.command()
@json_option
@click.pass_context
@json_output(
    (
        '{"commands": [{"command", "summary", "help", "arguments", "options", "json", '
        '"json_output", "error_codes"}], "errors": {"text", "json"}}'
    ),
    (),
)
def context(ctx: click.Context, as_json: bool) -> None:
    """Every command, its arguments and options, as read from this CLI (for agents)."""
    root = ctx.find_root().command
    commands = _commands(root, [ctx.find_root().info_name or "pilotif"])
    text = "\n".join(f"{c['command']:44} {c['summary']}" for c in commands)
    echo_result(as_json, {"commands": commands, "errors": ERRORS}, text)
