"""A pilotif daemon in a lab namespace, driven only through its command line.

`pilotif up` writes its PID and log into the state directory; `status --json` is what the
tests read; `down` stops it, and the PID file lets the lab stop a daemon that `down` missed.
"""

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from pilotif_lab.config import TunnelConfig
from pilotif_lab.netns import LabError, Namespace, pid_alive, stop_pid
from pilotif_lab.node import PeerStats

UP_TIMEOUT_S = 30.0
_CONFIG_FILE_MODE = 0o600
_PID_FILE = "pilotif.pid"
_LOG_FILE = "pilotif.log"


def pilotif_executable() -> str:
    """The `pilotif` command of this Python environment."""
    beside_python = Path(sys.executable).parent / "pilotif"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("pilotif")
    if found is None:
        raise LabError("the `pilotif` command is not installed: run `pip install -e .`")
    return found


class PilotifNode:
    """A pilotif daemon and its interface in one namespace."""

    def __init__(
        self,
        namespace: Namespace,
        interface: str,
        config: TunnelConfig,
        workdir: Path,
        policy: str | None = None,
        up_args: tuple[str, ...] = (),
    ) -> None:
        self._namespace = namespace
        self.interface = interface
        self.config = config
        self._workdir = workdir
        self.state_dir = workdir / f"{interface}-state"
        self.config_path = workdir / f"{interface}.conf"
        self.policy = policy
        """A port policy's text for `up --policy` (None: none)."""
        self.up_args = up_args
        """More options for `up` (`--userspace --expose 5201`: a node without a TUN)."""

    @property
    def log_path(self) -> Path:
        """The daemon's log."""
        return self.state_dir / _LOG_FILE

    def _pilotif(self, *args: str, check: bool = True) -> str:
        output_path = self._workdir / f"{self.interface}-{args[0]}.out"
        result = self._namespace.run(
            pilotif_executable(),
            *args,
            "--state-dir",
            str(self.state_dir),
            check=check,
            timeout_s=UP_TIMEOUT_S,
            output_path=output_path,
        )
        return result.stdout

    def start(self) -> None:
        """`pilotif up` with the config written as a wg-quick style file."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.touch(mode=_CONFIG_FILE_MODE)
        self.config_path.write_text(self.config.to_wg_quick())
        args = ["up", "--config", str(self.config_path), "--interface", self.interface]
        if self.policy is not None:
            policy_path = self._workdir / f"{self.interface}.policy"
            policy_path.write_text(self.policy)
            args += ["--policy", str(policy_path)]
        self._pilotif(*args, *self.up_args)

    def pid(self) -> int | None:
        """The daemon's PID from its PID file, if it wrote one."""
        try:
            return int((self.state_dir / _PID_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        """Whether the daemon's process is alive."""
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def status(self) -> dict[str, Any]:
        """`pilotif status --json`, parsed."""
        output = self._pilotif("status", "--json")
        try:
            parsed: dict[str, Any] = json.loads(output)
        except json.JSONDecodeError as error:
            raise LabError(f"`pilotif status --json` printed no JSON: {output!r}") from error
        return parsed

    def peers(self) -> list[PeerStats]:
        """Every peer as `status --json` reports it."""
        return [
            PeerStats(
                public_key=peer["public_key"],
                endpoint=peer["endpoint"],
                latest_handshake=peer["latest_handshake"],
                rx_bytes=peer["rx_bytes"],
                tx_bytes=peer["tx_bytes"],
            )
            for peer in self.status()["peers"]
        ]

    def stop(self) -> None:
        """`pilotif down`, then stop the daemon by its PID if it is still there."""
        pid = self.pid()
        self._pilotif("down", check=False)
        if pid is not None and pid_alive(pid):
            stop_pid(pid)
