"""Pages over HTTP: auth, conversation list, starting conversations, history, health."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from django.urls import reverse

from chat import services
from chat.models import Conversation, Message
from tests.factories import PASSWORD, logged_in_client, make_conversation, make_user

pytestmark = pytest.mark.django_db


def test_signup_logs_in_and_redirects_to_the_list():
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/signup/")
    token = page.cookies["csrftoken"].value
    response = client.post(
        "/accounts/signup/",
        {
            "username": "newbie",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "csrfmiddlewaretoken": token,
        },
    )
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_login_form_with_csrf_and_logout():
    make_user("carol")
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="username"' in html and 'name="password"' in html
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    assert (
        client.post(
            "/accounts/login/",
            {"username": "carol", "password": "wrong", "csrfmiddlewaretoken": token},
        ).status_code
        == 200
    )
    response = client.post(
        "/accounts/login/",
        {"username": "carol", "password": PASSWORD, "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    assert (
        client.post(
            "/accounts/logout/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
        ).status_code
        == 302
    )
    assert client.get("/").status_code == 302


def test_login_without_csrf_is_refused():
    make_user("dave")
    client = Client(enforce_csrf_checks=True)
    response = client.post("/accounts/login/", {"username": "dave", "password": PASSWORD})
    assert response.status_code == 403


def test_pages_need_login():
    assert Client().get("/").status_code == 302
    assert Client().get("/c/1").status_code == 302


def test_conversation_list_newest_activity_first_with_preview_and_unread():
    me, a, b = make_user("me"), make_user("anna"), make_user("ben")
    old = make_conversation(me, a)
    new = make_conversation(me, b)
    services.message_create(conversation_id=old.pk, sender=a, body="older news")
    services.message_create(conversation_id=new.pk, sender=b, body="fresh <b>news</b>")
    services.message_create(conversation_id=new.pk, sender=b, body="more news")
    html = logged_in_client(me).get("/").content.decode()
    assert html.index(f'id="conv-{new.pk}"') < html.index(f'id="conv-{old.pk}"')
    assert "more news" in html and "older news" in html
    assert 'data-unread="2"' in html and 'data-unread="1"' in html
    assert 'ws-connect="/ws/inbox?since=' in html
    services.message_create(conversation_id=old.pk, sender=a, body="bump")
    html = logged_in_client(me).get("/").content.decode()
    assert html.index(f'id="conv-{old.pk}"') < html.index(f'id="conv-{new.pk}"')


def test_start_one_to_one_and_group_conversations():
    me, a, b = make_user("me"), make_user("anna"), make_user("ben")
    client = logged_in_client(me)
    r = client.post("/c/new", {"usernames": "anna"})
    assert r.status_code == 302
    one = Conversation.objects.get(pk=int(r["Location"].rsplit("/", 1)[1]))
    assert set(one.participants.values_list("username", flat=True)) == {"me", "anna"}
    # the same 1:1 again is reused, not duplicated
    assert client.post("/c/new", {"usernames": "anna"})["Location"] == r["Location"]
    r = client.post("/c/new", {"usernames": "anna, ben", "title": "Team"})
    group = Conversation.objects.get(pk=int(r["Location"].rsplit("/", 1)[1]))
    assert group.title == "Team" and group.participants.count() == 3
    assert {a, b} <= set(group.participants.all())


def test_unknown_username_is_refused_with_a_form_error():
    me = make_user("me")
    make_user("anna")
    r = logged_in_client(me).post("/c/new", {"usernames": "anna, ghost"})
    assert r.status_code == 400
    assert "No such user: ghost." in r.content.decode()
    assert Conversation.objects.count() == 0
    r = logged_in_client(me).post("/c/new", {"usernames": "me"})
    assert r.status_code == 400 and "at least one other user" in r.content.decode()


def test_starting_conversations_is_limited_per_user_per_window(settings):
    """One client started 1,500 conversations in 14 s: now CHAT_NEW_CONVERSATIONS_LIMIT per
    window; past it 429 with Retry-After, a form error, and nothing created."""
    settings.CHAT_NEW_CONVERSATIONS_LIMIT = 3
    me, anna = make_user("me"), make_user("anna")
    others = [make_user(f"x{i}") for i in range(5)]
    client = logged_in_client(me)
    for other in others[:3]:  # at the bound
        assert client.post("/c/new", {"usernames": f"anna {other.username}"}).status_code == 302
    r = client.post("/c/new", {"usernames": f"anna {others[3].username}"})
    assert r.status_code == 429 and 0 < int(r["Retry-After"]) <= 600
    assert "too many conversations" in r.content.decode()
    assert Conversation.objects.count() == 3
    # Reusing a 1:1 that exists creates nothing, and is not refused.
    assert logged_in_client(anna).post("/c/new", {"usernames": "me"}).status_code == 302
    # Another user is not held back by this one.
    assert logged_in_client(anna).post("/c/new", {"usernames": "x4 x3"}).status_code == 302


def test_the_list_shows_a_bounded_page_of_conversations(settings):
    settings.CHAT_INBOX_FOLLOW_LIMIT = 3
    me = make_user("me")
    convs = [make_conversation(me, make_user(f"p{i}")) for i in range(5)]
    for conv in convs:
        services.message_create(conversation_id=conv.pk, sender=me, body=f"in {conv.pk}")
    client = logged_in_client(me)
    first = client.get("/").content.decode()
    shown = [int(c) for c in re.findall(r'<li id="conv-(\d+)"', first)]
    assert shown == [c.pk for c in reversed(convs)][:3]
    assert "?page=2" in first and "ws-connect" in first
    second = client.get("/?page=2").content.decode()
    assert [int(c) for c in re.findall(r'<li id="conv-(\d+)"', second)] == [
        convs[1].pk,
        convs[0].pk,
    ]
    assert "ws-connect" not in second  # an older page is not live
    assert client.get("/?page=x").status_code == 200


def test_leaving_a_conversation_takes_it_off_the_list_and_its_page():
    me, anna = make_user("me"), make_user("anna")
    conv = make_conversation(me, anna, title="Team")
    client = logged_in_client(me)
    r = client.post(f"/c/{conv.pk}/leave")
    assert r.status_code == 302 and r["Location"] == "/"
    assert f'id="conv-{conv.pk}"' not in client.get("/").content.decode()
    assert client.get(f"/c/{conv.pk}").status_code == 404
    assert client.post(f"/c/{conv.pk}/leave").status_code == 404
    assert list(conv.participants.values_list("username", flat=True)) == ["anna"]


def test_conversation_page_has_latest_50_and_the_websocket_form():
    me, other = make_user("me"), make_user("other")
    conv = make_conversation(me, other)
    for i in range(60):
        services.message_create(conversation_id=conv.pk, sender=other, body=f"msg {i}")
    r = logged_in_client(me).get(f"/c/{conv.pk}")
    html = r.content.decode()
    seqs = [int(s) for s in re.findall(r'data-seq="(\d+)"', html)]
    assert seqs == list(range(11, 61))
    assert f'ws-connect="/ws/chat/{conv.pk}"' in html and 'hx-ext="ws,parley"' in html
    assert "ws-send" in html and 'name="chat_message"' in html
    assert 'data-last-seq="60"' in html
    assert "load-older" in html and "?before=11" in html
    # Nothing loaded from another site (no CDN): every script, style and link is our own.
    # (Not `"cdn" not in html`: a random CSRF token contains "cdn" about once in 400 pages.)
    off_site = re.findall(r'(?:src|href)="((?:[a-z]+:)?//[^"]*)"', html, re.I)
    assert off_site == [], off_site
    assert "/static/chat/vendor/htmx-2.0.11.min.js" in html
    # opening it marked everything read
    assert logged_in_client(me).get("/").content.decode().count('data-unread="0"') == 1


def test_history_pages_back_without_gaps_or_duplicates(django_assert_max_num_queries):
    me, other = make_user("me"), make_user("other")
    conv = make_conversation(me, other)
    for i in range(120):
        services.message_create(conversation_id=conv.pk, sender=other, body=f"msg {i}")
    client = logged_in_client(me)
    html = client.get(f"/c/{conv.pk}").content.decode()
    seen = [int(s) for s in re.findall(r'data-seq="(\d+)"', html)]
    before = re.search(r"\?before=(\d+)", html).group(1)
    while True:
        with django_assert_max_num_queries(8):
            page = client.get(f"/c/{conv.pk}/history?before={before}").content.decode()
        seen = [int(s) for s in re.findall(r'data-seq="(\d+)"', page)] + seen
        m = re.search(r"\?before=(\d+)", page)
        if not m:
            break
        before = m.group(1)
    assert seen == list(range(1, 121))
    assert client.get(f"/c/{conv.pk}/history?before=abc").status_code == 400


def test_non_participant_gets_404_for_page_and_history():
    a, b, outsider = make_user(), make_user(), make_user()
    conv = make_conversation(a, b)
    client = logged_in_client(outsider)
    r = client.get(f"/c/{conv.pk}")
    assert r.status_code == 404 and "Not found" in r.content.decode()
    assert client.get(f"/c/{conv.pk}/history?before=10").status_code == 404
    assert client.get("/c/999999").status_code == 404


def test_admin_lists_users_conversations_and_messages():
    admin = make_user("root")
    admin.is_staff = admin.is_superuser = True
    admin.save()
    conv = make_conversation(admin, make_user())
    services.message_create(conversation_id=conv.pk, sender=admin, body="hello admin")
    client = logged_in_client(admin)
    for url in (
        "/admin/auth/user/",
        "/admin/chat/conversation/",
        "/admin/chat/message/",
        f"/admin/chat/conversation/{conv.pk}/change/",
    ):
        assert client.get(url).status_code == 200, url
    assert Message.objects.count() == 1


def test_moderators_see_the_text_before_an_edit_in_the_admin():
    admin = make_user("moderator")
    admin.is_staff = admin.is_superuser = True
    admin.save()
    author = make_user()
    conv = make_conversation(author, make_user())
    mine, _ = services.message_create(conversation_id=conv.pk, sender=author, body="rude words")
    services.message_edit(conversation_id=conv.pk, editor=author, message_id=mine.pk, body="hi")
    page = logged_in_client(admin).get(f"/admin/chat/message/{mine.pk}/change/")
    assert page.status_code == 200 and "rude words" in page.content.decode()
    assert "rude words" not in logged_in_client(author).get(f"/c/{conv.pk}").content.decode()


def test_healthz_is_cheap_and_readyz_checks_dependencies():
    r = Client().get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = Client().get("/readyz")
    assert r.status_code == 200, r.content
    body = json.loads(r.content)
    assert body["checks"] == {"database": "ok", "channel_layer": "ok"}


def test_signup_page_and_reverse_urls():
    assert reverse("login") == "/accounts/login/"
    assert Client().get("/accounts/signup/").status_code == 200


def test_conversation_page_escapes_bodies_and_is_the_same_from_the_fragment_cache(
    django_assert_num_queries,
):
    from chat.fragments import message_cache

    alice, bob = make_user(), make_user()
    conversation = make_conversation(alice, bob)
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    for i in range(3):
        services.message_create(conversation_id=conversation.pk, sender=alice, body=f"{hostile}{i}")
    client = logged_in_client(bob)
    message_cache.clear()

    def page(queries: int) -> str:
        with django_assert_num_queries(queries):
            return client.get(f"/c/{conversation.pk}").content.decode()

    def messages_section(html: str) -> str:
        return html.split('id="messages"', 1)[1].split('id="message-form"', 1)[0]

    # session, user, members (with read markers), history keys; then the messages the
    # fragment cache lacks, and moving bob's read marker: 6. Read and cached: only the 4.
    first, second = page(6), page(4)
    rendered, cached = messages_section(first), messages_section(second)
    assert rendered == cached
    assert rendered.count('<article id="msg-') == 3
    assert "<script>" not in rendered and "<img" not in rendered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered
    for uid, name in ((alice.pk, alice.username), (bob.pk, bob.username)):
        assert f'id="presence-{uid}"' in second and f'id="typing-{uid}"' in second
        assert name in second


def test_ids_and_sequence_numbers_are_never_locale_formatted(settings):
    """HTML ids and data attributes carry raw numbers, whatever the number formatting."""
    from chat.fragments import message_cache

    settings.USE_THOUSAND_SEPARATOR = True
    alice, bob = make_user(), make_user()
    conversation = make_conversation(alice, bob)
    services.message_create(conversation_id=conversation.pk, sender=alice, body="hi")
    Conversation.objects.filter(pk=conversation.pk).update(last_seq=12344)
    message, _ = services.message_create(conversation_id=conversation.pk, sender=alice, body="yo")
    message_cache.clear()
    html = logged_in_client(bob).get(f"/c/{conversation.pk}").content.decode()
    assert message.seq == 12345
    assert f'data-seq="{message.seq}"' in html
    assert 'data-last-seq="12345"' in html
    assert f'data-max-length="{settings.CHAT_MAX_MESSAGE_LENGTH}"' in html
    assert "12,345" not in html
    rows = logged_in_client(bob).get("/").content.decode()
    assert 'data-last-seq="12345"' in rows


# --- edits, deletes and people ----------------------------------------------------------


def test_the_sender_edits_and_deletes_over_http_and_others_are_refused():
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    mine, _ = services.message_create(conversation_id=conv.pk, sender=a, body="typo")
    edit = reverse("chat:message_edit", args=[conv.pk, mine.pk])
    delete = reverse("chat:message_delete", args=[conv.pk, mine.pk])
    assert logged_in_client(b).post(edit, {"chat_message": "hijack"}).status_code == 403
    assert logged_in_client(b).post(delete).status_code == 403
    refused = logged_in_client(a).post(edit, {"chat_message": "   "})
    assert refused.status_code == 400 and "cannot be empty" in refused.content.decode()
    assert refused["Content-Type"].startswith("text/plain")
    assert logged_in_client(a).post(edit, {"chat_message": "fixed"}).status_code == 204
    page = logged_in_client(b).get(f"/c/{conv.pk}").content.decode()
    assert "fixed" in page and "(edited)" in page and "typo" not in page
    assert logged_in_client(a).get(edit).status_code == 405
    assert logged_in_client(a).post(delete).status_code == 204
    page = logged_in_client(b).get(f"/c/{conv.pk}").content.decode()
    assert "This message was deleted." in page and "fixed" not in page
    # The page's position counts the changes: its socket replays nothing it shows.
    assert 'data-last-seq="3"' in page


def test_changes_to_a_conversation_one_is_not_in_are_not_found():
    a, b, outsider = make_user(), make_user(), make_user()
    conv = make_conversation(a, b)
    mine, _ = services.message_create(conversation_id=conv.pk, sender=a, body="ours")
    client = logged_in_client(outsider)
    assert client.post(reverse("chat:message_delete", args=[conv.pk, mine.pk])).status_code == 404
    add = client.post(reverse("chat:participants_add", args=[conv.pk]), {"usernames": "x"})
    assert add.status_code == 404


def test_adding_people_shows_the_line_and_a_refusal_says_why():
    a, b = make_user("v-add-a"), make_user("v-add-b")
    make_user("v-add-c")
    group = make_conversation(a, b, title="group")
    url = reverse("chat:participants_add", args=[group.pk])
    refused = logged_in_client(a).post(url, {"usernames": "v-add-c nobody-x"})
    assert refused.status_code == 400 and "No such user: nobody-x." in refused.content.decode()
    added = logged_in_client(a).post(url, {"usernames": "v-add-c"})
    assert added.status_code == 302
    page = logged_in_client(b).get(f"/c/{group.pk}").content.decode()
    assert "v-add-a added v-add-c" in page
    direct = services.conversation_start(creator=a, usernames=["v-add-b"])
    page = logged_in_client(a).get(f"/c/{direct.pk}").content.decode()
    assert "Add people" not in page
    refused = logged_in_client(a).post(
        reverse("chat:participants_add", args=[direct.pk]), {"usernames": "v-add-c"}
    )
    assert refused.status_code == 400 and "1:1" in refused.content.decode()


# --- search ---------------------------------------------------------------------------------


def _hits(html: str) -> list[str]:
    """The search results' message links, in order."""
    return re.findall(r'<a href="(/c/\d+\?around=\d+#msg-\d+)" class="search-link">', html)


def test_search_needs_login_and_is_reachable_from_the_list():
    assert Client().get("/search?q=x").status_code == 302
    html = logged_in_client(make_user()).get("/").content.decode()
    assert 'role="search"' in html and 'action="/search"' in html  # the list's search box
    assert '<label for="id_search_q">Search messages</label>' in html
    assert 'class="nav-search" href="/search"' in html  # and every page's navigation


def test_search_shows_own_hits_linked_and_highlighted_never_others():
    me, ann, eve = make_user("s-me"), make_user("s-ann"), make_user("s-eve")
    ours = make_conversation(me, ann, title="Trip")
    theirs = make_conversation(ann, eve, title="Secret")
    left = make_conversation(me, ann, title="Left")
    services.message_create(conversation_id=ours.pk, sender=ann, body="pack the Tent")
    tent, _ = services.message_create(conversation_id=ours.pk, sender=ann, body="tent <b>pegs</b>")
    services.message_create(conversation_id=theirs.pk, sender=eve, body="tent surprise")
    services.message_create(conversation_id=left.pk, sender=ann, body="tent we left")
    services.conversation_leave(conversation_id=left.pk, user=me)
    r = logged_in_client(me).get("/search", {"q": "tent"})
    html = r.content.decode()
    assert r.status_code == 200 and "2 results." in html
    assert f"/c/{ours.pk}?around=2#msg-{tent.pk}" in _hits(html)
    assert len(_hits(html)) == 2
    assert "surprise" not in html and "Secret" not in html and "we left" not in html
    assert '<span class="conv-title">Trip</span>' in html
    assert '<span class="author">s-ann</span>' in html
    assert "pack the <mark>Tent</mark>" in html
    assert "<mark>tent</mark> &lt;b&gt;pegs&lt;/b&gt;" in html
    # eve searches the same word: only her own conversation's message
    other = logged_in_client(eve).get("/search", {"q": "tent"}).content.decode()
    assert _hits(other) == [f"/c/{theirs.pk}?around=1#msg-{theirs.messages.get().pk}"]
    assert (
        logged_in_client(make_user())
        .get("/search", {"q": "tent"})
        .content.decode()
        .count("No messages found.")
        == 1
    )


def test_search_escapes_bodies_before_highlighting():
    me = make_user()
    conv = make_conversation(me)
    services.message_create(
        conversation_id=conv.pk, sender=me, body='<script>alert("amp")</script> & amp'
    )
    html = logged_in_client(me).get("/search", {"q": "amp"}).content.decode()
    assert "<script>alert" not in html and "1 result." in html
    assert (
        "&lt;script&gt;alert(&quot;<mark>amp</mark>&quot;)&lt;/script&gt; &amp; <mark>amp</mark>"
    ) in html


@pytest.mark.parametrize(
    ("q", "message"),
    [
        ("", "Type a word to search for."),
        ("   ", "Type a word to search for."),
        ("?!", "Search for at least one word (letters or digits)."),
        ("w" * 201, "Search for at most 200 characters (this is 201)."),
        ("a\x00b", "Null characters are not allowed."),  # Postgres would refuse it
    ],
)
def test_search_refuses_an_empty_or_overlong_query_with_a_message(q, message):
    r = logged_in_client(make_user()).get("/search", {"q": q})
    assert r.status_code == 400
    assert message in r.content.decode() and 'role="alert"' in r.content.decode()


def test_search_page_without_a_query_is_just_the_form():
    r = logged_in_client(make_user()).get("/search")
    html = r.content.decode()
    assert r.status_code == 200 and 'role="search"' in html and 'role="alert"' not in html
    assert '<label for="id_q">Search messages</label>' in html and "search-count" not in html
    assert logged_in_client(make_user()).get("/search", {"q": "w" * 200}).status_code == 200


def test_search_shows_at_most_chat_search_results(settings):
    settings.CHAT_SEARCH_RESULTS = 3
    me = make_user()
    conv = make_conversation(me)
    for n in range(1, 4):
        services.message_create(conversation_id=conv.pk, sender=me, body=f"plum {n}")
    client = logged_in_client(me)
    html = client.get("/search", {"q": "plum"}).content.decode()  # at the bound
    assert len(_hits(html)) == 3 and "3 results." in html and "narrow" not in html
    services.message_create(conversation_id=conv.pk, sender=me, body="plum 4")
    html = client.get("/search", {"q": "plum"}).content.decode()  # one past it
    assert [int(s) for s in re.findall(r"\?around=(\d+)", html)] == [4, 3, 2]
    assert "The best 3 results: add a word to narrow the search." in html


# --- a conversation around a message (a search result) ---------------------------------------


def _seqs(html: str) -> list[int]:
    return [int(s) for s in re.findall(r'data-seq="(\d+)"', html)]


def _conversation_of(n: int, settings, page: int = 10):
    settings.CHAT_HISTORY_PAGE_SIZE = page
    me, other = make_user(), make_user()
    conv = make_conversation(me, other)
    messages = [
        services.message_create(conversation_id=conv.pk, sender=other, body=f"m{i}")[0]
        for i in range(1, n + 1)
    ]
    return me, conv, messages


def test_around_an_old_message_shows_its_page_marked_without_the_live_socket(settings):
    me, conv, messages = _conversation_of(40, settings)
    target = messages[19]  # seq 20: the page ends half a page after it
    client = logged_in_client(me)
    html = client.get(f"/c/{conv.pk}?around=20").content.decode()
    assert _seqs(html) == list(range(16, 26))
    assert html.count("msg-target") == 1
    assert f'<article id="msg-{target.pk}" class="msg msg-target" aria-current="true"' in html
    assert "?before=16" in html  # older ones as usual
    # Newer ones are on the newest page; no socket, so no replay and nothing out of order.
    assert f'id="load-newer" class="load-newer" href="/c/{conv.pk}"' in html
    assert "Jump to latest" in html and 'data-live="false"' in html
    assert "ws-connect" not in html and "chat_message" not in html
    assert 'data-last-seq="25"' in html and 'data-around="20"' in html
    # Read up to what it showed, not beyond.
    assert conv.participant_set.get(user=me).last_read_seq == 25
    # The marked fragment is not cached for everyone: the newest page has no target.
    assert "msg-target" not in client.get(f"/c/{conv.pk}?around=40").content.decode().replace(
        f'id="msg-{messages[39].pk}" class="msg msg-target"', ""
    )
    latest = client.get(f"/c/{conv.pk}").content.decode()
    assert "msg-target" not in latest and _seqs(latest) == list(range(31, 41))


def test_around_the_first_message_has_nothing_older(settings):
    me, conv, messages = _conversation_of(40, settings)
    html = logged_in_client(me).get(f"/c/{conv.pk}?around=1").content.decode()
    assert _seqs(html) == list(range(1, 11)) and "load-older" not in html
    assert f'id="msg-{messages[0].pk}" class="msg msg-target"' in html and "load-newer" in html


def test_around_a_recent_message_is_the_live_page_with_the_message_marked(settings):
    me, conv, messages = _conversation_of(40, settings)
    html = logged_in_client(me).get(f"/c/{conv.pk}?around=37").content.decode()
    assert _seqs(html) == list(range(31, 41)) and 'data-last-seq="40"' in html
    assert f'ws-connect="/ws/chat/{conv.pk}"' in html and "load-newer" not in html
    assert 'data-live="false"' not in html
    assert f'id="msg-{messages[36].pk}" class="msg msg-target" aria-current="true"' in html
    assert conv.participant_set.get(user=me).last_read_seq == 40


@pytest.mark.parametrize("around", ["abc", "0", "-3", "41", "99999999999999999999", ""])
def test_around_that_is_not_a_message_gives_the_newest_page(settings, around):
    me, conv, _ = _conversation_of(40, settings)
    r = logged_in_client(me).get(f"/c/{conv.pk}", {"around": around})
    html = r.content.decode()
    assert r.status_code == 200 and _seqs(html) == list(range(31, 41))
    assert "msg-target" not in html and "ws-connect" in html


def test_around_in_a_conversation_of_others_is_404(settings):
    _, conv, _ = _conversation_of(5, settings)
    assert logged_in_client(make_user()).get(f"/c/{conv.pk}?around=2").status_code == 404
