"""HTTP through nginx: the config, pages and login, headers, static files, limits, request ids."""

from __future__ import annotations

import http.client
import re
from pathlib import Path

import pytest
import requests

from tests.stack.conftest import PASSWORD
from tests.stack.harness import REPO, child_pids, login, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:"
)


def test_nginx_config_passes_nginx_t(stack):
    result = stack.nginx_test()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.parametrize("env", ["stack", "compose", "k8s"])
def test_every_upstream_file_defines_both_upstreams_and_nothing_else(env):
    text = (REPO / "deploy" / "nginx" / "upstreams" / f"{env}.conf").read_text()
    code = re.sub(r"#.*", "", text)
    assert sorted(re.findall(r"^\s*(\w+)\s+(\w+)\s*\{", code, re.M)) == [
        ("upstream", "parley_web"),
        ("upstream", "parley_ws"),
    ]
    web = code.split("parley_ws")[0]
    assert "keepalive" in web  # keepalive on the web upstream
    # ...but connections are reopened now and then, or they stay piled on one worker.
    requests_per_connection = re.search(r"keepalive_requests\s+(\d+);", web)
    assert requests_per_connection and int(requests_per_connection.group(1)) <= 100


def test_web_workers_run_on_uvloop_and_httptools(stack):
    """The C event loop and HTTP parser (not asyncio's loop and h11): less CPU per request."""
    master = stack.procs["web"]["pid"]
    workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(workers) == stack.config.web_workers
    for pid in workers:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "/uvloop/" in maps, f"worker {pid} has no uvloop loaded"
        assert "/httptools/" in maps, f"worker {pid} has no httptools loaded"


def test_every_serving_process_keeps_its_startup_heap_out_of_full_collections(stack):
    """Each web worker and each daphne froze the objects it loaded at start (parley.gc_heap):
    a full garbage collection no longer walks Django's whole heap while requests wait."""
    for name, processes in [("web", stack.config.web_workers), ("ws1", 1), ("ws2", 1)]:
        frozen = [r for r in stack.log_records(name) if r.get("msg") == "startup heap frozen"]
        assert len(frozen) >= processes, (name, frozen)
        assert all(int(r["frozen_objects"]) > 10_000 for r in frozen), frozen


def test_nginx_health(stack):
    response = requests.get(f"{stack.url}/nginx-health", timeout=5)
    assert response.status_code == 200
    assert response.text == "ok\n"


def test_pages_and_login_through_nginx(stack, rooms):
    username = next(iter(rooms.values()))[0]
    anonymous = requests.get(f"{stack.url}/", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"].startswith("/accounts/login/")

    session = login(stack.url, username, PASSWORD)
    home = session.get(f"{stack.url}/", timeout=10)
    assert home.status_code == 200
    assert f"Signed in as </span><strong>{username}</strong>" in home.text
    # Readiness is asked of each process directly, never through the public nginx.
    assert requests.get(f"{stack.web_url()}/readyz", timeout=10).json()["status"] == "ok"
    public = requests.get(f"{stack.url}/readyz", timeout=10)
    assert public.status_code == 404 and "status" not in public.text


def test_security_headers_on_pages_errors_and_health(stack):
    for path in ("/accounts/login/", "/no-such-page", "/nginx-health"):
        response = requests.get(f"{stack.url}{path}", timeout=10)
        headers = response.headers
        assert headers["Content-Security-Policy"].startswith(CSP), path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        assert "Server" not in headers or headers["Server"] == "nginx"  # no version
        # Sent once: the app's copies are hidden behind nginx's.
        raw = response.raw.headers
        assert len(raw.getlist("X-Frame-Options")) == 1
        assert len(raw.getlist("X-Request-ID")) == 1


def test_hashed_static_files_are_cached_long_and_gzipped(stack):
    page = requests.get(f"{stack.url}/accounts/login/", timeout=10).text
    script = re.search(r'src="(/static/chat/vendor/htmx-[^"]+\.[0-9a-f]{12}\.js)"', page)
    assert script, "expected a hashed static URL (manifest storage)"
    response = requests.get(
        f"{stack.url}{script.group(1)}", headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    assert response.status_code == 200
    assert "max-age=31536000" in response.headers["Cache-Control"]
    assert "immutable" in response.headers["Cache-Control"]
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Security-Policy"].startswith(CSP)


def test_html_is_gzipped(stack):
    response = requests.get(
        f"{stack.url}/accounts/login/", headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    assert response.headers.get("Content-Encoding") == "gzip"


def _post_login(
    source_ip: str, port: int, path: str = "/accounts/login/", forwarded_for: str | None = None
) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source_ip, 0))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    try:
        conn.request("POST", path, body="username=x&password=y", headers=headers)
        response = conn.getresponse()
        body = response.read().decode()
        if response.status == 429:
            assert "Too many attempts" in body
            assert response.getheader("Retry-After") == "60"
        return response.status
    finally:
        conn.close()


def test_login_and_signup_posts_are_rate_limited_per_client_with_a_429_page(stack):
    port = stack.config.nginx_port
    # Its own loopback source address: its own bucket, so other tests' logins are not hit.
    statuses = [_post_login("127.0.0.2", port) for _ in range(20)]
    assert statuses[0] == 403  # reached Django (no CSRF token), not limited
    assert 429 in statuses
    first = statuses.index(429)
    assert all(s == 429 for s in statuses[first:])
    # Another client is unaffected, and GETs of the form are never limited.
    assert _post_login("127.0.0.3", port) == 403
    for _ in range(3):
        conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)
        )
        conn.request("GET", "/accounts/signup/")
        assert conn.getresponse().status == 200
        conn.close()


def test_request_id_reaches_the_app_log_and_comes_back(stack):
    response = requests.get(
        f"{stack.url}/healthz",
        timeout=10,
        headers={"X-Request-ID": "client-chosen", "X-Forwarded-For": "6.6.6.6"},
    )
    rid = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)  # nginx's own id, not the client's
    record = wait_until(
        lambda: stack.find_log(
            "web", lambda r: r.get("request_id") == rid and r.get("logger") == "parley.access"
        ),
        timeout=10,
        what="the web access line with the request id",
    )
    assert record["path"] == "/healthz" and record["status"] == 200
    # nginx overwrote the forged X-Forwarded-For; gunicorn trusted nginx's value.
    assert record["client"].startswith("127.0.0.1:")
    nginx_line = wait_until(
        lambda: stack.find_log("nginx", lambda r: r.get("request_id") == rid),
        timeout=10,
        what="the nginx access line",
    )
    assert nginx_line["upstream"] == f"127.0.0.1:{stack.config.web_port}"


def test_every_app_log_line_is_json(stack):
    for name in ("web", *stack.ws_names):
        lines = [line for line in Path(stack.log_path(name)).read_text().splitlines() if line]
        assert lines
        bad = [line for line in lines if not line.startswith("{")]
        assert not bad, f"{name}: {bad[:3]}"


def _direct_get(stack, source_ip: str, headers: dict) -> str:
    """GET /healthz straight to gunicorn from `source_ip`; returns the request id."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", stack.config.web_port, timeout=10, source_address=(source_ip, 0)
    )
    try:
        conn.request("GET", "/healthz", headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return response.getheader("X-Request-ID")
    finally:
        conn.close()


def test_forwarded_headers_are_trusted_from_the_proxy_address_only(stack):
    forged = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "6.6.6.6"}

    def access_line(rid: str) -> dict:
        return wait_until(
            lambda: stack.find_log(
                "web", lambda r: r.get("request_id") == rid and r.get("logger") == "parley.access"
            ),
            timeout=10,
            what=f"access line {rid}",
        )

    # From nginx's address (FORWARDED_ALLOW_IPS=127.0.0.1) the headers are believed...
    trusted = access_line(_direct_get(stack, "127.0.0.1", {**forged, "X-Request-ID": "t1"}))
    assert trusted["scheme"] == "https"
    assert trusted["client"].startswith("6.6.6.6:")
    # ...from anyone else they are ignored.
    other = access_line(_direct_get(stack, "127.0.0.2", {**forged, "X-Request-ID": "t2"}))
    assert other["scheme"] == "http"
    assert other["client"].startswith("127.0.0.2:")


def test_pages_need_nothing_the_csp_forbids(stack, room, cookies):
    """No inline script, style element or style attribute: the CSP (script-src/style-src
    'self', no 'unsafe-inline') would block them in the browser."""
    conversation_id, (alice, _, _) = room
    session = requests.Session()
    session.cookies.update(cookies(alice))
    for path in ("/accounts/login/", "/accounts/signup/", "/", f"/c/{conversation_id}"):
        html = session.get(f"{stack.url}{path}", timeout=10).text
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], path
        assert "<style" not in html and " style=" not in html, path
        assert not re.search(r"\son[a-z]+=", html), path  # inline event handlers


ALL_CREDENTIAL_PATHS = [
    "/accounts/signup/",
    "/admin/login/",
    "/accounts/password_change/",
    "/accounts/password_reset/",
    "/accounts/reset/MQ/set-password/",
]


@pytest.mark.parametrize("path", ALL_CREDENTIAL_PATHS)
def test_every_path_that_checks_a_credential_is_rate_limited(stack, path):
    """Each from its own loopback address (its own bucket)."""
    source = f"127.0.1.{10 + ALL_CREDENTIAL_PATHS.index(path)}"
    statuses = [_post_login(source, stack.config.nginx_port, path) for _ in range(15)]
    assert statuses[0] != 429
    assert statuses[-1] == 429, statuses


def test_behind_a_trusted_proxy_each_client_has_its_own_login_bucket(stack):
    """The Kubernetes layout: the Gateway (127.0.0.4 here) connects to nginx for every
    client and names the client in X-Forwarded-For. Keyed on the proxy's address, one client
    locked everyone out. A client that is not a trusted proxy cannot pick its bucket."""
    port = stack.config.nginx_port
    stack.config.trusted_proxies = ("127.0.0.4/32",)
    try:
        reload_nginx(stack)
        flood = [_post_login("127.0.0.4", port, forwarded_for="198.51.100.7") for _ in range(15)]
        assert flood[-1] == 429
        # another client behind the same proxy is not locked out
        assert _post_login("127.0.0.4", port, forwarded_for="10.9.8.7, 198.51.100.8") == 403
        # an untrusted client's X-Forwarded-For is ignored: a new value each time does not
        # give it a new bucket
        spoofed = [
            _post_login("127.0.0.5", port, forwarded_for=f"198.51.100.{i}") for i in range(15)
        ]
        assert spoofed[-1] == 429
    finally:
        stack.config.trusted_proxies = ()
        reload_nginx(stack)


def reload_nginx(stack) -> None:
    """Reloads nginx and waits until every worker runs the new config (the old ones gone)."""

    def workers() -> set[int]:
        return child_pids(stack.procs["nginx"]["pid"])

    old = workers()
    stack.reload_nginx()
    wait_until(lambda: workers() and not workers() & old, 15, "nginx workers on the new config")
