"""BoundedLru: the channel cache of the registry and the relay keeps the most recently
used entries and never more than its limit."""

from pilotif.util.lru import BoundedLru


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: BoundedLru[str, int] = BoundedLru(2)
    cache.remember("a", 1)
    cache.remember("b", 2)
    cache.touch("a")
    cache.remember("c", 3)
    assert dict(cache) == {"a": 1, "c": 3}


def test_remembering_a_key_again_replaces_it_without_growing() -> None:
    cache: BoundedLru[str, int] = BoundedLru(2)
    cache.remember("a", 1)
    cache.remember("b", 2)
    cache.remember("a", 10)
    assert list(cache.items()) == [("b", 2), ("a", 10)]
    cache.remember("c", 3)
    assert list(cache) == ["a", "c"]
