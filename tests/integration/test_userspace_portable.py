"""Issue 25 item 8: the userspace path needs no netlink. beta runs `pilotif up --userspace`
as uid 65534 with pyroute2 made unimportable (a package of that name that raises
ImportError comes first on its PYTHONPATH, as where pyroute2 does not run: macOS), behind
the same NAT as alpha, a TUN node. beta still finds its LAN address (portable calls:
pilotif.net.host_addresses), so the two go direct over their LAN, and a program on beta
reaches alpha through beta's SOCKS5 server."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pilotif_lab.nat import REGISTRY, NatKind, nat_lab, trust
from pilotif_lab.pilotif_node import pilotif_executable
from pilotif_lab.unprivileged import as_nobody
from test_userspace_lab import (
    _WEB_SERVER,
    PAGE,
    PATH_TIMEOUT_S,
    WEB_PORT,
    nobody_state_dir,
    socks5_fetch,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

_BLOCKER = 'raise ImportError("pyroute2 is made unimportable by this test")\n'


@pytest.fixture
def without_pyroute2() -> Iterator[Path]:
    """A directory that, first on PYTHONPATH, makes `import pyroute2` fail (readable by
    uid 65534)."""
    top = Path(tempfile.mkdtemp(prefix="pflab-nopyroute2-"))
    try:
        top.chmod(0o755)
        package = top / "pyroute2"
        package.mkdir(mode=0o755)
        (package / "__init__.py").write_text(_BLOCKER)
        (package / "__init__.py").chmod(0o644)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_userspace_node_without_pyroute2_goes_direct_over_its_lan(
    tmp_path: Path, without_pyroute2: Path
) -> None:
    with (
        nobody_state_dir() as state,
        nat_lab((NatKind.CONE,), (("alpha", 0), ("beta", 0)), tmp_path) as lab,
    ):
        alpha, beta = lab["alpha"], lab["beta"]
        beta.state_dir = state
        beta.unprivileged = True
        alpha.up()
        up = ("up", "--userspace", "--registry", REGISTRY, "--hostname", "beta")
        beta.namespace.run(
            *as_nobody(
                "env",
                f"PYTHONPATH={without_pyroute2}",
                pilotif_executable(),
                *up,
                "--state-dir",
                str(state),
            ),
            output_path=tmp_path / "beta-up.out",
        )
        trust(beta, alpha)
        to_beta = alpha.wait_for_path("beta", ("direct",), PATH_TIMEOUT_S)
        assert to_beta["endpoint"].rsplit(":", 1)[0] == beta.lan_address

        alpha_ip = alpha.status()["node"]["ipv4"]
        alpha.namespace.spawn("python3", "-c", _WEB_SERVER, alpha_ip, str(WEB_PORT), PAGE)
        url = f"http://alpha.pilot:{WEB_PORT}/"
        assert socks5_fetch(lab, url) == PAGE
        log = beta.log_path.read_text()
        assert "network_watch_unavailable" in log
        assert "pyroute2 is made unimportable by this test" in log
