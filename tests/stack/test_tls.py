"""HTTPS through nginx (issue "Operations", TLS): a private native stack in TLS mode with a
self-signed certificate from deploy/tls/make-certs.sh, which every client here trusts as its
CA (never verify=False).

Ports 18243 (https), 18280 (http, redirects), 18200 (gunicorn), 18201/18202 (daphne),
19200 (metrics); database parley_stacktest_tls; Redis db 7.
"""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import websocket

from tests.helpers.wsclient import ChatSocket
from tests.stack.harness import (
    REPO,
    Stack,
    StackError,
    login,
    make_certs,
    session_trusting,
    wait_until,
)

pytestmark = [pytest.mark.stack, pytest.mark.slow]

PASSWORD = "tls-test-pass"  # noqa: S105
HSTS = "max-age=31536000; includeSubDomains"
# Django's CSRF failure page for a POST without a Referer, which it demands only of a
# request it believes came over https: a probe of request.is_secure().
HTTPS_ONLY_REFERER_CHECK = "this HTTPS site requires a"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "certs"
    make_certs(out)
    return out


@pytest.fixture(scope="module")
def tls_stack(certs: Path) -> Iterator[Stack]:
    stack = Stack(
        name="tls",
        nginx_port=18280,
        https_port=18243,
        web_port=18200,
        ws_ports=(18201, 18202),
        redis_db=7,
        cert_dir=certs,
    )
    with stack.started():
        yield stack


@pytest.fixture(scope="module")
def members(tls_stack: Stack) -> tuple[int, list[str]]:
    users = tls_stack.seed(rooms=1, members=2, password=PASSWORD, prefix="tls")
    return users[0]["conversation"], [u["username"] for u in users]


@pytest.fixture(scope="module")
def ca(certs: Path) -> str:
    return str(certs / "tls.crt")


def test_make_certs_writes_a_self_signed_certificate_for_the_host(certs: Path) -> None:
    text = subprocess.run(
        ["openssl", "x509", "-in", str(certs / "tls.crt"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Subject: CN = localhost" in text
    assert "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1" in text
    assert "TLS Web Server Authentication" in text
    # Its own root (clients trust it directly), but for its own names only.
    assert "CA:TRUE, pathlen:0" in text
    assert re.search(r"Name Constraints: critical\s+Permitted:\s+DNS:localhost\s+IP:127", text)
    # nginx in compose runs as uid 101 and must read the key (make-certs.sh says why).
    assert (certs / "tls.key").stat().st_mode & 0o777 == 0o644
    # Run again for the same host: kept, not replaced (a trusted copy stays valid).
    before = (certs / "tls.crt").read_bytes()
    again = make_certs(certs)
    assert "already exists" in again.stdout
    assert (certs / "tls.crt").read_bytes() == before
    # `make certs` writes into certs/, which git ignores (a key never gets committed).
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "certs/tls.key"], cwd=REPO, check=False
    ).returncode
    assert ignored == 0


def test_login_over_https_sets_secure_cookies(tls_stack: Stack, members, ca: str) -> None:
    _, (alice, _) = members
    assert tls_stack.url.startswith("https://")
    session = login(tls_stack.url, alice, PASSWORD, verify=ca)
    home = session.get(f"{tls_stack.url}/", timeout=10)
    assert home.status_code == 200
    assert f"Signed in as </span><strong>{alice}</strong>" in home.text
    cookies = {c.name: c for c in session.cookies}
    for name in ("sessionid", "csrftoken"):
        assert cookies[name].secure, f"{name} without Secure"
        assert cookies[name].get_nonstandard_attr("SameSite") == "Lax", name
    assert cookies["sessionid"].has_nonstandard_attr("HttpOnly")


def test_chat_over_wss(tls_stack: Stack, members, ca: str) -> None:
    conversation, (alice, bob) = members
    assert tls_stack.ws_base.startswith("wss://")
    sockets = [
        ChatSocket(
            tls_stack.ws_base,
            tls_stack.url,  # the page's https:// origin passes the Origin check
            conversation,
            login(tls_stack.url, user, PASSWORD, verify=ca).cookies.get_dict(),
            sslopt={"ca_certs": ca},
        ).connect()
        for user in (alice, bob)
    ]
    a, b = sockets
    try:
        a.send("hello over wss")
        b.wait_text("hello over wss")
        a.wait_text("hello over wss")
    finally:
        for sock in sockets:
            sock.close()


def test_wss_refuses_a_foreign_origin(tls_stack: Stack, members, ca: str) -> None:
    conversation, (alice, _) = members
    cookies = login(tls_stack.url, alice, PASSWORD, verify=ca).cookies.get_dict()
    foreign = ChatSocket(
        tls_stack.ws_base, "https://evil.example", conversation, cookies, {"ca_certs": ca}
    )
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        foreign.connect()
    assert refused.value.status_code == 403


def test_wss_needs_the_certificate_to_be_trusted(tls_stack: Stack, members) -> None:
    """The clients above pass verification because they trust this certificate, not because
    nothing is verified: without it the handshake fails."""
    conversation, _ = members
    with pytest.raises(ssl.SSLCertVerificationError):
        ChatSocket(tls_stack.ws_base, tls_stack.url, conversation, {}).connect()


def test_http_redirects_to_https_keeping_path_and_query(tls_stack: Stack, ca: str) -> None:
    https_port = tls_stack.config.https_port
    for host in ("127.0.0.1", "localhost"):
        response = requests.get(
            f"http://{host}:{tls_stack.config.nginx_port}/c/5/history?before=9&x=a%20b",
            allow_redirects=False,
            timeout=10,
        )
        assert response.status_code == 301
        assert response.headers["Location"] == (
            f"https://{host}:{https_port}/c/5/history?before=9&x=a%20b"
        )
    followed = session_trusting(ca).get(
        f"{tls_stack.config.http_url}/accounts/login/?next=/c/1", timeout=10
    )
    assert followed.url == f"{tls_stack.url}/accounts/login/?next=/c/1"
    assert followed.status_code == 200 and "csrfmiddlewaretoken" in followed.text
    # Health checks stay on plain http.
    health = requests.get(f"{tls_stack.config.http_url}/nginx-health", timeout=10)
    assert health.status_code == 200 and health.text == "ok\n"


def handshake(port: int, version: ssl.TLSVersion, ca: str) -> str:
    """A TLS handshake offering only `version`; the negotiated version, or SSLError."""
    context = ssl.create_default_context(cafile=ca)
    # Let this client offer even TLS 1.0/1.1 (OpenSSL's default security level forbids
    # them): a refusal must come from the server.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.version()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_only_tls_1_2_and_1_3_are_accepted(tls_stack: Stack, ca: str) -> None:
    port = tls_stack.config.https_port
    assert handshake(port, ssl.TLSVersion.TLSv1_3, ca) == "TLSv1.3"
    assert handshake(port, ssl.TLSVersion.TLSv1_2, ca) == "TLSv1.2"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError) as refused:
            handshake(port, old, ca)
        # The server's alert, not this client declining to try.
        assert "PROTOCOL_VERSION" in str(refused.value).upper(), refused.value


def test_tls_1_2_negotiates_forward_secret_aead_ciphers(tls_stack: Stack, ca: str) -> None:
    context = ssl.create_default_context(cafile=ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ALL:@SECLEVEL=0")  # offer everything; the server picks
    with (
        socket.create_connection(("127.0.0.1", tls_stack.config.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        name = tls.cipher()[0]
    assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name


def test_hsts_is_off_by_default_and_sent_over_https_when_configured(
    tls_stack: Stack, ca: str
) -> None:
    url = f"{tls_stack.url}/accounts/login/"
    session = session_trusting(ca)
    assert "Strict-Transport-Security" not in session.get(url, timeout=10).headers
    tls_stack.config.hsts = True
    try:
        tls_stack.reload_nginx()
        wait_until(
            lambda: session.get(url, timeout=10).headers.get("Strict-Transport-Security") == HSTS,
            timeout=15,
            what="HSTS after the reload",
        )
        # Never on plain http (browsers would ignore it there anyway).
        plain = requests.get(f"{tls_stack.config.http_url}/nginx-health", timeout=10)
        assert "Strict-Transport-Security" not in plain.headers
    finally:
        tls_stack.config.hsts = False
        tls_stack.reload_nginx()
    wait_until(
        lambda: "Strict-Transport-Security" not in session.get(url, timeout=10).headers,
        timeout=15,
        what="HSTS off again",
    )


def post_without_referer(
    url: str,
    verify: str | bool = True,
    headers: dict[str, str] | None = None,
    form_url: str | None = None,
) -> requests.Response:
    """A CSRF-valid POST (token and cookie) with neither Origin nor Referer: Django lets it
    through on a request it believes is plain http and refuses it (403, Referer required)
    on one it believes is https."""
    session = session_trusting(verify)
    session.get(form_url or url.rsplit("/c/", 1)[0] + "/accounts/login/", timeout=10)
    return session.post(
        url,
        data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers=headers or {},
        allow_redirects=False,
        timeout=10,
    )


def believes_https(response: requests.Response) -> bool:
    if response.status_code == 403:
        assert HTTPS_ONLY_REFERER_CHECK in response.text, response.text[:300]
        return True
    assert response.status_code == 302, response.status_code  # on to the login page
    return False


def test_a_forged_x_forwarded_proto_does_not_change_what_django_believes(
    tls_stack: Stack, stack: Stack, ca: str
) -> None:
    # Over https, a client claiming plain http: nginx overwrites the header.
    forged_http = {"X-Forwarded-Proto": "http"}
    assert believes_https(post_without_referer(f"{tls_stack.url}/c/new", ca, forged_http))
    # Over plain http (the default stack), a client claiming https: overwritten too.
    forged_https = {"X-Forwarded-Proto": "https"}
    assert not believes_https(post_without_referer(f"{stack.url}/c/new", True, forged_https))
    # The probe itself: Django does act on the header when it arrives unfiltered, which is
    # why gunicorn and daphne must be reachable from nginx only.
    direct = post_without_referer(f"{stack.web_url()}/c/new", True, forged_https)
    assert believes_https(direct)


def test_a_trusted_tls_proxy_in_front_passes_its_scheme_and_no_one_else(
    tls_stack: Stack, ca: str
) -> None:
    """The Kubernetes contract (TLS ends at the Gateway): nginx believes X-Forwarded-Proto
    from the trusted proxy addresses only (trusted-proxies.conf), overwriting everyone
    else's. Here 127.0.0.2 plays the proxy; 127.0.0.1 is an ordinary client."""

    def scheme_seen_by_django(source: str, claimed: str) -> bool:
        conn = http.client.HTTPSConnection(
            "127.0.0.1",
            tls_stack.config.https_port,
            timeout=10,
            source_address=(source, 0),
            context=ssl.create_default_context(cafile=ca),
        )
        try:
            conn.request("GET", "/accounts/login/")
            page = conn.getresponse()
            body = page.read().decode()
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)
            cookie = re.search(r"csrftoken=([^;]+)", page.getheader("Set-Cookie")).group(1)
            conn.request(
                "POST",
                "/c/new",
                body=f"csrfmiddlewaretoken={token}",
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Cookie": f"csrftoken={cookie}",
                    "X-Forwarded-Proto": claimed,
                },
            )
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        if response.status == 403:
            assert HTTPS_ONLY_REFERER_CHECK in text, text[:300]
            return True
        assert response.status == 302, response.status
        return False

    tls_stack.config.trusted_proxies = ("127.0.0.2/32",)
    try:
        tls_stack.reload_nginx()
        wait_until(
            lambda: not scheme_seen_by_django("127.0.0.2", "http"),
            timeout=15,
            what="nginx to trust 127.0.0.2 after the reload",
        )
        assert scheme_seen_by_django("127.0.0.2", "https")
        # Not trusted: the header is overwritten with this hop's scheme.
        assert scheme_seen_by_django("127.0.0.1", "http")
        # A value the map does not know falls back to this hop's scheme.
        assert scheme_seen_by_django("127.0.0.2", "gopher")
    finally:
        tls_stack.config.trusted_proxies = ()
        tls_stack.reload_nginx()
    wait_until(
        lambda: scheme_seen_by_django("127.0.0.2", "http"),
        timeout=15,
        what="127.0.0.2 untrusted again",
    )


def test_tls_config_passes_nginx_t(tls_stack: Stack) -> None:
    result = tls_stack.nginx_test()
    assert result.returncode == 0, result.stderr


def check_tls(env_file: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "deploy" / "docker" / "check-tls.sh"), str(env_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def test_make_up_refuses_https_without_a_readable_certificate(tmp_path: Path, certs: Path) -> None:
    """`make up` runs deploy/docker/check-tls.sh first: a clear error, not an nginx that
    fails to start in its container."""
    env_file = tmp_path / "env"
    missing = tmp_path / "no-certs"
    env_file.write_text(f"NGINX_LISTEN=tls/listen.conf\nTLS_CERT_DIR={missing}\n")
    result = check_tls(env_file)
    assert result.returncode == 1 and "run `make certs`" in result.stderr
    assert missing.is_dir()  # created by the user, not by Docker as root
    assert check_tls(env_file, TLS_CERT_DIR=str(certs)).returncode == 0
    # Plain HTTP needs no certificate.
    assert check_tls(env_file, NGINX_LISTEN="listen.conf").returncode == 0
    private = tmp_path / "private"
    shutil.copytree(certs, private)
    (private / "tls.key").chmod(0o600)
    result = check_tls(env_file, TLS_CERT_DIR=str(private))
    assert result.returncode == 1 and "uid 101 and cannot read" in result.stderr


def test_stack_tls_mode_needs_the_certificate(tmp_path: Path) -> None:
    stack = Stack(name="tls-nocert", https_port=18243, cert_dir=tmp_path)
    with pytest.raises(StackError, match="run `make certs`"):
        stack.up()


def test_make_up_makes_a_self_signed_certificate_on_a_fresh_checkout(tmp_path: Path) -> None:
    """A fresh checkout has no ./certs: `make up` makes a self-signed localhost pair there
    itself, says so, and nginx can read it; an existing pair is left alone."""
    env_file = tmp_path / "env"
    env_file.write_text("TLS_CERT_DIR=./certs\n")
    result = subprocess.run(
        [str(REPO / "deploy" / "docker" / "check-tls.sh"), str(env_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "making a self-signed one for localhost" in result.stderr
    cert = tmp_path / "certs" / "tls.crt"
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-subject", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CN = localhost" in text and "IP Address:127.0.0.1" in text, text
    made = cert.read_bytes()
    again = check_tls(env_file, TLS_CERT_DIR=str(tmp_path / "certs"))
    assert again.returncode == 0 and "self-signed" not in again.stderr
    assert cert.read_bytes() == made
