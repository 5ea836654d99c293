"""Browser end-to-end fixtures: Debian's Chromium driven by Playwright against a running site.

Every page is watched: a console error or an uncaught exception fails the test unless the
test declares it expected (`pages.expect_console(pattern)`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import preflight
from tests.tiers import missing

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = str(preflight.chromium_path())
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", REPO / "test-artifacts")) / "browser"
SESSION_COOKIE = "sessionid"


HOST_NETWORK_CHANGES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if HOST_NETWORK_CHANGES:
        terminalreporter.write_line(
            f"browser: {len(HOST_NETWORK_CHANGES)} request(s) failed by host network changes "
            "(tolerated, not the page's fault):"
        )
        for line in HOST_NETWORK_CHANGES:
            terminalreporter.write_line("  " + line)
    if ARTIFACTS.is_dir() and any(ARTIFACTS.iterdir()):
        terminalreporter.write_line(f"browser screenshots: {ARTIFACTS}")


def _ensure_chromium() -> None:
    """Debian's chromium, installed when missing and root (tests/preflight.py)."""
    try:
        preflight.chromium()
    except preflight.Missing as exc:
        missing("Chromium", exc.detail, exc.fix)


# --- the site under test ------------------------------------------------------------------


@dataclass
class Site:
    base_url: str
    env: dict[str, str]
    stack: Any = field(repr=False)
    seeder: subprocess.Popen | None = field(default=None, repr=False)

    def manage(self, request: dict):
        """Asks tests/browser/seed.py (one process per session) to act on the site's database."""
        if self.seeder is None:
            self.seeder = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("seed.py"))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=self.env,
                cwd=REPO,
            )
        self.seeder.stdin.write(json.dumps(request) + "\n")
        self.seeder.stdin.flush()
        line = self.seeder.stdout.readline()
        if not line:
            raise RuntimeError(f"seed.py exited ({self.seeder.wait()}) during {request['op']}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"seed {request['op']} failed:\n{answer['error']}")
        return answer["ok"]

    def close(self) -> None:
        if self.seeder is not None:
            self.seeder.stdin.close()
            self.seeder.wait(10)
            self.seeder = None

    def stop_ws(self) -> None:
        """SIGTERM to every daphne at once; returns when all have drained and exited."""
        for i in range(len(self.stack.ws_names)):
            self.stack.kill_ws(i, wait=False)
        for i in range(len(self.stack.ws_names)):
            self.stack.wait_ws_exit(i)

    def start_ws(self) -> None:
        for name in self.stack.ws_names:
            self.stack.spawn(name)
        self.stack.wait_healthy(self.stack.ws_names)

    def ensure_ws(self) -> None:
        """Starts any daphne a failed test left stopped, so its failure stays its own."""
        stopped = [name for name in self.stack.ws_names if not self.stack.alive(name)]
        for name in stopped:
            self.stack.spawn(name)
        if stopped:
            self.stack.wait_healthy(stopped)

    def users(self, *names: str) -> dict[str, dict]:
        return self.manage({"op": "users", "names": list(names)})

    def conversation(self, *names: str, messages: int = 0, title: str = "") -> int:
        return self.manage(
            {"op": "conversation", "names": list(names), "messages": messages, "title": title}
        )["id"]

    def read_marker(self, conversation: int, username: str) -> int:
        return self.manage(
            {"op": "read_marker", "conversation": conversation, "username": username}
        )

    def messages(self, conversation: int) -> list[tuple[int, str, str]]:
        return [tuple(m) for m in self.manage({"op": "messages", "conversation": conversation})]


def browser_stack():
    """A private `make stack` (nginx, gunicorn, two daphne) on its own ports, database
    parley_stacktest_browser and Redis db 6."""
    from tests.stack.harness import Stack

    return Stack(
        name="browser",
        nginx_port=18680,
        web_port=18600,
        ws_ports=(18601, 18602),
        redis_db=6,
        # Production's drain: stop listening at once, then close every socket with 1012.
        env={"WS_DRAIN_DELAY": "0"},
    )


@pytest.fixture(scope="session")
def site() -> Iterator[Site]:
    with browser_stack().started() as stack:
        s = Site(base_url=stack.url, env=stack.app_env(), stack=stack)
        try:
            yield s
        finally:
            s.close()


# --- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Pages:
    """Browser contexts (one per person) for one test, each page watched for errors.

    One kind of console error is the machine's, not the page's: when a network interface
    appears or goes on the host (a container starting, say), Chromium fails whatever is in
    flight with net::ERR_NETWORK_CHANGED. Those are counted and reported instead of failing
    the test, together with the one htmx:wsError that each such failed socket logs, and a
    page load they hit is repeated (`goto`).
    """

    HOST_NETWORK_CHANGE = "net::ERR_NETWORK_CHANGED"
    HTMX_WS_ERROR = re.compile(r"^\[object Event\]$")

    def __init__(self, browser, site: Site, test_name: str) -> None:
        self.browser = browser
        self.site = site
        self.test_name = re.sub(r"[^\w.-]+", "_", test_name)
        self.contexts: list = []
        self.errors: list[str] = []
        self.expected: list[re.Pattern[str]] = []
        self.host_network_changes: list[str] = []
        self._ws_failures_to_excuse: dict[str, int] = {}

    def expect_console(self, pattern: str) -> None:
        """Declares a console error this test provokes on purpose."""
        self.expected.append(re.compile(pattern))

    def watch(self, page, who: str) -> None:
        def on_console(msg) -> None:
            if msg.type != "error":
                return
            text = msg.text
            line = f"[{who}] console: {text} ({msg.location.get('url')})"
            if self.HOST_NETWORK_CHANGE in text:
                self.host_network_changes.append(line)
                if text.startswith("WebSocket connection to"):
                    self._ws_failures_to_excuse[who] = self._ws_failures_to_excuse.get(who, 0) + 1
            elif self.HTMX_WS_ERROR.match(text) and self._ws_failures_to_excuse.get(who):
                self._ws_failures_to_excuse[who] -= 1
            else:
                self.errors.append(line)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"[{who}] pageerror: {exc}"))

    def new_page(self, who: str, session: str | None = None, **context_options: Any):
        """A page in a new browser context; `context_options` go to new_context (a phone's
        viewport, is_mobile, has_touch)."""
        context_options.setdefault("viewport", {"width": 900, "height": 700})
        context = self.browser.new_context(base_url=self.site.base_url, **context_options)
        context.set_default_timeout(10_000)
        if session:
            context.add_cookies(
                [{"name": SESSION_COOKIE, "value": session, "url": self.site.base_url}]
            )
        self.contexts.append(context)
        page = context.new_page()
        self.watch(page, who)
        return page

    def goto(self, page, path: str):
        """page.goto, repeated if a host network change broke the load (see the class doc)."""
        for _ in range(3):
            seen = len(self.host_network_changes)
            response = page.goto(path, wait_until="load")
            if len(self.host_network_changes) == seen:
                return response
        raise AssertionError("host network kept changing: " + "; ".join(self.host_network_changes))

    def open_pages(self) -> list:
        return [page for context in self.contexts for page in context.pages]

    def shot(self, page, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.test_name}--{name}.png"
        page.screenshot(path=str(path))
        return path

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.expected)]

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser, site, request) -> Iterator[Pages]:
    site.ensure_ws()
    p = Pages(browser, site, request.node.name)
    try:
        yield p
    finally:
        p.close()
    HOST_NETWORK_CHANGES.extend(f"{p.test_name}: {line}" for line in p.host_network_changes)
    errors = p.unexpected_errors()
    assert not errors, "errors in the page:\n" + "\n".join(errors)
