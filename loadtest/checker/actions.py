"""What a page's owner does over HTTP besides sending messages: edit or delete one of their
own messages, add someone to the conversation, leave it. Each is a POST through nginx with
the page's session and its CSRF token (from the conversation page, as chat.js takes it from
the page's form), retried as a person would retry it: after a 5xx or no answer at all, with a
backoff, for a while. What the server confirmed is recorded apart from what it never answered:
a request whose reply was lost may or may not have been done, and the checks allow both.

Every one of these is idempotent on the server, so a retry never does it twice: an edit to
the text the message already has changes nothing, deleting again changes nothing, adding
someone already in adds nothing, and leaving again is a 404.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import requests

from loadtest.checker import fragments

RETRY_STATUSES = {500, 502, 503, 504}
HTTP_TIMEOUT = 15.0
RETRY_BASE = 0.5
RETRY_CAP = 8.0
GIVE_UP_AFTER = 60.0  # a person retries a change for about a minute, then gives up
MAX_ATTEMPTS = 12


@dataclass(slots=True)
class Change:
    """One edit or delete of a message, or one add or leave (one request, maybe retried).

    `outcome`: "pending" until answered; "confirmed" (204 for an edit or delete, the redirect
    for an add or leave), "refused" (an answer that says no: 4xx), or "unknown" (no answer
    the page could read, given up on: done or not)."""

    kind: str  # edit | delete | add | leave
    who: str  # whose session made it
    room: int
    t: float  # when it was made (history time)
    pk: int = 0  # the message's (edit, delete)
    seq: int = 0  # the message's
    cid: str | None = None  # the message's client_id
    body_hash: int | None = None  # the new text's (edit)
    length: int = 0
    guest: str = ""  # who was added (add) or left (leave)
    epoch: str = ""  # the page's epoch when it was made
    attempts: int = 0
    statuses: list[str] = field(default_factory=list)  # each attempt's answer
    outcome: str = "pending"
    done_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def confirmed(self) -> bool:
        return self.outcome == "confirmed"

    def describe(self) -> str:
        what = {
            "edit": f"edit of msg-{self.pk} (seq {self.seq}) to {self.length} chars",
            "delete": f"delete of msg-{self.pk} (seq {self.seq})",
            "add": f"add {self.guest}",
            "leave": f"{self.guest} leaves",
        }[self.kind]
        return f"{what} in room {self.room}"


class Actor:
    """One person's HTTP requests (a session of their own: the page's cookies, copied, so
    that its thread and the page's never share a connection pool)."""

    def __init__(self, base_url: str, origin: str, session: requests.Session, rng_seed: str):
        self.base_url = base_url
        self.origin = origin
        self.http = requests.Session()
        self.http.cookies.update(session.cookies)
        self.rng = random.Random(rng_seed)
        self.csrf: str | None = None

    def token(self, room: int) -> str:
        """The CSRF token of the conversation page's forms (GET /c/<room>)."""
        if self.csrf is None:
            response = self.http.get(
                f"{self.base_url}/c/{room}", timeout=HTTP_TIMEOUT, allow_redirects=False
            )
            if response.status_code != 200:
                raise TokenError(f"GET /c/{room} for a CSRF token: HTTP {response.status_code}")
            response.encoding = "utf-8"
            token = fragments.CSRF_RE.search(response.text)
            if token is None:
                raise TokenError(f"GET /c/{room}: no csrfmiddlewaretoken in the page")
            self.csrf = token[1]
        return self.csrf

    def post(self, change: Change, path: str, data: dict, stopping: threading.Event) -> None:
        """POSTs until answered for good (or given up on); sets change.outcome."""
        started = time.monotonic()
        delay = RETRY_BASE
        answered = None  # the last status of an attempt that may have reached the server
        while True:
            change.attempts += 1
            status: int | None = None
            location = ""
            try:
                token = self.token(change.room)
                response = self.http.post(
                    self.base_url + path,
                    data={**data, "csrfmiddlewaretoken": token},
                    headers={
                        "X-CSRFToken": token,
                        "Origin": self.origin,
                        "Referer": f"{self.base_url}/c/{change.room}",
                    },
                    timeout=HTTP_TIMEOUT,
                    allow_redirects=False,
                )
                status = response.status_code
                location = response.headers.get("Location", "")
                change.statuses.append(f"{status}" + (f" -> {location}" if location else ""))
                if status == 403 and "CSRF" in response.text:
                    self.csrf = None  # a token the server no longer takes: fetch it again
                    status = None
            except TokenError as exc:
                change.statuses.append(str(exc))
            except requests.RequestException as exc:
                change.statuses.append(type(exc).__name__)
                answered = "maybe"
            outcome = None if status is None else judge(change.kind, status, location, answered)
            if outcome is not None:
                change.outcome = outcome
                return
            if status in RETRY_STATUSES:
                answered = "maybe"
            waited = time.monotonic() - started
            if change.attempts >= MAX_ATTEMPTS or waited + delay > GIVE_UP_AFTER:
                change.outcome = "unknown"
                return
            if stopping.wait(delay / 2 + self.rng.random() * delay / 2):
                change.outcome = "unknown"
                return
            delay = min(RETRY_CAP, delay * 2)


def judge(kind: str, status: int, location: str, answered: str | None) -> str | None:
    """What an answer means for a change: "confirmed", "refused", or None (try again)."""
    if status in RETRY_STATUSES:
        return None
    if location and "/accounts/login/" in location:
        return "refused"  # the session is gone: nothing was done
    if kind in ("edit", "delete"):
        return "confirmed" if status == 204 else "refused"
    if kind == "add":
        return "confirmed" if status == 302 else "refused"
    # leave: a 404 after an attempt whose answer was lost is that attempt having left.
    if status == 302 or (status == 404 and answered == "maybe"):
        return "confirmed"
    return "refused"


class TokenError(RuntimeError):
    pass
