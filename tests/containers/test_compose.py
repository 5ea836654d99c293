"""The production stack in containers, end to end (issue "Containers", steps 1-9):

1. a Docker engine (started here when none answers; if impossible, reported as missing and
   counted as not run: tests/tiers.py),
2. the stand-in base images from Debian packages (deploy/standins; kept between runs),
3. the app image, 4. `make up` with the stand-ins, 5. every service healthy,
6. through nginx: sign up, log in, two websocket clients exchange a message,
7. app containers run as non-root, 8. one ws container restarted mid-conversation loses
nothing (1012 drain, reconnect with ?after replay), 9. torn down, volumes included.

Run once per Compose implementation: Debian's docker-compose 1.29 and `docker compose` v2.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests import instance
from tests.containers import engine as eng
from tests.helpers.wsclient import ChatSocket
from tests.tiers import missing

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = eng.REPO
ARTIFACTS = REPO / "test-artifacts" / "containers"
APP_IMAGE = "parley:ci" + instance.SUFFIX.replace("_", "-")
APP_UID = 10001
PASSWORD = "Compose-test-pass-42"  # noqa: S105


@dataclass
class Timings:
    values: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, started: float) -> None:
        self.values[name] = round(time.monotonic() - started, 1)
        print(f"timing {name}: {self.values[name]} s")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "timings.json").write_text(json.dumps(self.values, indent=2))


TIMINGS = Timings()


# Settings of an enclosing `make test` (or the caller's shell) that would steer the stack
# this test builds; it sets its own on the command line.
NOT_INHERITED = {
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "COMPOSE",
    "COMPOSE_PROJECT",
    "ENV_FILE",
    "STANDINS",
    "PARLEY_IMAGE",
    "PYTHON_IMAGE",
    "POSTGRES_IMAGE",
    "REDIS_IMAGE",
    "NGINX_IMAGE",
    "PARLEY_ENV_FILE",
    "EXTRA_CA_BUNDLE",
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_FILE",
    "DOCKER_HOST",
}


def make(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    base = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    result = eng.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        timeout=timeout,
        check=False,
        env={**base, **(env or {})},
    )
    if result.returncode != 0:
        raise AssertionError(
            f"make {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    return eng.run(["docker", *args], timeout=timeout, check=check).stdout


# --- engine, images -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[eng.Engine]:
    started = time.monotonic()
    try:
        engine = eng.ensure_engine(ARTIFACTS)
    except eng.EngineUnavailable as exc:
        missing("Docker", str(exc))
    TIMINGS.record("engine", started)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def images(engine: eng.Engine) -> str:
    started = time.monotonic()
    make("standins", timeout=1200)
    TIMINGS.record("standin_images", started)
    started = time.monotonic()
    make(
        "build",
        "STANDINS=1",
        f"PARLEY_IMAGE={APP_IMAGE}",
        f"EXTRA_CA_BUNDLE={build_ca_bundle()}",
        timeout=1200,
    )
    TIMINGS.record("app_image", started)
    return APP_IMAGE


def build_ca_bundle() -> str:
    """The trust store this machine's pip uses (it may include a TLS-intercepting proxy's
    CA), else the system's: handed to the build stage only, added to its trust store."""
    for var in ("PARLEY_BUILD_CA_BUNDLE", "PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        path = os.environ.get(var, "")
        if path and Path(path).is_file():
            return path
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    return str(system) if system.is_file() else ""


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    project: str
    make_args: list[str]
    env: dict[str, str]
    port: int
    env_file: Path
    https_port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def make(self, target: str, timeout: float = 900) -> str:
        return make(target, *self.make_args, env=self.env, timeout=timeout)

    def containers(self) -> dict[str, list[dict]]:
        ids = docker(
            "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"
        ).split()
        by_service: dict[str, list[dict]] = {}
        for info in json.loads(docker("inspect", *ids)) if ids else []:
            service = info["Config"]["Labels"]["com.docker.compose.service"]
            by_service.setdefault(service, []).append(info)
        return by_service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_env_values(path: Path, values: dict[str, str]) -> None:
    lines = path.read_text().splitlines()
    for key, value in values.items():
        pattern = re.compile(rf"^#?\s*{key}=")
        for i, line in enumerate(lines):
            if pattern.match(line):
                lines[i] = f"{key}={value}"
                break
        else:
            lines.append(f"{key}={value}")
    path.write_text("\n".join(lines) + "\n")


def compose_flavour(name: str) -> tuple[list[str], dict[str, str]]:
    try:
        if name == "v1":
            return eng.compose_v1(), {}
        return eng.compose_v2()
    except eng.EngineUnavailable as exc:
        missing("docker-compose 1.29" if name == "v1" else "docker compose v2", str(exc))


@pytest.fixture
def compose_env() -> Callable[[int, int], dict[str, str]]:
    """The env-file values the `stack` fixture sets for its two loopback ports (http,
    https): plain http here (requests, like any non-browser client, keeps Secure cookies off
    http). test_compose_tls.py overrides this fixture to serve HTTPS."""
    return plain_http_values


def plain_http_values(port: int, https_port: int) -> dict[str, str]:
    """compose_env's values: nginx on plain http on `port`."""
    return {
        "HTTP_BIND": "127.0.0.1",
        "HTTP_PORT": str(port),
        "HTTPS_PORT": str(https_port),
        "NGINX_LISTEN": "listen.conf",
        "HTTPS": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CSRF_TRUSTED_ORIGINS": f"http://127.0.0.1:{port}",
        "HEALTHCHECK_INTERVAL": "2s",
    }


@pytest.fixture(params=["v1", "v2"], ids=["docker-compose-1.29", "docker-compose-v2"])
def stack(request, images: str, tmp_path: Path, compose_env) -> Iterator[Stack]:
    with compose_stack(request.param, images, tmp_path, compose_env) as running:
        yield running


@contextlib.contextmanager
def compose_stack(
    flavour: str,
    images: str,
    tmp_path: Path,
    compose_env: Callable[[int, int], dict[str, str]],
    scale: bool = False,
) -> Iterator[Stack]:
    """`make up` with this Compose flavour (v1, v2) on fresh loopback ports and its own env
    file (SCALE=1: the scale profile too); on the way out its logs are kept, then
    `make wipe-volumes` leaves no container or volume behind."""
    command, extra_env = compose_flavour(flavour)
    project = f"parleyci{flavour}{'scale' if scale else ''}{instance.SUFFIX.replace('_', '')}"
    env_file = tmp_path / "ci.env"
    port = free_port()
    stack = Stack(
        project=project,
        env=extra_env,
        port=port,
        env_file=env_file,
        https_port=free_port(),
        make_args=[
            f"COMPOSE={' '.join(command)}",
            f"COMPOSE_PROJECT={project}",
            f"ENV_FILE={env_file}",
            "STANDINS=1",
            f"PARLEY_IMAGE={images}",
            f"EXTRA_CA_BUNDLE={build_ca_bundle()}",
            *(["SCALE=1"] if scale else []),
        ],
    )
    # `make env` (a step of `make up`) writes the env file from .env.example with fresh
    # secrets; this test only adapts it (compose_env).
    stack.make("env")
    # A leftover of an interrupted earlier run would hold the names and the volume.
    stack.make("wipe-volumes", timeout=300)
    written = env_file.read_text()
    assert re.search(r"^SECRET_KEY=[A-Za-z0-9_-]{50,}$", written, re.M)
    assert re.search(r"^POSTGRES_PASSWORD=[A-Za-z0-9_-]{20,}$", written, re.M)
    set_env_values(env_file, compose_env(port, stack.https_port))
    started = time.monotonic()
    files = ["-f", "docker-compose.prod.yml"]
    files += ["-f", "docker-compose.scale.yml"] if scale else []
    try:
        stack.make("up", timeout=600)
        TIMINGS.record(f"{project}_up_healthy", started)
        yield stack
    finally:
        logs = eng.run(
            [
                *command,
                "-p",
                project,
                *files,
                "--env-file",
                str(env_file),
                "logs",
                "--no-color",
                "--tail=300",
            ],
            cwd=REPO,
            check=False,
            timeout=120,
            env={**os.environ, **extra_env, "PARLEY_ENV_FILE": str(env_file)},
        )
        (ARTIFACTS / f"{project}.log").write_text(logs.stdout + logs.stderr)
        started = time.monotonic()
        stack.make("wipe-volumes", timeout=300)
        TIMINGS.record(f"{project}_down", started)
        assert not docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}")
        assert not docker(
            "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"
        )


# --- steps --------------------------------------------------------------------------------------


def psql(stack: Stack, query: str) -> list[str]:
    pg = stack.containers()["postgres"][0]["Id"]
    out = docker(
        "exec", pg, "sh", "-c", 'psql -XAt -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$0"', query
    )
    return out.splitlines()


def check_postgres_sees_only_pgbouncer(stack: Stack) -> None:
    """web and ws reach Postgres through PgBouncer: every client connection to the app's
    database comes from the pgbouncer container, at most its pool of them."""
    services = stack.containers()
    (bouncer,) = services["pgbouncer"]
    addresses = {n["IPAddress"] for n in bouncer["NetworkSettings"]["Networks"].values()}
    clients = psql(
        stack,
        "SELECT host(client_addr) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert clients, "no connection from the app at all"
    assert set(clients) <= addresses, (clients, addresses)
    assert len(clients) <= 20  # PGBOUNCER_POOL_SIZE's default


def check_services(stack: Stack) -> None:
    """Step 5, and the topology: one healthy nginx, web, pgbouncer; two ws; migrate done; db
    healthy; only nginx publishes a port, and only on loopback here."""
    services = stack.containers()
    assert sorted(services) == ["migrate", "nginx", "pgbouncer", "postgres", "redis", "web", "ws"]
    assert len(services["ws"]) == 2
    for name, infos in services.items():
        for info in infos:
            state = info["State"]
            if name == "migrate":
                assert state["Status"] == "exited" and state["ExitCode"] == 0, state
                continue
            assert state["Status"] == "running", (name, state["Status"])
            assert state["Health"]["Status"] == "healthy", (name, state["Health"])
            assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
            assert info["HostConfig"]["Memory"] > 0 and info["HostConfig"]["NanoCpus"] > 0
            published = {p: b for p, b in (info["NetworkSettings"]["Ports"] or {}).items() if b}
            if name == "nginx":
                assert published == {
                    "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(stack.port)}],
                    "8443/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(stack.https_port)}],
                }
            else:
                assert published == {}, (name, published)


def post_form(base: str, path: str, fields: dict[str, str]) -> requests.Session:
    """GETs the form (CSRF cookie), POSTs it, and expects to land on the conversation list."""
    session = requests.Session()
    session.get(f"{base}{path}", timeout=10).raise_for_status()
    response = session.post(
        f"{base}{path}",
        timeout=30,
        data={"csrfmiddlewaretoken": session.cookies["csrftoken"], **fields},
        # As a browser does; over https Django's CSRF check requires it.
        headers={"Referer": f"{base}{path}"},
    )
    assert response.status_code == 200 and response.url == f"{base}/", response.text[:500]
    return session


def sign_up_and_log_in(base: str, username: str) -> requests.Session:
    post_form(
        base,
        "/accounts/signup/",
        {"username": username, "password1": PASSWORD, "password2": PASSWORD},
    )
    session = post_form(base, "/accounts/login/", {"username": username, "password": PASSWORD})
    assert "sessionid" in session.cookies
    return session


def start_conversation(base: str, session: requests.Session, other: str) -> int:
    response = session.post(
        f"{base}/c/new",
        timeout=30,
        data={
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "usernames": other,
            "title": "compose ci",
        },
        headers={"Referer": f"{base}/"},
    )
    match = re.fullmatch(rf"{re.escape(base)}/c/(\d+)", response.url)
    assert response.status_code == 200 and match, (response.status_code, response.url)
    return int(match.group(1))


def check_static_files(base: str, session: requests.Session) -> None:
    """collectstatic ran at build time: the page links hashed names that are served."""
    page = session.get(f"{base}/", timeout=10).text
    hashed = re.findall(r"/static/chat/chat\.[0-9a-f]{12}\.(?:css|js)", page)
    assert hashed, "no hashed static file linked"
    for path in hashed:
        assert session.get(f"{base}{path}", timeout=10).status_code == 200, path


def check_non_root(stack: Stack) -> None:
    """Step 7: every process in the app containers (and nginx) runs as a non-root uid."""
    services = stack.containers()
    for name in ("web", "ws", "nginx"):
        for info in services[name]:
            status = docker(
                "exec",
                info["Id"],
                "sh",
                "-c",
                # A process may end between the glob and the read (a healthcheck probe).
                "for f in /proc/[0-9]*/status; do cat $f 2>/dev/null; done; true",
            )
            uids = {int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")}
            assert uids and 0 not in uids, (name, uids)
            if name != "nginx":
                assert uids == {APP_UID}, (name, uids)
                assert info["Config"]["User"] == f"{APP_UID}:{APP_UID}"


def check_image_has_no_build_ca(image: str) -> None:
    """The extra CA bundle reached the build stage only: no copy in the final image, and its
    trust store is the base image's, byte for byte."""
    script = (
        "find / -xdev \\( -name extra-ca.pem -o -name trust.pem -o -name build-ca \\) "
        "-print; sha256sum /etc/ssl/certs/ca-certificates.crt"
    )
    out = docker("run", "--rm", "--entrypoint", "sh", image, "-c", script).split()
    base_image = "parley-standin/python:3.11"
    base = docker("run", "--rm", base_image, "sha256sum", "/etc/ssl/certs/ca-certificates.crt")
    assert out == base.split(), out


def ws_connections(container_id: str) -> int:
    """Established TCP connections to daphne's port 8001 from outside the container (nginx)."""
    tables = docker(
        "exec", container_id, "sh", "-c", "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null"
    )
    count = 0
    for line in tables.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 3 and parts[1].endswith(":1F41") and parts[3] == "01":
            remote = parts[2].split(":")[0]
            if remote not in ("0100007F", "00000000000000000000000001000000"):
                count += 1
    return count


def wait_healthy(container_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = docker("inspect", "-f", "{{.State.Health.Status}}", container_id).strip()
        if health == "healthy":
            return
        time.sleep(0.5)
    raise AssertionError(f"{container_id[:12]} not healthy after {timeout} s")


def test_stack_end_to_end(stack: Stack, images: str) -> None:
    check_services(stack)
    check_image_has_no_build_ca(images)
    assert requests.get(f"{stack.base}/nginx-health", timeout=10).status_code == 200

    # Step 6: sign up and log in through nginx; two websocket clients exchange a message.
    tag = hashlib.sha1(os.urandom(8)).hexdigest()[:6]  # noqa: S324 (a name, not a secret)
    alice = sign_up_and_log_in(stack.base, f"alice{tag}")
    bob = sign_up_and_log_in(stack.base, f"bob{tag}")
    check_static_files(stack.base, alice)
    conversation = start_conversation(stack.base, alice, f"bob{tag}")
    ws_base = f"ws://127.0.0.1:{stack.port}"
    clients = {
        name: ChatSocket(
            ws_base, stack.base, conversation, f"sessionid={session.cookies['sessionid']}"
        )
        for name, session in (("alice", alice), ("bob", bob))
    }
    a, b = clients["alice"], clients["bob"]
    try:
        a.connect()
        b.connect()
        first = {a.send("hello bob, through nginx")}
        b.wait_client_ids(first)
        a.wait_client_ids(first)
        reply = {b.send("hello alice")}
        a.wait_client_ids(reply)
        check_postgres_sees_only_pgbouncer(stack)

        # Step 7.
        check_non_root(stack)

        # Step 8: restart the ws container that holds the sockets, mid-conversation.
        ws_ids = [info["Id"] for info in stack.containers()["ws"]]
        victim = max(ws_ids, key=ws_connections)
        assert ws_connections(victim) >= 1
        restart_conversation(stack, a, b, victim, first | reply)

        # Step 9: Redis dies. Pages load, sends are stored and confirmed, no container turns
        # unhealthy (readiness no longer fails on a shared dependency), and the peer catches
        # up once Redis is back.
        redis_outage(stack, alice, conversation, a, b)
    finally:
        for client in clients.values():
            client.close()

    # The stored conversation agrees: the page renders every message, in order, once.
    page = alice.get(f"{stack.base}/c/{conversation}", timeout=10).text
    stored = [int(s) for s in re.findall(r'class="msg" data-seq="(\d+)"', page)]
    assert stored == sorted(b.seen) == list(range(1, len(stored) + 1))

    check_metrics(stack, stored_messages=len(stored))
    check_redeploy(stack, alice, conversation, ws_base, len(stored))


SCRAPE = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=5).read().decode())"
)


def redis_outage(
    stack: Stack, session: requests.Session, conversation: int, a: ChatSocket, b: ChatSocket
) -> None:
    redis_id = stack.containers()["redis"][0]["Id"]
    stopped_at = datetime.datetime.now(datetime.UTC)
    docker("stop", "-t", "5", redis_id, timeout=60)
    try:
        page = session.get(f"{stack.base}/c/{conversation}", timeout=10)
        assert page.status_code == 200, page.text[:300]
        for client in (a, b):  # sockets on a live daphne stay open through the outage
            if not client.is_open:
                client.reconnect(timeout=30, retry=True)
        during = {a.send("while redis is down")}
        a.wait_client_ids(during, timeout=15)  # stored and confirmed to the sender
        # readiness says degraded, not unready: every web and ws container's healthchecks
        # since Redis stopped pass (it used to answer 503 and turn them unhealthy)
        for service in ("web", "ws"):
            for info in stack.containers()[service]:
                probes = wait_probes_since(info["Id"], stopped_at, count=2, timeout=60)
                assert all(p["ExitCode"] == 0 for p in probes), (service, probes)
    finally:
        docker("start", redis_id, timeout=60)
    b.wait_client_ids(during, timeout=60)  # the peer heals from the database
    seqs = sorted(b.seen)
    assert seqs == list(range(1, len(seqs) + 1)), f"gap in {seqs}"


def wait_probes_since(
    container_id: str, since: datetime.datetime, count: int, timeout: float
) -> list[dict]:
    """The container's healthcheck results that started after `since`, once there are
    `count` of them."""

    def started(probe: dict) -> datetime.datetime:
        stamp = re.sub(r"(\.\d{6})\d*", r"\1", probe["Start"])  # nanoseconds -> micro
        return datetime.datetime.fromisoformat(stamp)

    deadline = time.monotonic() + timeout
    while True:
        log = json.loads(docker("inspect", "-f", "{{json .State.Health.Log}}", container_id))
        probes = [p for p in log or [] if started(p) > since]
        if len(probes) >= count:
            return probes
        if time.monotonic() > deadline:
            raise AssertionError(f"{container_id[:12]}: {len(probes)} healthchecks since {since}")
        time.sleep(0.5)


def check_metrics(stack: Stack, stored_messages: int) -> None:
    """Each web and ws container exports Prometheus metrics on its internal port (9100): not
    published on the host and not proxied by nginx. Scraped once, from inside."""
    stored = 0.0
    for service in ("web", "ws"):
        for info in stack.containers()[service]:
            assert not docker("port", info["Id"], check=False).strip(), "metrics port published"
            text = docker("exec", info["Id"], "python", "-c", SCRAPE, timeout=30)
            assert "parley_http_request_duration_seconds" in text, service
            stored += sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("parley_messages_stored_total ")
            )
    # the restarted ws container's counters started again from zero, so at least one of
    # the messages is on record, and never more than were stored
    assert 1 <= stored <= stored_messages, stored
    public = requests.get(f"{stack.base}/metrics", timeout=10)
    assert public.status_code == 404 and "parley_" not in public.text


def addresses(stack: Stack) -> dict[str, list[str]]:
    """Container addresses per service, and what nginx resolves (for failure messages)."""
    found = {
        name: [
            ",".join(n["IPAddress"] for n in i["NetworkSettings"]["Networks"].values())
            for i in infos
        ]
        for name, infos in stack.containers().items()
    }
    nginx = stack.containers()["nginx"][0]["Id"]
    found["nginx sees"] = [
        docker("exec", nginx, "getent", "ahostsv4", svc, check=False) for svc in ("web", "ws")
    ]
    return found


def check_redeploy(
    stack: Stack, session: requests.Session, conversation: int, ws_base: str, messages: int
) -> None:
    """A changed .env and `make up` again: web and ws are recreated (new addresses), nginx is
    reloaded to find them, the data is still there."""
    before = {i["Id"] for svc in ("web", "ws") for i in stack.containers()[svc]}
    set_env_values(stack.env_file, {"LOG_LEVEL": "WARNING"})
    started = time.monotonic()
    stack.make("up", timeout=600)
    TIMINGS.record(f"{stack.project}_redeploy", started)
    after = {i["Id"] for svc in ("web", "ws") for i in stack.containers()[svc]}
    assert not before & after, "web/ws were not recreated"
    check_services(stack)
    page = session.get(f"{stack.base}/c/{conversation}", timeout=10)
    assert page.status_code == 200, addresses(stack)
    assert len(re.findall(r'class="msg" data-seq="\d+"', page.text)) == messages
    client = ChatSocket(
        ws_base, stack.base, conversation, f"sessionid={session.cookies['sessionid']}"
    )
    try:
        client.connect()
        client.wait_client_ids({client.send("after the redeploy")})
        assert sorted(client.seen) == [messages + 1]
    finally:
        client.close()


def restart_conversation(
    stack: Stack, a: ChatSocket, b: ChatSocket, victim: str, earlier: set[str]
) -> None:
    """Alice keeps talking while one ws container restarts."""

    def restart() -> None:
        started = time.monotonic()
        docker("restart", "-t", "30", victim, timeout=120)
        TIMINGS.record(f"{stack.project}_ws_restart", started)

    closes_before = len(a.closes) + len(b.closes)
    sent = converse_during(restart, (a,), (a, b), earlier)
    wait_healthy(victim, timeout=60)
    # The victim drained on SIGTERM: every socket it held was closed with 1012 (Service
    # Restart), which browsers' clients answer by reconnecting and replaying.
    drains = (a.closes + b.closes)[closes_before:]
    assert drains and set(drains) == {1012}, drains
    assert "signal received; draining" in docker("logs", victim, timeout=30)
    print(
        f"restart: {sent} messages sent during it, closes {drains}, "
        f"reconnects a={a.connects - 1} b={b.connects - 1}"
    )


def converse_during(
    disruption: Callable[[], None],
    senders: tuple[ChatSocket, ...],
    clients: tuple[ChatSocket, ...],
    earlier: set[str],
) -> int:
    """`senders` take turns sending while `disruption` runs in a thread, and at least six
    messages. Like the browser client, a client whose socket closes reconnects with
    ?after=<last seq> and re-sends, under the same client_id (the server stores it once), what
    was never echoed back. Then every client has every message, each once, with gapless seqs.
    Returns how many messages were sent during the disruption."""
    sent: dict[ChatSocket, dict[str, str]] = {c: {} for c in senders}  # client_id -> text
    error: list[BaseException] = []

    def disrupt() -> None:
        try:
            disruption()
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            error.append(exc)

    def reconnect_and_resend() -> None:
        for client in clients:
            if not client.is_open:
                client.reconnect(timeout=60, retry=True)
                resend_unacknowledged(client, sent.get(client, {}))

    thread = threading.Thread(target=disrupt)
    thread.start()
    i = 0
    # Pace: 2 messages a second stays well under CHAT_RATE_LIMIT (30 per 10 s).
    while thread.is_alive() or i < 6:
        reconnect_and_resend()
        sender = senders[i % len(senders)]
        text = f"during the disruption {i}"
        # A socket that just closed is reconnected on the next round.
        with contextlib.suppress(ConnectionError, OSError):
            sent[sender][sender.send(text)] = text
        i += 1
        time.sleep(0.5)
    thread.join()
    if error:
        raise error[0]

    reconnect_and_resend()
    # Whatever was sent into a closing socket and never echoed is re-sent once more.
    everything = set(earlier)
    for sender, texts in sent.items():
        deadline = time.monotonic() + 20
        while set(texts) - sender.client_ids() and time.monotonic() < deadline:
            resend_unacknowledged(sender, texts)
            try:
                sender.wait_client_ids(set(texts), timeout=3)
            except AssertionError:
                continue
        everything |= set(texts)
    everything.add(senders[0].send("after the disruption"))
    for client in clients:
        client.wait_client_ids(everything, timeout=20)
    for client in clients:
        seqs = sorted(client.seen)
        assert seqs == list(range(1, len(seqs) + 1)), f"gap in {seqs}"
        assert client.client_ids() == everything
        assert len(seqs) == len(everything)  # each message stored once
        assert client.seen == clients[0].seen  # and in the same order everywhere
    return sum(len(texts) for texts in sent.values())


def resend_unacknowledged(client: ChatSocket, sent: dict[str, str]) -> None:
    for client_id in [c for c in sent if c not in client.client_ids()]:
        try:
            client.send(sent[client_id], client_id=client_id)
        except (ConnectionError, OSError):
            return
