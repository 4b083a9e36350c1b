"""The device's parts alone (no Device): the session table and keypair rotation, the
roaming rules, the one timer."""

import itertools

from pilotif.wg.alarm import Alarm
from pilotif.wg.constants import MAX_RETIRED_KEYPAIRS, RETIRED_KEYPAIR_S
from pilotif.wg.cookie import CookieGenerator
from pilotif.wg.drops import DropReason
from pilotif.wg.events import EndpointChanged, RelayEndpoint
from pilotif.wg.handshake import SessionKeys
from pilotif.wg.outbox import Outbox
from pilotif.wg.peer import Peer
from pilotif.wg.roaming import Roamer, Roaming
from pilotif.wg.sessions import Sessions

PEER_KEY = bytes(range(32))
UDP_A = ("192.0.2.1", 51820)
UDP_B = ("192.0.2.2", 51820)


def new_peer(endpoint: tuple[str, int] | None = UDP_A) -> Peer:
    return Peer(
        public_key=PEER_KEY,
        preshared_key=bytes(32),
        allowed_ips=[],
        endpoint=endpoint,
        persistent_keepalive_s=None,
        cookie_generator=CookieGenerator(PEER_KEY),
    )


def keys(index: int, initiator: bool = False) -> SessionKeys:
    return SessionKeys(bytes(32), bytes(32), index, index + 1000, initiator)


def sessions_and_alarm() -> tuple[Sessions, Alarm]:
    counter = itertools.count(1)
    alarm = Alarm()
    return Sessions(alarm, lambda n: next(counter).to_bytes(n, "little")), alarm


def test_a_responded_session_waits_in_next_until_its_first_message() -> None:
    sessions, _ = sessions_and_alarm()
    peer = new_peer()
    index = sessions.new_index()
    sessions.responded(peer, keys(index), index, now=0.0)
    assert peer.current is None and peer.next is not None
    run = sessions.receive_run(index, now=1.0)
    assert run == (peer, peer.next)
    assert sessions.first_message(peer, peer.next, now=1.0)
    assert peer.current is run[1] and peer.next is None
    assert not sessions.first_message(peer, peer.current, now=2.0)


def test_rotation_retires_at_most_the_limit_and_forgets_them_when_due() -> None:
    sessions, alarm = sessions_and_alarm()
    peer = new_peer()
    indexes = []
    for step in range(MAX_RETIRED_KEYPAIRS + 3):
        index = sessions.new_index()
        indexes.append(index)
        sessions.responded(peer, keys(index), index, now=float(step))
        assert peer.next is not None
        sessions.first_message(peer, peer.next, now=float(step))
    assert len(peer.retired) == MAX_RETIRED_KEYPAIRS
    assert sessions.receive_run(indexes[0], now=0.0) == DropReason.UNKNOWN_INDEX
    assert alarm.wake_by is not None and alarm.wake_by <= peer.retired[0][0]
    sessions.forget_retired(peer, now=peer.retired[-1][0] + RETIRED_KEYPAIR_S)
    assert not peer.retired and peer.timers.forget_retired is None


def test_zero_forgets_every_index_and_the_handshake() -> None:
    sessions, _ = sessions_and_alarm()
    peer = new_peer()
    index = sessions.new_index()
    sessions.responded(peer, keys(index), index, now=0.0)
    sessions.zero(peer)
    assert peer.keypairs() == []
    assert sessions.receive_run(index, now=0.0) == DropReason.UNKNOWN_INDEX
    assert sessions.peer_of(index) is None


def test_roaming_rules_keep_or_move_the_endpoint_and_report_each_move() -> None:
    outbox = Outbox()
    roamer = Roamer(outbox)
    peer = new_peer()
    relay = RelayEndpoint(PEER_KEY)
    roamer.set(PEER_KEY, Roaming(to_udp=False, to_relay_after_s=5.0))
    seen = []
    roamer.authenticated_from(peer, UDP_A, 0.0, answered=True)
    roamer.authenticated_from(peer, UDP_B, 1.0, answered=True)
    roamer.authenticated_from(peer, relay, 2.0, answered=True)
    seen.append(peer.endpoint)
    roamer.authenticated_from(peer, relay, 2.0, answered=False, initiation=True)
    seen.append(peer.endpoint)
    roamer.set(PEER_KEY, None)
    roamer.authenticated_from(peer, UDP_B, 3.0, answered=True)
    seen.append(peer.endpoint)
    assert seen == [UDP_A, relay, UDP_B]
    assert outbox.take().events == [
        EndpointChanged(PEER_KEY, relay),
        EndpointChanged(PEER_KEY, UDP_B),
    ]


def test_the_alarm_is_never_later_than_an_armed_deadline() -> None:
    alarm = Alarm()
    peer = new_peer()
    peer.timers.send_keepalive = alarm.arm(10.0)
    alarm.arm(20.0)
    assert alarm.wake_by == 10.0
    peer.timers.send_keepalive = None
    alarm.recompute([peer])
    assert alarm.wake_by is None
