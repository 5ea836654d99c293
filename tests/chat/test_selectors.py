"""chat.selectors: the reads, against the real Postgres. They return data, never HTML."""

from __future__ import annotations

import ast
import inspect

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from chat import selectors, services
from tests.factories import make_conversation, make_user

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
