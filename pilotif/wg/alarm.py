"""The device's one timer: no peer timer is due before `wake_by`.

Every part of the device that arms a peer timer does it through `Alarm.arm`, so that
`Device.get_timer` is read without looking at any peer (see `Device.get_timer`)."""

from collections.abc import Iterable

from pilotif.wg.peer import Peer


class Alarm:
    """The earliest deadline any peer timer may have (seconds, the caller's clock)."""

    def __init__(self) -> None:
        self.wake_by: float | None = None
        """No timer is due before this (None: no timer is armed)."""

    def arm(self, deadline: float) -> float:
        """`deadline`, about to be a timer's: `wake_by` stays no later than it."""
        if self.wake_by is None or deadline < self.wake_by:
            self.wake_by = deadline
        return deadline

    def arm_persistent_keepalive(self, peer: Peer, now: float) -> None:
        """Restart the peer's persistent keepalive (if it has one) from `now`."""
        if peer.persistent_keepalive_s:
            peer.timers.persistent_keepalive = self.arm(now + peer.persistent_keepalive_s)

    def recompute(self, peers: Iterable[Peer]) -> None:
        """After timers fired: the earliest deadline of the peers' timers, exactly."""
        deadlines = [t for p in peers if (t := p.timers.earliest()) is not None]
        self.wake_by = min(deadlines) if deadlines else None
