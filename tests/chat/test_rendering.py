"""The per-process fragment cache: bounded, least recently used first out."""

from __future__ import annotations

from chat.rendering import FragmentCache


def test_the_fragment_cache_keeps_at_most_its_bound_and_drops_the_least_recently_used():
    cache = FragmentCache(max_entries=3)
    cache.set_many({("a",): "A", ("b",): "B", ("c",): "C"})
    assert cache.get_many([("a",)]) == {("a",): "A"}  # now the most recently used
    cache.set_many({("d",): "D"})
    assert len(cache) == 3
    assert cache.get_many([("a",), ("b",), ("c",), ("d",)]) == {
        ("a",): "A",
        ("c",): "C",
        ("d",): "D",
    }


def test_a_batch_larger_than_the_bound_keeps_its_newest_entries():
    cache = FragmentCache(max_entries=2)
    cache.set_many({(i,): str(i) for i in range(5)})
    assert cache.get_many([(i,) for i in range(5)]) == {(3,): "3", (4,): "4"}
