from __future__ import annotations

import json
import logging
import time
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db import connection, transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import rendering, selectors, services
from chat.consumers import user_group
from chat.forms import ConversationStartForm, SignupForm
from parley import drain, metrics

logger = logging.getLogger(__name__)


@require_GET
@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. No dependency checks."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: a database query and a channel-layer round trip."""
    checks: dict[str, str] = {}
    if drain.is_draining():
        checks["process"] = "draining"
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        checks["database"] = "ok"
    except Exception as exc:
        logger.warning("readiness: database down", extra={"error": repr(exc)})
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        async_to_sync(_layer_round_trip)()
        checks["channel_layer"] = "ok"
    except Exception as exc:
        logger.warning("readiness: channel layer down", extra={"error": repr(exc)})
        checks["channel_layer"] = f"error: {type(exc).__name__}"
    failed = sorted(k for k, v in checks.items() if v != "ok")
    for dependency in failed:
        metrics.READINESS_FAILURES.labels(dependency=dependency).inc()
    body = {"status": "ok" if not failed else "unavailable", "checks": checks, "failed": failed}
    return HttpResponse(
        json.dumps(body), status=503 if failed else 200, content_type="application/json"
    )


async def _layer_round_trip() -> None:
    import asyncio

    layer = get_channel_layer()
    # The default prefix matters: channels-redis pops one Redis key per prefix, and in a
    # process with open sockets another prefix would wait behind their 5 s blocking pop.
    channel = await layer.new_channel()
    token = uuid.uuid4().hex
    async with asyncio.timeout(2.0):
        await layer.send(channel, {"type": "readyz", "token": token})
        message = await layer.receive(channel)
    if message.get("token") != token:
        raise RuntimeError("channel layer returned a foreign message")


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat:conversation_list")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
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


def _participant_conversation(request: HttpRequest, conversation_id: int):
    conversation = selectors.conversation_for_participant(request.user.pk, conversation_id)
    if conversation is None:
        raise Http404("No such conversation")
    return conversation


@login_required
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _participant_conversation(request, conversation_id)
    messages = selectors.conversation_history(conversation.pk)
    last_seq = conversation.last_seq
    services.conversation_mark_read(
        conversation_id=conversation.pk, user_id=request.user.pk, seq=last_seq
    )
    names = selectors.participant_names(conversation.pk)
    return render(
        request,
        "chat/conversation_detail.html",
        {
            "conversation": conversation,
            "title": selectors.conversation_title(
                conversation, list(names.values()), request.user.get_username()
            ),
            "participants": list(names.items()),
            "messages_html": rendering.messages_html(messages),
            # The page has rendered everything up to the conversation's sequence as read now.
            "last_seq": messages[-1].seq if messages else 0,
            "first_seq": messages[0].seq if messages else 0,
            "has_older": bool(messages) and messages[0].seq > 1,
            "max_length": settings.CHAT_MAX_MESSAGE_LENGTH,
        },
    )


@login_required
@require_GET
def conversation_history(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _participant_conversation(request, conversation_id)
    try:
        before = int(request.GET["before"])
    except (KeyError, ValueError):
        return HttpResponse("before must be a sequence number", status=400)
    messages = selectors.conversation_history(conversation.pk, before_seq=before)
    return render(
        request,
        "chat/partials/history.html",
        {
            "conversation": conversation,
            "messages_html": rendering.messages_html(messages),
            "first_seq": messages[0].seq if messages else 0,
            "has_older": bool(messages) and messages[0].seq > 1,
        },
    )
