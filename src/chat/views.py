from __future__ import annotations

import logging
import time

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import fragments, selectors, services
from chat.forms import ConversationStartForm, MessageSearchForm, PeopleAddForm, SignupForm
from chat.models import Conversation, Message
from parley.auth import hashing

logger = logging.getLogger(__name__)


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat:conversation_list")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with hashing():  # the new password's hash: no connection held, bounded per process
            user = form.save(commit=False)
        user.save()
        login(request, user, backend=settings.AUTHENTICATION_BACKENDS[0])
        return redirect("chat:conversation_list")
    return render(
        request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200
    )


@login_required
@require_GET
def conversation_list(request: HttpRequest) -> HttpResponse:
    # Taken before the rows are read: the list socket sends whatever changed after it, so an
    # update between this render and the socket following its conversations is not missed.
    rendered_at = int(time.time() * 1000)
    return render(request, "chat/conversation_list.html", _list_context(request, rendered_at))


def _list_context(request: HttpRequest, rendered_at: int | None = None, form=None) -> dict:
    """The CHAT_INBOX_FOLLOW_LIMIT most recently active conversations (what the list's
    socket follows live); `?page=N` for older ones."""
    try:
        page = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        page = 1
    limit = settings.CHAT_INBOX_FOLLOW_LIMIT
    rows = selectors.conversation_list(request.user, limit=limit + 1, offset=(page - 1) * limit)
    return {
        "rows": rows[:limit],
        "form": form or ConversationStartForm(),
        "rendered_at": rendered_at if page == 1 else None,  # older pages are not live
        "page": page,
        "more": len(rows) > limit,
    }


@login_required
@require_POST
def conversation_new(request: HttpRequest) -> HttpResponse:
    form = ConversationStartForm(request.POST)
    status = 400
    headers = {}
    if form.is_valid():
        try:
            conversation = services.conversation_start(
                creator=request.user,
                usernames=form.cleaned_data["usernames"],
                title=form.cleaned_data["title"],
            )
        except services.UnknownUsers as exc:
            if exc.usernames:
                form.add_error("usernames", f"No such user: {', '.join(exc.usernames)}.")
            else:
                form.add_error("usernames", "Name at least one other user.")
        except services.TooManyConversations as exc:
            form.add_error(
                None,
                "You have started too many conversations in a short time. "
                f"Try again in {exc.retry_after} seconds.",
            )
            status, headers = 429, {"Retry-After": str(exc.retry_after)}
        else:
            return redirect("chat:conversation_detail", conversation_id=conversation.pk)
    response = render(
        request, "chat/conversation_list.html", _list_context(request, form=form), status=status
    )
    for name, value in headers.items():
        response[name] = value
    return response


@login_required
@require_POST
def conversation_leave(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """Leaves the conversation: its sockets of this user close, its row leaves the lists."""
    if not services.conversation_leave(conversation_id=conversation_id, user=request.user):
        raise Http404("No such conversation")
    return redirect("chat:conversation_list")


@login_required
@require_POST
def conversation_mute(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """Mutes (`muted=1`) or unmutes (`muted=0`) the conversation for this user, then shows
    it again: it still counts unread, but notifies only of mentions."""
    muted = request.POST.get("muted") == "1"
    if not services.conversation_mute(
        conversation_id=conversation_id, user=request.user, muted=muted
    ):
        raise Http404("No such conversation")
    return redirect("chat:conversation_detail", conversation_id=conversation_id)


def _members_or_404(request: HttpRequest, conversation_id: int) -> selectors.Members:
    members = selectors.conversation_members(conversation_id)
    if members is None or request.user.pk not in members.names:
        raise Http404("No such conversation")
    return members


def _history_context(
    members: selectors.Members, before_seq: int | None = None, target_seq: int | None = None
) -> dict:
    """The page of history before `before_seq` (the newest without it), the message
    `target_seq` marked."""
    keys = selectors.history_keys(members.pk, before_seq=before_seq)
    target_id = next((key[0] for key in keys if key[1] == target_seq), None)
    return {
        "conversation": members,
        "messages_html": fragments.history_html(members.pk, keys, target_id=target_id),
        "first_seq": keys[0][1] if keys else 0,
        # The newest page: everything up to the conversation's number, edits of messages
        # shown included (they are shown in the message); later ones the socket replays.
        "last_seq": max(keys[-1][1] if keys else 0, 0 if before_seq else members.last_seq),
        "has_older": bool(keys) and keys[0][1] > 1,
    }


def _around(request: HttpRequest, members: selectors.Members) -> int | None:
    """`?around=<seq>` when it names one of the conversation's messages, else None."""
    try:
        seq = int(request.GET["around"])
    except (KeyError, ValueError):
        return None
    return seq if 1 <= seq <= members.last_seq else None


def _window_context(members: selectors.Members, seq: int) -> dict:
    """A page of history around message `seq`, the message marked: it ends half a page
    after `seq` (or at the newest message; a whole page from the first one near the start).
    Sequences are gapless, so that page holds `seq`."""
    page = settings.CHAT_HISTORY_PAGE_SIZE
    end = min(members.last_seq, max(seq + page // 2, page))
    context = _history_context(members, before_seq=end + 1, target_seq=seq)
    # A window that reaches the newest entry is the live page (with a target): the
    # socket's replay starts after it. One that does not shows no newer messages live.
    context["live"] = end >= members.last_seq
    if context["live"]:
        context["last_seq"] = max(context["last_seq"], members.last_seq)
    return context


@login_required
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """The newest page of the conversation, live over its websocket.

    `?around=<seq>` (a search result) shows the page around that message instead, marked
    and scrolled to. If that page reaches the newest message it is live as usual. If it
    does not, it opens no socket (a socket would replay every newer message, or append new
    ones after a gap) and no send form: it links to the newest page ("Jump to latest") for
    newer messages, and offers older ones as usual. An `around` that is not a sequence of
    this conversation gives the newest page."""
    members = _members_or_404(request, conversation_id)
    return render(request, "chat/conversation_detail.html", _detail_context(request, members))


def _detail_context(
    request: HttpRequest, members: selectors.Members, add_form: PeopleAddForm | None = None
) -> dict:
    around = _around(request, members)
    if around is None:
        context = _history_context(members)
        context["live"] = True
    else:
        context = _window_context(members, around)
    # The page shows everything up to the sequence it ends at: read up to there.
    seen = members.last_seq if context["live"] else context["last_seq"]
    if members.read_seqs[request.user.pk] < seen:
        services.conversation_mark_read(
            conversation_id=members.pk, user_id=request.user.pk, seq=seen
        )
    names = list(members.names.values())
    context.update(
        title=selectors.conversation_title(members, names, request.user.get_username()),
        participants=list(members.names.items()),
        presence=len(members.names) <= settings.CHAT_PRESENCE_MAX_MEMBERS,
        max_length=settings.CHAT_MAX_MESSAGE_LENGTH,
        add_form=add_form or PeopleAddForm(),
        around=around,
        muted=request.user.pk in members.muted,
    )
    return context


def _plain(text: str, status: int) -> HttpResponse:
    """A reason a page shows as it is (chat.js puts it in the error line)."""
    return HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")


@login_required
@require_POST
def message_edit(request: HttpRequest, conversation_id: int, message_id: int) -> HttpResponseBase:
    """The sender replaces their message's text: 204, and every page of the conversation
    is sent the edit by its socket. 400 with the reason when refused; 403 someone else's."""
    try:
        services.message_edit(
            conversation_id=conversation_id,
            editor=request.user,
            message_id=message_id,
            body=request.POST.get("chat_message", ""),
        )
    except (Conversation.DoesNotExist, Message.DoesNotExist):
        raise Http404("No such message") from None
    except services.MessageRejected as exc:
        return _plain(str(exc), 400)
    return HttpResponse(status=204)


@login_required
@require_POST
def message_delete(request: HttpRequest, conversation_id: int, message_id: int) -> HttpResponseBase:
    """The sender deletes their message (a tombstone stays): 204; 403 someone else's."""
    try:
        services.message_delete(
            conversation_id=conversation_id, user=request.user, message_id=message_id
        )
    except (Conversation.DoesNotExist, Message.DoesNotExist):
        raise Http404("No such message") from None
    return HttpResponse(status=204)


@login_required
@require_POST
def participants_add(request: HttpRequest, conversation_id: int) -> HttpResponseBase:
    """A participant adds people to a group conversation, then sees it again; a refusal
    shows the conversation with the reason under the form (400)."""
    members = _members_or_404(request, conversation_id)
    form = PeopleAddForm(request.POST)
    if form.is_valid():
        try:
            services.participants_add(
                conversation_id=members.pk,
                actor=request.user,
                usernames=form.cleaned_data["usernames"],
            )
        except services.UnknownUsers as exc:
            form.add_error("usernames", f"No such user: {', '.join(exc.usernames)}.")
        except services.PeopleRefused as exc:
            form.add_error("usernames", str(exc))
        except Conversation.DoesNotExist:
            raise Http404("No such conversation") from None
        else:
            return redirect("chat:conversation_detail", conversation_id=members.pk)
    context = _detail_context(request, members, add_form=form)
    return render(request, "chat/conversation_detail.html", context, status=400)


@login_required
@require_GET
def conversation_history(request: HttpRequest, conversation_id: int) -> HttpResponse:
    members = _members_or_404(request, conversation_id)
    try:
        before = int(request.GET["before"])
    except (KeyError, ValueError):
        return HttpResponse("before must be a sequence number", status=400)
    return render(request, "chat/partials/history.html", _history_context(members, before))


@login_required
@require_GET
def search(request: HttpRequest) -> HttpResponse:
    """Messages of the person's own conversations with every word of `?q=`, best first, at
    most CHAT_SEARCH_RESULTS; each links to its message in its conversation."""
    form = MessageSearchForm(request.GET if "q" in request.GET else None)
    context: dict = {"form": form, "results": None}
    status = 200
    if form.is_bound and not form.is_valid():
        status = 400
    elif form.is_bound:
        query = form.cleaned_data["q"]
        limit = settings.CHAT_SEARCH_RESULTS
        hits = selectors.message_search(user=request.user, query=query, limit=limit + 1)
        terms = selectors.search_terms(query)
        context.update(
            query=query,
            results=[(hit, fragments.highlight(hit.body, terms)) for hit in hits[:limit]],
            more=len(hits) > limit,
            limit=limit,
        )
    return render(request, "chat/search.html", context, status=status)
