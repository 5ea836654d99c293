"""Past capacity, HTTP degrades, never collapses: straight at gunicorn (nginx rate-limits the
credential paths), a storm of 200 concurrent PBKDF2 logins and a burst of conversation pages
at four times the rate the stack sustains are each answered 2xx/3xx, or 503 with Retry-After
within 2 s; never 500. (Before: the pool's 10 s timeout, logins holding their connection
through the hash, and 22 of 100 logins answered 500 by `make loadtest`.)

Its own stack (ports 18380/18300/18301-18302, Redis db 8, database parley_stacktest_overload)
with production's password hasher. Latencies are measured per request on the client: only
the refusals' are bounded (2 s); everything else is printed, not asserted.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
import requests
import uvloop

from tests.stack.harness import Stack, login

pytestmark = [pytest.mark.stack, pytest.mark.slow]

PASSWORD = "overload-test-pass"  # noqa: S105
LOGINS = 200
# Seconds: a 503 must come back at least this fast. The target is 2 s (measured 0.96-1.61 s
# on a quiet machine, see the figures this test prints); the load generator here shares the
# machine's two cores with the stack and its own latency is in every figure, so the test
# holds the line that separates "refused promptly" from the old behaviour (a 10 s pool wait,
# pages queued for 14 s), not the target itself: speed targets belong to benchmarks.
REFUSAL_BOUND = 5.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack(
        name="overload",
        nginx_port=18380,
        web_port=18300,
        ws_ports=(18301, 18302),
        redis_db=8,
        # Production's hasher (the harness's default is MD5, for fast test logins) and
        # production's pool size.
        env={
            "PASSWORD_HASHERS": "django.contrib.auth.hashers.PBKDF2PasswordHasher",
            "DB_POOL_MAX_SIZE": "4",
        },
    )
    with stack.started():
        yield stack


@pytest.fixture(scope="module")
def users(stack) -> list[dict]:
    return stack.seed(rooms=LOGINS // 4, members=4, password=PASSWORD, prefix="ov")


def run(coroutine):
    """On uvloop, as the server is: the client shares the machine's CPUs with the stack."""
    return uvloop.run(coroutine)


@dataclass
class Answer:
    status: int
    retry_after: str | None
    seconds: float
    error: str | None = None


async def fetch(port: int, raw: bytes, timeout: float = 120.0) -> Answer:
    """One HTTP/1.1 request on its own connection (Connection: close), timed from connect
    to the last byte of the response."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(raw)
                await writer.drain()
                data = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        return Answer(0, None, time.monotonic() - started, repr(exc))
    seconds = time.monotonic() - started
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", status_line)
    if not match:
        return Answer(0, None, seconds, f"not HTTP: {status_line[:80]!r}")
    headers = {
        k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)
    }
    return Answer(int(match.group(1)), headers.get("retry-after"), seconds)


def request(
    method: str, path: str, cookies: dict[str, str], port: int, form: dict | None = None
) -> bytes:
    body = urlencode(form).encode() if form is not None else b""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Connection: close",
        "Cookie: " + "; ".join(f"{k}={v}" for k, v in cookies.items()),
    ]
    if form is not None:
        lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def check_degraded(answers: list[Answer], what: str) -> Counter:
    """No 500, no error: each answer 2xx/3xx, or 503 with Retry-After within the bound."""
    statuses = Counter(a.status for a in answers)
    refused = [a for a in answers if a.status == 503]
    served = [a for a in answers if 200 <= a.status < 400]
    print(
        f"\n{what}: {dict(sorted(statuses.items()))}; "
        f"slowest 503 {max((a.seconds for a in refused), default=0):.2f}s, "
        f"slowest 2xx/3xx {max((a.seconds for a in served), default=0):.2f}s"
    )
    assert not [a for a in answers if a.error], [a.error for a in answers if a.error][:5]
    assert statuses[500] == 0
    assert set(statuses) <= {200, 302, 503}, statuses
    assert all(a.retry_after and a.retry_after.isdigit() for a in refused)
    assert [a.seconds for a in refused if a.seconds > REFUSAL_BOUND] == []
    return statuses


def refusals_in_metrics(stack) -> float:
    text = requests.get(stack.metrics_url, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("parley_http_refusals_total{")
    )


def web_errors(stack, since: int) -> list[dict]:
    """ERROR lines in gunicorn's log after its first `since` records."""
    records = stack.log_records("web")[since:]
    return [r for r in records if r.get("level") in ("ERROR", "CRITICAL")]


def csrf_pair(stack) -> tuple[str, str]:
    """A CSRF cookie and form token: every login of the storm may use the same pair."""
    page = requests.get(f"{stack.web_url()}/accounts/login/", timeout=10)
    token = page.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    return page.cookies["csrftoken"], token


@pytest.mark.timeout(300)
def test_a_storm_of_200_logins_is_answered_2xx_3xx_or_quick_503_never_500(stack, users):
    port = stack.config.web_port
    cookie, token = csrf_pair(stack)
    raws = [
        request(
            "POST",
            "/accounts/login/",
            {"csrftoken": cookie},
            port,
            {"username": u["username"], "password": PASSWORD, "csrfmiddlewaretoken": token},
        )
        for u in users[:LOGINS]
    ]
    refused_before = refusals_in_metrics(stack)
    log_mark = len(stack.log_records("web"))

    async def storm() -> list[Answer]:
        return await asyncio.gather(*(fetch(port, raw) for raw in raws))

    answers = run(storm())
    statuses = check_degraded(answers, f"{LOGINS} concurrent logins")
    assert statuses[200] == 0  # no login failed its password check
    assert statuses[302] + statuses[503] == LOGINS
    assert refusals_in_metrics(stack) - refused_before == statuses[503]
    assert web_errors(stack, log_mark) == []


def page_rate(port: int, raw: bytes, clients: int, seconds: float) -> float:
    """Pages per second the stack serves to `clients` back-to-back clients (its
    sustainable rate; every answer must be a 200)."""

    async def closed_loop() -> int:
        done = 0
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                answer = await fetch(port, raw)
                assert answer.status == 200, answer
                done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        return done

    started = time.monotonic()
    done = run(closed_loop())
    return done / (time.monotonic() - started)


@pytest.mark.timeout(300)
def test_the_conversation_page_at_four_times_its_sustainable_rate_degrades_to_quick_503s(
    stack, users
):
    port = stack.config.web_port
    member = users[-1]  # not one of the storm's: its own session
    session = login(stack.web_url(), member["username"], PASSWORD)
    raw = request("GET", f"/c/{member['conversation']}", session.cookies.get_dict(), port)
    sustainable = page_rate(port, raw, clients=8, seconds=5)
    offered, seconds = 4 * sustainable, 5.0
    count = int(offered * seconds)
    refused_before = refusals_in_metrics(stack)
    log_mark = len(stack.log_records("web"))

    async def open_loop() -> tuple[list[Answer], float]:
        # Each request starts on schedule, whether or not earlier ones were answered.
        started = time.monotonic()
        tasks = []
        for i in range(count):
            delay = started + i / offered - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fetch(port, raw)))
        sent_in = time.monotonic() - started
        return list(await asyncio.gather(*tasks)), sent_in

    answers, sent_in = run(open_loop())
    print(
        f"\nsustainable {sustainable:.0f} pages/s (8 clients); offered {count} pages in "
        f"{sent_in:.1f}s ({count / sent_in:.0f}/s, target {offered:.0f}/s)"
    )
    statuses = check_degraded(answers, "conversation page burst")
    assert statuses[302] == 0  # the session held: every page was served or refused
    assert refusals_in_metrics(stack) - refused_before == statuses[503]
    assert web_errors(stack, log_mark) == []
