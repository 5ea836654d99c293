from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

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

from chat import fragments, selectors, services
from chat.forms import ConversationStartForm, SignupForm
from chat.groups import user_group
from parley import drain, metrics
from parley.auth import hashing

logger = logging.getLogger(__name__)


@require_GET
@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. No dependency checks."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: can this process serve? 503 only while it drains. Postgres and Redis are
    checked and reported (`degraded`, the `parley_dependency_up` gauge), but do not make it
    unready: every pod shares them, so a blip made every pod unready at once, nginx answered
    503 and no socket could reconnect, although sends are stored and confirmed with Redis
    down and pages still load from the fragment cache and the database."""
    database = _database_check()  # runs while the layer is checked: both within 2 s
    checks: dict[str, str] = {}
    try:
        async_to_sync(_layer_round_trip)()
        checks["channel_layer"] = "ok"
    except Exception as exc:
        logger.warning("readiness: channel layer down", extra={"error": repr(exc)})
        checks["channel_layer"] = f"error: {type(exc).__name__}"
    checks["database"] = _database_state(database)
    if checks["database"] != "ok":
        logger.warning("readiness: database down", extra={"error": checks["database"]})
    degraded = sorted(k for k, v in checks.items() if v != "ok")
    for dependency, state in checks.items():
        metrics.DEPENDENCY_UP.labels(dependency=dependency).set(state == "ok")
    for dependency in degraded:
        metrics.READINESS_FAILURES.labels(dependency=dependency).inc()
    draining = drain.is_draining()
    status = "draining" if draining else "degraded" if degraded else "ok"
    body = {
        "status": status,
        "ready": not draining,
        "checks": checks,
        "degraded": degraded,
        "failed": degraded,  # the name before `degraded`, kept for existing checks
    }
    return HttpResponse(
        json.dumps(body), status=503 if draining else 200, content_type="application/json"
    )


READY_CHECK_SECONDS = 2.0  # each check's bound: a probe times out after 4 s (Kubernetes)
_db_checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz-db")
_db_check: Future | None = None
_db_check_lock = threading.Lock()


def _select_one() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # this thread's connection goes back to the pool


def _database_check() -> Future:
    """A `SELECT 1` on its own thread. With Postgres down it waits out the pool's timeout
    (DB_POOL_TIMEOUT), which may be set longer than a probe waits; one at a time (a probe
    that comes while one is still waiting shares its answer)."""
    global _db_check
    with _db_check_lock:
        if _db_check is None or _db_check.done():
            _db_check = _db_checks.submit(_select_one)
        return _db_check


def _database_state(check: Future) -> str:
    """'ok' or why not, within READY_CHECK_SECONDS."""
    try:
        check.result(timeout=READY_CHECK_SECONDS)
    except FutureTimeout:
        return "error: timeout"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


async def _layer_round_trip() -> None:
    import asyncio

    layer = get_channel_layer()
    # The default prefix matters: channels-redis pops one Redis key per prefix, and in a
    # process with open sockets another prefix would wait behind their 5 s blocking pop.
    token = uuid.uuid4().hex
    # All of it bounded: with Redis unreachable (a stopped container's address drops
    # packets) the pub/sub layer's subscribe in new_channel hung past the probe's timeout.
    async with asyncio.timeout(READY_CHECK_SECONDS):
        channel = await layer.new_channel()
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
