"""The systemd units in deploy/systemd pass `systemd-analyze verify` without a complaint.

The units start `/usr/local/bin/pilotif`, where `pip install .` puts it as root on Debian;
verify checks that the command exists, so each unit is verified as a copy that names the
`pilotif` installed here instead. A warning (an unknown key, a bad value) fails the test too:
systemd ignores such a line and goes on, which is how hardening silently disappears.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

UNITS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNITS = sorted(UNITS_DIR.glob("*.service"))
INSTALLED_PILOTIF = "/usr/local/bin/pilotif"
VERIFY_TIMEOUT_S = 60.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_unit_verifies_cleanly(unit: Path, tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    pilotif = shutil.which("pilotif")
    assert pilotif, "pilotif is not installed (pip install .)"
    text = unit.read_text()
    assert f"ExecStart={INSTALLED_PILOTIF} " in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_PILOTIF, pilotif))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_the_three_units_are_there() -> None:
    assert [unit.name for unit in UNITS] == [
        "pilotif-registry.service",
        "pilotif.service",
        "pilotif@.service",
    ]
