"""What the lab needs from one end of a tunnel, whichever implementation runs it."""

from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Protocol

from pilotif_lab.config import TunnelConfig
from pilotif_lab.netns import Namespace


@dataclass(frozen=True)
class PeerStats:
    """One peer as its node reports it."""

    public_key: str
    endpoint: str | None
    latest_handshake: float | None
    """Unix time of the last completed handshake, None before the first."""
    rx_bytes: int
    tx_bytes: int


class TunnelNode(Protocol):
    """A running tunnel endpoint inside a lab namespace (pilotif or wireguard-go)."""

    @property
    def interface(self) -> str:
        """The name of its TUN interface."""
        ...

    @property
    def config(self) -> TunnelConfig:
        """What it was configured with."""
        ...

    def start(self) -> None:
        """Bring the interface up, configured; returns once it can carry packets."""
        ...

    def stop(self) -> None:
        """Stop the process and remove the interface."""
        ...

    def running(self) -> bool:
        """Whether its process is still alive."""
        ...

    def peers(self) -> list[PeerStats]:
        """Its view of every peer."""
        ...


class ForegroundNode:
    """What the reference peers (wireguard-go, Nebula) share: one process the lab runs in
    the foreground inside a namespace (so it owns the PID), its log, and its stop."""

    program = "daemon"
    """The program's name, for its log file."""

    def __init__(
        self, namespace: Namespace, interface: str, config: TunnelConfig, workdir: Path
    ) -> None:
        self._namespace = namespace
        self.interface = interface
        self.config = config
        self._workdir = workdir
        self._process: Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """The program's own output."""
        return self._workdir / f"{self.program}-{self.interface}.log"

    def stop(self) -> None:
        """Stop the process; its interface goes with it."""
        if self._process is not None:
            self._namespace.stop(self._process)
            self._process = None

    def running(self) -> bool:
        """Whether the process is still alive."""
        return self._process is not None and self._process.poll() is None
