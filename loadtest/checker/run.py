"""One checker run: the private stack, the pages, the traffic, the faults, the checks and the
report. Everything random comes from the seed (the pages' texts and timings, which faults and
when); what the machine's timing does with that is not, so a seed reproduces the plan, and a
real defect shows up again under it, not necessarily at the same sequence numbers.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from loadtest.checker.actions import GIVE_UP_AFTER, Change
from loadtest.checker.bodies import Bodies
from loadtest.checker.check import (
    STEADY_SECONDS,
    Db,
    Failure,
    PageState,
    Restore,
    Stored,
    check_changes,
    check_pages,
    check_people,
    check_sends,
)
from loadtest.checker.history import (
    LIFECYCLE,
    Event,
    History,
    collapse,
    fmt_event,
    fmt_ranges,
    overlaps,
    ranges,
    say,
)
from loadtest.checker.page import Page, Send
from loadtest.checker.stack import ChaosStack
from tests.stack.harness import login

PASSWORD = "checker-pass"  # noqa: S105
# A page that left must be closed by then: 4403 at once, or the heartbeat's membership read
# (every CHAT_PRESENCE_TTL / 3 = 5 s) if the removal's broadcast was lost to a Redis outage.
LEFT_WITHIN = 20.0
MAX_LENGTH = 4000  # settings.CHAT_MAX_MESSAGE_LENGTH (the default, which the stack runs)
FAULTS = [
    "ws_term",
    "ws_kill",
    "ws_pause",
    "redis_restart",
    "pg_restart",
    "disconnect",
    "slow_reader",
    "page_reload",
]

# The stack's settings, on top of the defaults (documented in docs/testing.md).
STACK_ENV = {
    # The flood limit is not what is checked: bursts of 8 messages a second per page.
    "CHAT_RATE_LIMIT": "300",
    # Heartbeat every 5 s (CHAT_PRESENCE_TTL / 3): a tail broadcast lost, or a restore under
    # an open socket, is noticed within that.
    "CHAT_PRESENCE_TTL": "15",
    # The machine is shared (CI runs other suites beside it): a send is refused as "busy"
    # only when the server is far behind, as in the test suite (tests/_env.py). Refusals
    # are retried like chat.js does and are part of what is checked.
    "CHAT_OVERLOAD_LAG_SECONDS": "0.5",
    "CHAT_OVERLOAD_DELIVERY_SECONDS": "2",
    "CHAT_OVERLOAD_QUEUE_SECONDS": "2",
    "CHAT_OVERLOAD_STORE_WAIT_SECONDS": "2",
    # A SIGTERM'd daphne stops listening at once and closes its sockets (1012) within 3 s.
    "WS_DRAIN_DELAY": "0",
    "CHAT_DRAIN_SECONDS": "3",
    "DB_POOL_MAX_SIZE": "4",
    # Half the default page of history: reloads read several older pages, and a page that
    # does not scroll back (Options.shallow) misses more of the changes it is then sent.
    "CHAT_HISTORY_PAGE_SIZE": "25",
}


@dataclass
class Options:
    seed: int
    seconds: float = 60.0
    runtime: str = "tuned"
    port_base: int = 18800
    rooms: int = 3
    rate: float = 0.5  # messages per second per page
    burst_rate: float = 8.0  # per page, while one member is away
    behind: int = 300  # a far-behind page comes back at least this many messages behind
    # Pages settle on the database's history at a checkpoint (before a restore, and at the
    # end) while they make progress: given up on after `stall` seconds without any (a page in
    # a reconnect loop makes none), or after `settle_cap` seconds in all.
    stall: float = 20.0
    settle_cap: float = 120.0
    stop_at_failure: bool = False  # no more faults once a checkpoint failed
    # Changes besides messages. Of a page's typing turns, this share edits one of its own
    # recent messages and this share deletes one (when it shows one to change).
    edit_p: float = 0.04
    delete_p: float = 0.03
    # Now and then (on average this many seconds apart; 0: never) a member adds a guest
    # (one of `guests` people in none of the rooms), whose page opens, types a while and
    # leaves (its socket must close with 4403).
    guest_every: float = 20.0
    guests: int = 2
    # This share of page loads does not scroll back past the newest page of history.
    shallow: float = 0.25
    name: str = "soak"
    echo: bool = True
    prefix: str = ""  # before each progress line (several runs at once)


@dataclass
class Result:
    options: Options
    failures: list[Failure]
    report: str
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class Run:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.history = History(echo=options.echo, prefix=options.prefix)
        # One generator per thread that draws: the fault loop's and the far-behind scenario's.
        self.rng = random.Random(f"{options.seed}:faults")
        self.behind_rng = random.Random(f"{options.seed}:far-behind")
        self.guest_rng = random.Random(f"{options.seed}:guests")
        self.bodies = Bodies(MAX_LENGTH)
        self.sends: dict[str, Send] = {}
        self.changes: list[Change] = []
        # Replaced, never changed in place: other threads iterate over it.
        self.pages: list[Page] = []
        self.gone: list[Page] = []  # guests' pages that left
        self.guests: dict[str, object] = {}  # username -> logged-in session
        self.visits = 0
        self.epochs: dict[int, str] = {}  # each room's epoch as of the last restore
        # A guest's visit and a restore never overlap (the restored dump says who is in).
        self.people_lock = threading.Lock()
        self.rooms: dict[int, list[Page]] = {}
        self.restores: list[Restore] = []
        self.failures: list[Failure] = []
        self.exclusive = threading.Lock()  # a far-behind scenario, or a restore
        self.stopping = threading.Event()
        self.faults = Counter()
        self.far_behind: list[str] = []
        # The rooms whose traffic a scenario drives (far-behind, a Redis restart under a busy
        # room), chosen under room_lock so that two never drive the same one.
        self.room_lock = threading.Lock()
        self.busy_room: int | None = None
        self.redis_room: int | None = None
        self.stack = ChaosStack(options.name, options.port_base, options.runtime, STACK_ENV)
        self.ws_base = self.origin = self.base_url = ""

    def say(self, text: str) -> None:
        if self.o.echo:
            say(self.o.prefix + text)

    def register(self, send: Send) -> None:
        self.sends[send.cid] = send

    def register_change(self, change: Change) -> None:
        self.changes.append(change)

    # --- the run -----------------------------------------------------------------------------

    def execute(self) -> Result:
        o = self.o
        self.say(
            f"parley delivery checker: seed {o.seed}, {o.runtime} runtime, "
            f"{o.seconds:g} s of faults"
        )
        started = time.monotonic()
        stats: dict = {}
        try:
            self.stack.start()
            self.say(f"stack: {self.stack.describe()}; up in {time.monotonic() - started:.1f}s")
            self.base_url = self.origin = self.stack.url
            self.ws_base = self.stack.url.replace("http", "ws", 1)
            self.history.t0 = time.monotonic()
            self._open_pages()
            self._traffic_and_faults()
            self._final()
        except Exception as exc:  # the stack could not be driven: said so, not a pass
            self.failures.append(
                Failure(
                    "checker", f"the run could not go on: {exc!r}\n" + traceback.format_exc(), "run"
                )
            )
        finally:
            stats = self._stats()
            for page in self.pages:
                page.stop()
            for page in self.pages:
                page.join(timeout=10)
            errors = {}
            down = time.monotonic()
            try:
                errors = self.stack.log_errors()
            finally:
                self.stack.stop()
            self.say(f"stack: stopped in {time.monotonic() - down:.1f}s")
        stats["seconds"] = round(time.monotonic() - started, 1)
        report = self._report(stats, errors)
        return Result(o, self.failures, report, stats)

    def _open_pages(self) -> None:
        # One room more: its members are the guests, in none of the rooms the pages are in.
        users = self.stack.seed(self.o.rooms + 1, 4, PASSWORD)
        guest_prefix = f"ck_r{self.o.rooms}_"
        by_room: dict[int, list[dict]] = {}
        for user in users:
            if not user["username"].startswith(guest_prefix):
                by_room.setdefault(user["conversation"], []).append(user)
        active = [
            (room, user["username"])
            for room, members in sorted(by_room.items())
            for user in members[: self.rng.choice([3, 4])]
        ]
        guests = [u["username"] for u in users if u["username"].startswith(guest_prefix)]
        guests = guests[: max(0, min(self.o.guests, len(guests)))]
        # Straight at gunicorn (set-up: nginx limits login POSTs per client address).
        with ThreadPoolExecutor(4) as pool:
            sessions = list(
                pool.map(
                    lambda who: login(self.stack.web_url, who, PASSWORD),
                    [who for _, who in active] + guests,
                )
            )
        self.guests = dict(zip(guests, sessions[len(active) :], strict=True))
        self.epochs = dict(self.read_db().epochs)
        for (room, username), session in zip(active, sessions, strict=False):
            page = Page(self, username, PASSWORD, room, session, self.o.seed)
            self.pages.append(page)
            self.rooms.setdefault(room, []).append(page)
        self.say(
            "rooms: "
            + ", ".join(
                f"{room}: {' '.join(p.who for p in pages)}" for room, pages in self.rooms.items()
            )
            + (f"; guests {' '.join(self.guests)}" if self.guests else "")
        )
        for page in self.pages:
            page.start()
        if not wait_until(lambda: all(p.open for p in self.pages), 120):
            closed = [p.who for p in self.pages if not p.open]
            raise RuntimeError(f"pages not connected 120 s after the start: {closed}")

    def _set_rate(self, pages: list[Page], rate: float, long_texts: bool = False) -> None:
        for page in pages:
            page.command(lambda p, rate=rate: p.set_rate(rate, long_texts))

    def _traffic_and_faults(self) -> None:
        o = self.o
        end = self.history.now() + o.seconds
        self._set_rate(self.pages, o.rate)
        self.say(
            f"traffic: {o.rate:g} msg/s per page, {len(self.pages)} pages; faults until "
            f"t={o.seconds:g}"
        )
        behind = threading.Thread(target=self._far_behind_loop, args=(end,), daemon=True)
        behind.start()
        guests = threading.Thread(target=self._guest_loop, daemon=True)
        guests.start()
        ticker = threading.Thread(target=self._ticker, daemon=True)
        ticker.start()
        try:
            self._fault_loop(end)
        finally:
            self.stopping.set()
            behind.join()
            guests.join()  # a visit under way ends: the guest leaves

    def _ticker(self) -> None:
        while not self.stopping.wait(10):
            sends = list(self.sends.values())
            confirmed = sum(1 for s in sends if s.confirmed)
            pages = self.pages
            opened = sum(1 for p in pages if p.open)
            changes = Counter(c.kind for c in list(self.changes) if c.confirmed)
            self.say(
                f"  t={self.history.now():7.2f}  status: {len(sends)} sent, {confirmed} "
                f"confirmed, pages open {opened}/{len(pages)}; confirmed "
                + (", ".join(f"{k} {n}" for k, n in sorted(changes.items())) or "no changes")
            )

    # --- faults ------------------------------------------------------------------------------

    def _fault_loop(self, end: float) -> None:
        o, rng = self.o, self.rng
        span = min(o.seconds, 300.0)
        dump_at = self.history.now() + rng.uniform(0.15, 0.3) * span
        restore_at = dump_at + rng.uniform(0.25, 0.4) * span
        dump = None
        deck: list[str] = []
        while self.history.now() < end:
            now = self.history.now()
            if dump is None and now >= dump_at:
                dump = self._dump()
                continue
            if dump is not None and now >= restore_at:
                if not self._restore(dump) and o.stop_at_failure:
                    self.say("  a checkpoint failed: no more faults (--stop-at-failure)")
                    return
                dump = None
                # Long runs: a restore every few minutes (each page then reads the whole
                # history again, which grows all the time).
                dump_at = self.history.now() + rng.uniform(120, 600)
                restore_at = dump_at + rng.uniform(60, 300)
                continue
            if not deck:
                deck = list(FAULTS)
                rng.shuffle(deck)
            kind = deck.pop()
            getattr(self, f"_fault_{kind}")()
            self.faults[kind] += 1
            pause = rng.uniform(0.5, 2.0)
            due = min(self.history.now() + pause, end, restore_at if dump is not None else dump_at)
            self._sleep_until(due)

    def _sleep_until(self, t: float) -> None:
        left = t - self.history.now()
        if left > 0:
            time.sleep(left)  # the time between two faults

    def _fault_ws_term(self) -> None:
        i = self.rng.randrange(2)
        name = self.stack.ws_names[i]
        self.history.fault("ws-sigterm", f"SIGTERM {name} (drain: its sockets get 1012)")
        code = self.stack.kill_ws(i, signal.SIGTERM)
        self.stack.start_process(name)
        self.history.fault("ws-sigterm", f"{name} exited {code}, started again and healthy")
        self._spread(name)

    def _fault_ws_kill(self) -> None:
        i = self.rng.randrange(2)
        name = self.stack.ws_names[i]
        down = self.rng.uniform(0.5, 3.0)
        self.history.fault("ws-sigkill", f"SIGKILL {name}; down {down:.1f}s")
        self.stack.kill_ws(i, signal.SIGKILL)
        time.sleep(down)  # the outage
        self.stack.start_process(name)
        self.history.fault("ws-sigkill", f"{name} started again and healthy")
        self._spread(name)

    def _spread(self, name: str) -> None:
        """Every socket went to the other daphne meanwhile; clients come and go, so half of
        them come back through nginx (least_conn), spread over both again (a room's pages on
        both processes is what makes its broadcasts cross Redis)."""
        pages = self.rng.sample(self.pages, len(self.pages) // 2)
        self.history.fault(
            "spread", f"{len(pages)} pages reconnect, spreading over both daphne with {name}"
        )
        for page in pages:
            page.command(Page.drop)

    def _fault_ws_pause(self) -> None:
        """A daphne stops running for a while (SIGSTOP, as a long pause of its host would),
        then goes on where it was."""
        i = self.rng.randrange(2)
        name = self.stack.ws_names[i]
        seconds = self.rng.uniform(2.0, 5.0)
        self.history.fault("ws-pause", f"SIGSTOP {name} for {seconds:.1f}s")
        self.stack.pause_ws(i, seconds)
        self.history.fault("ws-pause", f"SIGCONT {name}")

    def _fault_redis_restart(self) -> None:
        """Redis goes away while a room is busy with long texts: what a process misses of the
        other's broadcasts meanwhile is healed from the database, in batches that can be more
        than one frame holds."""
        down = self.rng.uniform(1.0, 4.0)
        with self.room_lock:
            room = self.rng.choice(sorted(r for r in self.rooms if r != self.busy_room))
            self.redis_room = room
        pages = self.rooms[room]
        self._set_rate(pages, self.o.burst_rate, long_texts=True)
        time.sleep(1.0)  # the room gets busy
        self.history.fault(
            "redis-restart",
            f"Redis killed while room {room} is busy with long texts; down {down:.1f}s",
            room=room,
        )
        self.stack.restart_redis(down)
        self.history.fault("redis-restart", "Redis back (empty)", room=room)
        time.sleep(1.0)
        self._set_rate(pages, self.o.rate)
        self.redis_room = None

    def _fault_pg_restart(self) -> None:
        down = self.rng.uniform(0.5, 4.0)
        self.history.fault("pg-restart", f"Postgres stopped (immediate); down {down:.1f}s")
        self.stack.restart_pg(down)
        self.history.fault("pg-restart", "Postgres back")

    def _fault_disconnect(self) -> None:
        victims = self.rng.sample(self.pages, self.rng.randint(1, 3))
        self.history.fault("disconnect", "network drop under " + ", ".join(p.who for p in victims))
        for page in victims:
            page.command(Page.drop)

    def _fault_slow_reader(self) -> None:
        victims = self.rng.sample(self.pages, self.rng.randint(1, 2))
        seconds = self.rng.uniform(2.0, 6.0)
        self.history.fault(
            "slow-reader", f"{', '.join(p.who for p in victims)} stop reading for {seconds:.1f}s"
        )
        for page in victims:
            page.command(lambda p, s=seconds: p.pause_reading(s))
        time.sleep(seconds)  # the fault's duration

    def _fault_page_reload(self) -> None:
        """Readers reload their pages (F5) while the others type, edit and delete: half of
        them read only the newest page of history, so changes of older messages come to a
        page that does not show them."""
        victims = self.rng.sample(self.pages, self.rng.randint(1, 2))
        self.history.fault("page-reload", f"{', '.join(p.who for p in victims)} reload the page")
        for page in victims:
            page.command(Page.reload_by_reader)

    # --- a page far behind -------------------------------------------------------------------

    def _far_behind_loop(self, end: float) -> None:
        at = self.history.now() + self.behind_rng.uniform(4.0, 8.0)
        while not self.stopping.is_set():
            if self.stopping.wait(max(0.0, at - self.history.now())):
                return
            with self.exclusive:
                if self.stopping.is_set():
                    return
                try:
                    self._far_behind()
                except Exception as exc:  # a stack that could not be driven: reported
                    self.failures.append(Failure("checker", f"far-behind scenario: {exc!r}", "run"))
                    return
            at = self.history.now() + self.behind_rng.uniform(90, 180)
            if at > end - 30:
                return

    def _far_behind(self) -> None:
        rng = self.behind_rng
        with self.room_lock:
            room = rng.choice(sorted(r for r in self.rooms if r != self.redis_room))
            self.busy_room = room
        pages = self.rooms[room]
        victim = rng.choice(pages)
        others = [p for p in pages if p is not victim]
        target = rng.randint(self.o.behind, self.o.behind + 60)
        victim.command(Page.go_offline)
        wait_until(lambda: victim.offline and not victim.open, 10)
        away_at = victim.last_seq
        self.history.fault(
            "far-behind",
            f"{victim.who} offline at seq {away_at}; the others "
            f"of room {room} send {target}+ messages",
            room=room,
        )
        self._set_rate(others, self.o.burst_rate)
        reached = wait_until(
            lambda: max(p.last_seq for p in others) >= away_at + target, max(90.0, target / 3)
        )
        self._set_rate(others, self.o.rate)
        ahead = max(p.last_seq for p in others)
        self.history.fault(
            "far-behind",
            f"{victim.who} back, {ahead - away_at} messages behind (reconnects with "
            f"?after={away_at})" + ("" if reached else f"; wanted {target}"),
            room=room,
            seqs=((away_at + 1, max(ahead, away_at + 1)),),
        )
        self.far_behind.append(f"{victim.who}: {ahead - away_at} behind")
        victim.command(Page.go_online)
        self.busy_room = None

    # --- guests: added, then leaving ---------------------------------------------------------

    def _guest_loop(self) -> None:
        o, rng = self.o, self.guest_rng
        if o.guest_every <= 0 or not self.guests:
            return
        at = self.history.now() + rng.uniform(3.0, 8.0)
        while not self.stopping.wait(max(0.0, at - self.history.now())):
            with self.people_lock:
                if self.stopping.is_set():
                    return
                try:
                    self._guest_visit()
                except Exception as exc:  # a stack that could not be driven: reported
                    self.failures.append(
                        Failure(
                            "checker",
                            f"guest visit: {exc!r}\n" + traceback.format_exc(),
                            "run",
                        )
                    )
                    return
            at = self.history.now() + rng.expovariate(1.0 / o.guest_every)

    def _member(self, room: int, username: str) -> bool:
        return bool(
            self.stack.sql(
                "SELECT 1 FROM chat_participant p JOIN auth_user u ON u.id = p.user_id "
                "WHERE p.conversation_id = %s AND u.username = %s",
                [room, username],
            )
        )

    def _guest_visit(self) -> None:
        """A member adds a guest (POST /c/<id>/add); the guest's page opens, types for a
        while, settles and leaves (POST /c/<id>/leave), and must be closed with 4403 (or
        refused at its next handshake): it is checked no more."""
        rng, o = self.guest_rng, self.o
        options = [
            (room, guest)
            for room in sorted(self.rooms)
            for guest in self.guests
            if not self._member(room, guest)
        ]
        if not options:
            return
        room, guest = rng.choice(options)
        hosts = [p for p in self.rooms[room] if p.dead is None and not p.offline]
        if not hosts:
            return
        host = rng.choice(hosts)
        self.visits += 1
        added = host.add(guest)
        added.done.wait(GIVE_UP_AFTER + 30)
        member = self._member(room, guest)
        self.history.fault(
            "guest",
            f"{host.who} adds {guest} to room {room}: {added.outcome}"
            + ("" if member else "; not a member"),
            room=room,
        )
        if not member:
            return
        page = Page(
            self, guest, PASSWORD, room, self.guests[guest], o.seed, tag=f"visit{self.visits}"
        )
        self.pages = [*self.pages, page]
        page.start()
        if wait_until(lambda: page.open, 60):
            page.command(lambda p: p.set_rate(o.rate))
        self.stopping.wait(rng.uniform(5.0, 15.0))  # the visit; cut short at the end
        page.command(lambda p: p.set_rate(0))
        wait_until(lambda: page.settled or page.dead is not None, o.stall)
        leave = page.leave()
        leave.done.wait(GIVE_UP_AFTER + 30)
        gone = not self._member(room, guest)
        self.history.fault(
            "guest",
            f"{guest} leaves room {room}: {leave.outcome}" + ("" if gone else "; still a member"),
            room=room,
        )
        if not gone:
            return  # still in it: its page stays, checked like any other
        if not wait_until(lambda: page.left is not None, LEFT_WITHIN):
            state = "its socket still open" if page.open else "reconnecting"
            at = self.history.fault("guest", f"{guest}'s page not closed {LEFT_WITHIN:g}s after")
            self.failures.append(
                Failure(
                    "left-open",
                    f"left room {room} (t={leave.done_at or 0:.1f}) but {LEFT_WITHIN:g}s later "
                    f"its page was not closed with 4403 ({state})",
                    "run",
                    who=guest,
                    room=room,
                    t=at.t,
                )
            )
        page.stop()
        self.pages = [p for p in self.pages if p is not page]
        self.gone.append(page)

    # --- backup, checkpoint, restore ---------------------------------------------------------

    def _dump(self):
        path = self.stack.dump()
        seqs = self._db_last_seqs()
        self.history.fault("dump", f"pg_dump while traffic runs (about {seqs})")
        return (path, self.history.now())

    def _restore(self, dump) -> bool:
        """Traffic stops, the pages are checked, writers stop, the dump is restored and
        history_new_epoch run (as `make restore`), writers start; returns whether the
        checkpoint passed."""
        path, dumped_at = dump
        with self.exclusive, self.people_lock:
            n = len(self.restores) + 1
            self._set_rate(self.pages, 0)
            passed = self._checkpoint(f"before restore {n}", self.o.stall)
            if not passed and self.o.stop_at_failure:
                return False
            began = self.history.fault("restore", f"restore {n}: web and daphne stop").t
            self.stack.stop_writers()
            stopped = self.history.now()
            self.history.fault("restore", f"restore {n}: writers stopped in {stopped - began:.1f}s")
            self.stack.restore(path)
            self.history.fault("restore", f"restore {n}: pg_restore and history_new_epoch done")
            db = self.read_db()
            snapshot = {
                row.cid for rows in db.messages.values() for row in rows.values() if row.cid
            }
            self.stack.start_writers()
            ended = self.history.fault(
                "restore",
                f"restore {n}: dump restored (last_seq {db.last_seqs}), "
                f"history_new_epoch {db.epochs}, web and daphne back",
            ).t
            self.restores.append(
                Restore(n, dumped_at, began, stopped, ended, snapshot, db.last_seqs)
            )
            self.epochs = dict(db.epochs)
            self.faults["restore"] += 1
            self._set_rate(self.pages, self.o.rate)
            return passed

    def _checkpoint(self, when: str, stall: float) -> bool:
        """Waits for every page to settle on the database's history (see Options.stall), then
        checks them; True if nothing failed."""
        t = self.history.now()
        converged = self._settle(stall)
        took = self.history.now() - t
        at = self.history.fault(
            "checkpoint",
            f"{when}: "
            + (
                f"every page settled in {took:.1f}s"
                if converged
                else f"not settled after {took:.1f}s ({stall:g}s without progress)"
            ),
        )
        # A socket that has only just opened is either steady or about to close again (a
        # reconnect loop): let it show which.
        wait_until(
            lambda: all(
                not p.open or self.history.now() - (p.opened_at or 0) >= STEADY_SECONDS
                for p in self.pages
            ),
            STEADY_SECONDS + 1,
        )
        db = self.read_db()
        failures = check_pages(self._page_states(), db, when)
        if when == "final":
            failures += check_sends(list(self.sends.values()), db, self.restores, when)
            failures += check_changes(list(self.changes), self.sends, db, self.restores, when)
            failures += check_people(list(self.changes), db, self.restores, when)
        for f in failures:
            f.t = at.t
        known = {(f.kind, f.who, f.room, f.seqs, f.cids) for f in self.failures}
        failures = [f for f in failures if (f.kind, f.who, f.room, f.seqs, f.cids) not in known]
        self.failures += failures
        for f in failures:
            self.say(f"  FAIL [{when}] {f.who or f'room {f.room}'}: {f.summary}")
        return not failures

    def _settle(self, stall: float) -> bool:
        """Waits until the pages have converged; False once nothing moved for `stall` seconds
        (or Options.settle_cap passed)."""
        start = last_move = time.monotonic()
        seen = None
        while True:
            state = self._progress()
            if state is None:
                return True
            if state != seen:
                seen, last_move = state, time.monotonic()
            now = time.monotonic()
            if now - last_move > stall or now - start > self.o.settle_cap:
                return False
            time.sleep(0.25)

    def _progress(self) -> tuple | None:
        """None when every page shows the database's history, settled; otherwise what moves
        when they get there (what they show, what they wait for, what is stored)."""
        try:
            rows = self.stack.sql("SELECT id, epoch, last_seq FROM chat_conversation")
        except Exception:
            return ("database unavailable",)
        if self._converged(rows):
            return None
        # Not whether sockets are open: a page in a reconnect loop opens and closes forever.
        # A busy refusal is an answer: a server past capacity is making progress.
        return (
            tuple(sorted(rows)),
            tuple(
                (p.epoch, len(p.view), p.last_seq, len(p.pending), p.retypes) for p in self.pages
            ),
            sum(s.busy_refusals for s in list(self.sends.values())),
        )

    def _converged(self, rows: list[tuple]) -> bool:
        db = {cid: (epoch, last) for cid, epoch, last in rows}
        for p in self.pages:
            epoch, last = db[p.room]
            if not (p.settled and p.epoch == epoch and p.last_seq == last):
                return False
        return True

    def _page_states(self) -> list[PageState]:
        states = []
        for p in self.pages:
            with p.lock:
                open_for = self.history.now() - p.opened_at if p.open and p.opened_at else 0.0
                states.append(
                    PageState(
                        p.who,
                        p.room,
                        p.epoch,
                        p.last_seq,
                        list(p.view),
                        p.open,
                        p.offline,
                        p.reloading,
                        p.dead,
                        list(p.connections),
                        open_for,
                        p.loaded_upto,
                        p.floor,
                        frozenset(p.seen),
                    )
                )
        return states

    def read_db(self) -> Db:
        conversations = self.stack.sql("SELECT id, epoch, last_seq FROM chat_conversation")
        rows = self.stack.sql(
            "SELECT m.conversation_id, m.seq, m.id, m.kind, u.username, m.sender_id, "
            "m.client_id, m.body, coalesce(m.target_id, 0), m.edited_at IS NOT NULL, "
            "m.deleted_at IS NOT NULL "
            "FROM chat_message m JOIN auth_user u ON u.id = m.sender_id ORDER BY 1, 2"
        )
        # The texts messages had before their edits and deletes, oldest first.
        revisions = self.stack.sql(
            "SELECT m.conversation_id, m.id, m.seq, r.body, m.deleted_at IS NOT NULL "
            "FROM chat_messagerevision r JOIN chat_message m ON m.id = r.message_id "
            "ORDER BY r.message_id, r.replaced_at, r.id"
        )
        originals: dict[int, int] = {}
        deleted_texts: dict[int, dict[int, int]] = {cid: {} for cid, _, _ in conversations}
        for room, pk, seq, body, deleted in revisions:
            originals.setdefault(pk, hash(body))
            if deleted:
                deleted_texts[room][hash(body)] = seq
        messages: dict[int, dict[int, Stored]] = {cid: {} for cid, _, _ in conversations}
        others: dict[int, dict[int, Stored]] = {cid: {} for cid, _, _ in conversations}
        for room, seq, pk, kind, sender, sender_id, cid, body, target, edited, deleted in rows:
            entry = Stored(
                seq,
                pk,
                sender,
                sender_id,
                str(cid) if cid else None,
                hash(body),
                len(body),
                kind,
                target,
                edited,
                deleted,
                originals.get(pk),
            )
            (messages if kind == "message" else others)[room][seq] = entry
        return Db(
            epochs={cid: epoch for cid, epoch, _ in conversations},
            last_seqs={cid: last for cid, _, last in conversations},
            messages=messages,
            others=others,
            deleted_texts=deleted_texts,
        )

    def _db_last_seqs(self) -> dict[int, int]:
        return {
            cid: last
            for cid, _, last in self.stack.sql(
                "SELECT id, epoch, last_seq FROM chat_conversation ORDER BY id"
            )
        }

    # --- the end -----------------------------------------------------------------------------

    def _final(self) -> None:
        fixed = self.stack.ensure_whole()
        self.history.fault(
            "end",
            "faults stop; pages stop typing"
            + (f"; started again: {', '.join(fixed)}" if fixed else ""),
        )
        self._set_rate(self.pages, 0)
        # Once a checkpoint failed, the end is only waited for briefly.
        self._checkpoint("final", self.o.stall if not self.failures else min(self.o.stall, 10.0))
        for page in [*self.pages, *self.gone]:
            if page.crashed is not None:
                self.failures.append(
                    Failure(
                        "checker",
                        f"page {page.who} crashed: {page.crashed!r}",
                        "final",
                        who=page.who,
                    )
                )

    def _stats(self) -> dict:
        sends = list(self.sends.values())
        return {
            "sent": len(sends),
            "confirmed": sum(1 for s in sends if s.confirmed),
            "refused_for_good": sum(1 for s in sends if s.refused),
            "busy_refusals": sum(s.busy_refusals for s in sends),
            "chars": sum(s.length for s in sends),
            "faults": dict(self.faults),
            "far_behind": list(self.far_behind),
            "restores": len(self.restores),
            "changes": {
                kind: dict(Counter(c.outcome for c in self.changes if c.kind == kind))
                for kind in ("edit", "delete", "add", "leave")
            },
            "left": sum(1 for p in self.gone if p.left),
            "orphan_changes": sum(p.orphans for p in [*self.pages, *self.gone]),
            "shallow_loads": sum(
                1
                for e in self.history.events
                if e.kind == "loaded" and "not scrolled back" in e.text
            ),
        }

    # --- the report --------------------------------------------------------------------------

    def _report(self, stats: dict, errors: dict) -> str:
        o = self.o
        verdict = "PASS" if not self.failures else f"FAIL ({len(self.failures)} failures)"
        repro = (
            f"python -m loadtest.checker --seed {o.seed} --runtime {o.runtime} "
            f"--seconds {o.seconds:g}"
        )
        lines = [
            f"=== parley delivery checker: {verdict}; seed {o.seed}, {o.runtime} runtime",
            f"reproduce: {repro}",
        ]
        if stats:
            faults = ", ".join(f"{k} x{v}" for k, v in sorted(stats["faults"].items()))
            lines += [
                f"sent {stats['sent']} messages ({stats['chars']} characters), confirmed "
                f"{stats['confirmed']}, refused for good {stats['refused_for_good']}, "
                f"busy refusals {stats['busy_refusals']}; run {stats.get('seconds', 0):g} s",
                f"faults: {faults or 'none'}",
                f"far behind: {'; '.join(stats['far_behind']) or 'none'}",
                "changes: "
                + "; ".join(
                    f"{kind} {sum(outcomes.values())}"
                    + (
                        " (" + ", ".join(f"{o} {n}" for o, n in sorted(outcomes.items())) + ")"
                        if outcomes
                        else ""
                    )
                    for kind, outcomes in stats["changes"].items()
                )
                + f"; pages closed with 4403 after leaving {stats['left']}; changes of "
                f"messages a page did not show {stats['orphan_changes']}; page loads not "
                f"scrolled back {stats['shallow_loads']}",
            ]
        if errors:
            lines.append("server log errors:")
            for name, counts in errors.items():
                for (msg, exc), n in counts.most_common(5):
                    lines.append(f"  {name}: {n} x {msg}" + (f" [{exc}]" if exc else ""))
        if not self.failures:
            return "\n".join(lines)
        lines.append("")
        lines.append("failures:")
        for i, f in enumerate(self.failures, 1):
            where = f.who or (f"room {f.room}" if f.room else "run")
            lines.append(
                f"  {i}. [{f.when}] {where}"
                + (f" (room {f.room})" if f.who else "")
                + f": {f.kind}: {f.summary}"
            )
        for group, alike in self._groups():
            lines.append("")
            lines += self._minimal_history(group, alike)
        lines.append("")
        lines.append(f"seed {o.seed}; reproduce: {repro}")
        return "\n".join(lines)

    def _groups(self) -> list[tuple[list[Failure], list[str]]]:
        """Failures of the same member (or conversation), one history each; members of a room
        whose failures are the same (kinds and sequence numbers) share one: (the first one's
        failures, the others' names)."""
        by_who: dict[tuple, list[Failure]] = {}
        for f in self.failures:
            if f.kind == "checker":
                continue
            by_who.setdefault((f.who, f.room), []).append(f)
        shared: dict[tuple, tuple[list[Failure], list[str]]] = {}
        for (who, room), failures in by_who.items():
            same = (room, tuple(sorted((f.when, f.kind, f.seqs) for f in failures)))
            if who and same in shared and not any(f.cids for f in failures):
                shared[same][1].append(who)
            else:
                shared[same if who else (who, room)] = (failures, [])
        return list(shared.values())

    def _minimal_history(self, group: list[Failure], alike: list[str]) -> list[str]:
        """The events that concern these failures: the member's own (connections, reloads,
        frames carrying their sequence numbers), the sends of those sequence numbers, and the
        faults meanwhile."""
        who, room = group[0].who, group[0].room
        seqs = tuple(r for f in group for r in f.seqs)
        cids = {c for f in group for c in f.cids}
        epoch = group[0].epoch
        events = self.history.events
        # What stored and carried those sequence numbers in the history they are missing
        # from (the conversation's current epoch).
        about = [
            e
            for e in events
            if e.room == room
            and (
                (seqs and e.seqs and overlaps(e.seqs, seqs) and (not e.epoch or e.epoch == epoch))
                or (cids and set(e.cids) & cids)
            )
        ]
        mine = [e for e in events if who and e.who == who]
        about_ids = {id(e) for e in about}
        t_from = min((e.t for e in about), default=min((e.t for e in mine), default=0.0)) - 5
        t_to = max(f.t for f in group)  # up to the checkpoint that found them
        keep: list[Event] = []
        others: dict[str, list[Event]] = {}
        send_kinds = ("send", "refused", "refused-busy", "confirmed", "resend")
        # The failing sends' own events always; the sends of the failing sequence numbers
        # one by one when they are few, in one summary line when they are many.
        named = {id(e) for e in about if cids and set(e.cids) & cids}
        sends = [e for e in about if e.kind in send_kinds and id(e) not in named]
        list_sends = len({e.cids for e in sends}) <= 12
        for e in events:
            if (e.t < t_from and not (e.fault and e.kind == "dump")) or e.t > t_to:
                continue
            if e.fault or id(e) in named:
                keep.append(e)
            elif id(e) in about_ids and e.kind in send_kinds:
                if list_sends:
                    keep.append(e)
            elif e.who == who and (
                e.kind in LIFECYCLE or id(e) in about_ids or e.kind in ("error", "crash")
            ):
                keep.append(e)
            elif id(e) in about_ids and e.kind in ("frame", "gap"):
                others.setdefault(e.who, []).append(e)
        keep.sort(key=lambda e: e.t)
        title = who or f"room {room}"
        if alike:
            title += f" (and {', '.join(alike)}: the same failures)"
        seqs = ranges(s for a, b in seqs for s in range(a, b + 1))
        head = (
            f"minimal history of {title} (room {room}, epoch {epoch}"
            + (f", seqs {fmt_ranges(seqs)}" if seqs else "")
            + (f", client_ids {', '.join(c[:8] for c in sorted(cids))}" if cids else "")
            + "):"
        )
        lines = [head]
        if not list_sends:
            confirmed = [e for e in sends if e.kind == "confirmed"]
            by = Counter(e.who for e in confirmed)
            if confirmed:
                lines.append(
                    f"  those {len(confirmed)} messages were stored between t={confirmed[0].t:.2f}"
                    f" and t={confirmed[-1].t:.2f}, sent by "
                    + ", ".join(f"{w} ({n})" for w, n in sorted(by.items()))
                )
        lines += ["  " + line for line in collapse(keep, limit=60)]
        if others:
            lines.append("  the same sequence numbers at the other pages of the room:")
            for other, evs in sorted(others.items()):
                if other == who:
                    continue
                gaps = [e for e in evs if e.kind == "gap"]
                frames = [e for e in evs if e.kind == "frame"]
                lines.append(
                    f"    {other}: {len(frames)} frames carried them"
                    + (f", {len(gaps)} gaps:" if gaps else "")
                )
                lines += ["      " + fmt_event(e) for e in gaps[:5]]
        return lines


def run(options: Options) -> Result:
    return Run(options).execute()


def run_each_runtime(options: Options, runtimes: list[str]) -> list[Result]:
    """One run per runtime, at the same time, each on its own stack (ports 10 apart) with
    the same seed; their progress lines carry the runtime's name."""
    if len(runtimes) == 1:
        name = f"{options.name}-{runtimes[0]}"
        return [run(dataclasses.replace(options, runtime=runtimes[0], name=name))]
    results: dict[str, Result] = {}

    def one(i: int, runtime: str) -> None:
        results[runtime] = run(
            dataclasses.replace(
                options,
                runtime=runtime,
                port_base=options.port_base + 10 * i,
                name=f"{options.name}-{runtime}",
                prefix=f"[{runtime}] ",
            )
        )

    threads = [
        threading.Thread(target=one, args=(i, r), name=f"checker-{r}")
        for i, r in enumerate(runtimes)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results[r] for r in runtimes]
