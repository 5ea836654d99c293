"""Per-process run state: who plays which seeded user, the ledger, and the end-of-run check.

Locust runs this in one process (local) or as a master with workers. The master (or the
local runner) hands out the seeded users one by one, so every Locust user plays a distinct
member however the users are spread over workers. It also paces the logins: every login
attempt waits for a ticket, handed out at most `--login-rate` a second and to at most
`--login-concurrency` attempts at once (loadtest/pacing.py). A user that gives up connecting
tells the master, which tells every process: its room's members stop waiting for it, and
sending starts once every user is online or has given up.
At the end the master asks every worker to stop sending, drain and ship its ledger, merges
them and checks completeness for the users that connected.
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
from gevent.lock import Semaphore
from gevent.queue import Queue
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest.ledger import Ledger, check
from loadtest.pacing import LOGIN_CONCURRENCY, LoginPacer, login_rate
from loadtest.users import select_users

logger = logging.getLogger("loadtest")


@dataclass(frozen=True)
class Knobs:
    users_file: str
    login_host: str
    login_rate: float
    login_concurrency: int
    login_timeout: float
    min_connected: float
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
            login_rate=login_rate(str(options.login_rate), options.login_host),
            login_concurrency=options.login_concurrency,
            login_timeout=options.login_timeout,
            min_connected=options.min_connected,
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
        "--login-rate",
        env_var="LOCUST_LOGIN_RATE",
        default="auto",
        help="login attempts started per second over the whole run, 0: no limit; auto: "
        "no limit with --login-host, else 20 a minute (nginx's login limit per address)",
    )
    group.add_argument(
        "--login-concurrency",
        env_var="LOCUST_LOGIN_CONCURRENCY",
        type=int,
        default=LOGIN_CONCURRENCY,
        help="login attempts in flight at once over the whole run, 0: no limit "
        "(default 2: one per web worker of `make stack`)",
    )
    group.add_argument(
        "--login-timeout",
        env_var="LOCUST_LOGIN_TIMEOUT",
        type=float,
        default=90.0,
        help="a user retries its login (429, 502-504, no answer) for at most this long "
        "after its first refusal",
    )
    group.add_argument(
        "--min-connected",
        env_var="LOCUST_MIN_CONNECTED",
        type=float,
        default=0.5,
        help="fail the run when fewer than this fraction of the users connected",
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
        self._gave_up = 0
        self._go_sent = False
        self.gave_up_in_room: dict[int, int] = {}  # room -> members that will not connect
        self.last_delivery = time.monotonic()
        self._claims: dict[str, AsyncResult] = {}
        self._tickets: dict[str, AsyncResult] = {}
        # master/local only
        self.selected: list[dict] = []
        self._next = 0
        self._login_queue: Queue = Queue()
        self._in_flight: Semaphore | None = None
        self._ticket_office: gevent.Greenlet | None = None
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
            runner.register_message("lt_failed", self._on_failed)
            runner.register_message("lt_login_ask", self._on_login_ask)
            runner.register_message("lt_login_done", self._on_login_done)
        if not isinstance(runner, MasterRunner):
            runner.register_message("lt_assign", self._on_assign)
            runner.register_message("lt_go", self._on_go)
            runner.register_message("lt_gave_up", self._on_gave_up)
            runner.register_message("lt_login_go", self._on_login_go)
            runner.register_message("lt_stop", self._on_stop_message, concurrent=True)

    def on_test_start(self, environment: Environment, **_: Any) -> None:
        # A worker has the master's knobs only now: Locust copies the master's custom
        # options into the worker's parsed_options with the first spawn message, just
        # before this event (at init, a worker has its own command line's defaults).
        self.knobs = Knobs.from_options(environment.parsed_options)
        self.ledger = Ledger()
        self._next = 0
        self._ready = 0
        self._gave_up = 0
        self._go_sent = False
        self.gave_up_in_room = {}
        self.go.clear()
        if not isinstance(environment.runner, WorkerRunner):
            if self._ticket_office is not None:
                self._ticket_office.kill(block=False)
            self._login_queue = Queue()
            concurrency = self.knobs.login_concurrency
            self._in_flight = Semaphore(concurrency) if concurrency > 0 else None
            self._ticket_office = gevent.spawn(self._hand_out_tickets)
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

    # --- login tickets: every login attempt waits for one ------------------------------------

    def login_ticket(self) -> None:
        """Called by a user before a login attempt: waits for its turn. Call login_done()
        after the attempt, whatever its outcome."""
        request = uuid.uuid4().hex
        result = AsyncResult()
        self._tickets[request] = result
        try:
            self.environment.runner.send_message("lt_login_ask", {"request": request})
            result.get()  # the run's end kills a user still waiting
        finally:
            self._tickets.pop(request, None)

    def login_done(self) -> None:
        self.environment.runner.send_message("lt_login_done", None)

    def _on_login_ask(self, environment: Environment, msg: Any, **_: Any) -> None:
        self._login_queue.put((msg.node_id, msg.data["request"]))

    def _hand_out_tickets(self) -> None:
        """Master/local: one ticket at a time, in order of asking, at most login_rate a
        second and login_concurrency outstanding."""
        pacer = LoginPacer(self.knobs.login_rate)
        runner = self.environment.runner
        while True:
            node, request = self._login_queue.get()
            if self._in_flight is not None:
                self._in_flight.acquire()
            gevent.sleep(pacer.delay())
            runner.send_message(
                "lt_login_go",
                {"request": request},
                client_id=node if isinstance(runner, MasterRunner) else None,
            )

    def _on_login_done(self, environment: Environment, msg: Any, **_: Any) -> None:
        if self._in_flight is not None:
            self._in_flight.release()

    def _on_login_go(self, environment: Environment, msg: Any, **_: Any) -> None:
        result = self._tickets.get(msg.data["request"])
        if result is not None:
            result.set(True)
        else:  # the user is gone (the run ended): its ticket goes back
            environment.runner.send_message("lt_login_done", None)

    # --- the start gate: logins are expensive (password hashing), so nobody sends until
    # every user is in, or the first rooms' latencies would measure the others' logins.

    def ready(self) -> bool:
        """Called by a user whose room is online: waits until every user is."""
        self.environment.runner.send_message("lt_ready", None)
        return self.go.wait(self.knobs.ready_timeout)

    def _on_ready(self, environment: Environment, msg: Any, **_: Any) -> None:
        self._ready += 1
        self._maybe_go(environment)

    def _maybe_go(self, environment: Environment) -> None:
        if self._go_sent or self._ready + self._gave_up < len(self.selected):
            return
        self._go_sent = True
        if self._gave_up:
            logger.warning(
                "%d users online, %d gave up connecting: sending starts",
                self._ready,
                self._gave_up,
            )
        else:
            logger.info("all %d users online: sending starts", self._ready)
        environment.runner.send_message("lt_go", None)

    # --- users that could not connect -----------------------------------------------------

    def gave_up(self, username: str, room: int, reason: str) -> None:
        """Called by a user whose login or handshake still failed after its retries: it is
        reported by name, and nobody waits for it any more."""
        logger.error("%s (room %d) gives up: %s", username, room, reason)
        self.ledger.record_not_connected(username, reason)
        self.environment.runner.send_message("lt_failed", {"room": room})

    def _on_failed(self, environment: Environment, msg: Any, **_: Any) -> None:
        self._gave_up += 1
        # Every process (local: this one) learns that the room is one member short.
        environment.runner.send_message("lt_gave_up", msg.data)
        self._maybe_go(environment)

    def _on_gave_up(self, environment: Environment, msg: Any, **_: Any) -> None:
        room = int(msg.data["room"])
        self.gave_up_in_room[room] = self.gave_up_in_room.get(room, 0) + 1

    def room_target(self, room: int, room_size: int) -> int:
        """How many of a room's members must be online for it to count as online."""
        return room_size - self.gave_up_in_room.get(room, 0)

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
            environment.process_exit_code = 0  # the master judges the run
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
            ledgers = len(self._reports)
        else:
            self.drain()
            merged, ledgers = self.ledger, 1
        self.finish(environment, merged, ledgers)

    def finish(self, environment: Environment, ledger: Ledger, ledgers: int = 1) -> None:
        """`ledgers`: how many processes' ledgers were merged into `ledger` (the workers')."""
        claimed = min(self._next, self.expected_users)
        unplayed = [r["username"] for r in self.selected[claimed:]]
        for username in unplayed:
            ledger.record_not_connected(username, "no Locust user played it")
        report = check(
            ledger,
            self.knobs.p99_threshold_ms,
            users=[r["username"] for r in self.selected],
            min_connected=self.knobs.min_connected,
        )
        if unplayed:
            # A configuration error, not the server's doing.
            report.failures.append(
                f"only {claimed} of {self.expected_users} seeded users were played "
                f"(run exactly as many Locust users, -u {self.expected_users})"
            )
        summary = report.summary()
        summary["ledgers"] = ledgers
        print("\n=== Parley load test: delivery completeness ===\n" + report.table(), flush=True)
        if self.knobs.summary_json:
            path = Path(self.knobs.summary_json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=1))
        # The completeness check is the verdict. Locust alone would exit 1 on any failed
        # request, a refused login that was retried (or a user that gave up) included.
        environment.process_exit_code = 0 if report.ok else 1


coordinator = Coordinator()
