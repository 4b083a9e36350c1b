"""`pilotif context --json`: the catalog agents read, checked against the CLI's own help
and against README's command table (a command the README does not mention is a gap)."""

import json
from pathlib import Path

from tests.unit.test_cli import pilotif

README = Path(__file__).resolve().parents[2] / "README.md"


def _catalog() -> dict[str, object]:
    result = pilotif("context", "--json")
    assert result.returncode == 0, result.stderr
    catalog: dict[str, object] = json.loads(result.stdout)
    return catalog


def test_every_command_of_the_help_is_in_the_catalog_with_its_options() -> None:
    catalog = _catalog()
    commands = {c["command"]: c for c in catalog["commands"]}  # type: ignore[attr-defined]
    help_text = pilotif("--help").stdout
    section = help_text.split("Commands:", 1)[1].splitlines()
    top_level = {line.split()[0] for line in section if line.startswith("  ") and line.strip()}
    assert len(top_level) > 20
    for name in top_level:
        prefix = f"pilotif {name}"
        assert any(path == prefix or path.startswith(prefix + " ") for path in commands), name
    send = commands["pilotif send"]
    assert [a["name"] for a in send["arguments"]] == ["peer", "text"]
    assert send["json"] is True
    key_create = commands["pilotif registry admin key create"]
    assert {"--tags", "--network", "--reusable", "--expires", "--json"} <= {
        flag for option in key_create["options"] for flag in option["flags"]
    }
    assert "code" in catalog["errors"]["json"]  # type: ignore[index]


def test_every_command_is_in_the_readme_table() -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `pilotif")]
    missing = [
        command["command"]
        for command in _catalog()["commands"]  # type: ignore[attr-defined]
        if not any(all(word in row for word in command["command"].split()) for row in rows)
    ]
    assert missing == []


def test_every_command_that_prints_json_says_what_and_its_error_codes() -> None:
    commands = _catalog()["commands"]  # type: ignore[index]
    undeclared = [c["command"] for c in commands if c["json"] and not c["json_output"]]
    assert undeclared == []
    send = next(c for c in commands if c["command"] == "pilotif send")
    assert {"bad_input", "not_running", "not_trusted"} <= set(send["error_codes"])
