"""chat.selectors: the reads, against the real Postgres. They return data, never HTML."""

from __future__ import annotations

import ast
import inspect
import json

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat import selectors, services
from tests.factories import make_conversation, make_user
from tests.parley.test_settings import REPO, run_python

pytestmark = pytest.mark.django_db


def test_members_in_one_query_by_username_with_read_markers(django_assert_num_queries):
    zed, amy = make_user("zed-selectors"), make_user("amy-selectors")
    conv = make_conversation(zed, amy, title="team")
    services.message_create(conversation_id=conv.pk, sender=zed, body="hi")
    services.conversation_mark_read(conversation_id=conv.pk, user_id=amy.pk, seq=1)
    with django_assert_num_queries(1):
        members = selectors.conversation_members(conv.pk)
    assert list(members.names.values()) == ["amy-selectors", "zed-selectors"]
    assert members.read_seqs == {amy.pk: 1, zed.pk: 0}
    assert (members.title, members.last_seq) == ("team", 1)
    assert selectors.conversation_members(999_999) is None


def test_the_members_query_names_the_user_models_table():
    sql = selectors._members_sql()
    assert connection.ops.quote_name(get_user_model()._meta.db_table) in sql
    assert "auth_user " not in sql.replace('"auth_user"', "")


def test_history_pages_by_sequence_oldest_first():
    a = make_user()
    conv = make_conversation(a)
    for i in range(5):
        services.message_create(conversation_id=conv.pk, sender=a, body=str(i))
    newest = selectors.history_keys(conv.pk, limit=2)
    assert [key[1] for key in newest] == [4, 5]
    older = selectors.history_keys(conv.pk, before_seq=4, limit=2)
    assert [key[1] for key in older] == [2, 3]
    assert [m.body for m in selectors.messages_after(conv.pk, 3)] == ["3", "4"]


def test_a_conversation_row_counts_unread_for_its_viewer():
    a, b = make_user("row-a"), make_user("row-b")
    conv = make_conversation(a, b)
    for body in "xyz":
        services.message_create(conversation_id=conv.pk, sender=a, body=body)
    row = selectors.conversation_row(b.pk, "row-b", conv.pk)
    assert (row.title, row.unread) == ("row-a", 3)
    assert [r.conversation.pk for r in selectors.conversation_list(b)] == [conv.pk]


def test_no_selector_makes_html():
    """Fragments are chat.fragments' job: selectors neither import it nor return str HTML."""
    tree = ast.parse(inspect.getsource(selectors))
    imported = {
        name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in [getattr(node, "module", None) or "", *(a.name for a in node.names)]
    }
    assert not imported & {"chat.fragments", "fragments", "django.template.loader"}
    assert not imported & {"format_html", "get_template", "render_to_string"}


# --- message_search -------------------------------------------------------------------------


def _say(conversation, sender, *bodies: str) -> None:
    for body in bodies:
        services.message_create(conversation_id=conversation.pk, sender=sender, body=body)


def _search(user, query: str, limit: int = 50) -> list[str]:
    return [hit.body for hit in selectors.message_search(user=user, query=query, limit=limit)]


def test_search_finds_only_messages_of_conversations_the_person_is_in():
    me, friend, other = make_user("srch-me"), make_user("srch-friend"), make_user("srch-other")
    mine = make_conversation(me, friend)
    theirs = make_conversation(friend, other, title="not yours")
    left = make_conversation(me, friend, title="left")
    removed = make_conversation(me, other, title="removed")
    _say(mine, friend, "the zeppelin lands at noon")
    _say(theirs, friend, "zeppelin secrets")
    _say(left, friend, "zeppelin in the group I left")
    _say(removed, other, "zeppelin where I was removed")
    assert services.conversation_leave(conversation_id=left.pk, user=me)
    assert services.participants_remove(conversation_id=removed.pk, user_ids=[me.pk]) == [me.pk]

    assert _search(me, "zeppelin") == ["the zeppelin lands at noon"]
    assert _search(me, "secrets") == []
    # The others still see theirs (same rank: newest first).
    assert _search(other, "zeppelin") == ["zeppelin where I was removed", "zeppelin secrets"]


def test_search_finds_messages_as_they_read_now_and_never_a_deleted_one():
    me, friend = make_user("srch-ed-me"), make_user("srch-ed-friend")
    room = make_conversation(me, friend, title="edits")
    edited, _ = services.message_create(conversation_id=room.pk, sender=me, body="walrus sing")
    gone, _ = services.message_create(conversation_id=room.pk, sender=me, body="walrus gossip")
    services.message_edit(
        conversation_id=room.pk, editor=me, message_id=edited.pk, body="otter sing"
    )
    services.message_delete(conversation_id=room.pk, user=me, message_id=gone.pk)
    services.participants_add(
        conversation_id=room.pk, actor=me, usernames=[make_user("walrus").get_username()]
    )
    assert _search(me, "otter") == ["otter sing"]
    assert _search(me, "walrus") == []  # the old text, the deleted one, "... added walrus"


def test_search_needs_every_word_any_case_and_says_where_it_found_it():
    me, ann = make_user("srch-viewer"), make_user("srch-ann")
    conv = make_conversation(me, ann)  # untitled: the viewer sees the other member's name
    _say(conv, ann, "Blue Whale sighted", "a blue sky", "whales")
    assert _search(me, "whale BLUE") == ["Blue Whale sighted"]
    assert _search(me, "  ,,, ") == []  # no word to look for: no query at all
    (hit,) = selectors.message_search(user=me, query="whale", limit=5)
    assert (hit.conversation_id, hit.seq, hit.sender) == (conv.pk, 1, "srch-ann")
    assert hit.conversation_title == "srch-ann"
    assert hit.message_id == conv.messages.get(seq=1).pk and hit.created_at is not None


def test_search_ranks_better_matches_first_then_newest():
    me = make_user()
    conv = make_conversation(me)
    _say(conv, me, "kiwi once", "kiwi kiwi kiwi thrice", "kiwi again, newer")
    assert _search(me, "kiwi") == ["kiwi kiwi kiwi thrice", "kiwi again, newer", "kiwi once"]


def test_search_returns_at_most_limit_results():
    me = make_user()
    conv = make_conversation(me)
    _say(conv, me, *(f"mango {n}" for n in range(1, 5)))  # four, same rank: newest first
    assert _search(me, "mango", limit=4) == ["mango 4", "mango 3", "mango 2", "mango 1"]
    assert _search(me, "mango", limit=3) == ["mango 4", "mango 3", "mango 2"]
    assert _search(me, "mango", limit=0) == []


def test_search_reads_only_the_searchable_rows(monkeypatch):
    """selectors.searchable_messages is the one place that says which rows a search may
    return (ordinary messages of the person's conversations)."""
    me = make_user()
    _say(make_conversation(me), me, "papaya", "papaya hidden")
    real = selectors.searchable_messages
    monkeypatch.setattr(
        selectors, "searchable_messages", lambda user: real(user).exclude(body__contains="hidden")
    )
    assert _search(me, "papaya") == ["papaya"]


def test_search_uses_the_full_text_index():
    """The search's expression is the index's (migration *_message_body_search), word for
    word: Postgres reads the GIN index for it (with sequential scans off: the table is tiny)."""
    me = make_user()
    with CaptureQueriesContext(connection) as queries:
        selectors.message_search(user=me, query="word", limit=5)
    vector = selectors.SEARCH_VECTOR_SQL % {"expressions": '"chat_message"."body"'}
    assert vector in queries.captured_queries[0]["sql"]
    tsquery = selectors.SEARCH_QUERY_SQL % {"expressions": "%s"}
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        # The constants under test, no input.
        explain = f"EXPLAIN SELECT id FROM chat_message WHERE {vector} @@ {tsquery}"  # noqa: S608
        cursor.execute(explain, ["w"])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "chat_message_body_fts" in plan, plan


SQLITE_SEARCH = """
import django, json; django.setup()
from django.core.management import call_command; call_command("migrate", verbosity=0)
from django.db import connection
from django.test import Client
from chat import selectors, services
from tests.factories import logged_in_client, make_conversation, make_user

me, friend, other = make_user("me"), make_user("friend"), make_user("other")
mine = make_conversation(me, friend, title="ours")
theirs, left = make_conversation(friend, other), make_conversation(me, friend)
for body in ("Zeppelin at NOON", "a zeppelin, later", "nothing", "<script>zeppelin</script>"):
    services.message_create(conversation_id=mine.pk, sender=friend, body=body)
services.message_create(conversation_id=theirs.pk, sender=other, body="zeppelin secrets")
services.message_create(conversation_id=left.pk, sender=friend, body="zeppelin, left")
services.conversation_leave(conversation_id=left.pk, user=me)

def search(user, query, limit=10):
    return [h.body for h in selectors.message_search(user=user, query=query, limit=limit)]

page = logged_in_client(me).get("/search", {"q": "noon"})
print(json.dumps({
    "vendor": connection.vendor,
    "zeppelin": search(me, "zeppelin"),
    "two_words": search(me, "noon, ZEPPELIN!"),
    "limited": search(me, "zeppelin", limit=2),
    "none": search(me, "  ?! "),
    "secrets": search(me, "secrets"),
    "other": search(other, "zeppelin"),
    "hit": [h.conversation_title for h in selectors.message_search(user=me, query="noon", limit=1)],
    "page": [page.status_code, "Zeppelin at <mark>NOON</mark>" in page.content.decode()],
}))
"""


def test_search_falls_back_to_a_match_of_each_word_on_sqlite(tmp_path):
    """`make dev` runs on SQLite: no full-text index (migration *_message_body_search does
    nothing there), a case-insensitive match of every word, newest first, over the same
    searchable rows."""
    result = run_python(
        SQLITE_SEARCH,
        DEBUG="1",
        SECRET_KEY=None,
        REDIS_URL=None,
        DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite3'}",
        PYTHONPATH=f"{REPO / 'src'}:{REPO}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["vendor"] == "sqlite"
    assert out["zeppelin"] == ["<script>zeppelin</script>", "a zeppelin, later", "Zeppelin at NOON"]
    assert out["two_words"] == ["Zeppelin at NOON"]
    assert out["limited"] == ["<script>zeppelin</script>", "a zeppelin, later"]
    assert out["none"] == [] and out["secrets"] == []
    assert out["other"] == ["zeppelin secrets"]
    assert out["hit"] == ["ours"]
    assert out["page"] == [200, True]


def test_the_list_marks_an_unread_mention_until_it_is_read_and_says_what_is_muted():
    me, ann = make_user("me-list-mention"), make_user("ann-list-mention")
    conv = make_conversation(me, ann)
    quiet = make_conversation(me, ann, title="quiet")
    for body in ("hi", "hey @me-list-mention", "and more"):
        services.message_create(conversation_id=conv.pk, sender=ann, body=body)
    services.mentions_mark(
        conversation_id=conv.pk, sender_id=ann.pk, names=["me-list-mention"], seq=2
    )
    services.conversation_mute(conversation_id=quiet.pk, user=me, muted=True)
    rows = {r.conversation.pk: r for r in selectors.conversation_list(me)}
    assert (rows[conv.pk].last_mention_seq, rows[conv.pk].mentioned) == (2, True)
    assert (rows[conv.pk].muted, rows[quiet.pk].muted) == (False, True)
    assert not rows[quiet.pk].mentioned
    # Not the sender's list, and not the one of a member who was not named.
    assert not selectors.conversation_row(ann.pk, "ann-list-mention", conv.pk).mentioned
    # Read up to just before it: still marked; read past it: not any more.
    services.conversation_mark_read(conversation_id=conv.pk, user_id=me.pk, seq=1)
    assert selectors.conversation_row(me.pk, "me-list-mention", conv.pk).mentioned
    services.conversation_mark_read(conversation_id=conv.pk, user_id=me.pk, seq=2)
    row = selectors.conversation_row(me.pk, "me-list-mention", conv.pk)
    assert (row.mentioned, row.unread) == (False, 1)


def test_members_say_who_muted_the_conversation_in_the_same_query(django_assert_num_queries):
    me, ann = make_user("me-members-muted"), make_user("ann-members-muted")
    conv = make_conversation(me, ann)
    services.conversation_mute(conversation_id=conv.pk, user=ann, muted=True)
    with django_assert_num_queries(1):
        members = selectors.conversation_members(conv.pk)
    assert members.muted == frozenset({ann.pk})
