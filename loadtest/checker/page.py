"""One member's conversation page, behaving as src/chat/static/chat/chat.js (with the HTMX
websocket extension) makes a browser behave. Each page is a thread with its own event queue;
each connection has a reader thread that only reads frames and hands them over.

What the page does, rule by rule as chat.js does it:

- It keeps the last sequence it rendered (`last_seq`) and the history epoch of the page
  (`#chat[data-epoch]`), and connects to `/ws/chat/<id>?after=<last_seq>&epoch=<epoch>`.
- A message whose sequence is at or below `last_seq` (or whose element id it already shows)
  is dropped; any other is appended (so one that skips ahead leaves a hole behind it).
- After a close with 1006, 1011, 1012 or 1013 (or a handshake that failed, which a browser
  sees as 1006) it reconnects after `random() * min(8 s, 0.5 s * 2^retries)`; `retries`
  starts again at 0 when a socket opens. Any other close is final.
- Every send has a client_id. Unconfirmed sends are sent again, same client_id, whenever a
  socket opens. A send refused with `data-retry-after` is sent again after that delay,
  doubling per refusal (capped at 30 s, half of it jittered), same client_id. A send refused
  without it is given back to the person, who sends the text again as a new message.
- An edit or a delete comes as the message as it now is, with the change's own number in
  `data-update-seq`: at or below `last_seq` it is dropped; else `last_seq` becomes that
  number and the message replaces the one with its element id where the page shows it (a
  page that does not show it, its history not loaded that far back, only moves on). A change
  of people ("alice added bob") is an entry like a message.
- Any `#chat-reset` fragment means "reload": the page is fetched again over HTTP (GET
  /c/<id>, then, most times, every older page through "Load older messages", as a reader
  scrolling back would; sometimes only the newest page), the view rebuilt from it, epoch and
  last sequence taken from it, unconfirmed sends that the reloaded page already shows are
  confirmed, and it reconnects.

Besides typing, its owner now and then edits or deletes one of their own recent messages,
adds someone (the run asks), or leaves (a guest's page, asked by the run): POSTs over HTTP
on a thread of their own (`actions.Actor`), one at a time, retried as a person would. A page
that left expects its socket to close with 4403 and is checked no more.

The page's `view` is what it shows: (sequence, element id, sender, client_id, body hash) in
display order. It is what the checker compares with the database.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

import requests
import websocket

from loadtest.checker import fragments
from loadtest.checker.actions import Actor, Change
from loadtest.checker.history import History, fmt_ranges, ranges

if TYPE_CHECKING:
    from loadtest.checker.run import Run

RECONNECT_CODES = {1006, 1011, 1012, 1013}
RECONNECT_CAP = 8.0  # chat.js RECONNECT_CAP_MS
RECONNECT_BASE = 0.5
RETRY_CAP = 30.0  # chat.js RETRY_CAP_MS
READ_MARKER_DELAY = 0.5  # chat.js scheduleRead
RETYPE_LIMIT = 3  # a text given back is sent again at most this many times
RCVBUF = 64 * 1024  # small, so a page that stops reading holds back nginx and daphne soon
HTTP_TIMEOUT = 15.0
CLOSE_FORBIDDEN = 4403  # no longer a participant
EDIT_WITHIN = 600.0  # own messages sent this recently are edited (CHAT_EDIT_WINDOW_SECONDS 900)


@dataclass(slots=True)
class Send:
    """One message a page sent (under one client_id)."""

    cid: str
    who: str
    room: int
    body: str | None  # dropped once it is settled (confirmed or refused)
    body_hash: int
    length: int
    t: float  # when it was typed (history time)
    retype_of: str | None = None
    generation: int = 0
    sends: int = 0  # frames that carried it
    busy_refusals: int = 0
    confirmed: tuple[float, int, str] | None = None  # (received at, seq, page epoch)
    refused: tuple[float, str] | None = None  # refused for good: (at, text)
    abandoned: bool = False  # still unsent when its page left the conversation


@dataclass(slots=True)
class ViewEntry:
    seq: int
    dom_id: str
    sender_id: int
    cid: str | None
    body_hash: int
    length: int
    kind: str = "message"  # or a change of people: added, left, removed
    edited: bool = False
    deleted: bool = False

    @classmethod
    def of(cls, a: fragments.Article) -> ViewEntry:
        return cls(
            a.seq,
            a.dom_id,
            a.sender_id,
            a.cid,
            hash(a.body),
            len(a.body),
            a.kind,
            a.edited,
            a.deleted,
        )


@dataclass(slots=True)
class Conn:
    gen: int
    ws: websocket.WebSocket
    paused_until: float = 0.0  # monotonic: the reader does not read before then
    pause: threading.Event = field(default_factory=threading.Event)


class Page(threading.Thread):
    def __init__(
        self,
        run: Run,
        username: str,
        password: str,
        room: int,
        session: requests.Session,
        seed: int,
        tag: str = "",
    ) -> None:
        """`tag`: a guest's visit, so that each visit of one person draws anew."""
        super().__init__(name=f"page-{username}", daemon=True)
        self.run_ = run
        self.who = username
        self.password = password
        self.room = room
        self.http = session
        self.cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.get_dict().items())
        self.rng = random.Random(f"{seed}:{username}" + (f":{tag}" if tag else ""))
        self.history: History = run.history
        self.inbox: queue.Queue = queue.Queue()
        self.timers: list[tuple[float, int, str, object]] = []
        self.counter = itertools.count()
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        # What the page shows and where it is.
        self.view: list[ViewEntry] = []
        self.dom_ids: set[str] = set()
        self.last_seq = 0
        self.epoch = ""
        # Where the last load left the page: everything up to `loaded_upto` was in it (a
        # change of a message as the message shows it), entries from `floor` on shown (0:
        # all of the history, scrolled back to the first); `seen`, the numbers the socket
        # brought since (messages and changes).
        self.loaded_upto = 0
        self.floor = 0
        self.seen: set[int] = set()
        self.orphans = 0  # changes of a message the page does not show: moved on past
        # Edits, deletes, adds and leaving: one at a time, on the actor's thread.
        self.actor = Actor(
            getattr(run, "base_url", ""),
            getattr(run, "origin", ""),
            session,
            f"{seed}:{username}:{tag}:actor",
        )
        self.acts: queue.Queue = queue.Queue()
        self.inflight = 0  # changes queued or being made
        self.changing = False  # an edit or a delete of its own is being made
        self.leaving = False
        self.left: str | None = None  # how its socket ended once it left (4403 expected)
        self.pending: dict[str, Send] = {}  # unconfirmed sends, in the order typed
        self.retypes = 0  # texts given back, waiting to be sent again
        self.read_sent = 0
        self.read_due = False
        # The socket.
        self.conn: Conn | None = None
        self.gen = 0
        self.open = False
        self.retries = 0
        self.reconnect_due = False
        self.reloading = False
        self.offline = False
        self.dead: str | None = None  # closed for good (a 4xxx or other final close)
        # Each connection: (opened at, or None if the handshake failed; ended at; close code).
        self.connections: list[tuple[float | None, float, int]] = []
        self.opened_at: float | None = None
        # Traffic: messages per second this page types (0: none), and its counter.
        self.rate = 0.0
        self.long_texts = False
        self.typed = 0
        self.typing_due = False
        self.crashed: BaseException | None = None

    # --- the thread --------------------------------------------------------------------------

    def run(self) -> None:
        threading.Thread(target=self._act_loop, daemon=True, name=f"act-{self.who}").start()
        try:
            self._reload("first load")
            while not self.stopping.is_set():
                self._fire_timers()
                wait = self._next_timer_in()
                try:
                    event = self.inbox.get(timeout=wait)
                except queue.Empty:
                    continue
                self._handle(event)
        except BaseException as exc:  # a checker bug: the run reports it
            self.crashed = exc
            self.history.add(self.who, "crash", repr(exc), room=self.room)
            raise
        finally:
            self._close_conn(1001)

    def command(self, fn: Callable[[Page], None]) -> None:
        """Runs fn(page) on the page's thread (faults and traffic changes)."""
        self.inbox.put(("cmd", fn))

    def stop(self) -> None:
        self.stopping.set()
        self.inbox.put(("stop",))
        self.acts.put(None)

    def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "frame":
            _, gen, t, text = event
            if gen == self.gen:
                self._on_frame(t, text)
        elif kind == "closed":
            _, gen, t, code = event
            if gen == self.gen:
                self._on_close(t, code)
        elif kind == "cmd":
            event[1](self)

    # --- timers ------------------------------------------------------------------------------

    def _after(self, seconds: float, what: str, arg: object = None) -> None:
        heapq.heappush(self.timers, (time.monotonic() + seconds, next(self.counter), what, arg))

    def _next_timer_in(self) -> float:
        if not self.timers:
            return 0.5
        return max(0.0, min(0.5, self.timers[0][0] - time.monotonic()))

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now and not self.stopping.is_set():
            _, _, what, arg = heapq.heappop(self.timers)
            if what == "reconnect":
                if arg == self.gen and self.reconnect_due and not self.offline:
                    self.reconnect_due = False
                    self._connect()
            elif what == "type":
                if arg == self.typed:
                    self._type()
            elif what == "retry":
                send = self.pending.get(arg)  # type: ignore[arg-type]
                if send is not None and self.open:
                    self._transmit(send, "retry after busy")
            elif what == "retype":
                self.retypes -= 1
                if not self.leaving:  # a person who left does not type it again
                    self._new_send(arg)  # type: ignore[arg-type]
            elif what == "read":
                self.read_due = False
                if self.open and self.last_seq > self.read_sent:
                    self.read_sent = self.last_seq
                    self._ws_send({"type": "read", "seq": self.last_seq})

    # --- traffic -----------------------------------------------------------------------------

    def set_rate(self, rate: float, long_texts: bool = False) -> None:
        """Messages per second this page types from now on (0: it stops typing); long_texts:
        only texts of the maximum length."""
        self.rate = rate
        self.long_texts = long_texts
        self.typed += 1  # the timer of the old rate is void
        if rate > 0 and not self.offline:
            self._after(self.rng.expovariate(rate), "type", self.typed)

    def _type(self) -> None:
        # While "Reconnecting…" a person may type a message or two, not a burst's worth.
        if (
            self.rate > 0
            and not self.offline
            and self.dead is None
            and (self.open or len(self.pending) < 2)
        ):
            if self.open and self.rng.random() < 0.2:
                self._ws_send({"type": "typing"})
            o = self.run_.o
            roll = self.rng.random()
            if not (roll < o.edit_p + o.delete_p and self._change_own(roll < o.edit_p)):
                self._new_send(self.run_.bodies.body(self.rng, self.who, self.long_texts))
        if self.rate > 0:
            self.typed += 1
            self._after(self.rng.expovariate(self.rate), "type", self.typed)

    def _new_send(self, body: str | tuple[str, Send]) -> None:
        retype_of = None
        generation = 0
        if isinstance(body, tuple):
            body, original = body
            retype_of, generation = original.cid, original.generation + 1
        cid = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        send = Send(
            cid=cid,
            who=self.who,
            room=self.room,
            body=body,
            body_hash=hash(body),
            length=len(body),
            t=self.history.now(),
            retype_of=retype_of,
            generation=generation,
        )
        self.run_.register(send)
        self.pending[cid] = send
        text = f"{cid[:8]} {len(body)} chars, {len(body.encode())} bytes"
        if retype_of:
            text += f" (the text of {retype_of[:8]}, given back, sent again)"
        self.history.add(self.who, "send", text, room=self.room, cids=[cid])
        if self.open:
            self._transmit(send, None)

    def _transmit(self, send: Send, why: str | None) -> None:
        assert send.body is not None
        send.sends += 1
        if why:
            self.history.add(
                self.who, "resend", f"{send.cid[:8]} ({why})", room=self.room, cids=[send.cid]
            )
        payload = {"chat_message": send.body, "client_id": send.cid}
        if why is None:  # the form's own send carries the HTMX headers
            payload["HEADERS"] = {
                "HX-Request": "true",
                "HX-Trigger": "message-form",
                "HX-Current-URL": f"/c/{self.room}",
            }
        self._ws_send(payload)

    def _ws_send(self, payload: dict) -> None:
        conn = self.conn
        if conn is None:
            return
        # A send that fails: the reader sees the connection end and says so.
        with contextlib.suppress(OSError, websocket.WebSocketException):
            conn.ws.send(json.dumps(payload))

    # --- edits, deletes, adds, leaving -------------------------------------------------------

    def _change_own(self, edit: bool) -> bool:
        """Edits (or deletes) one of the owner's own messages the page shows, most times one
        of the last few; False when there is none to change (the turn sends a message)."""
        run = self.run_
        if (
            self.changing
            or self.reloading
            or not self.open
            or self.leaving
            or run.epochs.get(self.room) != self.epoch  # a restore the page has not seen yet
        ):
            return False
        now = self.history.now()
        own = []
        for v in self.view:
            send = run.sends.get(v.cid) if v.cid else None
            if (
                v.kind == "message"
                and not v.deleted
                and send is not None
                and send.who == self.who
                and now - send.t < EDIT_WITHIN
            ):
                own.append(v)
        if not own:
            return False
        target = self.rng.choice(own[-5:] if self.rng.random() < 0.8 else own)
        pk = int(target.dom_id.removeprefix("msg-"))
        change = Change(
            "edit" if edit else "delete",
            self.who,
            self.room,
            now,
            pk=pk,
            seq=target.seq,
            cid=target.cid,
            epoch=self.epoch,
        )
        data: dict = {}
        if edit:
            body = run.bodies.body(self.rng, self.who)
            change.body_hash, change.length = hash(body), len(body)
            data["chat_message"] = body
        self.changing = True
        self._queue_change(change, f"/c/{self.room}/m/{pk}/{change.kind}", data)
        return True

    def add(self, guest: str) -> Change:
        """The owner adds `guest` to the conversation (POST /c/<id>/add); from any thread."""
        change = Change("add", self.who, self.room, self.history.now(), guest=guest)
        self.command(lambda p: p._queue_change(change, f"/c/{p.room}/add", {"usernames": guest}))
        return change

    def leave(self) -> Change:
        """The owner leaves the conversation (POST /c/<id>/leave); from any thread. From then
        on a close with 4403 (or a refused handshake, or a page gone) is the end it expects;
        whatever it had not sent yet is abandoned."""
        change = Change("leave", self.who, self.room, self.history.now(), guest=self.who)

        def go(p: Page) -> None:
            p.leaving = True
            p.rate = 0
            p.typed += 1
            for send in p.pending.values():
                send.abandoned = True
            p._queue_change(change, f"/c/{p.room}/leave", {})

        self.command(go)
        return change

    def _queue_change(self, change: Change, path: str, data: dict) -> None:
        self.run_.register_change(change)
        self.inflight += 1
        self.history.add(
            self.who,
            change.kind,
            change.describe(),
            room=self.room,
            epoch=self.epoch,
            seqs=((change.seq, change.seq),) if change.seq else (),
            cids=[change.cid] if change.cid else [],
        )
        self.acts.put((change, path, data))

    def _act_loop(self) -> None:
        """The actor's thread: each change's POST, retried, in the order made."""
        while True:
            item = self.acts.get()
            if item is None:
                return
            change, path, data = item
            try:
                self.actor.post(change, path, data, self.stopping)
            except Exception as exc:  # a checker bug: reported with the change
                change.outcome = "unknown"
                change.statuses.append(repr(exc))
            change.done_at = self.history.now()
            self.history.add(
                self.who,
                f"{change.kind}-{change.outcome}",
                f"{change.describe()}: {change.outcome} after {change.attempts} attempts "
                f"({', '.join(change.statuses[-3:])})",
                room=self.room,
                epoch=change.epoch,
                seqs=((change.seq, change.seq),) if change.seq else (),
                cids=[change.cid] if change.cid else [],
            )
            change.done.set()
            self.command(lambda p, c=change: p._change_done(c))

    def _change_done(self, change: Change) -> None:
        self.inflight -= 1
        if change.kind in ("edit", "delete"):
            self.changing = False
        if change.kind == "leave" and change.outcome == "refused":
            self.leaving = False  # still in it: the page goes on as before

    def _left(self, how: str, t: float) -> None:
        self.left = self.dead = how
        self.history.add(self.who, "left", f"{how}: the page is closed", room=self.room, t=t)

    # --- the socket --------------------------------------------------------------------------

    def _connect(self) -> None:
        if self.stopping.is_set() or self.offline or self.dead is not None:
            return
        self.gen += 1
        gen = self.gen
        path = f"/ws/chat/{self.room}?after={self.last_seq}&epoch={quote(self.epoch)}"
        self.history.add(
            self.who,
            "connect",
            f"?after={self.last_seq}&epoch={self.epoch}",
            room=self.room,
            epoch=self.epoch,
        )
        try:
            ws = websocket.create_connection(
                self.run_.ws_base + path,
                cookie=self.cookie,
                origin=self.run_.origin,
                timeout=10,
                enable_multithread=True,
                sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF),),
            )
        except (OSError, websocket.WebSocketException) as exc:
            status = getattr(exc, "status_code", None)
            why = f"HTTP {status}" if status else type(exc).__name__
            self.history.add(
                self.who, "connect-failed", f"{why} (a browser sees 1006)", room=self.room
            )
            if self.leaving and status == 403:
                self._left("handshake refused (403) after leaving", self.history.now())
                return
            self._on_close(self.history.now(), 1006)
            return
        ws.settimeout(None)
        conn = Conn(gen, ws)
        self.conn = conn
        self.open = True
        self.retries = 0
        self.opened_at = self.history.now()
        self.history.add(
            self.who, "open", f"after={self.last_seq}", room=self.room, epoch=self.epoch
        )
        threading.Thread(
            target=self._read, args=(conn,), daemon=True, name=f"read-{self.who}-{gen}"
        ).start()
        for send in list(self.pending.values()):
            self._transmit(send, "socket opened")

    def _read(self, conn: Conn) -> None:
        """The reader: frames and the close, stamped with when they arrived."""
        code = 1006
        ws = conn.ws
        try:
            while True:
                while (left := conn.paused_until - time.monotonic()) > 0:
                    conn.pause.wait(left)  # a slow reader: the socket is not read meanwhile
                opcode, frame = ws.recv_data_frame(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else 1005
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.inbox.put(
                        ("frame", conn.gen, self.history.now(), frame.data.decode("utf-8"))
                    )
        except (OSError, websocket.WebSocketException, ValueError):
            pass  # no close frame: 1006
        finally:
            with contextlib.suppress(Exception):  # already gone
                ws.shutdown()
            self.inbox.put(("closed", conn.gen, self.history.now(), code))

    def _on_close(self, t: float, code: int) -> None:
        opened = self.opened_at if self.open else None
        self.conn = None
        self.open = False
        self.connections.append((opened, t, code))
        if self.offline or self.stopping.is_set():
            self.history.add(self.who, "close", f"{code}", room=self.room, t=t)
            return
        if code == CLOSE_FORBIDDEN and self.leaving:
            self._left("closed with 4403 after leaving", t)
            return
        if code in RECONNECT_CODES:
            delay = self.rng.random() * min(RECONNECT_CAP, RECONNECT_BASE * 2**self.retries)
            self.retries += 1
            self.reconnect_due = True
            self._after(delay, "reconnect", self.gen)
            self.history.add(
                self.who, "close", f"{code}, reconnect in {delay:.1f}s", room=self.room, t=t
            )
        else:
            self.dead = f"closed with {code}"
            self.history.add(
                self.who, "dead", f"closed with {code}: final, chat.js stops", room=self.room, t=t
            )

    def _close_conn(self, status: int) -> None:
        """The page drops its socket itself (a reload, going offline, the end)."""
        conn, self.conn = self.conn, None
        self.open = False
        self.gen += 1  # what the old socket still reports is not this page's any more
        if conn is None:
            return
        conn.paused_until = 0
        conn.pause.set()
        try:
            if status == 1006:
                conn.ws.sock.shutdown(socket.SHUT_RDWR)  # the network went away
            else:
                conn.ws.send_close(status)
                conn.ws.shutdown()
        except Exception:  # noqa: S110 (already gone)
            pass

    # --- frames ------------------------------------------------------------------------------

    def _on_frame(self, t: float, text: str) -> None:
        frame = fragments.parse_frame(text)
        size = len(text.encode())
        if frame.reset is not None:
            reason = frame.reset.get("data-reason")
            self.history.add(
                self.who,
                "reset",
                f"chat-reset epoch={frame.reset.get('data-epoch')}"
                + (f" reason={reason}" if reason else "")
                + f" (page epoch {self.epoch})",
                room=self.room,
                epoch=self.epoch,
                t=t,
            )
            self._reload("chat-reset")
            return
        accepted, dropped, jumps, orphans = [], [], [], []
        with self.lock:
            for a in frame.articles:
                if a.update_seq is not None:  # an edit or a delete
                    u = a.update_seq
                    if u <= self.last_seq:
                        dropped.append(u)
                        continue
                    if u != self.last_seq + 1:
                        jumps.append((self.last_seq, u))
                    self.last_seq = u
                    self.seen.add(u)
                    accepted.append(u)
                    if not self._replace(ViewEntry.of(a)):
                        orphans.append(u)
                    continue
                # A send is confirmed by any copy of its message, shown or not (chat.js).
                send = self.pending.pop(a.cid, None) if a.cid else None
                if send is not None:
                    self._settle(send, confirmed=(t, a.seq, self.epoch))
                if a.seq <= self.last_seq or a.dom_id in self.dom_ids:
                    dropped.append(a.seq)
                    continue
                if a.seq != self.last_seq + 1:
                    jumps.append((self.last_seq, a.seq))
                self.last_seq = a.seq
                self.seen.add(a.seq)
                self.view.append(ViewEntry.of(a))
                self.dom_ids.add(a.dom_id)
                accepted.append(a.seq)
            for cid in frame.confirms:  # stored, above what the page shows or below it
                send = self.pending.pop(cid, None)
                if send is not None:
                    self._settle(send, confirmed=(t, 0, self.epoch))
            self.orphans += len(orphans)
        if frame.articles:
            text_ = (
                f"{len(frame.articles)} msgs, {size} bytes: shown {fmt_ranges(ranges(accepted))}"
            )
            if dropped:
                text_ += f", dropped as seen {fmt_ranges(ranges(dropped))}"
            if orphans:
                text_ += f", changes of messages it does not show {fmt_ranges(ranges(orphans))}"
            self.history.add(
                self.who,
                "frame",
                text_,
                room=self.room,
                epoch=self.epoch,
                seqs=ranges(accepted + dropped),
                t=t,
            )
        for before, seq in jumps:
            self.history.add(
                self.who,
                "gap",
                f"shown {seq} right after {before}: {before + 1}-{seq - 1} never shown",
                room=self.room,
                epoch=self.epoch,
                seqs=((before + 1, seq - 1),),
                t=t,
            )
        if frame.confirms:
            self.history.add(
                self.who, "confirms", f"{len(frame.confirms)} sends stored", room=self.room, t=t
            )
        if accepted and not self.read_due:
            self.read_due = True
            self._after(READ_MARKER_DELAY, "read")
        for err in frame.errors:
            self._on_error(t, err)

    def _replace(self, entry: ViewEntry) -> bool:
        """The message with this element id, where the page shows it, becomes `entry`."""
        if entry.dom_id in self.dom_ids:
            for i in range(len(self.view) - 1, -1, -1):
                if self.view[i].dom_id == entry.dom_id:
                    self.view[i] = entry
                    return True
        return False

    def _on_error(self, t: float, err: fragments.Error) -> None:
        send = self.pending.get(err.cid) if err.cid else None
        if send is None:
            self.history.add(
                self.who,
                "error",
                f"{err.text!r} cid={err.cid}",
                room=self.room,
                cids=[err.cid] if err.cid else [],
                t=t,
            )
            return
        if err.retry_after is not None:
            send.busy_refusals += 1
            base = min(RETRY_CAP, err.retry_after * 2 ** (send.busy_refusals - 1))
            delay = base / 2 + self.rng.random() * base / 2
            self.history.add(
                self.who,
                "refused-busy",
                f"{send.cid[:8]} retry-after={err.retry_after:g}: again in {delay:.1f}s",
                room=self.room,
                cids=[send.cid],
                t=t,
            )
            self._after(delay, "retry", send.cid)
            return
        del self.pending[send.cid]
        body = send.body
        self._settle(send, refused=(t, err.text))
        self.history.add(
            self.who,
            "refused",
            f"{send.cid[:8]} for good: {err.text!r}",
            room=self.room,
            cids=[send.cid],
            t=t,
        )
        if body is not None and send.generation < RETYPE_LIMIT:
            self.retypes += 1
            self._after(1 + self.rng.random() * 2, "retype", (body, send))

    def _settle(self, send: Send, *, confirmed=None, refused=None) -> None:
        if confirmed is not None:
            send.confirmed = confirmed
            t, seq, epoch = confirmed
            self.history.add(
                self.who,
                "confirmed",
                f"{send.cid[:8]} stored as seq {seq}",
                room=self.room,
                epoch=epoch,
                seqs=((seq, seq),),
                cids=[send.cid],
                t=t,
            )
        if refused is not None:
            send.refused = refused
        send.body = None

    # --- reload ------------------------------------------------------------------------------

    def _reload(self, why: str, shallow: float | None = None) -> None:
        """What window.location.reload() amounts to: the socket goes, the page is fetched
        and read to its first message, the socket comes back."""
        self.reloading = True
        self._close_conn(1001)
        self.history.add(self.who, "reload", why, room=self.room, epoch=self.epoch)
        attempt = 0
        while not self.stopping.is_set():
            started = self.history.now()
            try:
                view, epoch, last_seq, pages, floor = self._fetch_history(shallow)
                break
            except (requests.RequestException, fragments.PageError, LoadError) as exc:
                if self.leaving and isinstance(exc, LoadError) and exc.status == 404:
                    self._left("its page is gone (404) after leaving", self.history.now())
                    self.reloading = False
                    return
                attempt += 1
                delay = 0.2 + self.rng.random() * min(RECONNECT_CAP, RECONNECT_BASE * 2**attempt)
                self.history.add(
                    self.who, "load-failed", f"{exc}; reloading in {delay:.1f}s", room=self.room
                )
                if self.stopping.wait(delay):
                    return
        else:
            return
        with self.lock:
            self.view = view
            self.dom_ids = {v.dom_id for v in view}
            self.last_seq = last_seq
            self.epoch = epoch
            self.loaded_upto = last_seq
            self.floor = floor
            self.seen = set()
            self.read_sent = last_seq  # opening the page marks it read
            shown = {v.cid: v for v in view if v.cid}
            # Confirmed as of when the page was asked for (what it shows was stored by then).
            for cid in [c for c in self.pending if c in shown]:
                self._settle(self.pending.pop(cid), confirmed=(started, shown[cid].seq, epoch))
        self.history.add(
            self.who,
            "loaded",
            f"epoch={epoch} last_seq={last_seq}, {len(view)} msgs in {pages} pages"
            + (f" (not scrolled back: shows from seq {floor} on)" if floor else ""),
            room=self.room,
            epoch=epoch,
        )
        self.reloading = False
        self._connect()

    def _fetch_history(
        self, shallow: float | None = None
    ) -> tuple[list[ViewEntry], str, int, int, int]:
        """(view, epoch, last_seq, pages read, floor): `floor` is the first sequence shown
        when the reader did not scroll back to the start (0 when they did)."""
        base = self.run_.base_url
        page = self._get(f"{base}/c/{self.room}", conversation=True)
        chunks = [page.articles]
        older = page.older_url
        pages = 1
        if shallow is None:
            shallow = getattr(getattr(self.run_, "o", None), "shallow", 0.0)
        floor = 0
        if older and page.articles and self.rng.random() < shallow:
            floor, older = page.articles[0].seq, None
        while older:
            part = self._get(base + older, conversation=False)
            chunks.append(part.articles)
            older = part.older_url
            pages += 1
        view = [ViewEntry.of(a) for chunk in reversed(chunks) for a in chunk]
        assert page.epoch is not None and page.last_seq is not None
        return view, page.epoch, page.last_seq, pages, floor

    def _get(self, url: str, conversation: bool) -> fragments.Page:
        response = self.http.get(url, timeout=HTTP_TIMEOUT, allow_redirects=False)
        if response.status_code != 200:
            where = response.headers.get("Location", "")
            raise LoadError(
                f"GET {url.split('//', 1)[-1].split('/', 1)[-1]}: HTTP "
                f"{response.status_code}{' to ' + where if where else ''}",
                response.status_code,
            )
        response.encoding = "utf-8"
        return fragments.parse_page(response.text, conversation)

    # --- faults (run on the page's thread through command()) ---------------------------------

    def drop(self) -> None:
        """The network goes away under the socket: the page sees 1006 and reconnects."""
        if self.conn is not None:
            self.history.add(self.who, "drop", "network dropped under the socket", room=self.room)
            # The reader's clean-up may have closed it already (websocket-client then sets
            # ws.sock to None): a second drop at the same instant finds nothing to cut.
            sock = self.conn.ws.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def reload_by_reader(self) -> None:
        """Its reader reloads it (F5); half the time they do not scroll back."""
        if not (self.offline or self.leaving or self.dead):
            self._reload("its reader reloads it", shallow=0.5)

    def go_offline(self) -> None:
        self.offline = True
        self.history.add(
            self.who,
            "offline",
            f"page offline at last_seq={self.last_seq}",
            room=self.room,
            epoch=self.epoch,
        )
        self._close_conn(1006)

    def go_online(self) -> None:
        self.offline = False
        self.history.add(
            self.who,
            "online",
            f"page back, last_seq={self.last_seq}",
            room=self.room,
            epoch=self.epoch,
        )
        if self.conn is None and not self.reloading:
            self._connect()
        if self.rate > 0:
            self.set_rate(self.rate, self.long_texts)

    def pause_reading(self, seconds: float) -> None:
        conn = self.conn
        if conn is not None:
            conn.pause.clear()
            conn.paused_until = time.monotonic() + seconds
            self.history.add(
                self.who, "pause", f"stops reading its socket for {seconds:.1f}s", room=self.room
            )

    # --- state, read by the run --------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Connected, nothing unconfirmed, nothing about to be sent."""
        return (
            self.open
            and not self.offline
            and not self.reloading
            and not self.pending
            and self.retypes == 0
            and self.inflight == 0
            and self.dead is None
        )


class LoadError(RuntimeError):
    def __init__(self, text: str, status: int = 0) -> None:
        super().__init__(text)
        self.status = status
