"""chat.fragments: every fragment, byte for byte as the page and chat.js expect it (ids, so
a replayed one replaces rather than duplicates; escaping; out-of-band targets), and the
per-process fragment cache: bounded in bytes, least recently used first out."""

from __future__ import annotations

import sys
import tracemalloc

import pytest
from django.utils import timezone

from chat import fragments
from chat.fragments import FragmentCache
from chat.models import Message
from chat.selectors import ConversationRow
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
        rendered.append(fragments.message_html(message))
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


# --- each fragment, as sent ----------------------------------------------------------------


def test_a_message_is_appended_out_of_band_to_the_message_list():
    part = '<article id="msg-1">a &amp; b</article>'
    assert fragments.ws_message(part) == (
        '<div hx-swap-oob="beforeend:#messages"><article id="msg-1">a &amp; b</article></div>'
    )


@pytest.mark.django_db
def test_a_message_carries_its_id_sequence_sender_and_client_id_and_escapes_its_body():
    alice = make_user()
    conversation = make_conversation(alice)
    message = Message.objects.create(
        conversation=conversation,
        sender=alice,
        body='<script>alert("x")</script> & 1,234',
        seq=1234,
        client_id="0b3a6f6e-5b0e-4a4e-9d0e-3c7f6f2d1a11",
    )
    html = fragments.message_html(message)
    assert html.startswith(f'<article id="msg-{message.pk}" ')
    assert 'data-seq="1234"' in html  # never localized: "1,234" would break the id scheme
    assert f'data-sender-id="{alice.pk}"' in html
    assert 'data-client-id="0b3a6f6e-5b0e-4a4e-9d0e-3c7f6f2d1a11"' in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; 1,234" in html
    assert "<script>" not in html


def test_an_error_names_the_send_it_is_about_and_when_to_retry():
    assert fragments.error_html('bad <b> & "x"', client_id="abc", retry_after=2.4) == (
        '<div id="chat-error" hx-swap-oob="true" class="chat-error" role="alert" '
        'data-client-id="abc" data-retry-after="2.4">bad &lt;b&gt; &amp; &quot;x&quot;</div>\n'
    )
    assert fragments.error_html("plain") == (
        '<div id="chat-error" hx-swap-oob="true" class="chat-error" role="alert">plain</div>\n'
    )


def test_presence_replaces_its_members_entry():
    assert fragments.presence_html(12345, "<amy>&", True) == (
        '<li id="presence-12345" hx-swap-oob="true" class="presence" data-user-id="12345" '
        'data-online="true"><span class="dot" aria-hidden="true"></span>&lt;amy&gt;&amp;'
        '<span class="sr-only"> (online)</span></li>'
    )
    assert 'data-online="false"' in fragments.presence_html(7, "bo", False)
    assert "(offline)" in fragments.presence_html(7, "bo", False)


def test_typing_replaces_its_members_indicator():
    assert fragments.typing_html(1234, 'a"b<c>') == (
        '<span id="typing-1234" hx-swap-oob="true" class="typing active" data-user-id="1234">'
        "a&quot;b&lt;c&gt; is typing…</span>"
    )


def test_a_reset_tells_the_page_the_epoch_and_why_it_starts_over():
    assert fragments.reset_html("ep<1>", "behind") == (
        '<div id="chat-reset" hx-swap-oob="true" hidden data-epoch="ep&lt;1&gt;"'
        ' data-reason="behind"></div>\n'
    )


@pytest.mark.django_db
def test_a_conversation_row_moves_to_the_top_of_the_list():
    alice = make_user()
    conversation = make_conversation(alice, title="<Team>")
    row = ConversationRow(conversation=conversation, title="<Team>", unread=1234, last_read_seq=0)
    html = fragments.conversation_row_html(row)
    assert html.startswith(
        f'<div hx-swap-oob="afterbegin:#conversation-list"><li id="conv-{conversation.pk}" '
        'class="conv-row has-unread"'
    )
    assert html.endswith("</li>\n</div>")
    assert 'data-unread="1234"' in html and "&lt;Team&gt;" in html


def test_highlight_escapes_then_marks_every_occurrence_of_the_terms():
    html = fragments.highlight('<script>x("Amp")</script> &amp; camp', ["amp", "script"])
    assert html == (
        "&lt;<mark>script</mark>&gt;x(&quot;<mark>Amp</mark>&quot;)&lt;/<mark>script</mark>&gt; "
        "&amp;<mark>amp</mark>; c<mark>amp</mark>"
    )
    # A match is never looked for inside the escaping's own entities (`amp` of `&amp;`).
    assert fragments.highlight("a & b", ["amp"]) == "a &amp; b"
    assert fragments.highlight("<b>", []) == "&lt;b&gt;"
    # The longest term wins where two overlap.
    assert fragments.highlight("tents", ["tent", "tents"]) == "<mark>tents</mark>"
