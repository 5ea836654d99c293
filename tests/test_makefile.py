"""The Makefile as a newcomer meets it: `make` lists every target, `make seed` works on a
fresh machine (no SECRET_KEY), `make dev` prints one readable line per request."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path

import requests

from tests.redis_server import free_port
from tests.stack.harness import wait_until

REPO = Path(__file__).resolve().parent.parent
PY = str(REPO / ".venv" / "bin" / "python")


def bare_env(**extra: str) -> dict[str, str]:
    """A fresh shell's environment: none of the test suite's settings (no SECRET_KEY)."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, **extra}


def test_help_lists_every_target_with_a_description() -> None:
    makefile = (REPO / "Makefile").read_text()
    phony = set()
    for line in re.findall(r"^\.PHONY:(.*)$", makefile, re.M):
        phony.update(line.split())
    out = subprocess.run(
        ["make", "--no-print-directory"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # the colours
    listed = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    missing = sorted(t for t in phony if t not in listed)
    assert not missing, f"targets without a `## description`: {missing}"
    assert all(len(line.split()) > 1 for line in listed.values()), out


def test_make_seed_needs_no_secret_key(tmp_path: Path) -> None:
    """README: `make seed` on a fresh machine. Seeding only writes users, so it must not
    stop at "SECRET_KEY is not set" (it did: only `make loadtest`'s own seeding worked)."""
    db = f"sqlite:///{tmp_path / 'seed.sqlite3'}"
    subprocess.run(
        [PY, "src/manage.py", "migrate", "--noinput"],
        cwd=REPO,
        env=bare_env(DEBUG="1", DATABASE_URL=db),
        capture_output=True,
        check=True,
        timeout=120,
    )
    out = tmp_path / "users.json"
    result = subprocess.run(
        ["make", "--no-print-directory", "seed", "ROOMS=2", "MEMBERS=3", f"OUT={out}"],
        cwd=REPO,
        env=bare_env(DATABASE_URL=db),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-800:] + result.stderr[-800:]
    users = json.loads(out.read_text())
    assert len(users) == 6 and len({u["conversation"] for u in users}) == 2


def test_dev_server_logs_one_readable_line_per_request(tmp_path: Path) -> None:
    """`make dev` (DEBUG): one human-readable line per request, not the development server's
    line plus its JSON copy plus the JSON access line."""
    db = f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    env = bare_env(DEBUG="1", DATABASE_URL=db)
    subprocess.run(
        [PY, "src/manage.py", "migrate", "--noinput"],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    port = free_port()
    server = subprocess.Popen(
        [PY, "src/manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)
    reader.start()
    try:

        def get(path: str) -> int | None:
            try:
                return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code
            except requests.ConnectionError:
                return None

        wait_until(lambda: get("/accounts/login/") == 200, timeout=60, what="the dev server")
        assert get("/no-such-page") == 404
        wait_until(
            lambda: any("/no-such-page 404" in line for line in lines),
            timeout=10,
            what="the 404's access line",
        )
    finally:
        server.terminate()
        server.wait(timeout=20)
        reader.join(timeout=5)
    about_404 = [line for line in lines if "/no-such-page" in line and "404" in line]
    assert len(about_404) == 1, lines
    assert re.match(r"\d\d:\d\d:\d\d INFO +parley\.access: GET /no-such-page 404 \(", about_404[0])
    assert not [line for line in lines if line.lstrip().startswith("{")], lines
