"""Logins and signups hash passwords without holding a pooled database connection, at most
LOGIN_HASH_CONCURRENCY at once per process; past capacity (no hashing slot, no pooled
connection in time) a request gets 503 with Retry-After, never 500.
Real Postgres and its psycopg pool, Django's test client on the test's thread."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher, get_hashers
from django.contrib.auth.signals import user_login_failed
from django.db import OperationalError, connection, connections
from django.test import Client
from prometheus_client import REGISTRY
from psycopg_pool import PoolTimeout

from parley import auth
from parley.overload import Overloaded, refusal_reason

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-login-storm-7"  # noqa: S105


class RecordingHasher(PBKDF2PasswordHasher):
    """PBKDF2 (fewer rounds: the test is about where it runs) noting, as each hash starts,
    whether this thread holds a database connection and how many the pool has lent out."""

    iterations = 50_000
    seen: list[dict] = []

    def encode(self, password, salt, iterations=None):
        stats = connection.pool.get_stats()
        self.seen.append(
            {
                "thread_holds_connection": connection.connection is not None,
                "pool_lent_out": stats["pool_size"] - stats["pool_available"],
            }
        )
        return super().encode(password, salt, iterations)


@pytest.fixture
def hasher(settings):
    # Earlier async tests leave asgiref's database thread holding a pooled connection (it
    # is returned when that thread closes it): give it back, so "lent out" means this test's.
    asyncio.run(sync_to_async(connections.close_all, thread_sensitive=True)())
    connections.close_all()
    settings.PASSWORD_HASHERS = [f"{__name__}.RecordingHasher"]
    get_hashers.cache_clear()
    RecordingHasher.seen = []
    auth.reset_hash_slots()
    yield RecordingHasher
    get_hashers.cache_clear()
    auth.reset_hash_slots()


@pytest.fixture
def user(hasher):
    user = get_user_model().objects.create_user("storm-user", password=PASSWORD)
    connection.close()  # back to the pool, as at the end of a request
    hasher.seen.clear()
    return user


def post_login(client: Client, username: str, password: str):
    return client.post("/accounts/login/", {"username": username, "password": password})


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("parley_http_refusals_total", {"reason": reason}) or 0.0


def assert_one_warning(caplog, reason: str) -> None:
    """One line per refusal, a warning without a traceback (no ERROR from django.request)."""
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelname, getattr(r, "reason", None)) for r in lines] == [("WARNING", reason)]
    assert lines[0].exc_info is None


@pytest.mark.parametrize(
    ("username", "password", "status"),
    [("storm-user", PASSWORD, 302), ("storm-user", "wrong", 200), ("nobody", PASSWORD, 200)],
    ids=["right-password", "wrong-password", "unknown-user"],
)
def test_a_login_holds_no_database_connection_while_it_hashes(
    user, hasher, username, password, status
):
    failed = []

    def note_failure(**kwargs) -> None:
        failed.append(kwargs["credentials"]["username"])

    user_login_failed.connect(note_failure, weak=False, dispatch_uid="test-auth")
    try:
        response = post_login(Client(), username, password)
    finally:
        user_login_failed.disconnect(dispatch_uid="test-auth")
    assert response.status_code == status
    assert ("sessionid" in response.cookies) == (status == 302)
    # One hash per attempt, the unknown user's included (same timing as a wrong password);
    # a failed attempt is not checked a second time by ModelBackend.
    assert len(hasher.seen) == 1, hasher.seen
    assert hasher.seen == [{"thread_holds_connection": False, "pool_lent_out": 0}]
    assert failed == ([] if status == 302 else [username])  # the signal, once


def test_a_signup_holds_no_database_connection_while_it_hashes(hasher):
    client = Client()
    response = client.post(
        "/accounts/signup/",
        {"username": "newcomer", "password1": "a-long-pass-93", "password2": "a-long-pass-93"},
    )
    assert response.status_code == 302
    assert hasher.seen == [{"thread_holds_connection": False, "pool_lent_out": 0}]
    assert client.get("/").status_code == 200  # logged in
    assert get_user_model().objects.get(username="newcomer").check_password("a-long-pass-93")


def test_sessions_of_django_s_model_backend_stay_logged_in(user):
    """Sessions logged in before this backend existed name ModelBackend."""
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    assert client.get("/").status_code == 200


def test_a_login_that_gets_no_hashing_slot_in_time_is_answered_503(settings, user, caplog):
    settings.LOGIN_HASH_CONCURRENCY = 1
    settings.LOGIN_HASH_WAIT_SECONDS = 0.2
    auth.reset_hash_slots()
    slots = auth.hash_slots()
    before = refusals("hashing_busy")
    assert slots.acquire(timeout=5)  # another login is hashing
    try:
        with caplog.at_level(logging.WARNING):
            response = post_login(Client(), "storm-user", PASSWORD)
    finally:
        slots.release()
    assert response.status_code == 503
    assert response["Retry-After"].isdigit()
    assert refusals("hashing_busy") == before + 1
    assert_one_warning(caplog, "hashing_busy")
    # The slot free again, the same login goes through.
    assert post_login(Client(), "storm-user", PASSWORD).status_code == 302


@pytest.fixture
def client(user):
    """Logged in as `user`, holding no connection (as between two requests)."""
    client = Client()
    client.force_login(user)
    connection.close()
    return client


@pytest.fixture
def drained_pool(client):
    """Every connection the pool may open is lent out (to the test), as in a storm."""
    pool = connection.pool
    taken = [pool.getconn(timeout=10) for _ in range(pool.max_size)]
    yield pool
    for conn in taken:
        pool.putconn(conn)


def test_a_page_that_gets_no_pooled_connection_in_time_is_answered_503(
    drained_pool, client, caplog
):
    before = refusals("pool_timeout")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        response = client.get("/")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response["Retry-After"].isdigit()
    assert elapsed < 2.0  # a bound: DB_POOL_TIMEOUT (1 s), where it was ten seconds
    assert refusals("pool_timeout") == before + 1
    assert_one_warning(caplog, "pool_timeout")


def test_refusal_reasons_follow_django_s_wrapping():
    def wrapped(exc: Exception) -> OperationalError:
        try:
            raise OperationalError(str(exc)) from exc
        except OperationalError as django_error:
            return django_error

    assert refusal_reason(wrapped(PoolTimeout("x"))) == "pool_timeout"
    assert refusal_reason(Overloaded("hashing_busy")) == "hashing_busy"
    assert refusal_reason(OperationalError("server closed the connection")) is None
    assert refusal_reason(ValueError("x")) is None
