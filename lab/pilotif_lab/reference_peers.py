"""Where the newer reference peers are: wireguard-go 0.0.20231211 (with the offloads
Tailscale contributed) and Nebula 1.9.3, unpacked from Debian's trixie suite by
`scripts/reference-peers.sh` (not installed: the benchmarks run them from there)."""

import os
from pathlib import Path
from typing import Final

from pilotif_lab.netns import LabError

REFERENCE_PEERS_ENV: Final = "PILOTIF_REFERENCE_PEERS"
DEFAULT_REFERENCE_PEERS: Final = Path("/opt/pilotif-peers")


def reference_binary(name: str) -> Path:
    """The reference peer's executable `name` (wireguard-go, nebula, nebula-cert);
    LabError saying how to get it if it is not there."""
    root = Path(os.environ.get(REFERENCE_PEERS_ENV, DEFAULT_REFERENCE_PEERS))
    path = root / "usr" / "bin" / name
    if not os.access(path, os.X_OK):
        raise LabError(
            f"{path} is missing: run `sudo scripts/reference-peers.sh {root}`"
            f" (or point {REFERENCE_PEERS_ENV} at where it unpacked them)"
        )
    return path
