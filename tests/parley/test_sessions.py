"""parley.sessions: Django's database sessions, read with written-out SQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from parley.sessions import SessionStore
from tests.factories import logged_in_client, make_user

pytestmark = pytest.mark.django_db


def test_a_live_session_loads_its_data_and_keeps_its_key():
    store = SessionStore()
    store["colour"] = "teal"
    store.save()
    again = SessionStore(store.session_key)
    assert again["colour"] == "teal"
    assert again.session_key == store.session_key


def test_an_expired_or_unknown_session_loads_empty_and_gets_a_new_key_when_saved():
    store = SessionStore()
    store["colour"] = "teal"
    store.save()
    Session.objects.filter(pk=store.session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    for key in (store.session_key, "x" * 32):
        stale = SessionStore(key)
        assert dict(stale.items()) == {}
        stale["colour"] = "red"
        stale.save()
        assert stale.session_key != key


def test_the_logged_in_page_sees_its_user_and_an_expired_session_is_logged_out():
    user = make_user()
    client = logged_in_client(user)
    assert client.get("/").status_code == 200
    Session.objects.update(expire_date=timezone.now() - timedelta(seconds=1))
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert Client().get("/").status_code == 302
