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
- Any `#chat-reset` fragment means "reload": the page is fetched again over HTTP (GET
  /c/<id>, then every older page through "Load older messages", as a reader scrolling back
  would), the view rebuilt from it, epoch and last sequence taken from it, unconfirmed sends
  that the reloaded page already shows are confirmed, and it reconnects.

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


@dataclass(slots=True)
class ViewEntry:
    seq: int
    dom_id: str
    sender_id: int
    cid: str | None
    body_hash: int
    length: int


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
    ) -> None:
        super().__init__(name=f"page-{username}", daemon=True)
        self.run_ = run
        self.who = username
        self.password = password
        self.room = room
        self.http = session
        self.cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.get_dict().items())
        self.rng = random.Random(f"{seed}:{username}")
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
        accepted, dropped, jumps = [], [], []
        with self.lock:
            for a in frame.articles:
                if a.seq <= self.last_seq or a.dom_id in self.dom_ids:
                    dropped.append(a.seq)
                    continue
                if a.seq != self.last_seq + 1:
                    jumps.append((self.last_seq, a.seq))
                self.last_seq = a.seq
                self.view.append(
                    ViewEntry(a.seq, a.dom_id, a.sender_id, a.cid, hash(a.body), len(a.body))
                )
                self.dom_ids.add(a.dom_id)
                accepted.append(a.seq)
                send = self.pending.pop(a.cid, None) if a.cid else None
                if send is not None:
                    self._settle(send, confirmed=(t, a.seq, self.epoch))
        if frame.articles:
            text_ = (
                f"{len(frame.articles)} msgs, {size} bytes: shown {fmt_ranges(ranges(accepted))}"
            )
            if dropped:
                text_ += f", dropped as seen {fmt_ranges(ranges(dropped))}"
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
        if accepted and not self.read_due:
            self.read_due = True
            self._after(READ_MARKER_DELAY, "read")
        for err in frame.errors:
            self._on_error(t, err)

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

    def _reload(self, why: str) -> None:
        """What window.location.reload() amounts to: the socket goes, the page is fetched
        and read to its first message, the socket comes back."""
        self.reloading = True
        self._close_conn(1001)
        self.history.add(self.who, "reload", why, room=self.room, epoch=self.epoch)
        attempt = 0
        while not self.stopping.is_set():
            started = self.history.now()
            try:
                view, epoch, last_seq, pages = self._fetch_history()
                break
            except (requests.RequestException, fragments.PageError, LoadError) as exc:
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
            self.read_sent = last_seq  # opening the page marks it read
            shown = {v.cid: v for v in view if v.cid}
            # Confirmed as of when the page was asked for (what it shows was stored by then).
            for cid in [c for c in self.pending if c in shown]:
                self._settle(self.pending.pop(cid), confirmed=(started, shown[cid].seq, epoch))
        self.history.add(
            self.who,
            "loaded",
            f"epoch={epoch} last_seq={last_seq}, {len(view)} msgs in {pages} pages",
            room=self.room,
            epoch=epoch,
        )
        self.reloading = False
        self._connect()

    def _fetch_history(self) -> tuple[list[ViewEntry], str, int, int]:
        base = self.run_.base_url
        page = self._get(f"{base}/c/{self.room}", conversation=True)
        chunks = [page.articles]
        older = page.older_url
        pages = 1
        while older:
            part = self._get(base + older, conversation=False)
            chunks.append(part.articles)
            older = part.older_url
            pages += 1
        view = [
            ViewEntry(a.seq, a.dom_id, a.sender_id, a.cid, hash(a.body), len(a.body))
            for chunk in reversed(chunks)
            for a in chunk
        ]
        assert page.epoch is not None and page.last_seq is not None
        return view, page.epoch, page.last_seq, pages

    def _get(self, url: str, conversation: bool) -> fragments.Page:
        response = self.http.get(url, timeout=HTTP_TIMEOUT, allow_redirects=False)
        if response.status_code != 200:
            where = response.headers.get("Location", "")
            raise LoadError(
                f"GET {url.split('//', 1)[-1].split('/', 1)[-1]}: HTTP "
                f"{response.status_code}{' to ' + where if where else ''}"
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
            and self.dead is None
        )


class LoadError(RuntimeError):
    pass
