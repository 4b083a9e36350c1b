"""What the lab needs from one end of a tunnel, whichever implementation runs it."""

from dataclasses import dataclass
from typing import Protocol

from pilotif.lab.config import TunnelConfig


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
