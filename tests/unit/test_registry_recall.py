"""The registry's recall (registry/recall.py): whom a restarted registry tells that it
is back, at what pace, and whom it does not tell. Sans-IO: known nodes and `now` in."""

from collections import Counter
from ipaddress import IPv4Network
from pathlib import Path

from pilotif.control.wire import pack_key_reply
from pilotif.registry.core import RegistryCore
from pilotif.registry.recall import RECALL_IN_FLIGHT, RECALL_WAIT_S, Known, Recall
from pilotif.registry.store import Store
from pilotif.wg.crypto import generate_private_key

NOW = 1_000_000.0
NODES = RECALL_IN_FLIGHT * 3


def _known(count: int, *, seen: float = NOW - 100) -> list[Known]:
    return [
        (i.to_bytes(32, "big"), (f"198.18.{i >> 8}.{i & 0xFF}", 4000), seen - i)
        for i in range(count)
    ]


def _never(key: bytes, since: float) -> bool:
    return False


def test_at_most_the_in_flight_are_told_and_those_silent_longest_first() -> None:
    known = _known(NODES)
    recall = Recall(known, Counter())
    told = recall.to_tell(NOW, _never, forget_before=0.0, behind=False)
    assert len(told) == RECALL_IN_FLIGHT
    oldest_first = [endpoint for _, endpoint, _ in reversed(known)]
    assert told == oldest_first[:RECALL_IN_FLIGHT]
    # Nobody came back yet: nobody more is told.
    assert recall.to_tell(NOW + 0.1, _never, forget_before=0.0, behind=False) == []
    assert not recall.done


def test_each_node_back_lets_another_be_told() -> None:
    counters: Counter[str] = Counter()
    recall = Recall(_known(NODES), counters)
    first = recall.to_tell(NOW, _never, forget_before=0.0, behind=False)
    back = {f"198.18.{i >> 8}.{i & 0xFF}" for i in range(NODES)} & {h for h, _ in first[:10]}

    def seen_since(key: bytes, since: float) -> bool:
        i = int.from_bytes(key, "big")
        return f"198.18.{i >> 8}.{i & 0xFF}" in back and since <= NOW

    more = recall.to_tell(NOW + 0.02, seen_since, forget_before=0.0, behind=False)
    assert len(more) == 10
    assert not set(more) & set(first)
    assert counters["recalled"] == RECALL_IN_FLIGHT + 10
    assert counters["recalled_back"] == 10


def test_nodes_told_that_do_not_come_back_stop_counting_after_the_wait() -> None:
    recall = Recall(_known(NODES), Counter())
    recall.to_tell(NOW, _never, forget_before=0.0, behind=False)
    assert recall.to_tell(NOW + RECALL_WAIT_S - 0.1, _never, forget_before=0.0, behind=False) == []
    later = recall.to_tell(NOW + RECALL_WAIT_S + 0.1, _never, forget_before=0.0, behind=False)
    assert len(later) == RECALL_IN_FLIGHT
    now = NOW + 2 * RECALL_WAIT_S + 0.2
    last = recall.to_tell(now, _never, forget_before=0.0, behind=False)
    assert len(last) == NODES - 2 * RECALL_IN_FLIGHT
    assert not recall.done
    recall.to_tell(now + RECALL_WAIT_S + 0.1, _never, forget_before=0.0, behind=False)
    assert recall.done


def test_nobody_is_told_while_behind() -> None:
    recall = Recall(_known(10), Counter())
    assert recall.to_tell(NOW, _never, forget_before=0.0, behind=True) == []
    assert len(recall.to_tell(NOW + 0.1, _never, forget_before=0.0, behind=False)) == 10


def test_nodes_that_would_expire_or_came_back_by_themselves_are_not_told() -> None:
    stale = _known(5, seen=NOW - 10_000)
    fresh = [(b"f" * 32, ("198.18.9.1", 4000), NOW - 50), (b"g" * 32, ("198.18.9.2", 4000), NOW)]
    recall = Recall(stale + fresh, Counter())

    def seen_since(key: bytes, since: float) -> bool:
        return key == b"g" * 32 and since <= NOW + 1

    told = recall.to_tell(NOW + 1, seen_since, forget_before=NOW - 5_000, behind=False)
    assert told == [("198.18.9.1", 4000)]


def test_a_restarted_core_recalls_its_nodes_but_not_another_replicas(tmp_path: Path) -> None:
    store = Store(tmp_path / "registry.db", IPv4Network("100.64.0.0/10"))
    try:
        for i, replica in ((1, None), (2, None), (3, "other:4000:7")):
            record, _ = store.register(generate_private_key(), f"node{i}", (), NOW)
            store.mark_seen(
                record.public_key,
                endpoint=f"198.18.0.{i}:4000",
                lan_endpoints=(),
                session=i,
                now=NOW,
                replica=replica,
            )
        private = generate_private_key()
        core = RegistryCore(private, store, first_counter=1)
        assert core.recalling
        sent = core.recall(NOW + 120)
        reply = pack_key_reply(core.public_key)
        assert sorted(sent) == [(reply, ("198.18.0.1", 4000)), (reply, ("198.18.0.2", 4000))]
        core.recall(NOW + 120 + RECALL_WAIT_S + 0.1)
        assert not core.recalling
        assert core.recall(NOW + 130) == []
    finally:
        store.close()
