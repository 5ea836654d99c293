"""The benchmark behind loadtest/RESULTS.md (`make bench`). Not a test: it prints numbers.

1. For each channel layer (RedisChannelLayer "core", RedisPubSubChannelLayer "pubsub") it
   starts a private native stack (nginx, gunicorn, two daphne; its own ports, database
   parley_bench and Redis db 5, the load tests' index: not while the CI smoke test runs),
   then sweeps the offered message rate with the Locust load
   test, one short headless run per rate, until a rate is no longer sustainable (p99 fan-out
   above 100 ms, or any loss). The stack is restarted between the layers.
2. On a stack with the default layer (--idle-layer) it opens idle chat sockets to ONE daphne
   process in steps of 1,000 (up to --max-idle) and reads that process's resident memory
   after each step, then its CPU while they idle.
3. The conversation page (50 messages) through nginx: --http-concurrency keep-alive clients
   (one per room, as many as the sweep's rooms) request it for --http-seconds; latency
   percentiles and every status.

    python -m loadtest.bench [--rates 10,20,40,80] [--step-seconds 20] [--max-idle 10000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

from deploy.stack.stackctl import REPO, Stack, StackConfig

RESULTS = REPO / "loadtest" / "RESULTS.md"
OUT = REPO / "results" / "bench"
PASSWORD = "bench-pass"  # noqa: S105
SUSTAINABLE_P99_MS = 100.0
PORTS = {"nginx_port": 28080, "web_port": 28000, "ws_ports": (28001, 28002)}
# `--pgbouncer N`: the stack reaches Postgres through PgBouncer with N server connections
# (transaction pooling, deploy/pgbouncer) on this port; 0: directly.
PGBOUNCER = {"port": 28032, "pool": 0}
CONFIRM_TRIES = 3  # rates, from the sweep's last sustainable one down, tried as the knee
# Runs each must hold, after its sweep step, to be the knee. Two found no knee at all in a
# run here (400 msg/s held at 21 ms, then missed at 143 ms): past one, the noise of a shared
# machine decides (loadtest/RESULTS.md, 2026-12-05 session 3).
CONFIRM_RUNS = 1


@dataclass
class Step:
    backend: str
    rate: float
    summary: dict
    label: str = ""  # "confirm", "1.5x", "recovery": the steps after the sweep

    @property
    def sustainable(self) -> bool:
        s = self.summary
        p99 = s.get("fanout_p99_ms")
        return (
            s.get("sent", 0) > 0
            and p99 is not None
            and p99 <= SUSTAINABLE_P99_MS
            and not (
                s["lost"] or s["duplicates"] or s["reordered"] or s["rejected"] or s.get("refused")
            )
            and not s.get("not_connected")  # the step carried less than its offered load
        )


def bench_stack(backend: str, ws_processes: int = 2, ws_affinity: bool = False) -> Stack:
    """The bench's stack; `ws_processes` daphne behind nginx on 28001, 28002, ...;
    `ws_affinity`: a conversation's sockets on one daphne (StackConfig.ws_affinity)."""
    ports = {**PORTS, "ws_ports": tuple(28001 + i for i in range(ws_processes))}
    return Stack(
        StackConfig(
            run_dir=REPO / "run" / f"bench-{backend}",
            database_url="postgres://postgres@127.0.0.1:5432/parley_bench",
            redis_url="redis://127.0.0.1:6379/5",
            env={
                "CHANNEL_LAYER_BACKEND": backend,
                # The sweep measures the layer, not the per-socket flood limit.
                "CHAT_RATE_LIMIT": "100000",
                # Logins are set-up here, not what is measured.
                "PASSWORD_HASHERS": "django.contrib.auth.hashers.MD5PasswordHasher",
                "LOG_LEVEL": "WARNING",
            },
            **ports,
            pgbouncer_port=PGBOUNCER["port"] if PGBOUNCER["pool"] else 0,
            pgbouncer_pool=PGBOUNCER["pool"] or 20,
            ws_affinity=ws_affinity,
        )
    )


@contextmanager
def fresh_stack(
    backend: str, defaults: tuple[str, ...] = (), ws_processes: int = 2, ws_affinity: bool = False
) -> Iterator[Stack]:
    """A bench stack on an empty database and Redis db, torn down and dropped afterwards.
    `defaults`: settings the bench lifts that this run keeps at their defaults."""
    stack = bench_stack(backend, ws_processes, ws_affinity)
    for name in defaults:
        stack.config.env.pop(name, None)
    stack.down()
    flush_redis(stack.config.redis_url)
    stack.up(fresh_db=True)
    try:
        yield stack
    finally:
        stack.down()
        stack.drop_database()
        flush_redis(stack.config.redis_url)


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def _tree_cpu_seconds(root: int, children: dict[int, list[int]]) -> float:
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        todo += children.get(pid, [])
    return total


# The services the stack uses beside its own processes, by process name: on this one machine
# they compete for the same cores as the stack and the load generator.
SERVICES = {"postgres": "postgres", "redis": "redis-server", "pgbouncer": "pgbouncer"}


def stack_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by each stack process and its workers, by Postgres, Redis and
    PgBouncer (every process of theirs on the machine, while it runs), and by the whole machine
    ("machine": every core's busy time, steal included)."""
    children: dict[int, list[int]] = {}
    services = dict.fromkeys(SERVICES, 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            comm = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            ppid = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
        for name, prefix in SERVICES.items():
            if comm.startswith(prefix):
                services[name] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    cpu = {name: _tree_cpu_seconds(info["pid"], children) for name, info in stack.procs.items()}
    return cpu | services | {"machine": _machine_busy_seconds()}


def _machine_busy_seconds() -> float:
    """Seconds every core was busy or stolen so far (/proc/stat: all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_step(
    stack: Stack,
    users_file: Path,
    backend: str,
    rate: float,
    rooms: int,
    members: int,
    seconds: int,
    label: str = "",
    drain_seconds: int = 5,
) -> Step:
    out = OUT / backend / (f"{label}-{rate:g}" if label else f"rate-{rate:g}")
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        str(Path(sys.executable).with_name("locust")),
        "--config",
        "loadtest/locust.conf",
        "--headless",
        "--only-summary",
        "--host",
        stack.config.url,
        "--login-host",
        f"http://127.0.0.1:{stack.config.web_port}",
        "--users-file",
        str(users_file),
        "--rooms",
        str(rooms),
        "--members",
        str(members),
        "--users",
        str(rooms * members),
        "--spawn-rate",
        str(rooms * members),
        "--send-rate",
        str(rate / rooms),
        "--run-time",
        f"{seconds}s",
        "--p99-threshold-ms",
        str(SUSTAINABLE_P99_MS),
        "--drain-seconds",
        str(drain_seconds),
        "--csv",
        str(out / "stats"),
        "--summary-json",
        str(out / "summary.json"),
    ]
    cpu_before, started = stack_cpu(stack), time.monotonic()
    locust_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out / "locust.log", "w") as log:
        subprocess.run(
            argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=seconds + 180
        )
    wall = time.monotonic() - started
    cpu_after, locust_after = stack_cpu(stack), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {name: (cpu_after[name] - cpu_before.get(name, 0.0)) / wall * 100 for name in cpu_after}
    cpu["locust"] = (
        (
            locust_after.ru_utime
            + locust_after.ru_stime
            - locust_before.ru_utime
            - locust_before.ru_stime
        )
        / wall
        * 100
    )
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {
            "sent": 0,
            "lost": 0,
            "duplicates": 0,
            "reordered": 0,
            "rejected": 0,
            "error": f"no summary; see {out / 'locust.log'}",
        }
    summary["cpu_percent"] = cpu
    return Step(backend, rate, summary, label)


def rates_to_the_knee(rates: str) -> Iterator[float]:
    """`--rates`: a list, ascending ("10,40,80"), or "auto[:START:STEP]" (default 100 and
    100): START, START+STEP, ... until the sweep's first miss, however high that is."""
    if rates.startswith("auto"):
        _, start, step = (
            (rates.split(":") + ["100", "100"])[:3] if ":" in rates else ("", "100", "100")
        )
        rate = float(start)
        while True:
            yield rate
            rate += float(step)
    else:
        yield from (float(r) for r in rates.split(","))


def sweep(
    backend: str,
    rates: Iterator[float],
    rooms: int,
    members: int,
    seconds: int,
    ws_processes: int = 2,
    overload: list[float] | None = None,
    repeat: int = 1,
) -> list[Step]:
    """The sweep up to its first miss (a rate not sustainable); the knee confirmed (below);
    then, on the same stack, `repeat` times: each overload factor of the knee followed by a
    recovery step at the knee 5 s after the overload ended.

    The knee is the highest rate that held every time: the sweep's last sustainable rate
    is run CONFIRM_RUNS times more, and if it misses once, the one below it, up to
    CONFIRM_TRIES rates. A rate that held once at the edge is a coin toss, and the overload
    steps and the recovery are measured against the knee. None held: no overload steps."""
    steps: list[Step] = []
    with fresh_stack(backend) as stack:
        for name in stack.ws_names[ws_processes:]:
            stack.stop_process(name)  # nginx sends every socket to the daphne left
        users_file = stack.seed(rooms, members, PASSWORD, "bench")
        for rate in rates:
            step = run_step(stack, users_file, backend, rate, rooms, members, seconds)
            steps.append(step)
            print(row(step), flush=True)
            if not step.sustainable:
                break
        knee = None
        held = [s.rate for s in steps if s.sustainable]
        for rate in reversed(held[-CONFIRM_TRIES:] if overload else []):
            for _ in range(CONFIRM_RUNS):
                step = run_step(
                    stack, users_file, backend, rate, rooms, members, seconds, label="confirm"
                )
                steps.append(step)
                print(row(step), flush=True)
                if not step.sustainable:
                    break
            else:
                knee = rate
                break
        for run in range(repeat):
            for factor in overload or []:
                if knee is None:
                    break
                step = run_step(
                    stack,
                    users_file,
                    backend,
                    knee * factor,
                    rooms,
                    members,
                    seconds,
                    label=f"{factor:g}x" + (f" #{run + 1}" if repeat > 1 else ""),
                    drain_seconds=10,
                )
                steps.append(step)
                print(row(step), flush=True)
                time.sleep(5)  # the spec: a run at the sustainable rate 5 s after overload ends
                step = run_step(
                    stack,
                    users_file,
                    backend,
                    knee,
                    rooms,
                    members,
                    max(10, seconds // 2),
                    label="recovery",
                )
                steps.append(step)
                print(row(step), flush=True)
    return steps


def knee_step(steps: list[Step]) -> Step | None:
    """The last step that confirmed the knee (the highest rate whose confirmation runs all
    held); for runs without confirmation, the sweep's highest sustainable step."""
    by_rate: dict[float, list[Step]] = {}
    for s in steps:
        if s.label == "confirm":
            by_rate.setdefault(s.rate, []).append(s)
    if by_rate:
        held = [runs for runs in by_rate.values() if all(r.sustainable for r in runs)]
        return held[0][-1] if held else None
    held = [s for s in steps if not s.label and s.sustainable]
    return max(held, key=lambda s: s.rate) if held else None


def goodput_lines(steps: list[Step]) -> list[str]:
    """Deliveries per second at each overload factor as a share of those at the knee (its
    confirming step), per run."""
    knee = knee_step(steps)
    if knee is None:
        return []
    base = knee.summary.get("deliveries_per_s") or 0
    by_factor: dict[str, list[Step]] = {}
    for s in steps:
        if s.label and s.label not in ("recovery", "confirm"):
            by_factor.setdefault(s.label.split(" #")[0], []).append(s)
    lines = [
        "",
        f"Goodput past the knee ({knee.rate:g} msg/s, {base:.0f} deliveries/s): "
        "deliveries/s as a share of the knee's, per run; p99 of accepted messages; refused; "
        "not arrived; sockets closed.",
        "",
        "| factor | runs | share of the knee | p99 ms | refused | not arrived | closed |",
        "|---|---|---|---|---|---|---|",
    ]
    for factor, runs in by_factor.items():
        shares = [100 * (r.summary.get("deliveries_per_s") or 0) / base for r in runs if base]
        p99s = [r.summary.get("fanout_p99_ms") or 0 for r in runs]
        lines.append(
            f"| {factor} | {len(runs)} | {', '.join(f'{x:.0f}%' for x in shares)} "
            f"| {', '.join(f'{x:.0f}' for x in p99s)} "
            f"| {', '.join(str(r.summary.get('refused', 0)) for r in runs)} "
            f"| {', '.join(str(r.summary.get('lost', 0)) for r in runs)} "
            f"| {', '.join(str(len(r.summary.get('closed', []) or [])) for r in runs)} |"
        )
    return lines


def ws_client_argv(module: str, stack: Stack, sessions_file: Path) -> list[str]:
    """A websocket client module (loadtest.idle, loadtest.bigroom) aimed at the stack's
    first daphne, with the sessions to use."""
    return [
        sys.executable,
        "-m",
        module,
        "--url",
        f"ws://127.0.0.1:{stack.config.ws_ports[0]}",
        "--origin",
        stack.config.url,
        "--sessions",
        str(sessions_file),
    ]


class LineClient:
    """A websocket client module (loadtest.bigroom, loadtest.storm) run as a child process:
    one JSON line answers each step; a line to it starts the next."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def answer(self) -> dict:
        line = self.process.stdout.readline()
        return json.loads(line) if line else {}

    def go_on(self) -> None:
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@dataclass
class Big:
    members: int
    opened: int = 0
    rss_kib: tuple[int, int] = (0, 0)  # the daphne's RSS before and with the sockets open
    broadcast: dict | None = None
    storm: dict | None = None


def big_room(members: int, layer: str = "pubsub", storm: bool = True) -> Big:
    """One conversation of `members` sockets on ONE daphne: memory per socket, broadcast
    latency to all of them; then that daphne is killed (SIGKILL) and every socket reconnects
    through nginx to the other one: how long until all are back and caught up."""
    result = Big(members)
    with fresh_stack(layer) as stack:
        users = json.loads(stack.seed(1, members + 1, PASSWORD, "big").read_text())
        sessions_file = stack.run_dir / "big-sessions.json"
        sessions_file.write_text(
            json.dumps(login_cookies(f"http://127.0.0.1:{stack.config.web_port}", users))
        )
        pid = stack.procs[stack.ws_names[0]]["pid"]
        before = rss_kib(pid)
        argv = ws_client_argv("loadtest.bigroom", stack, sessions_file)
        if storm:
            argv += ["--reconnect-url", stack.config.url.replace("http", "ws", 1)]
        room = LineClient(argv)
        answer, go_on = room.answer, room.go_on
        try:
            result.opened = answer().get("open", 0)
            time.sleep(2.0)  # let the handshakes' garbage settle before reading RSS
            result.rss_kib = (before, rss_kib(pid))
            print(f"big room: {result.opened} sockets open", flush=True)
            go_on()
            result.broadcast = answer().get("broadcast")
            print(f"big room: broadcast {result.broadcast}", flush=True)
            if storm:
                os.kill(pid, 9)
                go_on()
                result.storm = answer().get("storm")
                print(f"big room: storm {result.storm}", flush=True)
                go_on()
        finally:
            room.close()
    return result


@dataclass
class StormRun:
    rooms: int
    room_size: int
    big: int
    opened: int = 0
    result: dict | None = None
    cpu_percent: dict[str, float] | None = None  # per stack process (and the client), in the storm


def reconnect_storm(rooms: int, room_size: int, big: int, layer: str = "pubsub") -> StormRun:
    """`rooms` rooms of `room_size` plus one room of `big` members, every member's socket on
    ONE daphne, which is killed (SIGKILL): how long until every socket is back through nginx
    on the other daphne, and has the message its room was sent while it was gone."""
    run = StormRun(rooms, room_size, big)
    with fresh_stack(layer) as stack:
        users = json.loads(stack.seed(rooms, room_size, PASSWORD, "storm").read_text())
        if big:
            users += json.loads(stack.seed(1, big, PASSWORD, "stormbig").read_text())
        sessions = login_cookies(f"http://127.0.0.1:{stack.config.web_port}", users)
        senders = list({s["conversation"]: s for s in sessions}.values())  # one per room
        sessions_file = stack.run_dir / "storm-sessions.json"
        sessions_file.write_text(json.dumps({"listeners": sessions, "senders": senders}))
        pid = stack.procs[stack.ws_names[0]]["pid"]
        ws_url = stack.config.url.replace("http", "ws", 1)
        argv = ws_client_argv("loadtest.storm", stack, sessions_file) + [
            "--sender-url",
            f"ws://127.0.0.1:{stack.config.ws_ports[1]}",
            "--reconnect-url",
            ws_url,
        ]
        client = LineClient(argv)
        answer, go_on = client.answer, client.go_on
        try:
            opened = answer()
            run.opened = opened.get("open", 0)
            print(f"storm: {opened}", flush=True)
            time.sleep(5.0)  # presence and the handshakes' work settle first
            cpu_before, t0 = stack_cpu(stack), time.time()
            client_before = _cpu_seconds(client.process.pid)
            os.kill(pid, 9)
            go_on()
            run.result = answer().get("storm")
            elapsed = time.time() - t0
            cpu_after = stack_cpu(stack)
            run.cpu_percent = {
                name: round(100 * (cpu_after[name] - cpu_before[name]) / elapsed)
                for name in cpu_after
                if name != stack.ws_names[0]
            }
            run.cpu_percent["client"] = round(
                100 * (_cpu_seconds(client.process.pid) - client_before) / elapsed
            )
            print(f"storm: {run.result}", flush=True)
            go_on()
        finally:
            client.close()
    return run


def _cpu_seconds(pid: int) -> float:
    return _tree_cpu_seconds(pid, {})


def crowd_run(sockets: int, room_size: int, messages: int, layer: str = "pubsub") -> dict:
    """`sockets` members in rooms of `room_size`, through nginx, under the default
    per-socket limits, each sending `messages` at once and retrying what is refused as
    chat.js does. Every message must arrive once to every member and be stored once."""
    rooms = max(1, sockets // room_size)
    with fresh_stack(layer, defaults=("CHAT_RATE_LIMIT",)) as stack:
        users = json.loads(stack.seed(rooms, room_size, PASSWORD, "crowd").read_text())
        sessions = login_cookies(f"http://127.0.0.1:{stack.config.web_port}", users)
        sessions_file = stack.run_dir / "crowd-sessions.json"
        sessions_file.write_text(json.dumps(sessions))
        argv = [
            sys.executable,
            "-m",
            "loadtest.crowd",
            "--url",
            stack.config.url.replace("http", "ws", 1),
            "--origin",
            stack.config.url,
            "--sessions",
            str(sessions_file),
            "--messages",
            str(messages),
        ]
        client = LineClient(argv)
        try:
            print(f"crowd: {client.answer()}", flush=True)
            time.sleep(5.0)  # presence and the handshakes' work settle first
            cpu_before, t0 = stack_cpu(stack), time.time()
            client.go_on()
            result = client.answer().get("crowd") or {}
            elapsed = time.time() - t0
            cpu_after = stack_cpu(stack)
            result["cpu_percent"] = {
                name: round(100 * (cpu_after[name] - cpu_before[name]) / elapsed)
                for name in cpu_after
            }
            client.go_on()
        finally:
            client.close()
        result.update(stored_once(stack.config.database_url, result.pop("client_ids", [])))
    print(f"crowd: {result}", flush=True)
    return result


def stored_once(database_url: str, client_ids: list[str]) -> dict:
    """How many of these sends are stored, and how many more than once."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT client_id::text, count(*) FROM chat_message "
            "WHERE client_id = ANY(%s::uuid[]) GROUP BY client_id",
            [client_ids],
        ).fetchall()
    return {
        "stored": len(rows),
        "stored_twice": sum(1 for _, n in rows if n > 1),
        "not_stored": len(set(client_ids) - {cid for cid, _ in rows}),
    }


def crowd_lines(crowd: dict | None) -> list[str]:
    if not crowd:
        return []
    c = crowd
    return [
        "",
        f"## Crowd: {c['sockets']} sockets in {c['rooms']} rooms send at once, default limits",
        "",
        "Each page sends its messages within a second and retries what is refused as chat.js "
        "does (the hint, doubled per refusal, jittered; new sends held while busy).",
        "",
        "| sent | refused | retries | all confirmed | confirm p50 / p99 | all delivered "
        "| deliveries/s | missing | duplicates | closed | stored | stored twice | not stored "
        "| CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {c['sent']} | {c['refusals']} | {c['retries']} | {c['all_confirmed_s']} s "
        f"| {c['confirm_p50_s']} / {c['confirm_p99_s']} s | {c['all_delivered_s']} s "
        f"| {c['deliveries_per_s']} | {c['missing']} | {c['duplicates']} | {c['closed']} "
        f"| {c['stored']} | {c['stored_twice']} | {c['not_stored']} "
        f"| {', '.join(f'{k} {v}' for k, v in c.get('cpu_percent', {}).items())} |",
    ]


def storm_lines(run: StormRun | None) -> list[str]:
    if run is None or not run.result:
        return []
    st = run.result
    return [
        "",
        f"## Reconnect storm: {run.opened} sockets on one daphne, killed",
        "",
        f"{run.rooms} rooms of {run.room_size} and one room of {run.big}, every socket on ONE "
        f"daphne; one more socket per room on the other daphne sends a message into its room "
        f"right after the kill (SIGKILL). {st['back']} of {st['listeners']} sockets were back "
        f"(through nginx, on the daphne left, with `?after=`) after {st['all_back_s']} s "
        f"(p50 {st['back_p50_s']} s, p99 {st['back_p99_s']} s), {st['handshakes']} handshakes "
        f"in all; {st['caught_up']} had their room's message after {st['caught_up_s']} s.",
        "",
        "CPU % during the storm: "
        + ", ".join(f"{name} {pc}" for name, pc in (run.cpu_percent or {}).items())
        + ".",
    ]


def big_lines(big: Big | None) -> list[str]:
    if big is None or not big.opened:
        return []
    b = big.broadcast or {}
    before, after = big.rss_kib
    lines = [
        "",
        f"## One room of {big.members} members",
        "",
        f"{big.opened} sockets of one conversation open on ONE daphne process: "
        f"{(after - before) / max(big.opened, 1):.1f} KiB of its resident memory per socket "
        f"({before / 1024:.0f} MiB before, {after / 1024:.0f} MiB with them).",
        "",
        f"{b.get('messages', 0)} messages, 0.5 s apart, from one more member: time until ALL "
        f"{b.get('listeners', 0)} had it p50 {ms(b.get('to_all_p50_ms'))} ms, p99 "
        f"{ms(b.get('to_all_p99_ms'))} ms; each delivery p50 {ms(b.get('each_p50_ms'))} ms, "
        f"p99 {ms(b.get('each_p99_ms'))} ms; missing {b.get('missing', '-')}.",
    ]
    if big.storm:
        st = big.storm
        lines += [
            "",
            f"Then that daphne was killed (SIGKILL): {st['back']} of {st['listeners']} sockets "
            f"were back (through nginx, on the other daphne, with `?after=`) after "
            f"{st['all_back_s']} s; {st['caught_up']} had a message sent once all were back, "
            f"{st['caught_up_s']} s after the kill.",
        ]
    return lines


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def login_cookies(base: str, users: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda user: _login_cookie(base, user), users))


def _login_cookie(base: str, user: dict) -> dict:
    s = requests.Session()
    page = s.get(f"{base}/accounts/login/", timeout=10)
    token = page.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    r = s.post(
        f"{base}/accounts/login/",
        allow_redirects=False,
        timeout=10,
        data={"username": user["username"], "password": PASSWORD, "csrfmiddlewaretoken": token},
        headers={"Origin": base, "Referer": f"{base}/accounts/login/"},
    )
    if r.status_code != 302:
        raise RuntimeError(f"login of {user['username']} failed: {r.status_code}")
    cookie = "; ".join(f"{k}={v}" for k, v in s.cookies.get_dict().items())
    return {"cookie": cookie, "conversation": user["conversation"]}


@dataclass
class Idle:
    points: list[tuple[int, int]]  # (open sockets, daphne RSS KiB), from 0 sockets
    cpu_percent: float | None = None  # daphne's CPU while holding the most sockets
    errors: dict[str, int] | None = None  # why the last step's handshakes failed


def idle_sockets(max_idle: int, step: int, layer: str = "pubsub") -> Idle:
    """Steps of idle sockets up to max_idle or the first failure."""
    result = Idle(points=[])
    points = result.points
    with fresh_stack(layer) as stack:
        # 500 rooms of 2: 20 sockets per room at 10k, so presence joins stay cheap.
        users = json.loads(stack.seed(500, 2, PASSWORD, "idle").read_text())
        sessions_file = stack.run_dir / "idle-sessions.json"
        sessions_file.write_text(
            json.dumps(login_cookies(f"http://127.0.0.1:{stack.config.web_port}", users))
        )
        pid = stack.procs[stack.ws_names[0]]["pid"]
        points.append((0, rss_kib(pid)))
        idler = subprocess.Popen(
            [
                *ws_client_argv("loadtest.idle", stack, sessions_file),
                "--max",
                str(max_idle),
                "--step",
                str(step),
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            for line in idler.stdout:
                report = json.loads(line)
                if "error" in report:
                    print(f"idle: {report['error']}", flush=True)
                    break
                time.sleep(1.0)  # let the handshakes' garbage settle before reading RSS
                points.append((report["open"], rss_kib(pid)))
                print(
                    f"idle: {report['open']:>6} sockets open ({report['failed']} failed, "
                    f"{report['closed']} closed): daphne RSS {points[-1][1] / 1024:.1f} MiB",
                    flush=True,
                )
                if report.get("errors"):
                    print(f"idle: handshake failures: {report['errors']}", flush=True)
                    result.errors = report["errors"]
                if report["failed"] or report["closed"] or report["open"] >= max_idle:
                    # Idle is not free: presence heartbeats and pings. Measure over 15 s, in
                    # the steady state: after the last handshakes' joins and a full ping
                    # interval (20 s), not while the step that opened them settles.
                    time.sleep(20)
                    before, t0 = _tree_cpu_seconds(pid, {}), time.monotonic()
                    time.sleep(15)
                    result.cpu_percent = (
                        (_tree_cpu_seconds(pid, {}) - before) / (time.monotonic() - t0) * 100
                    )
                    break
                idler.stdin.write("\n")
                idler.stdin.flush()
        finally:
            idler.stdin.close()  # the idler closes its sockets and exits
            idler.wait(timeout=60)
    return result


@dataclass
class Page:
    concurrency: int
    seconds: float
    latencies_ms: list[float]
    statuses: dict[int, int]
    messages_on_page: int
    cpu_percent: dict[str, float]
    worker_cpu_percent: list[float]  # each gunicorn worker: how evenly nginx spreads the load

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


PAGE_MESSAGES = 50


def http_page(concurrency: int, seconds: int) -> Page:
    """The conversation page with 50 messages, through nginx, `concurrency` clients at once,
    each a logged-in member of its own room on one keep-alive connection."""
    with fresh_stack("pubsub") as stack:
        users = json.loads(
            stack.seed(concurrency, 2, PASSWORD, "page", messages=PAGE_MESSAGES).read_text()
        )
        one_per_room = list({u["conversation"]: u for u in users}.values())
        clients = login_cookies(f"http://127.0.0.1:{stack.config.web_port}", one_per_room)
        latencies: list[list[float]] = [[] for _ in clients]
        statuses: dict[int, int] = {}
        on_page: list[int] = []

        def client(i: int, deadline: float) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", stack.config.nginx_port, timeout=10)
            path, headers = f"/c/{clients[i]['conversation']}", {"Cookie": clients[i]["cookie"]}
            first = True
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                latencies[i].append((time.perf_counter() - t0) * 1000)
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if first:
                    on_page.append(body.count(b'<article id="msg-'))
                    first = False
            conn.close()

        # Warm-up (imports, templates, pools), then the measured run.
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: client(i, time.monotonic() + 2), range(concurrency)))
        latencies = [[] for _ in clients]
        statuses.clear()
        workers = _children(stack.procs["web"]["pid"])
        workers_before = [_tree_cpu_seconds(pid, {}) for pid in workers]
        cpu_before, started = stack_cpu(stack), time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            end = time.monotonic() + seconds
            list(pool.map(lambda i: client(i, end), range(concurrency)))
        wall = time.monotonic() - started
        cpu_after = stack_cpu(stack)
        workers_after = [_tree_cpu_seconds(pid, {}) for pid in workers]
        return Page(
            concurrency=concurrency,
            seconds=wall,
            latencies_ms=[x for per in latencies for x in per],
            statuses=dict(statuses),
            messages_on_page=min(on_page) if on_page else 0,
            cpu_percent={
                k: (cpu_after[k] - cpu_before.get(k, 0.0)) / wall * 100 for k in cpu_after
            },
            worker_cpu_percent=[
                (after - before) / wall * 100
                for before, after in zip(workers_before, workers_after, strict=True)
            ],
        )


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def page_lines(page: Page) -> list[str]:
    n = len(page.latencies_ms)
    return [
        "| clients | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | statuses "
        "| messages on page | CPU % gunicorn (per worker) / nginx |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {page.concurrency} | {n} | {n / page.seconds:.0f} | {page.pct(0.50):.1f} "
        f"| {page.pct(0.95):.1f} | {page.pct(0.99):.1f} | {max(page.latencies_ms):.1f} "
        f"| {page.statuses} | {page.messages_on_page} "
        f"| {page.cpu_percent.get('web', 0):.0f} "
        f"({' + '.join(f'{w:.0f}' for w in page.worker_cpu_percent)}) "
        f"/ {page.cpu_percent.get('nginx', 0):.0f} |",
    ]


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


HEADER = (
    "| layer | step | offered msg/s | deliveries/s | p50 ms | p95 ms | p99 ms | refused "
    "| not arrived | dup | sustainable "
    "| CPU % daphne / gunicorn / nginx / locust / postgres / redis / pgbouncer / machine |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(step: Step) -> str:
    s = step.summary
    return (
        f"| {step.backend} | {step.label or 'sweep'} "
        f"| {s.get('offered_msgs_per_s', 0):.1f} (target {step.rate:g}) "
        f"| {s.get('deliveries_per_s', 0):.0f} | {ms(s.get('fanout_p50_ms'))} "
        f"| {ms(s.get('fanout_p95_ms'))} | {ms(s.get('fanout_p99_ms'))} "
        f"| {s.get('refused', 0)} | {s['lost']} of {s.get('expected', '?')} "
        f"| {s['duplicates']} | {'yes' if step.sustainable else 'no'} | {cpu_cell(s)} |"
    )


def cpu_cell(summary: dict) -> str:
    cpu = summary.get("cpu_percent", {})
    daphne = sum(v for k, v in cpu.items() if k.startswith("ws"))
    parts = (daphne, *(cpu.get(k, 0) for k in ("web", "nginx", "locust", *SERVICES, "machine")))
    return " / ".join(f"{v:.0f}" for v in parts)


def overload_lines(steps: dict[str, list[Step]]) -> list[str]:
    """Goodput past the knee: each overload step's deliveries/s as a share of the highest
    sustainable rate's, with what was refused, late (p99) and never arrived."""
    lines: list[str] = []
    for backend, ss in steps.items():
        knee = knee_step(ss)
        if knee is None or not any(s.label for s in ss):
            continue
        base = knee.summary.get("deliveries_per_s") or 0
        if not lines:
            lines += [
                "",
                "## Past the knee",
                "",
                "| layer | step | offered msg/s | deliveries/s (share of sustainable) | refused "
                "| p99 ms of accepted | not arrived 10 s after |",
                "|---|---|---|---|---|---|---|",
            ]
        for s in ss:
            if not s.label:
                continue
            got = s.summary.get("deliveries_per_s") or 0
            share = f"{got / base * 100:.0f}%" if base else "-"
            lines.append(
                f"| {backend} | {s.label} | {s.summary.get('offered_msgs_per_s', 0):.1f} "
                f"| {got:.0f} ({share}) | {s.summary.get('refused', 0)} "
                f"| {ms(s.summary.get('fanout_p99_ms'))} | {s.summary['lost']} |"
            )
    return lines


def best(steps: list[Step]) -> float | None:
    ok = [s.summary["offered_msgs_per_s"] for s in steps if s.sustainable and not s.label]
    return max(ok) if ok else None


def latency_ratio(steps: dict[str, list[Step]]) -> list[str]:
    """p99 fan-out of pubsub over core at the highest rate both sustained (the sweep's steps
    are coarse, so equal ceilings can hide a difference in headroom)."""
    core = {s.rate: s for s in steps.get("core", []) if s.sustainable}
    pubsub = {s.rate: s for s in steps.get("pubsub", []) if s.sustainable}
    common = sorted(set(core) & set(pubsub))
    if not common:
        return []
    rate = common[-1]
    c, p = core[rate].summary["fanout_p99_ms"], pubsub[rate].summary["fanout_p99_ms"]
    return [
        f"At {rate:g} msg/s, p99 fan-out: core {c:.1f} ms, pubsub {p:.1f} ms "
        f"(pubsub / core {p / c:.2f})."
    ]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem_kib / 1024 / 1024:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )


def write_results(
    args: argparse.Namespace,
    steps: dict[str, list[Step]],
    idle: Idle,
    page: Page | None,
    notes: list[str],
    big: Big | None = None,
    storm: StormRun | None = None,
    crowd: dict | None = None,
) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"`make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        f"Machine: {machine()}.",
        "",
        f"Native stack (nginx, gunicorn with 2 workers, {args.ws_processes} daphne), Redis and "
        + (
            f"Postgres behind PgBouncer (transaction pooling, {args.pgbouncer} server "
            "connections) and "
            if args.pgbouncer
            else "Postgres and "
        )
        + f"the Locust load generator all on this one machine. {args.rooms} rooms of "
        f"{args.members} members; each rate ran for {args.step_seconds} s (sending starts "
        f"once every member is online). Sustainable: p99 fan-out <= "
        f"{SUSTAINABLE_P99_MS:g} ms and nothing lost, duplicated, reordered or rejected. "
        "CPU % is per process group (100 = one core; the daphne together), averaged "
        "over the whole step including its logins; postgres, redis and pgbouncer are every "
        "process of theirs on the machine (a backend that ended within the step is not "
        "counted); "
        "machine is all cores' busy and stolen time (200 = both cores of a 2-CPU machine).",
        "",
        "## Message rate sweep",
        "",
        HEADER,
    ]
    for backend in steps:
        lines += [row(s) for s in steps[backend]]
    for backend in steps:
        lines += goodput_lines(steps[backend])
    lines += [
        "",
        "| layer | highest sustainable msg/s | deliveries/s at that rate |",
        "|---|---|---|",
    ]
    for backend, ss in steps.items():
        b = best(ss)
        at = next(
            (
                s.summary["deliveries_per_s"]
                for s in ss
                if s.sustainable and s.summary["offered_msgs_per_s"] == b
            ),
            None,
        )
        lines.append(
            f"| {backend} | {'none' if b is None else f'{b:.1f}'} "
            f"| {'-' if at is None else f'{at:.0f}'} |"
        )
    lines += overload_lines(steps)
    core, pubsub = best(steps.get("core", [])), best(steps.get("pubsub", []))
    if core and pubsub:
        lines += ["", f"Ratio pubsub / core (highest sustainable rate): {pubsub / core:.2f}"]
        lines += latency_ratio(steps)
    lines += ["", "## Idle sockets on one daphne process", ""]
    if len(idle.points) > 1:
        lines += ["| open sockets | daphne RSS MiB |", "|---|---|"]
        lines += [f"| {n} | {kib / 1024:.1f} |" for n, kib in idle.points]
        (n0, r0), (n1, r1) = idle.points[0], idle.points[-1]
        per_k = (r1 - r0) / (n1 - n0) * 1000 / 1024
        lines += [
            "",
            f"Resident memory per 1,000 idle sockets: {per_k:.1f} MiB "
            f"(slope from {n0} to {n1} sockets).",
            f"Most idle sockets one daphne process held: {n1} "
            + (
                "(the benchmark's bound; it did not fail)"
                if n1 >= args.max_idle
                else "(sockets failed to open or were closed beyond this)"
            )
            + ".",
        ]
        if idle.errors:
            lines.append(f"Handshake failures in the last step: {idle.errors}.")
        if idle.cpu_percent is not None:
            lines.append(
                f"CPU of that daphne while holding {n1} idle sockets: {idle.cpu_percent:.0f}% "
                "of a core (websocket pings and presence heartbeats), over 15 s starting 20 s "
                "after the last socket opened."
            )
    else:
        lines.append("Not measured.")
    lines += big_lines(big)
    lines += storm_lines(storm)
    lines += crowd_lines(crowd)
    lines += ["", "## Conversation page through nginx", ""]
    if page is not None and page.latencies_ms:
        lines += page_lines(page)
        lines += [
            "",
            f"GET /c/<id> with {PAGE_MESSAGES} messages, gunicorn with 2 uvicorn workers behind "
            f"nginx; {page.concurrency} keep-alive clients in threads of one Python process "
            "on the same machine (their own overhead is inside these figures).",
        ]
    else:
        lines.append("Not measured.")
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    text = "\n".join(lines) + "\n"
    Path(args.results).write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates",
        default="auto",
        help="offered msg/s (all rooms together): ascending, or auto[:START:STEP] (100 and "
        "100): up to the first rate that is not sustainable",
    )
    parser.add_argument("--results", default=str(RESULTS), help="markdown file to write")
    parser.add_argument(
        "--pgbouncer",
        type=int,
        default=0,
        metavar="POOL",
        help="reach Postgres through PgBouncer with POOL server connections (0: directly)",
    )
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--step-seconds", type=int, default=20)
    parser.add_argument("--backends", default="core,pubsub")
    parser.add_argument(
        "--overload",
        default="0.5,1.5,2,3",
        help="factors of the highest sustainable rate to offer after the sweep ('' skips)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of the overload factors (the spread)"
    )
    parser.add_argument(
        "--crowd",
        default="1000x50x2",
        help="SOCKETSxROOM_SIZExMESSAGES: sockets under the default limits that all send at "
        "once and retry refusals as chat.js does ('' skips)",
    )
    parser.add_argument("--max-idle", type=int, default=10000)
    parser.add_argument("--idle-step", type=int, default=1000)
    parser.add_argument(
        "--ws-processes", type=int, choices=(1, 2), default=2, help="daphne in the sweep"
    )
    parser.add_argument("--idle-layer", default="pubsub", help="channel layer of the idle run")
    parser.add_argument(
        "--http-concurrency",
        type=int,
        default=None,
        help="page clients at once (default: --rooms; 0 skips the page benchmark)",
    )
    parser.add_argument("--http-seconds", type=int, default=20)
    parser.add_argument(
        "--big-room", type=int, default=2000, help="members of the big-room run (0 skips)"
    )
    parser.add_argument(
        "--storm",
        default="400x10+1000",
        help="reconnect storm: ROOMSxSIZE+BIG sockets on one daphne, killed ('' skips)",
    )
    parser.add_argument("--note", action="append", default=[], help="add a note to RESULTS.md")
    args = parser.parse_args()
    PGBOUNCER["pool"] = args.pgbouncer
    # daphne inherits this: the idle-socket ceiling should be daphne's, not the fd limit's.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.max_idle + 1000)), hard))
    notes = list(args.note)
    if hard < args.max_idle + 1000:
        notes.append(f"open-files hard limit {hard} caps the idle-socket measurement")
    print(HEADER, flush=True)
    steps = {
        b: sweep(
            b,
            rates_to_the_knee(args.rates),
            args.rooms,
            args.members,
            args.step_seconds,
            args.ws_processes,
            [float(f) for f in args.overload.split(",") if f],
            args.repeat,
        )
        for b in args.backends.split(",")
        if b
    }
    for b, ss in steps.items():
        print("\n".join([f"\n{b}:", *goodput_lines(ss)]), flush=True)
    crowd = None
    if args.crowd:
        sockets, room_size, messages = (int(x) for x in args.crowd.split("x"))
        try:
            crowd = crowd_run(sockets, room_size, messages)
        except Exception as exc:  # keep the other results
            notes.append(f"crowd measurement failed: {exc!r}")
    idle = Idle(points=[])
    if args.max_idle:
        try:
            idle = idle_sockets(args.max_idle, args.idle_step, args.idle_layer)
        except Exception as exc:  # keep the sweep's results
            notes.append(f"idle-socket measurement failed: {exc!r}")
    big = None
    if args.big_room:
        try:
            big = big_room(args.big_room)
        except Exception as exc:  # keep the other results
            notes.append(f"big-room measurement failed: {exc!r}")
    storm = None
    if args.storm:
        shape, _, big_members = args.storm.partition("+")
        storm_rooms, _, storm_size = shape.partition("x")
        try:
            storm = reconnect_storm(int(storm_rooms), int(storm_size), int(big_members or 0))
        except Exception as exc:  # keep the other results
            notes.append(f"reconnect-storm measurement failed: {exc!r}")
    page = None
    concurrency = args.rooms if args.http_concurrency is None else args.http_concurrency
    if concurrency:
        try:
            page = http_page(concurrency, args.http_seconds)
            print("\n".join(page_lines(page)), flush=True)
        except Exception as exc:  # keep the other results
            notes.append(f"page measurement failed: {exc!r}")
    print("\n" + write_results(args, steps, idle, page, notes, big, storm, crowd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
