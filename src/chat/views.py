from __future__ import annotations

import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import fragments, selectors, services
from chat.forms import ConversationStartForm, SignupForm
from chat.groups import user_group
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
    # update between this render and the socket joining its groups is not missed.
    rendered_at = int(time.time() * 1000)
    return render(
        request,
        "chat/conversation_list.html",
        {
            "rows": selectors.conversation_list(request.user),
            "form": ConversationStartForm(),
            "rendered_at": rendered_at,
        },
    )


@login_required
@require_POST
def conversation_new(request: HttpRequest) -> HttpResponse:
    form = ConversationStartForm(request.POST)
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
        else:
            user_ids = selectors.participant_user_ids(conversation.pk)
            transaction.on_commit(lambda: _announce(conversation.pk, user_ids))
            return redirect("chat:conversation_detail", conversation_id=conversation.pk)
    return render(
        request,
        "chat/conversation_list.html",
        {
            "rows": selectors.conversation_list(request.user),
            "form": form,
        },
        status=400,
    )


def _announce(conversation_id: int, user_ids: list[int]) -> None:
    """Open conversation lists of the participants start following the new conversation."""
    layer = get_channel_layer()
    try:
        for uid in user_ids:
            async_to_sync(layer.group_send)(
                user_group(uid), {"type": "inbox.joined", "conversation_id": conversation_id}
            )
    except Exception:
        logger.warning("could not announce new conversation", exc_info=True)


def _members_or_404(request: HttpRequest, conversation_id: int) -> selectors.Members:
    members = selectors.conversation_members(conversation_id)
    if members is None or request.user.pk not in members.names:
        raise Http404("No such conversation")
    return members


def _history_context(members: selectors.Members, before_seq: int | None = None) -> dict:
    keys = selectors.history_keys(members.pk, before_seq=before_seq)
    return {
        "conversation": members,
        "messages_html": fragments.history_html(members.pk, keys),
        "first_seq": keys[0][1] if keys else 0,
        "last_seq": keys[-1][1] if keys else 0,
        "has_older": bool(keys) and keys[0][1] > 1,
    }


@login_required
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: int) -> HttpResponse:
    members = _members_or_404(request, conversation_id)
    context = _history_context(members)
    if members.read_seqs[request.user.pk] < members.last_seq:
        # The page shows everything up to the conversation's sequence: read now.
        services.conversation_mark_read(
            conversation_id=members.pk, user_id=request.user.pk, seq=members.last_seq
        )
    names = list(members.names.values())
    context.update(
        title=selectors.conversation_title(members, names, request.user.get_username()),
        participants=list(members.names.items()),
        presence=len(members.names) <= settings.CHAT_PRESENCE_MAX_MEMBERS,
        max_length=settings.CHAT_MAX_MESSAGE_LENGTH,
    )
    return render(request, "chat/conversation_detail.html", context)


@login_required
@require_GET
def conversation_history(request: HttpRequest, conversation_id: int) -> HttpResponse:
    members = _members_or_404(request, conversation_id)
    try:
        before = int(request.GET["before"])
    except (KeyError, ValueError):
        return HttpResponse("before must be a sequence number", status=400)
    return render(request, "chat/partials/history.html", _history_context(members, before))
