"""The native production stack on loopback: nginx -> gunicorn (HTTP) + two daphne (websockets).

    python deploy/stack/stackctl.py up | down | status | reload   (`make stack`, `make stack-down`)

Environment: STACK_DIR (./run/stack), STACK_PORT (8080, nginx), STACK_WEB_PORT (8000),
STACK_WS_PORTS (8001,8002), DATABASE_URL (postgres://postgres@127.0.0.1:5432/parley_stack),
REDIS_URL (redis://127.0.0.1:6379/3), WEB_WORKERS (2); any other app setting (CHAT_*, ...)
is passed through. STACK_PGBOUNCER_PORT (0: none) puts PgBouncer in transaction pooling in
front of DATABASE_URL's server, with STACK_PGBOUNCER_POOL (20) server connections: gunicorn
and daphne reach Postgres only through it (deploy/pgbouncer/pgbouncer.ini). STACK_WS_PORTS
takes one port per daphne (any number); STACK_WS_AFFINITY=1 sends a conversation's sockets
to one daphne (nginx `hash` of its id; docs/capacity.md) instead of the least busy. TLS: STACK_TLS=1
serves https on STACK_HTTPS_PORT (8443) with the certificate in STACK_CERTS (./certs, `make
certs`) and STACK_PORT only redirects to it; STACK_HSTS=1 sends Strict-Transport-Security.
State, pids, logs, the generated secret and the nginx prefix live in STACK_DIR. The test
harness (tests/stack/harness.py) drives the same class with other ports.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO / "deploy" / "nginx"


@functools.cache
def _pgbouncer_renderer():
    """deploy/pgbouncer/config.py, the renderer the image's pgbouncer role runs too (loaded
    by path: this file also runs as a script, where `deploy` is no package)."""
    spec = importlib.util.spec_from_file_location(
        "parley_pgbouncer_config", REPO / "deploy" / "pgbouncer" / "config.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StackError(RuntimeError):
    pass


def _conversation_affinity(upstreams: str) -> str:
    """stack.conf's ws upstream balanced by conversation: `hash` of the id in /ws/chat/<id>
    (consistent: adding or losing a daphne moves only its share of the rooms); sockets that
    name no conversation spread by their address and port."""
    if upstreams.count("    least_conn;\n") != 1:
        raise StackError("deploy/nginx/upstreams/stack.conf: expected one least_conn")
    upstreams = upstreams.replace(
        "    least_conn;\n", "    hash $parley_conversation consistent;\n"
    )
    return (
        "map $uri $parley_conversation {\n"
        "    ~^/ws/chat/(?<id>[0-9]+) $id;\n"
        "    default $remote_addr:$remote_port;\n"
        "}\n" + upstreams
    )


@dataclass
class StackConfig:
    run_dir: Path = REPO / "run" / "stack"
    nginx_port: int = 8080
    web_port: int = 8000
    # One daphne per port (`make stack` runs two).
    ws_ports: tuple[int, ...] = (8001, 8002)
    database_url: str = "postgres://postgres@127.0.0.1:5432/parley_stack"
    redis_url: str = "redis://127.0.0.1:6379/3"
    web_workers: int = 2
    # gunicorn's master exports the metrics of every process of the stack (one shared
    # multiprocess directory) here; nginx does not proxy it.
    metrics_port: int = 9100
    # TLS mode: nginx serves https on https_port with cert_dir/tls.{crt,key}; nginx_port
    # then only redirects to it. Off: plain http on nginx_port (the default).
    tls: bool = False
    https_port: int = 8443
    cert_dir: Path = REPO / "certs"
    hsts: bool = False
    # CIDRs of a TLS-terminating proxy in front whose X-Forwarded-Proto nginx believes
    # (deploy/nginx/trusted-proxies.conf); none by default.
    trusted_proxies: tuple[str, ...] = ()
    # App settings for every process (on top of the inherited environment).
    env: dict[str, str] = field(default_factory=dict)
    # PgBouncer between the app and Postgres on this port (0: the app connects directly),
    # keeping at most pgbouncer_pool server connections.
    pgbouncer_port: int = 0
    pgbouncer_pool: int = 20
    # nginx sends every socket of a conversation to the same daphne (a consistent hash of
    # its id) instead of the least busy one: measured by `make bench-scale`, not a default.
    ws_affinity: bool = False

    @classmethod
    def from_env(cls) -> StackConfig:
        env = os.environ
        ws_ports = tuple(int(p) for p in env.get("STACK_WS_PORTS", "8001,8002").split(","))
        if not ws_ports:
            raise StackError("STACK_WS_PORTS must name at least one port, e.g. 8001,8002")
        return cls(
            run_dir=Path(env.get("STACK_DIR", REPO / "run" / "stack")).resolve(),
            nginx_port=int(env.get("STACK_PORT", "8080")),
            web_port=int(env.get("STACK_WEB_PORT", "8000")),
            ws_ports=ws_ports,
            database_url=env.get("DATABASE_URL", cls.database_url),
            redis_url=env.get("REDIS_URL", cls.redis_url),
            web_workers=int(env.get("WEB_WORKERS", "2")),
            metrics_port=int(env.get("STACK_METRICS_PORT", "9100")),
            tls=env.get("STACK_TLS", "") not in ("", "0"),
            https_port=int(env.get("STACK_HTTPS_PORT", "8443")),
            cert_dir=Path(env.get("STACK_CERTS", REPO / "certs")).resolve(),
            hsts=env.get("STACK_HSTS", "") not in ("", "0"),
            trusted_proxies=tuple(p for p in env.get("STACK_TRUSTED_PROXIES", "").split(",") if p),
            pgbouncer_port=int(env.get("STACK_PGBOUNCER_PORT", "0")),
            pgbouncer_pool=int(env.get("STACK_PGBOUNCER_POOL", "20")),
            ws_affinity=env.get("STACK_WS_AFFINITY", "") not in ("", "0"),
        )

    @property
    def app_database_url(self) -> str:
        """What gunicorn and daphne connect to: PgBouncer when there is one."""
        if not self.pgbouncer_port:
            return self.database_url
        parts = urlsplit(self.database_url)
        login = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{login}127.0.0.1:{self.pgbouncer_port}"))

    @property
    def url(self) -> str:
        """Where browsers go: https in TLS mode."""
        return f"https://127.0.0.1:{self.https_port}" if self.tls else self.http_url

    @property
    def http_url(self) -> str:
        """nginx's plain-HTTP port (in TLS mode it redirects all but /nginx-health)."""
        return f"http://127.0.0.1:{self.nginx_port}"

    @property
    def cert_host(self) -> str | None:
        """The host name `make certs` wrote the certificate for (certs/host)."""
        try:
            return (self.cert_dir / "host").read_text().strip() or None
        except OSError:
            return None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the stack's own (self-signed) certificate."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=str(self.cert_dir / "tls.crt"))


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def ensure_nginx() -> str:
    """nginx from Debian's apt if it is missing (CI starts from a bare image)."""
    return _ensure_debian("nginx", nginx_binary)


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer") if os.access(p, os.X_OK)),
        None,
    )


def ensure_pgbouncer() -> str:
    """PgBouncer from Debian's apt if it is missing."""
    return _ensure_debian("pgbouncer", pgbouncer_binary)


def pgbouncer_argv(ini: Path) -> list[str]:
    """PgBouncer on `ini`; as root, as nobody (it refuses to run as root)."""
    run_as = ["-u", "nobody"] if os.geteuid() == 0 else []
    return [ensure_pgbouncer(), *run_as, str(ini)]


def _ensure_debian(package: str, find: Callable[[], str | None]) -> str:
    found = find()
    if found:
        return found
    if os.geteuid() != 0 and not shutil.which("sudo"):
        raise StackError(
            f"{package} is not installed; install it (apt-get install {package}) and retry"
        )
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"stack: installing {package} with apt-get", file=sys.stderr)
    install = [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    if subprocess.run(install, env=apt_env, check=False).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=apt_env, check=True)
        subprocess.run(install, env=apt_env, check=True)
    found = find()
    if not found:
        raise StackError(f"apt-get install {package} succeeded but no {package} binary was found")
    return found


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process: tells our process from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def _live_group_members(pgid: int) -> list[int]:
    """The processes of a process group that are not zombies."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat_file.parent.name))
    return members


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_status(
    url: str, timeout: float = 2.0, context: ssl.SSLContext | None = None
) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


class Stack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig.from_env()
        self.run_dir = self.config.run_dir
        self.log_dir = self.run_dir / "logs"
        self.state_file = self.run_dir / "stack.json"
        self.popens: dict[str, subprocess.Popen] = {}
        self.procs: dict[str, dict] = self._load_state()

    # --- state ----------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict]:
        try:
            return json.loads(self.state_file.read_text())["processes"]
        except (OSError, ValueError, KeyError):
            return {}

    def _save_state(self) -> None:
        self.state_file.write_text(
            json.dumps({"url": self.config.url, "processes": self.procs}, indent=1)
        )

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def ws_names(self) -> list[str]:
        return [f"ws{i + 1}" for i in range(len(self.config.ws_ports))]

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def alive(self, name: str) -> bool:
        info = self.procs.get(name)
        if not info:
            return False
        popen = self.popens.get(name)
        if popen is not None:
            return popen.poll() is None
        return _start_time(info["pid"]) == info["start_time"]

    def running(self) -> list[str]:
        return [name for name in self.procs if self.alive(name)]

    # --- environment ----------------------------------------------------------------------

    def _secret_key(self) -> str:
        if os.environ.get("SECRET_KEY"):
            return os.environ["SECRET_KEY"]
        path = self.run_dir / "secret_key"
        if not path.exists():
            # Written whole under a name of its own (mkstemp: 0600, unique per caller, the
            # parallel setup threads of one process included), then linked: callers starting
            # at once all read the one key that won, never a half file.
            fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=".secret_key.")
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_urlsafe(50))
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        return path.read_text().strip()

    def app_env(self) -> dict[str, str]:
        c = self.config
        hosts = list(dict.fromkeys(["127.0.0.1", "localhost", c.cert_host or "localhost"]))
        scheme, port = ("https", c.https_port) if c.tls else ("http", c.nginx_port)
        env = {
            **os.environ,
            "DEBUG": "0",
            "SECRET_KEY": self._secret_key(),
            "ALLOWED_HOSTS": ",".join(hosts),
            "CSRF_TRUSTED_ORIGINS": ",".join(f"{scheme}://{h}:{port}" for h in hosts),
            # Plain HTTP on loopback: cookies without the Secure flag; with TLS, Secure.
            "HTTPS": "1" if c.tls else "0",
            "STATIC_MANIFEST": "1",
            "STATIC_ROOT": str(self.run_dir / "static"),
            "DATABASE_URL": c.database_url,
            "REDIS_URL": c.redis_url,
            "WEB_WORKERS": str(c.web_workers),
            "FORWARDED_ALLOW_IPS": "127.0.0.1",
            "PROMETHEUS_MULTIPROC_DIR": str(self.run_dir / "metrics"),
            "PYTHONPATH": str(REPO / "src"),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            **c.env,
        }
        return env

    # --- database -------------------------------------------------------------------------

    def _admin_url(self) -> str:
        """The same server's maintenance database (to create/drop ours)."""
        return urlunsplit(urlsplit(self.config.database_url)._replace(path="/postgres"))

    def _admin(self, query: object, params: list | None = None) -> list[tuple]:
        """Runs one statement on the maintenance database; rows if it returns any."""
        import psycopg

        try:
            with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=5) as conn:
                cursor = conn.execute(query, params)
                return cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise StackError(f"Postgres at {self._admin_url()}: {exc}") from exc

    def _db_name(self) -> str:
        return urlsplit(self.config.database_url).path.lstrip("/")

    def ensure_database(self, fresh: bool = False) -> None:
        """Creates the stack's database if missing (dropping it first when `fresh`)."""
        from psycopg import sql

        if fresh:
            self.drop_database()
        if not self._admin("SELECT 1 FROM pg_database WHERE datname = %s", [self._db_name()]):
            self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self._db_name())))

    def drop_database(self) -> None:
        from psycopg import sql

        self._admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(self._db_name())
            )
        )

    # --- nginx prefix ---------------------------------------------------------------------

    def nginx_prefix(self) -> Path:
        """The nginx prefix in the run dir: the shared deploy/nginx files (symlinked), plus
        the per-environment includes: the loopback listen (plain or TLS), the rendered
        upstreams, HSTS on or off, the trusted proxies; certs/ -> the certificate's dir."""
        c = self.config
        hsts = "on" if c.hsts else "off"
        prefix = self.run_dir / "nginx"
        (prefix / "parley").mkdir(parents=True, exist_ok=True)
        links = {
            prefix / "nginx.conf": NGINX_DIR / "nginx.conf",
            prefix / "certs": c.cert_dir,
            prefix / "parley" / "parley.conf": NGINX_DIR / "parley.conf",
            prefix / "parley" / "tls.conf": NGINX_DIR / "tls" / "params.conf",
            prefix / "parley" / "https-redirect.conf": NGINX_DIR / "tls" / "https-redirect.conf",
            prefix / "parley" / "hsts.conf": NGINX_DIR / "hsts" / f"{hsts}.conf",
        }
        for link, target in links.items():
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        (prefix / "parley" / "listen.conf").write_text(self._listen_conf())
        trusted = prefix / "parley" / "trusted-proxies.conf"
        if trusted.is_symlink() or trusted.exists():
            trusted.unlink()
        if c.trusted_proxies:
            lines = "".join(f"{cidr} 1;\n" for cidr in c.trusted_proxies)
            trusted.write_text(f"# written by deploy/stack/stackctl.py\n{lines}")
        else:
            trusted.symlink_to(NGINX_DIR / "trusted-proxies.conf")
        upstreams = (NGINX_DIR / "upstreams" / "stack.conf").read_text()
        web = "127.0.0.1:8000;"
        if upstreams.count(web) != 1:
            raise StackError(f"deploy/nginx/upstreams/stack.conf: expected one {web!r}")
        upstreams = upstreams.replace(web, f"127.0.0.1:{c.web_port};")
        # The file lists daphne on 8001 and 8002; a stack with other ports or another number
        # of daphne gets one such line per process, in its place.
        lines = upstreams.splitlines(keepends=True)
        ws_lines = [
            i for i, line in enumerate(lines) if re.search(r"server 127\.0\.0\.1:800[12] ", line)
        ]
        if len(ws_lines) != 2 or ws_lines[1] != ws_lines[0] + 1:
            raise StackError("deploy/nginx/upstreams/stack.conf: expected daphne on 8001, 8002")
        template = lines[ws_lines[0]]
        lines[ws_lines[0] : ws_lines[1] + 1] = [
            template.replace("127.0.0.1:8001", f"127.0.0.1:{port}") for port in c.ws_ports
        ]
        upstreams = "".join(lines)
        if c.ws_affinity:
            upstreams = _conversation_affinity(upstreams)
        (prefix / "parley" / "upstreams.conf").write_text(upstreams)
        return prefix

    def _listen_conf(self) -> str:
        """Plain: nginx_port on loopback. TLS: deploy/nginx/tls/listen.conf (compose's) with
        the loopback ports, and the redirect port set here instead of rendered at start."""
        c = self.config
        head = "# written by deploy/stack/stackctl.py\n"
        if not c.tls:
            return f"{head}listen 127.0.0.1:{c.nginx_port};\n"
        text = (NGINX_DIR / "tls" / "listen.conf").read_text()
        for needle, value in (
            ("listen 8443 ssl;", f"listen 127.0.0.1:{c.https_port} ssl;"),
            ("listen 8080;", f"listen 127.0.0.1:{c.nginx_port};"),
            (
                "include /tmp/nginx/https-port.conf;",
                f"set $parley_https_port {c.https_port};",
            ),
        ):
            if text.count(needle) != 1:
                raise StackError(f"deploy/nginx/tls/listen.conf: expected one {needle!r}")
            text = text.replace(needle, value)
        return head + text

    def nginx_argv(self, *extra: str) -> list[str]:
        prefix = self.nginx_prefix()
        directives = "daemon off;"
        if os.geteuid() == 0 and not all(
            p.stat().st_mode & 0o001 for p in [prefix, *prefix.parents]
        ):
            # Root's workers would run as `nobody`, who cannot reach a run dir under a
            # private home; this loopback stack then keeps them as root.
            directives += " user root;"
        return [
            ensure_nginx(),
            "-p",
            f"{prefix}/",
            "-c",
            str(prefix / "nginx.conf"),
            "-g",
            directives,
            *extra,
        ]

    def nginx_test(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.nginx_argv("-t"), capture_output=True, text=True, check=False)

    def reload_nginx(self) -> None:
        subprocess.run(self.nginx_argv("-s", "reload"), check=True, capture_output=True)

    # --- PgBouncer ------------------------------------------------------------------------

    def pgbouncer_config(self) -> Path:
        """This stack's PgBouncer files (deploy/pgbouncer/config.py): on loopback, in front of
        DATABASE_URL's server. PgBouncer reads them before it drops root (`-u nobody`: it
        refuses to run as root), so they need not be readable by nobody."""
        c = self.config
        return _pgbouncer_renderer().render(
            server_url=c.database_url,
            directory=self.run_dir / "pgbouncer",
            listen_addr="127.0.0.1",
            listen_port=c.pgbouncer_port,
            pool_size=c.pgbouncer_pool,
        )

    # --- processes ------------------------------------------------------------------------

    def _argv(self, name: str) -> tuple[list[str], dict[str, str]]:
        c, env, py = self.config, self.app_env(), sys.executable
        if name == "pgbouncer":
            return pgbouncer_argv(self.pgbouncer_config()), env
        env["DATABASE_URL"] = c.app_database_url
        if name == "web":
            env["WEB_BIND"] = f"127.0.0.1:{c.web_port}"
            env["METRICS_PORT"] = str(c.metrics_port)
            env["METRICS_ADDR"] = "127.0.0.1"
            return [
                py,
                "-m",
                "gunicorn",
                "-c",
                str(REPO / "deploy" / "gunicorn.conf.py"),
                "config.asgi:application",
            ], env
        if name in self.ws_names:
            env["WS_BIND"] = "127.0.0.1"
            env["WS_PORT"] = str(c.ws_ports[self.ws_names.index(name)])
            env.pop("METRICS_PORT", None)  # gunicorn's master exports the shared directory
            return [py, "-m", "config.serve_ws"], env
        if name == "nginx":
            return self.nginx_argv(), env
        raise StackError(f"unknown process {name!r}")

    def spawn(self, name: str, env_overrides: dict[str, str] | None = None) -> int:
        argv, env = self._argv(name)
        env.update(env_overrides or {})
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "ab") as log:
            popen = subprocess.Popen(  # noqa: S603
                argv,
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.popens[name] = popen
        self.procs[name] = {"pid": popen.pid, "start_time": _start_time(popen.pid), "argv": argv}
        self._save_state()
        return popen.pid

    def run_manage(
        self, args: list[str], env: dict[str, str] | None = None, timeout: float = 120
    ) -> None:
        """One manage.py command with the stack's environment; output to logs/setup-*.log."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(f"setup-{args[0]}"), "ab") as log:
            try:
                code = subprocess.run(  # noqa: S603
                    [sys.executable, str(REPO / "src" / "manage.py"), *args],
                    env={**self.app_env(), **(env or {})},
                    cwd=REPO,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = -1
        if code != 0:
            raise StackError(f"manage.py {' '.join(args)} failed:\n{self.tail('setup-' + args[0])}")

    def seed(self, rooms: int, members: int, password: str, prefix: str, messages: int = 0) -> Path:
        """Load-test users and rooms (manage.py seed_loadtest); returns the credentials file."""
        out = self.run_dir / f"users-{prefix}.json"
        self.manage(
            [
                [
                    "seed_loadtest",
                    "--rooms",
                    str(rooms),
                    "--members",
                    str(members),
                    "--password",
                    password,
                    "--out",
                    str(out),
                    "--prefix",
                    prefix,
                    "--messages",
                    str(messages),
                ]
            ]
        )
        return out

    def manage(self, *chains: list[list[str] | Callable[[], None]]) -> None:
        """Runs chains of steps concurrently, each chain's steps in order (e.g. collectstatic
        alongside wait_for_deps-then-migrate). A step is manage.py arguments or a function."""

        def run_chain(chain: list[list[str] | Callable[[], None]]) -> str | None:
            try:
                for step in chain:
                    step() if callable(step) else self.run_manage(step)
            except StackError as exc:
                return str(exc)
            return None

        with ThreadPoolExecutor(len(chains)) as pool:
            failed = [f for f in pool.map(run_chain, chains) if f]
        if failed:
            raise StackError("\n".join(failed))

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def healthy(self, name: str) -> bool:
        if name == "pgbouncer":
            return self._pgbouncer_answers()
        return _http_status(self.health_url(name)) == 200

    def _pgbouncer_answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.config.app_database_url, connect_timeout=2) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    def health_url(self, name: str) -> str:
        c = self.config
        if name == "web":
            return f"http://127.0.0.1:{c.web_port}/healthz"
        if name == "nginx":
            return f"{c.http_url}/nginx-health"
        return f"http://127.0.0.1:{c.ws_ports[self.ws_names.index(name)]}/healthz"

    def wait_healthy(self, names: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            for name in list(pending):
                if not self.alive(name):
                    raise StackError(f"{name} exited during start-up:\n{self.tail(name)}")
                if self.healthy(name):
                    pending.remove(name)
            if pending and time.monotonic() > deadline:
                tails = "\n".join(f"--- {n}\n{self.tail(n)}" for n in pending)
                raise StackError(f"not healthy after {timeout:g}s: {pending}\n{tails}")
            if pending:
                time.sleep(0.1)

    # --- lifecycle ------------------------------------------------------------------------

    def up(self, fresh_db: bool = False, timeout: float = 90.0) -> None:
        if self.running():
            raise StackError(
                f"stack already running in {self.run_dir} ({self.running()}); "
                "stop it with `make stack-down`"
            )
        c = self.config
        ensure_nginx()
        if c.tls and not all((c.cert_dir / f).is_file() for f in ("tls.crt", "tls.key")):
            raise StackError(
                f"TLS mode needs {c.cert_dir}/tls.crt and tls.key: run `make certs` "
                "(HOST=<name> for another host name than localhost)"
            )
        ports = (
            c.nginx_port,
            *((c.https_port,) if c.tls else ()),
            c.web_port,
            *c.ws_ports,
            *((c.pgbouncer_port,) if c.pgbouncer_port else ()),
        )
        busy = [p for p in ports if _port_open(p)]
        if busy:
            raise StackError(f"ports already in use on 127.0.0.1: {busy}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.log_dir, ignore_errors=True)  # this run's logs only
        # last run's metric files would be summed into this one's
        shutil.rmtree(self.run_dir / "metrics", ignore_errors=True)
        (self.run_dir / "metrics").mkdir()
        self.procs = {}
        self._save_state()
        result = self.nginx_test()
        if result.returncode != 0:
            raise StackError(f"nginx -t failed:\n{result.stderr}")
        try:
            # wait_for_deps on the server's maintenance database: ours may not exist yet.
            wait_args = ["wait_for_deps"]  # WAIT_FOR_DEPS_TIMEOUT (60 s)
            self.manage(
                [
                    lambda: self.run_manage(wait_args, env={"DATABASE_URL": self._admin_url()}),
                    lambda: self.ensure_database(fresh=fresh_db),
                    ["migrate", "--noinput"],
                ],
                [["collectstatic", "--noinput", "-v", "0"]],
            )
            if c.pgbouncer_port:
                self.spawn("pgbouncer")
                self.wait_healthy(["pgbouncer"], timeout=timeout)
            for name in ("web", *self.ws_names, "nginx"):
                self.spawn(name)
            self.wait_healthy(["web", *self.ws_names, "nginx"], timeout=timeout)
            # Straight at gunicorn: nginx keeps /readyz off the public routes.
            ready = f"http://127.0.0.1:{c.web_port}/readyz"
            if _http_status(ready, timeout=5) != 200:
                raise StackError(f"{ready} is not 200:\n{self.tail('web')}")
        except BaseException:
            self.down()
            raise

    def send_signal(self, name: str, sig: int) -> None:
        if self.alive(name):
            os.kill(self.procs[name]["pid"], sig)

    def wait_exit(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive(name):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop_process(
        self, name: str, sig: int | None = signal.SIGTERM, timeout: float = 20.0
    ) -> None:
        """Signals the process (unless sig is None: already signalled), waits, then kills
        whatever is left of its process group (its workers)."""
        info = self.procs.get(name)
        if not info:
            return
        if sig is not None:
            self.send_signal(name, sig)
        if not self.wait_exit(name, timeout):
            print(f"stack: {name} did not stop in {timeout:g}s; killing it", file=sys.stderr)
        self._kill_group(info["pid"], info["start_time"])
        popen = self.popens.pop(name, None)
        if popen is not None:
            popen.wait(timeout=5)

    def _kill_group(self, pgid: int, start_time: str | None) -> None:
        """Kills what is left of a process group: the recorded process and its workers.

        Each process leads its own session (start_new_session), so its group holds exactly
        it and its workers; the group id is the recorded pid. Zombies are dead already (their
        parent, perhaps another test process, reaps them); a live leader that is not the
        recorded process is a recycled pid, and its group is someone else's."""
        leader = _start_time(pgid)
        if leader is not None and leader != start_time:
            return
        deadline = time.monotonic() + 5
        while members := _live_group_members(pgid):
            if time.monotonic() > deadline:
                raise StackError(f"process group {pgid} survived SIGKILL: {members}")
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def down(self, timeout: float = 20.0) -> None:
        names = [n for n in ("nginx", *self.ws_names, "web") if n in self.procs]
        for name in names:
            self.send_signal(name, signal.SIGTERM)
        for name in names:
            self.stop_process(name, sig=None, timeout=timeout)
        # Last: the app's connections close through it. SIGINT: PgBouncer's own safe shutdown.
        self.stop_process("pgbouncer", sig=signal.SIGINT, timeout=timeout)
        self.procs = {}
        if self.run_dir.exists():
            self._save_state()

    def status(self) -> dict[str, bool]:
        return {name: self.alive(name) for name in self.procs}


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    stack = Stack()
    try:
        if command == "up":
            stack.up()
            c = stack.config
            redirect = f"; {c.http_url} redirects there" if c.tls else ""
            print(
                f"stack: up at {c.url}{redirect}  (gunicorn :{c.web_port}, daphne "
                f"{' '.join(f':{p}' for p in c.ws_ports)}; logs in {stack.log_dir})"
            )
        elif command == "down":
            stack.down()
            print("stack: stopped")
        elif command == "reload":
            if not stack.alive("nginx"):
                raise StackError("nginx is not running; start the stack with `make stack`")
            stack.reload_nginx()
            print("stack: nginx reloaded (old workers keep websockets up to 30 s)")
        elif command == "status":
            state = stack.status()
            for name, alive in state.items():
                word = "running" if alive else "stopped"
                print(f"{name:6} {word}  pid {stack.procs[name]['pid']}")
            if not state:
                print("stack: not running")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
