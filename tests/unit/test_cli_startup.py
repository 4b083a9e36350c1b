"""`pilotif` starts without loading what the command does not use: agents and scripts call
`pilotif status`, `peers` or `pending` in loops, and each call used to import the whole
package (the registry, the userspace stack, the WireGuard core: ~0.3 s of CPU)."""

import subprocess
import sys
from pathlib import Path

import click
import pytest

from pilotif.cli.main import _LAZY_COMMANDS, cli, registry
from pilotif.cli.userspace import SOCKS5_DEFAULT_TEXT
from pilotif.userspace.node import DEFAULT_SOCKS5

HEAVY_PACKAGES = ("pilotif.registry", "pilotif.userspace", "pilotif.wg", "pilotif.netstack")
"""What `pilotif status` has no use for."""

_LOADED_BY_STATUS = (
    "import sys\n"
    "from pilotif.cli.main import main\n"
    "sys.argv = ['pilotif', 'status', '--json', '--state-dir', sys.argv[1]]\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
    "print('\\n'.join(sorted(sys.modules)))\n"
)


def test_status_loads_neither_the_registry_nor_the_userspace_stack_nor_the_wg_core(
    tmp_path: Path,
) -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", _LOADED_BY_STATUS, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    heavy = [name for name in loaded if name.startswith(HEAVY_PACKAGES)]
    assert heavy == []


@pytest.mark.parametrize("group", [cli, registry], ids=["pilotif", "registry"])
def test_every_lazy_command_loads_under_its_own_name(group: click.Group) -> None:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None and command.name == name


def test_the_lazy_commands_are_listed_in_help() -> None:
    listed = cli.list_commands(click.Context(cli))
    assert set(_LAZY_COMMANDS) <= set(listed)


def test_socks5_default_shown_is_the_nodes_default() -> None:
    assert f"{DEFAULT_SOCKS5[0]}:{DEFAULT_SOCKS5[1]}" == SOCKS5_DEFAULT_TEXT
