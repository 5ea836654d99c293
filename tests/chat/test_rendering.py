"""The per-process fragment cache: bounded in bytes, least recently used first out."""

from __future__ import annotations

import sys
import tracemalloc

import pytest
from django.utils import timezone

from chat import rendering
from chat.models import Message
from chat.rendering import FragmentCache
from tests.factories import make_conversation, make_user

ONE = sys.getsizeof("A") + FragmentCache.ENTRY_OVERHEAD  # what a one-letter entry is charged


def test_the_fragment_cache_keeps_at_most_its_bound_and_drops_the_least_recently_used():
    cache = FragmentCache(max_bytes=3 * ONE)
    cache.set_many({("a",): "A", ("b",): "B", ("c",): "C"})
    assert cache.get_many([("a",)]) == {("a",): "A"}  # now the most recently used
    cache.set_many({("d",): "D"})
    assert len(cache) == 3 and cache.bytes == 3 * ONE
    assert cache.get_many([("a",), ("b",), ("c",), ("d",)]) == {
        ("a",): "A",
        ("c",): "C",
        ("d",): "D",
    }


def test_a_batch_larger_than_the_bound_keeps_its_newest_entries():
    cache = FragmentCache(max_bytes=2 * ONE)
    cache.set_many({(i,): str(i) for i in range(5)})
    assert cache.get_many([(i,) for i in range(5)]) == {(3,): "3", (4,): "4"}


def test_setting_a_key_again_is_charged_once():
    cache = FragmentCache(max_bytes=10 * ONE)
    for _ in range(5):
        cache.set_many({("a",): "A"})
    assert len(cache) == 1 and cache.bytes == ONE


def test_a_fragment_larger_than_the_whole_cache_is_not_kept():
    cache = FragmentCache(max_bytes=10 * ONE)
    cache.set_many({("a",): "A", ("huge",): "x" * 100 * ONE})
    assert cache.get_many([("a",), ("huge",)]) == {("a",): "A"}


@pytest.mark.django_db
def test_hostile_fragments_stay_within_the_byte_bound_in_real_memory(settings):
    """The worst a sender can do: 4,000 `"` (each escaped to `&quot;`, 24 KB rendered) or
    4,000 astral characters (4 bytes each in a str). A count bound let 20,000 of them take
    ~464 MiB; here the cache's real memory stays within its byte bound."""
    bound = 4 * 1024 * 1024
    alice = make_user()
    conversation = make_conversation(alice)
    bodies = [
        '"' * settings.CHAT_MAX_MESSAGE_LENGTH,
        "\U0001f600" * settings.CHAT_MAX_MESSAGE_LENGTH,
    ]
    rendered = []
    for i in range(2):
        message = Message(
            pk=i + 1,
            conversation=conversation,
            sender=alice,
            seq=i + 1,
            body=bodies[i],
            created_at=timezone.now(),
        )
        rendered.append(rendering.message_html(message))
    assert len(rendered[0]) > 24_000
    cache = FragmentCache(max_bytes=bound)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2_000):  # ~60 MiB if kept
        # fresh str objects, as rendering each stored message makes
        cache.set_many({(i, conversation.pk, i, alice.pk): "".join([rendered[i % 2], " "])})
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert cache.bytes <= bound
    assert grown <= bound * 1.1, f"{grown / 2**20:.1f} MiB held for a {bound / 2**20:.0f} MiB bound"
    assert len(cache) > 100  # it still caches
