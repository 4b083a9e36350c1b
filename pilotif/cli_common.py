"""What every group of `pilotif` commands shares: the one-line error with a code, the
`--json` option, and printing a result as text or JSON."""

import json
from typing import Any

import click


class CliError(click.ClickException):
    """A failure reported as one line, with a machine-readable code for --json."""

    def __init__(self, message: str, code: str = "error", hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def echo_result(as_json: bool, data: Any, text: str) -> None:
    """Print `data` as JSON with --json, else `text`."""
    click.echo(json.dumps(data, indent=2) if as_json else text)
