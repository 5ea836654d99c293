"""Reading what a websocket client was sent: waits on conditions with a timeout."""

from __future__ import annotations

import asyncio
import re
import time

SEQ_RE = re.compile(r'<article id="msg-\d+" class="msg" data-seq="(\d+)"')


def seqs(frame: str) -> list[int]:
    return [int(s) for s in SEQ_RE.findall(frame)]


class Inbox:
    """Collects every frame a communicator receives.

    Reads the communicator's queue directly: asgiref's receive_output() cancels the
    application on timeout, which would end the very socket we are watching.
    """

    def __init__(self, comm) -> None:
        self.comm = comm
        self.frames: list[str] = []
        self.closed_with: int | None = None

    async def _next(self, timeout: float) -> dict:
        if self.comm.future.done() and self.comm.output_queue.empty():
            self.comm.future.result()  # raise the application's exception, if any
            raise TimeoutError
        return await asyncio.wait_for(self.comm.output_queue.get(), timeout)

    @property
    def seqs(self) -> list[int]:
        return [s for f in self.frames for s in seqs(f)]

    async def wait_for(self, predicate, timeout: float = 5.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; frames: {self.frames[-5:]}")
            try:
                out = await self._next(left)
            except TimeoutError:
                continue
            if out["type"] == "websocket.close":
                raise AssertionError(f"socket closed ({out.get('code')}) waiting for {what}")
            if out["type"] == "websocket.send":
                self.frames.append(out.get("text") or "")
        return self

    async def wait_seqs(self, expected: list[int], timeout: float = 5.0):
        await self.wait_for(
            lambda ib: len(ib.seqs) >= len(expected), timeout, f"sequences {expected}"
        )
        return self.seqs

    async def wait_text(self, needle: str, timeout: float = 5.0) -> str:
        await self.wait_for(lambda ib: any(needle in f for f in ib.frames), timeout, repr(needle))
        return next(f for f in self.frames if needle in f)

    async def quiet(self, seconds: float = 0.3) -> None:
        """Collects whatever else arrives within `seconds` (used to prove nothing more came)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out = await self._next(left)
            except TimeoutError:
                return
            if out["type"] == "websocket.send":
                self.frames.append(out.get("text") or "")
            elif out["type"] == "websocket.close":
                self.closed_with = out.get("code", 1000)
                return

    async def wait_close(self, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                out = await self._next(left)
            except TimeoutError:
                break
            if out["type"] == "websocket.close":
                return out.get("code", 1000)
            if out["type"] == "websocket.send":
                self.frames.append(out.get("text") or "")
        raise AssertionError("socket did not close")
