"""The `stack` fixture: one private native stack (nginx, gunicorn, two daphne) per session.

Ports 18080 (nginx), 18000 (gunicorn), 18001/18002 (daphne); database
parley_stacktest_serving; Redis db 4. See tests/stack/harness.py to run another one.
"""

from __future__ import annotations

import pytest

from tests.stack.harness import Stack, login

PASSWORD = "stack-test-pass"  # noqa: S105


@pytest.fixture(scope="session")
def stack():
    with Stack().started() as stack:
        yield stack


def seeded_rooms(stack: Stack, rooms: int, prefix: str) -> dict[int, list[str]]:
    """Seeds `rooms` rooms of 3 (password PASSWORD): conversation id -> members' usernames."""
    users = stack.seed(rooms=rooms, members=3, password=PASSWORD, prefix=prefix)
    out: dict[int, list[str]] = {}
    for user in users:
        out.setdefault(user["conversation"], []).append(user["username"])
    return out


def cookie_jar(stack: Stack):
    """username -> session cookies, logging in against gunicorn directly (set-up only; the
    login through nginx has its own test, and nginx rate-limits login POSTs)."""
    cache: dict[str, dict] = {}

    def get(username: str) -> dict:
        if username not in cache:
            cache[username] = login(stack.web_url(), username, PASSWORD).cookies.get_dict()
        return cache[username]

    return get


@pytest.fixture(scope="session")
def rooms(stack) -> dict[int, list[str]]:
    """Conversation id -> its members' usernames (16 rooms of 3), for tests to take from."""
    return seeded_rooms(stack, 16, "st")


@pytest.fixture
def room(rooms):
    """A conversation nobody else in this session uses: (id, usernames)."""
    if not rooms:
        pytest.fail("out of seeded rooms; seed more in tests/stack/conftest.py")
    conversation_id = next(iter(rooms))
    return conversation_id, rooms.pop(conversation_id)


@pytest.fixture
def cookies(stack):
    return cookie_jar(stack)
