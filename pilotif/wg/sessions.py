"""The sessions of every peer: the receiver index table and the rotation of a peer's
keypairs (next -> current -> previous -> retired -> forgotten).

A receiver index names either a handshake we initiated (until its response) or a
keypair; a keypair a rotation pushes out stays retired for RETIRED_KEYPAIR_S, for
inbound packets only. Peer input never reaches here unauthenticated."""

from collections.abc import Callable

from pilotif.wg.alarm import Alarm
from pilotif.wg.constants import MAX_RETIRED_KEYPAIRS, RETIRED_KEYPAIR_S
from pilotif.wg.drops import DropReason
from pilotif.wg.handshake import InitiatorState, SessionKeys
from pilotif.wg.peer import Keypair, Peer

_INDEX_SPACE = 2**32


class Sessions:
    """The receiver index table and the keypair slots of the peers."""

    def __init__(self, alarm: Alarm, random_bytes: Callable[[int], bytes]) -> None:
        self._alarm = alarm
        self._random_bytes = random_bytes
        self._by_index: dict[int, tuple[Peer, Keypair | InitiatorState]] = {}

    def new_index(self) -> int:
        """A random receiver index not in use."""
        while True:
            index = int.from_bytes(self._random_bytes(4), "little") % _INDEX_SPACE
            if index not in self._by_index:
                return index

    def peer_of(self, index: int) -> Peer | None:
        """The peer a receiver index belongs to, if any."""
        entry = self._by_index.get(index)
        return None if entry is None else entry[0]

    def initiated(self, index: int) -> tuple[Peer, InitiatorState] | None:
        """The peer and handshake of a receiver index, if it names a handshake we sent."""
        peer, state = self._by_index.get(index, (None, None))
        if peer is None or not isinstance(state, InitiatorState):
            return None
        return peer, state

    def receive_run(self, index: int, now: float) -> tuple[Peer, Keypair] | DropReason:
        """The peer and session of a receiver index, or why its messages are dropped.
        A session still waiting for its first message takes them too: `first_message`
        makes it the current one."""
        peer, keypair = self._by_index.get(index, (None, None))
        if peer is None or not isinstance(keypair, Keypair):
            return DropReason.UNKNOWN_INDEX
        if not keypair.can_receive(now):
            return DropReason.KEY_EXPIRED
        return peer, keypair

    def start_handshake(self, peer: Peer, index: int, state: InitiatorState) -> None:
        """A new initiation of ours under `index` (`forget_handshake` the one before)."""
        peer.handshake = state
        self._by_index[index] = (peer, state)

    def forget_handshake(self, peer: Peer) -> None:
        """The peer's handshake in flight, if any, is answered no more."""
        if peer.handshake is not None:
            self._by_index.pop(peer.handshake.sender_index, None)
            peer.handshake = None

    def responded(self, peer: Peer, keys: SessionKeys, index: int, now: float) -> None:
        """We answered an initiation: its session waits in `next` for its first message."""
        keypair = Keypair(keys, now)
        self._retire(peer, peer.next, now)
        self._retire(peer, peer.previous, now)
        peer.previous = None
        peer.next = keypair
        self._by_index[index] = (peer, keypair)

    def completed(self, peer: Peer, index: int, keys: SessionKeys, now: float) -> None:
        """The response to our initiation `index` arrived: its session is the current
        one at once."""
        del self._by_index[index]
        peer.handshake = None
        keypair = Keypair(keys, now)
        self._by_index[keys.local_index] = (peer, keypair)
        self._retire(peer, peer.previous, now)
        if peer.next is not None:
            peer.previous = peer.next
            self._retire(peer, peer.current, now)
            peer.next = None
        else:
            peer.previous = peer.current
        peer.current = keypair

    def first_message(self, peer: Peer, keypair: Keypair, now: float) -> bool:
        """An authenticated message of `keypair` arrived; whether it was the first of a
        session we responded to (then it is the current one now)."""
        if keypair is not peer.next:
            return False
        self._retire(peer, peer.previous, now)
        peer.previous = peer.current
        peer.current = keypair
        peer.next = None
        return True

    def forget_retired(self, peer: Peer, now: float) -> None:
        """Forget the retired keypairs whose time is up (the forget_retired timer)."""
        while peer.retired and peer.retired[0][0] <= now:
            self._forget(peer.retired.popleft()[1])
        peer.timers.forget_retired = self._alarm.arm(peer.retired[0][0]) if peer.retired else None

    def zero(self, peer: Peer) -> None:
        """Forget every session and the handshake in flight of the peer."""
        for keypair in peer.keypairs():
            self._forget(keypair)
        self.forget_handshake(peer)
        peer.current = peer.previous = peer.next = None
        peer.retired.clear()
        peer.timers.forget_retired = None
        peer.timers.retransmit_handshake = None

    def _forget(self, keypair: Keypair | None) -> None:
        """Drop a keypair's index so that nothing is accepted for it any more."""
        if keypair is None:
            return
        entry = self._by_index.get(keypair.local_index)
        if entry is not None and entry[1] is keypair:
            del self._by_index[keypair.local_index]

    def _retire(self, peer: Peer, keypair: Keypair | None, now: float) -> None:
        """Take a keypair that a rotation pushes out of its slot for RETIRED_KEYPAIR_S
        more, for inbound packets only (at most MAX_RETIRED_KEYPAIRS per peer)."""
        if keypair is None:
            return
        peer.retired.append((now + RETIRED_KEYPAIR_S, keypair))
        if len(peer.retired) > MAX_RETIRED_KEYPAIRS:
            self._forget(peer.retired.popleft()[1])
        peer.timers.forget_retired = self._alarm.arm(peer.retired[0][0])
