"""The registry's garbage collection: no full collection while state grows, cycles
still freed when the housekeeping collects."""

import gc
import weakref
from collections.abc import Iterator

import pytest

from pilotif.util.collector import collect_all, collect_oldest_on_schedule


class _Node:
    """A long-lived object the collector tracks (as a registry's record or channel)."""

    def __init__(self) -> None:
        self.peer: object = None


@pytest.fixture
def full_collections() -> Iterator[list[int]]:
    """Counts the collections of the oldest generation while the test runs (the
    collector's thresholds restored after)."""
    saved = gc.get_threshold()
    seen: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(info["collected"])

    gc.callbacks.append(watch)
    yield seen
    gc.callbacks.remove(watch)
    gc.set_threshold(*saved)


def test_growing_state_brings_no_full_collection_until_the_housekeeping_asks(
    full_collections: list[int],
) -> None:
    collect_oldest_on_schedule()
    kept = [_Node() for _ in range(300_000)]
    assert full_collections == []
    first, second = _Node(), _Node()
    first.peer, second.peer = second, first
    cycle = weakref.ref(first)
    del first, second
    for _ in range(5):
        gc.collect(1)
    collect_all()
    assert cycle() is None
    assert len(full_collections) == 1
    assert len(kept) == 300_000
