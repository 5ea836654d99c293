"""Settings and health checks, run in fresh processes with a chosen environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
PROBE_READYZ = (
    "import django, json, os; django.setup();"
    "from django.test import Client;"
    "from parley import drain;"
    "from prometheus_client import REGISTRY;"
    "os.environ.get('_DRAIN') and drain.mark_draining();"
    "r = Client().get('/readyz');"
    "gauge = {d: REGISTRY.get_sample_value('parley_dependency_up', {'dependency': d})"
    " for d in ('database', 'channel_layer')};"
    "print(json.dumps({'status': r.status_code, 'body': json.loads(r.content), 'gauge': gauge}))"
)


def run_python(code: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({"PYTHONPATH": str(REPO / "src"), "DJANGO_SETTINGS_MODULE": "config.settings"})
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )


def readyz(**env) -> dict:
    result = run_python(PROBE_READYZ, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_refuses_to_start_without_secret_key():
    result = run_python("import django; django.setup()", DEBUG="0", SECRET_KEY=None)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_production_refuses_a_placeholder_secret_key():
    result = run_python("import django; django.setup()", DEBUG="0", SECRET_KEY="change-me")
    assert result.returncode != 0 and "placeholder" in result.stderr


def test_embedded_default_needs_nothing_but_debug(tmp_path):
    code = (
        "import django; django.setup(); from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'])"
    )
    result = run_python(code, DEBUG="1", SECRET_KEY=None, DATABASE_URL=None, REDIS_URL=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        "channels.layers.InMemoryChannelLayer",
    ]


def test_check_deploy_is_clean_in_production():
    result = subprocess.run(
        [sys.executable, "src/manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env={
            **os.environ,
            "DEBUG": "0",
            "HTTPS": "1",
            "STATIC_MANIFEST": "1",
            "SECRET_KEY": "k" * 20 + "Zq9!x" * 8,
            "ALLOWED_HOSTS": "chat.example.com",
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def live_database_url() -> str:
    from django.conf import settings

    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/postgres"


def test_readyz_stays_ready_and_names_redis_as_degraded_when_the_layer_is_unreachable():
    """Every pod shares Redis: unready on a Redis blip meant every pod unready at once."""
    out = readyz(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", DATABASE_URL=live_database_url())
    assert out["status"] == 200
    assert out["body"]["status"] == "degraded" and out["body"]["ready"] is True
    assert out["body"]["degraded"] == ["channel_layer"]
    assert out["body"]["checks"]["database"] == "ok"
    assert out["gauge"] == {"database": 1.0, "channel_layer": 0.0}


@pytest.mark.django_db
def test_readyz_stays_ready_and_names_postgres_as_degraded_when_the_database_is_unreachable():
    out = readyz(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/parley", DB_POOL_TIMEOUT="2"
    )
    assert out["status"] == 200
    assert out["body"]["status"] == "degraded" and out["body"]["ready"] is True
    assert out["body"]["degraded"] == ["database"]
    assert out["body"]["checks"]["channel_layer"] == "ok"
    assert out["gauge"] == {"database": 0.0, "channel_layer": 1.0}


def test_readyz_is_503_while_the_process_drains():
    out = readyz(DATABASE_URL=live_database_url(), _DRAIN="1")
    assert out["status"] == 503
    assert out["body"]["status"] == "draining" and out["body"]["ready"] is False


def test_readyz_is_200_when_both_are_up():
    out = readyz(DATABASE_URL=live_database_url())
    assert out["status"] == 200, out


def test_embedded_default_stores_messages_with_idempotency_keys(tmp_path):
    """`make dev` runs on SQLite: the raw-SQL store path must work there too."""
    code = (
        "import django, uuid; django.setup();"
        "from django.core.management import call_command;"
        "call_command('migrate', verbosity=0);"
        "from django.contrib.auth import get_user_model;"
        "from chat import services; from chat.models import Message;"
        "U = get_user_model(); a = U.objects.create_user('a'); b = U.objects.create_user('b');"
        "c = services.conversation_start(creator=a, usernames=['b']);"
        "key = uuid.uuid4();"
        "send = services.message_create;"
        "m1, new1 = send(conversation_id=c.pk, sender=a, body='hi', client_id=key);"
        "m2, new2 = send(conversation_id=c.pk, sender=a, body='hi', client_id=key);"
        "m3, _ = send(conversation_id=c.pk, sender=b, body='yo');"
        "h = list(Message.objects.filter(conversation=c).order_by('seq'));"
        "print(m1.seq, new1, m2.seq, new2, m3.seq, [m.body for m in h], h[0].client_id == key)"
    )
    assert run_embedded_default(code, tmp_path) == [
        "1",
        "True",
        "1",
        "False",
        "2",
        "['hi',",
        "'yo']",
        "True",
    ]


def test_embedded_default_serves_the_conversation_page(tmp_path):
    """`make dev` runs on SQLite: the page's written-out SQL reads must work there too."""
    code = (
        "import django; django.setup();"
        "from django.core.management import call_command;"
        "call_command('migrate', verbosity=0);"
        "from django.contrib.auth import get_user_model; from django.test import Client;"
        "from chat import services;"
        "U = get_user_model(); a = U.objects.create_user('a'); b = U.objects.create_user('b');"
        "c = services.conversation_start(creator=a, usernames=['b']);"
        "[services.message_create(conversation_id=c.pk, sender=a, body=f'm{i}') for i in range(3)];"
        "cl = Client(); cl.force_login(b);"
        "r = cl.get(f'/c/{c.pk}'); o = cl.get(f'/c/{c.pk}/history?before=3');"
        "print(r.status_code, r.content.count(b'<article id=\"msg-'), "
        "o.status_code, o.content.count(b'<article id=\"msg-'))"
    )
    assert run_embedded_default(code, tmp_path) == ["200", "3", "200", "2"]


def run_embedded_default(code: str, tmp_path) -> list[str]:
    """`code` in a fresh interpreter with `make dev`'s settings (SQLite, no Redis); its
    printed words."""
    result = run_python(
        code,
        DEBUG="1",
        SECRET_KEY=None,
        REDIS_URL=None,
        DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite3'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


# A real login in one process; later processes present its session cookie.
LOG_IN = (
    "import django; django.setup();"
    "from django.core.management import call_command; call_command('migrate', verbosity=0);"
    "from django.contrib.auth import get_user_model; from django.test import Client;"
    "get_user_model().objects.create_user('rotor', password='Rotate-me-42');"
    "c = Client(); assert c.login(username='rotor', password='Rotate-me-42');"
    "print(c.cookies['sessionid'].value)"
)
# Who the conversation list (login required) sees for a session cookie (the user, or
# nobody), and the session cookie it sets, if any.
WHO_AM_I = (
    "import django; django.setup(); from django.test import Client;"
    "c = Client(); c.cookies['sessionid'] = SESSION; r = c.get('/');"
    "new = r.cookies['sessionid'].value if 'sessionid' in r.cookies else '-';"
    "print(r.status_code, r.wsgi_request.user.get_username() or 'anonymous', new or '-')"
)


def test_secret_key_rotation_keeps_sessions_through_fallbacks(tmp_path):
    """docs/operations.md "Rotating SECRET_KEY": the new key in SECRET_KEY, the old one in
    SECRET_KEY_FALLBACKS; a session signed with the old key stays logged in, and its first
    request re-keys it under the new key, after which it no longer needs the fallback.
    Without the fallback the old session is logged out (so the check can fail)."""
    old, new = "o" * 20 + "Old-key-9x" * 5, "n" * 20 + "New-key-7y" * 5
    env = {
        "DEBUG": "0",
        "HTTPS": "0",
        "ALLOWED_HOSTS": "testserver",
        "REDIS_URL": None,
        "SECRET_KEY_FALLBACKS": None,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'rotation.sqlite3'}",
    }
    logged_in = run_python(LOG_IN, **{**env, "SECRET_KEY": old})
    assert logged_in.returncode == 0, logged_in.stderr[-2000:]
    session = logged_in.stdout.split()[-1]

    def who(cookie: str, **keys: str) -> list[str]:
        result = run_python(f"SESSION = {cookie!r}; {WHO_AM_I}", **{**env, **keys})
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.splitlines()[-1].split()  # after any log lines

    assert who(session, SECRET_KEY=old) == ["200", "rotor", "-"]
    # Without the fallback: logged out (the stored session is left alone, nothing is lost).
    assert who(session, SECRET_KEY=new)[:2] == ["302", "anonymous"]
    # Several old keys may be listed (a second rotation before the first one's sessions end).
    status, user, rekeyed = who(session, SECRET_KEY=new, SECRET_KEY_FALLBACKS=f"{'x' * 50},{old}")
    assert (status, user) == ("200", "rotor") and rekeyed not in ("-", session)
    assert who(rekeyed, SECRET_KEY=new) == ["200", "rotor", "-"]


def test_embedded_default_refuses_a_nul_and_a_lone_surrogate_like_postgres(tmp_path):
    """SQLite would store a NUL that Postgres refuses: with `make dev`'s settings too, both
    are refused before the database (the consumer tests cover Postgres)."""
    code = """
import django
django.setup()
from chat import services
out = []
for text in ("a\\x00b", "a\\ud800b", "fine"):
    try:
        services.normalise_body(text)
        out.append("ok")
    except services.MessageRejected:
        out.append("refused")
print(*out)
"""
    assert run_embedded_default(code, tmp_path) == ["refused", "refused", "ok"]


def test_reader_threads_beyond_the_pool_refuse_to_start():
    """Each handshake reader thread holds a pooled connection; the stores and /readyz need
    two more: a pool too small for them would time out under exactly the storm they serve."""
    url = "postgres://postgres@127.0.0.1:5432/postgres"
    ok = run_python(
        "from django.conf import settings; print(settings.CHAT_DB_READ_THREADS)",
        DATABASE_URL=url,
        DB_POOL_MAX_SIZE="4",
        CHAT_DB_READ_THREADS=None,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "2"  # the default: the pool less two
    result = run_python(
        "import django; django.setup()",
        DATABASE_URL=url,
        DB_POOL_MAX_SIZE="4",
        CHAT_DB_READ_THREADS="3",
    )
    assert result.returncode != 0
    assert "CHAT_DB_READ_THREADS=3 needs DB_POOL_MAX_SIZE of at least 5" in result.stderr


def test_sends_are_stored_on_the_event_loop_on_postgres_only():
    """parley.loopdb: two connections of its own per process on Postgres by default; none on
    SQLite (the embedded default), where sends stay on the database thread."""
    code = "from django.conf import settings; print(settings.CHAT_DB_STORE_CONNECTIONS)"
    pg = run_python(code, DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres")
    assert pg.returncode == 0, pg.stderr
    assert pg.stdout.strip().splitlines()[-1] == "2"
    lite = run_python(code, DATABASE_URL="sqlite:///:memory:", CHAT_DB_STORE_CONNECTIONS="4")
    assert lite.returncode == 0, lite.stderr
    assert lite.stdout.strip().splitlines()[-1] == "0"


def test_a_store_batch_under_one_send_refuses_to_start():
    code = "from django.conf import settings; print(settings.CHAT_DB_STORE_BATCH)"
    ok = run_python(code, CHAT_DB_STORE_BATCH="1")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "1"
    result = run_python(code, CHAT_DB_STORE_BATCH="0")
    assert result.returncode != 0
    assert "CHAT_DB_STORE_BATCH must be at least 1 (it is 0)" in result.stderr
