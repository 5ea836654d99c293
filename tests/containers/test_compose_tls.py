"""`make certs && make up` serves HTTPS (issue "Operations", TLS): the compose stack of
test_compose.py with its defaults for TLS (NGINX_LISTEN=tls/listen.conf, HTTPS=1) and a
certificate from deploy/tls/make-certs.sh, which every client here trusts as its CA (never
verify=False). One compose flavour (v2): the TLS parts are the same in both.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import certifi
import pytest
import requests

from tests.containers import test_compose as compose
from tests.containers.test_compose import (
    Stack,
    check_services,
    docker,
    sign_up_and_log_in,
    start_conversation,
)
from tests.helpers.wsclient import ChatSocket
from tests.stack.harness import make_certs
from tests.stack.test_tls import believes_https, post_without_referer

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(900)]

# test_compose.py's fixtures, used here with compose_env overridden below.
engine = compose.engine
images = compose.images
stack = compose.stack


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    make_certs(tmp_path / "certs")
    return tmp_path / "certs"


@pytest.fixture
def compose_env(certs: Path) -> Callable[[int, int], dict[str, str]]:
    """Overrides test_compose.py's: .env.example's TLS defaults, loopback ports and the
    test's certificate directory."""

    def values(port: int, https_port: int) -> dict[str, str]:
        return {
            "HTTP_BIND": "127.0.0.1",
            "HTTP_PORT": str(port),
            "HTTPS_PORT": str(https_port),
            "TLS_CERT_DIR": str(certs),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "CSRF_TRUSTED_ORIGINS": f"https://127.0.0.1:{https_port}",
            "HEALTHCHECK_INTERVAL": "2s",
        }

    return values


@pytest.mark.parametrize("stack", ["v2"], indirect=True)
def test_make_up_serves_https(
    stack: Stack, certs: Path, images: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = stack.env_file.read_text()
    assert "NGINX_LISTEN=tls/listen.conf" in written and "\nHTTPS=1" in written  # defaults
    ca = str(certs / "tls.crt")
    # requests and websocket-client verify against this bundle (requests' helpers below
    # take it from the environment, like REQUESTS_CA_BUNDLE users do).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
    monkeypatch.setenv("WEBSOCKET_CLIENT_CA_BUNDLE", ca)
    base = f"https://127.0.0.1:{stack.https_port}"
    check_services(stack)

    # Plain HTTP redirects, path and query kept; the healthcheck's path stays on http.
    redirect = requests.get(
        f"http://127.0.0.1:{stack.port}/c/7/history?before=3&q=a%20b",
        allow_redirects=False,
        timeout=10,
    )
    assert redirect.status_code == 301
    assert redirect.headers["Location"] == f"{base}/c/7/history?before=3&q=a%20b"
    assert requests.get(f"http://127.0.0.1:{stack.port}/nginx-health", timeout=10).ok
    # Verified for real: with only the public CAs, the self-signed certificate is refused.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{base}/nginx-health", timeout=10, verify=certifi.where())

    # Sign up and log in over https: Secure cookies; HSTS off by default.
    tag = hashlib.sha1(os.urandom(8)).hexdigest()[:6]  # noqa: S324 (a name, not a secret)
    alice = sign_up_and_log_in(base, f"alice{tag}")
    bob = sign_up_and_log_in(base, f"bob{tag}")
    cookies = {c.name: c for c in alice.cookies}
    assert cookies["sessionid"].secure and cookies["csrftoken"].secure
    assert cookies["sessionid"].has_nonstandard_attr("HttpOnly")
    page = alice.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and "Strict-Transport-Security" not in page.headers

    # A chat over wss://, the https origin passing the websocket Origin check.
    conversation = start_conversation(base, alice, f"bob{tag}")
    ws_base = f"wss://127.0.0.1:{stack.https_port}"
    a, b = (
        ChatSocket(ws_base, base, conversation, f"sessionid={s.cookies['sessionid']}")
        for s in (alice, bob)
    )
    try:
        a.connect()
        b.connect()
        sent = {a.send("hello over wss")}
        b.wait_client_ids(sent)
    finally:
        a.close()
        b.close()

    # A forged X-Forwarded-Proto is overwritten by nginx: Django still sees https.
    forged = post_without_referer(f"{base}/c/new", True, {"X-Forwarded-Proto": "http"})
    assert believes_https(forged)

    # The certificate is mounted read-only from the host, and is in no image.
    nginx = stack.containers()["nginx"][0]
    mounts = {m["Destination"]: m for m in nginx["Mounts"]}
    assert mounts["/etc/nginx/certs"]["Source"] == str(certs)
    assert mounts["/etc/nginx/certs"]["RW"] is False
    for image in (nginx["Config"]["Image"], images):
        found = docker(
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            image,
            "-c",
            "find / -xdev \\( -name tls.key -o -name tls.crt \\) -print 2>/dev/null; true",
        )
        assert found.strip() == "", (image, found)
