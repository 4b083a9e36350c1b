"""The registry's recall (registry/recall.py): whom a restarted registry tells that it
is back, at what pace, and whom it does not tell. Sans-IO: known nodes and `now` in."""

from collections import Counter
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from pilotif.control.wire import KEY_REQUEST, pack_key_reply
from pilotif.registry.core import RegistryCore
from pilotif.registry.recall import (
    RECALL_CUT_EVERY_S,
    RECALL_FIRST_WINDOW,
    RECALL_MAX_WINDOW,
    RECALL_QUEUE_TARGET_S,
    RECALL_SEEN_WITHIN_S,
    RECALL_WAIT_S,
    Known,
    Recall,
    SeenSince,
)
from pilotif.registry.store import Store
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.events import Endpoint

NOW = 1_000_000.0
NODES = 10_000


def _known(count: int, *, seen: float = NOW - 100) -> list[Known]:
    return [
        (i.to_bytes(32, "big"), (f"198.18.{i >> 8}.{i & 0xFF}", 4000), seen - i / 1000, None)
        for i in range(count)
    ]


def _never(key: bytes, since: float) -> bool:
    return False


def _tell(
    recall: Recall, now: float, seen_since: SeenSince = _never, delay_s: float = 0.0
) -> list[Endpoint]:
    return recall.to_tell(now, seen_since, forget_before=0.0, queue_delay_s=delay_s)


def test_a_first_window_is_told_and_those_seen_last_first() -> None:
    known = _known(NODES)
    recall = Recall(known, Counter())
    told = _tell(recall, NOW)
    assert len(told) == RECALL_FIRST_WINDOW
    newest_first = [endpoint for _, endpoint, _, _ in known]
    assert told == newest_first[:RECALL_FIRST_WINDOW]
    # Nobody came back yet: nobody more is told.
    assert _tell(recall, NOW + 0.02) == []
    assert not recall.done


def test_nodes_offline_when_the_registry_stopped_are_not_told() -> None:
    """A record 30 days old (gone for good) would hold a place in the window for
    nothing: only nodes seen within RECALL_SEEN_WITHIN_S of the latest are told."""
    online = _known(3, seen=NOW - 10)
    gone = _known(RECALL_FIRST_WINDOW * 4, seen=NOW - 10 - RECALL_SEEN_WITHIN_S - 5)
    gone = [(b"g" + key[1:], endpoint, seen, replica) for key, endpoint, seen, replica in gone]
    recall = Recall(gone + online, Counter())
    assert sorted(_tell(recall, NOW)) == sorted(endpoint for _, endpoint, _, _ in online)
    _tell(recall, NOW + RECALL_WAIT_S + 0.1)
    assert recall.done


def test_each_node_back_lets_two_more_be_told() -> None:
    counters: Counter[str] = Counter()
    recall = Recall(_known(NODES), counters)
    back: set[bytes] = set()

    def seen_since(key: bytes, since: float) -> bool:
        return key in back

    now = NOW
    told_total = 0
    for round_ in range(5):
        told = recall.to_tell(now, seen_since, forget_before=0.0, queue_delay_s=0.0)
        # Slow start: the window doubles each round in which every node told came back.
        assert len(told) == RECALL_FIRST_WINDOW * 2**round_
        told_total += len(told)
        back |= {i.to_bytes(32, "big") for i in range(told_total)}
        now += 0.02
    assert counters["recalled"] == told_total
    assert counters["recalled_back"] == told_total - RECALL_FIRST_WINDOW * 2**4


def test_a_standing_backlog_halves_the_window_once_an_interval_and_tells_nobody() -> None:
    recall = Recall(_known(NODES), Counter())
    assert _tell(recall, NOW, delay_s=RECALL_QUEUE_TARGET_S * 2) == []
    assert recall.window == RECALL_FIRST_WINDOW / 2
    assert _tell(recall, NOW + RECALL_CUT_EVERY_S / 2, delay_s=1.0) == []
    assert recall.window == RECALL_FIRST_WINDOW / 2
    assert _tell(recall, NOW + RECALL_CUT_EVERY_S, delay_s=1.0) == []
    assert recall.window == RECALL_FIRST_WINDOW / 4
    assert len(_tell(recall, NOW + RECALL_CUT_EVERY_S + 0.02)) == RECALL_FIRST_WINDOW / 4
    for step in range(20):
        _tell(recall, NOW + 1 + step * RECALL_CUT_EVERY_S, delay_s=1.0)
    assert recall.window == 1.0


def test_the_window_has_a_ceiling() -> None:
    known = _known(NODES * 10)
    recall = Recall(known, Counter())
    keys = {endpoint: key for key, endpoint, _, _ in known}
    back: set[bytes] = set()

    def seen_since(key: bytes, since: float) -> bool:
        return key in back

    for step in range(12):
        back |= {keys[endpoint] for endpoint in _tell(recall, NOW + step * 0.02, seen_since)}
    assert recall.window == RECALL_MAX_WINDOW
    assert len(_tell(recall, NOW + 1.0, seen_since)) == RECALL_MAX_WINDOW


def test_nodes_told_that_do_not_come_back_stop_counting_after_the_wait() -> None:
    count = RECALL_FIRST_WINDOW * 3
    recall = Recall(_known(count), Counter())
    assert len(_tell(recall, NOW)) == RECALL_FIRST_WINDOW
    assert _tell(recall, NOW + RECALL_WAIT_S - 0.1) == []
    assert len(_tell(recall, NOW + RECALL_WAIT_S + 0.1)) == RECALL_FIRST_WINDOW
    now = NOW + 2 * RECALL_WAIT_S + 0.2
    assert len(_tell(recall, now)) == RECALL_FIRST_WINDOW
    assert not recall.done
    _tell(recall, now + RECALL_WAIT_S + 0.1)
    assert recall.done


def test_nodes_that_would_expire_or_came_back_by_themselves_are_not_told() -> None:
    stale = _known(5, seen=NOW - 10_000)
    fresh: list[Known] = [
        (b"f" * 32, ("198.18.9.1", 4000), NOW - 50, None),
        (b"g" * 32, ("198.18.9.2", 4000), NOW, None),
    ]
    recall = Recall(stale + fresh, Counter())

    def seen_since(key: bytes, since: float) -> bool:
        return key == b"g" * 32 and since <= NOW + 1

    told = recall.to_tell(NOW + 1, seen_since, forget_before=NOW - 5_000, queue_delay_s=0.0)
    assert told == [("198.18.9.1", 4000)]


def test_a_probe_from_a_node_still_to_be_told_tells_it_while_the_window_has_room() -> None:
    counters: Counter[str] = Counter()
    known = _known(RECALL_FIRST_WINDOW * 2)
    recall = Recall(known, counters)
    last_key, last_endpoint, _, _ = known[-1]
    # A stranger's probe (a new node asking for the key) is not the recall's to pace.
    assert recall.answers_probe(b"s" * 32, NOW, 0.0)
    assert recall.answers_probe(last_key, NOW, 0.0)
    assert counters["recalled_by_probe"] == 1
    told = _tell(recall, NOW)
    # The window holds the node the probe told: one fewer told, and not that one again.
    assert len(told) == RECALL_FIRST_WINDOW - 1 and last_endpoint not in told
    # A node told is answered again (its answer may have been lost) ...
    assert recall.answers_probe(last_key, NOW + 0.01, 0.0)
    # ... but the window is full for the others: their probes wait, counted.
    assert not recall.answers_probe(known[-2][0], NOW + 0.01, 0.0)
    assert counters["key_request_recall_waits"] == 1


def test_a_probe_waits_while_the_backlog_stands() -> None:
    counters: Counter[str] = Counter()
    known = _known(4)
    recall = Recall(known, counters)
    assert not recall.answers_probe(known[0][0], NOW, RECALL_QUEUE_TARGET_S * 2)
    assert recall.answers_probe(known[0][0], NOW + 0.1, 0.0)
    assert counters["key_request_recall_waits"] == 1


def _store_with_nodes(tmp_path: Path, replicas: tuple[str | None, ...]) -> Store:
    """Nodes 198.18.0.1, .2, ... last seen at NOW, each at the replica given."""
    store = Store(tmp_path / "registry.db", IPv4Network("100.64.0.0/10"))
    for i, replica in enumerate(replicas, start=1):
        record, _ = store.register(generate_private_key(), f"node{i}", (), NOW)
        store.mark_seen(
            record.public_key,
            endpoint=f"198.18.0.{i}:4000",
            lan_endpoints=(),
            session=i,
            now=NOW,
            replica=replica,
        )
    return store


def test_a_restarted_registry_recalls_every_node_it_knew(tmp_path: Path) -> None:
    store = _store_with_nodes(tmp_path, (None, None, None))
    try:
        core = RegistryCore(generate_private_key(), store, first_counter=1)
        assert core.recalling
        sent = core.recall(NOW + 120)
        reply = pack_key_reply(core.public_key)
        assert sorted(sent) == [(reply, (f"198.18.0.{i}", 4000)) for i in (1, 2, 3)]
        core.recall(NOW + 120 + RECALL_WAIT_S + 0.1)
        assert not core.recalling
        assert core.recall(NOW + 130) == []
    finally:
        store.close()


@pytest.mark.parametrize(
    ("me", "told"),
    [("me:4000:3", [2, 5]), ("a:4000:3", [1, 2, 5])],
    ids=["not-first-by-name", "first-by-name"],
)
def test_a_replica_recalls_the_nodes_no_other_replica_has_or_recalls(
    tmp_path: Path, me: str, told: list[int]
) -> None:
    """Node 1 talked to a replica that died and was not restarted (the first replica
    alive by name recalls it, as it tells orphans), node 2 to none, node 3 to one alive,
    node 4 to one that died and was restarted (on its host and port: that one's), node 5
    to our own predecessor, still counted alive a moment after our restart: ours. None
    before the replica knows which others are alive."""
    address = me.rpartition(":")[0]
    replicas = ("dead:4000:1", None, "alive:4000:2", "restarted:5000:1", f"{address}:1")
    store = _store_with_nodes(tmp_path, replicas)
    try:
        now = NOW + 120
        store.replica_alive("dead:4000:1", NOW)
        store.replica_alive("restarted:5000:1", NOW)
        for alive in ("alive:4000:2", "restarted:5000:9", f"{address}:1"):
            store.replica_alive(alive, now)
        core = RegistryCore(generate_private_key(), store, first_counter=1, replica=me)
        assert core.recall(now) == []
        core.keep_replicas(now)
        assert len(core.live_replicas) == 4
        endpoints = sorted(endpoint for _, endpoint in core.recall(now + 0.02))
        assert endpoints == [(f"198.18.0.{i}", 4000) for i in told]
    finally:
        store.close()


def test_a_probe_to_a_restarted_core_is_answered_as_the_recall_allows(tmp_path: Path) -> None:
    """The core asks the recall about each key request from a known node's address,
    with the backlog's delay; before the recall began, and from an unknown address,
    probes are answered."""
    count = RECALL_FIRST_WINDOW + 2
    store = _store_with_nodes(tmp_path, (None,) * count)
    try:
        core = RegistryCore(generate_private_key(), store, first_counter=1)
        first = ("198.18.0.1", 4000)
        assert core.handle_datagram(KEY_REQUEST, first, NOW + 120) != []
        told = {endpoint for _, endpoint in core.recall(NOW + 120)}
        assert len(told) == RECALL_FIRST_WINDOW
        waiting = next(
            (f"198.18.0.{i}", 4000)
            for i in range(1, count + 1)
            if (f"198.18.0.{i}", 4000) not in told
        )
        assert core.handle_datagram(KEY_REQUEST, waiting, NOW + 120.01) == []
        assert core.counters["key_request_recall_waits"] == 1
        assert core.handle_datagram(KEY_REQUEST, ("198.18.99.1", 4000), NOW + 120.01) != []
        # A standing backlog: not even a node already told... but it is told: answered.
        core.waited(RECALL_QUEUE_TARGET_S * 2, NOW + 120.02)
        assert core.handle_datagram(KEY_REQUEST, waiting, NOW + 120.02) == []
        assert core.counters["key_request_recall_waits"] == 2
    finally:
        store.close()
