from __future__ import annotations

import os

import pytest

from tests.redis_server import delete_keys


def _delete_our_keys() -> None:
    delete_keys([os.environ["CHANNEL_LAYER_PREFIX"], os.environ["REDIS_KEY_PREFIX"]])


@pytest.fixture(scope="session", autouse=True)
def _clean_test_redis_keys():
    """Our own db index and key prefixes: start from empty, leave nothing behind."""
    _delete_our_keys()
    yield
    _delete_our_keys()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's test database, with every connection to it closed before it is
    dropped. Async tests run sync code (test clients, which keep their connection open on
    purpose) on asgiref's thread-sensitive thread, whose connection pytest-django never
    closes, and the psycopg pool keeps idle ones: either kept the drop from happening, and
    every run left its test database behind on the shared Postgres."""
    yield
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    from parley import loopdb

    asyncio.run(sync_to_async(connections.close_all, thread_sensitive=True)())
    connections.close_all()
    loopdb.close_all_idle()
    for connection in connections.all(initialized_only=True):
        if connection.alias in getattr(connection, "_connection_pools", {}):
            connection.close_pool()


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each async test runs in its own event loop; channels-redis binds its receive lock
    to the loop that first used it, so every test gets a fresh layer instance (and the
    loop's store connections are closed after it)."""
    from channels.layers import channel_layers

    from chat.presence import reset_presence_store

    channel_layers.backends.clear()
    reset_presence_store()
    yield
    channel_layers.backends.clear()
    reset_presence_store()
    # Each test's event loop stores sends on connections of its own (parley.loopdb): closed
    # with the test, not left open for the rest of the run.
    from parley import loopdb

    loopdb.close_all_idle()


@pytest.fixture
def core_layer(settings):
    """channels-redis' RedisChannelLayer (the non-default backend), for its own behaviour."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": url} for url in settings.REDIS_URLS],
                "prefix": settings.CHANNEL_LAYER_PREFIX,
                "capacity": 1000,
                "group_expiry": settings.CHAT_SOCKET_MAX_AGE + 300,
            },
        }
    }
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Browser tests last: Playwright's sync API keeps an event loop running in the main
    thread until the session ends, and an async test collected after them (pytest-django
    puts tests without a database after those with one) could not start its own."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/browser/"))
