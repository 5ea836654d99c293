"""Per-process run state: who plays which seeded user, the ledger, and the end-of-run check.

Locust runs this in one process (local) or as a master with workers. The master (or the
local runner) hands out the seeded users one by one, so every Locust user plays a distinct
member however the users are spread over workers. At the end the master asks every worker
to stop sending, drain and ship its ledger, merges them and checks completeness.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from gevent.event import AsyncResult, Event
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest.ledger import Ledger, check
from loadtest.users import select_users

logger = logging.getLogger("loadtest")


@dataclass(frozen=True)
class Knobs:
    users_file: str
    login_host: str
    rooms: int
    members: int
    send_rate: float
    p99_threshold_ms: float
    drain_seconds: float
    ready_timeout: float
    summary_json: str

    @classmethod
    def from_options(cls, options: Any) -> Knobs:
        return cls(
            users_file=options.users_file,
            login_host=options.login_host,
            rooms=options.rooms,
            members=options.members,
            send_rate=options.send_rate,
            p99_threshold_ms=options.p99_threshold_ms,
            drain_seconds=options.drain_seconds,
            ready_timeout=options.ready_timeout,
            summary_json=options.summary_json,
        )


def add_arguments(parser: Any) -> None:
    """The load test's knobs: command line, LOCUST_* environment variables or locust.conf."""
    group = parser.add_argument_group("Parley load test")
    group.add_argument(
        "--users-file",
        env_var="LOCUST_USERS_FILE",
        default="results/users.json",
        help="JSON written by `manage.py seed_loadtest`",
    )
    group.add_argument(
        "--login-host",
        env_var="LOCUST_LOGIN_HOST",
        default="",
        help="log in here instead of --host, e.g. gunicorn directly, past nginx's login limit",
    )
    group.add_argument(
        "--rooms",
        env_var="LOCUST_ROOMS",
        type=int,
        default=0,
        help="rooms to use from the users file (0: all)",
    )
    group.add_argument(
        "--members",
        env_var="LOCUST_MEMBERS",
        type=int,
        default=0,
        help="members per room to use (0: all seeded)",
    )
    group.add_argument(
        "--send-rate",
        env_var="LOCUST_SEND_RATE",
        type=float,
        default=1.0,
        help="messages per second per room, spread over its members",
    )
    group.add_argument(
        "--p99-threshold-ms",
        env_var="LOCUST_P99_THRESHOLD_MS",
        type=float,
        default=100.0,
        help="fail the run when p99 fan-out latency is above this",
    )
    group.add_argument(
        "--drain-seconds",
        env_var="LOCUST_DRAIN_SECONDS",
        type=float,
        default=10.0,
        help="at most this long to wait for in-flight deliveries",
    )
    group.add_argument(
        "--ready-timeout",
        env_var="LOCUST_READY_TIMEOUT",
        type=float,
        default=120.0,
        help="at most this long to wait for a room to be online",
    )
    group.add_argument(
        "--summary-json",
        env_var="LOCUST_SUMMARY_JSON",
        default="",
        help="also write the completeness summary to this JSON file",
    )


class Coordinator:
    def __init__(self) -> None:
        self.environment: Environment | None = None
        self.knobs: Knobs | None = None
        self.ledger = Ledger()
        self.sending = Event()  # set while users may send; cleared at the end of a run
        self.go = Event()  # set once every user is logged in, connected and its room online
        self._ready = 0
        self.last_delivery = time.monotonic()
        self._claims: dict[str, AsyncResult] = {}
        # master/local only
        self.selected: list[dict] = []
        self._next = 0
        self._reports: dict[str, dict] = {}
        self._reported = Event()
        self._expected_reports = 0

    # --- setup ----------------------------------------------------------------------------

    def on_init(self, environment: Environment, **_: Any) -> None:
        self.environment = environment
        self.knobs = Knobs.from_options(environment.parsed_options)
        runner = environment.runner
        if not isinstance(runner, WorkerRunner):
            try:
                records = json.loads(Path(self.knobs.users_file).read_text())
                self.selected = select_users(records, self.knobs.rooms, self.knobs.members)
            except (OSError, ValueError, TypeError) as exc:
                logger.error(
                    "cannot use --users-file %s: %s (write it with `manage.py "
                    "seed_loadtest`, or `make seed`)",
                    self.knobs.users_file,
                    exc,
                )
                sys.exit(2)
            per_member = max(self.knobs.send_rate / r["room_size"] for r in self.selected)
            logger.info(
                "load test: %d users in %d rooms, %.2f msg/s per room (%.2f per socket)",
                len(self.selected),
                len({r["conversation"] for r in self.selected}),
                self.knobs.send_rate,
                per_member,
            )
            if per_member > 2.5:
                logger.warning(
                    "%.2f msg/s per socket is close to the server's default rate "
                    "limit (CHAT_RATE_LIMIT=30 per 10 s): raise it or add members",
                    per_member,
                )
            runner.register_message("lt_claim", self._on_claim)
            runner.register_message("lt_ledger", self._on_ledger)
            runner.register_message("lt_ready", self._on_ready)
        if not isinstance(runner, MasterRunner):
            runner.register_message("lt_assign", self._on_assign)
            runner.register_message("lt_go", self._on_go)
            runner.register_message("lt_stop", self._on_stop_message, concurrent=True)

    def on_test_start(self, environment: Environment, **_: Any) -> None:
        self.ledger = Ledger()
        self._next = 0
        self._ready = 0
        self.go.clear()
        self._reports = {}
        self._reported = Event()
        self.sending.set()

    @property
    def expected_users(self) -> int:
        return len(self.selected)

    # --- handing out seeded users ---------------------------------------------------------

    def claim(self, timeout: float = 30.0) -> dict | None:
        """Called by a Locust user: the seeded user it plays, or None when all are taken."""
        request = uuid.uuid4().hex
        result = AsyncResult()
        self._claims[request] = result
        try:
            self.environment.runner.send_message("lt_claim", {"request": request})
            return result.get(timeout=timeout)
        finally:
            self._claims.pop(request, None)

    def _on_claim(self, environment: Environment, msg: Any, **_: Any) -> None:
        record = self.selected[self._next] if self._next < len(self.selected) else None
        self._next += 1
        environment.runner.send_message(
            "lt_assign",
            {"request": msg.data["request"], "record": record},
            client_id=msg.node_id if isinstance(environment.runner, MasterRunner) else None,
        )

    def _on_assign(self, environment: Environment, msg: Any, **_: Any) -> None:
        result = self._claims.get(msg.data["request"])
        if result is not None:
            result.set(msg.data["record"])

    # --- the start gate: logins are expensive (password hashing), so nobody sends until
    # every user is in, or the first rooms' latencies would measure the others' logins.

    def ready(self) -> bool:
        """Called by a user whose room is online: waits until every user is."""
        self.environment.runner.send_message("lt_ready", None)
        return self.go.wait(self.knobs.ready_timeout)

    def _on_ready(self, environment: Environment, msg: Any, **_: Any) -> None:
        self._ready += 1
        if self._ready == len(self.selected):
            logger.info("all %d users online: sending starts", self._ready)
            environment.runner.send_message("lt_go", None)

    def _on_go(self, environment: Environment, msg: Any, **_: Any) -> None:
        # The generator's own full garbage collections walked every user, socket and
        # greenlet made during log-in: pauses of 80-130 ms with 1,000 users, which the
        # ledger then reported as fan-out latency. Those objects live to the end of the
        # run; frozen, a collection walks only what the run itself allocates.
        gc.collect()
        gc.freeze()
        self.go.set()

    # --- the end of a run -----------------------------------------------------------------

    def note_delivery(self) -> None:
        self.last_delivery = time.monotonic()

    def drain(self) -> None:
        """Stops sending and waits for in-flight deliveries: until every message sent from
        this process reached every local recipient and nothing arrived for a second, or
        drain_seconds passed."""
        self.sending.clear()
        deadline = time.monotonic() + self.knobs.drain_seconds
        while time.monotonic() < deadline:
            if self.ledger.locally_complete() and time.monotonic() - self.last_delivery > 1.0:
                return
            gevent.sleep(0.1)

    def _on_stop_message(self, environment: Environment, msg: Any, **_: Any) -> None:
        self.drain()
        environment.runner.send_message("lt_ledger", self.ledger.to_dict())

    def _on_ledger(self, environment: Environment, msg: Any, **_: Any) -> None:
        self._reports[msg.node_id] = msg.data
        if len(self._reports) >= self._expected_reports:
            self._reported.set()

    def on_test_stopping(self, environment: Environment, **_: Any) -> None:
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            self.sending.clear()  # the master collects our ledger through lt_stop
            return
        if not self.sending.is_set():
            return  # already checked (stop pressed twice, or stop then quit)
        if isinstance(runner, MasterRunner):
            self.sending.clear()
            self._expected_reports = len(runner.clients)
            runner.send_message("lt_stop", None)
            if not self._reported.wait(self.knobs.drain_seconds + 30):
                logger.error(
                    "only %d of %d workers reported their ledger",
                    len(self._reports),
                    self._expected_reports,
                )
            merged = Ledger()
            for data in self._reports.values():
                merged.merge(data)
        else:
            self.drain()
            merged = self.ledger
        self.finish(environment, merged)

    def finish(self, environment: Environment, ledger: Ledger) -> None:
        report = check(ledger, self.knobs.p99_threshold_ms)
        summary = report.summary()
        if len(ledger.recipients) != self.expected_users:
            msg = (
                f"{len(ledger.recipients)} of {self.expected_users} seeded users took part "
                f"(run exactly as many Locust users, -u {self.expected_users})"
            )
            report.failures.append(msg)
            summary = report.summary()
        print("\n=== Parley load test: delivery completeness ===\n" + report.table(), flush=True)
        if self.knobs.summary_json:
            path = Path(self.knobs.summary_json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=1))
        if not report.ok:
            environment.process_exit_code = 1


coordinator = Coordinator()
