"""Who is online in a conversation, and the newest sequence number seen by the layer.

Entries are per user per process (the conversation's hub, chat.hub) and carry an expiry,
refreshed by the process's heartbeat (chat.heartbeat): several tabs of one user count once,
and a crashed process's entries lapse after CHAT_PRESENCE_TTL.
The newest-sequence key lets an idle consumer notice a broadcast the layer dropped (a "tail
gap" that no later message reveals) and heal it from the database. Each process notes its
hubs' newest sequences in its heartbeat's pipeline, not once per send: a note per send was a
Redis call on every send's path (issue 17, profiled: 5% of a daphne's CPU at 300 msg/s), and
the database, which the heartbeat reads too, outranks the note anyway.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from django.conf import settings


class PresenceStore(Protocol):
    async def update(
        self, conversation_id: int, channel: str, joins: list[int], leaves: list[int]
    ) -> set[int]:
        """Writes users arriving at / leaving `channel` (a process's hub), returns who is
        online in the conversation."""
        ...

    async def heartbeat_many(
        self,
        entries: dict[int, list[tuple[int, str]]],
        epochs: dict[int, str] | None = None,
        newest: dict[int, int] | None = None,
    ) -> dict[int, tuple[set[int], int]]:
        """Refreshes entries, notes `newest` sequences (per conversation, in its epoch; a
        note only grows), answers who is online and the newest sequence noted."""
        ...

    async def note_seq(self, conversation_id: int, seq: int, epoch: str = "") -> None: ...


def _ttl() -> int:
    return settings.CHAT_PRESENCE_TTL


class LocalPresence:
    """Process-local store for the embedded (in-memory layer) mode."""

    def __init__(self) -> None:
        self._entries: dict[int, dict[str, tuple[int, float]]] = {}
        self._seq: dict[tuple[int, str], int] = {}

    def _online(self, conversation_id: int) -> set[int]:
        now = time.time()
        entries = self._entries.setdefault(conversation_id, {})
        for key in [k for k, (_, exp) in entries.items() if exp <= now]:
            del entries[key]
        return {uid for uid, _ in entries.values()}

    async def update(
        self, conversation_id: int, channel: str, joins: list[int], leaves: list[int]
    ) -> set[int]:
        entries = self._entries.setdefault(conversation_id, {})
        for user_id in joins:
            entries[f"{user_id}|{channel}"] = (user_id, time.time() + _ttl())
        for user_id in leaves:
            entries.pop(f"{user_id}|{channel}", None)
        return self._online(conversation_id)

    async def heartbeat_many(
        self,
        entries: dict[int, list[tuple[int, str]]],
        epochs: dict[int, str] | None = None,
        newest: dict[int, int] | None = None,
    ):
        expires = time.time() + _ttl()
        epochs = epochs or {}
        for conversation_id, sockets in entries.items():
            mine = self._entries.setdefault(conversation_id, {})
            for user_id, channel in sockets:
                mine[f"{user_id}|{channel}"] = (user_id, expires)
        for conversation_id, seq in (newest or {}).items():
            await self.note_seq(conversation_id, seq, epochs.get(conversation_id, ""))
        return {
            cid: (self._online(cid), self._seq.get((cid, epochs.get(cid, "")), 0))
            for cid in entries
        }

    async def note_seq(self, conversation_id: int, seq: int, epoch: str = "") -> None:
        key = (conversation_id, epoch)
        self._seq[key] = max(seq, self._seq.get(key, 0))


_NOTE_SEQ = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 0
"""


class RedisPresence:
    def __init__(self, urls: list[str]) -> None:
        self._urls = urls
        self._clients: dict[tuple[int, int], object] = {}

    def _client(self, conversation_id: int):
        import redis.asyncio as aioredis

        index = conversation_id % len(self._urls)
        key = (id(asyncio.get_running_loop()), index)
        client = self._clients.get(key)
        if client is None:
            if len(self._clients) > 64:  # loops come and go in tests; don't hoard clients
                self._clients.clear()
            client = aioredis.Redis.from_url(
                self._urls[index], socket_timeout=2, socket_connect_timeout=2
            )
            self._clients[key] = client
        return client

    @staticmethod
    def _key(conversation_id: int) -> str:
        return f"{settings.REDIS_KEY_PREFIX}:presence:{conversation_id}"

    @staticmethod
    def _seq_key(conversation_id: int, epoch: str = "") -> str:
        # Per epoch: a note from before a restore (say 3,630 while the restored history
        # restarted at 1) is another key, never read against the new history.
        return f"{settings.REDIS_KEY_PREFIX}:seq:{conversation_id}:{epoch}"

    @staticmethod
    def _uids(members: list[bytes]) -> set[int]:
        return {int(m.split(b"|", 1)[0]) for m in members}

    def _expire_and_read(self, pipe, conversation_id: int, now: float, epoch: str = "") -> None:
        """Queues, after an entry's write: drop lapsed entries, keep the key alive, read who
        is online and the newest sequence (the last two results, for _answer)."""
        key = self._key(conversation_id)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.expire(key, _ttl() * 2)
        pipe.zrange(key, 0, -1)
        pipe.get(self._seq_key(conversation_id, epoch))

    def _answer(self, members: list[bytes], seq: bytes | None) -> tuple[set[int], int]:
        return self._uids(members), int(seq or 0)

    async def update(
        self, conversation_id: int, channel: str, joins: list[int], leaves: list[int]
    ) -> set[int]:
        now = time.time()
        key = self._key(conversation_id)
        pipe = self._client(conversation_id).pipeline(transaction=False)
        if joins:
            pipe.zadd(key, {f"{uid}|{channel}": now + _ttl() for uid in joins})
        if leaves:
            pipe.zrem(key, *(f"{uid}|{channel}" for uid in leaves))
        self._expire_and_read(pipe, conversation_id, now)
        result = await pipe.execute()
        return self._answer(*result[-2:])[0]

    async def heartbeat_many(
        self,
        entries: dict[int, list[tuple[int, str]]],
        epochs: dict[int, str] | None = None,
        newest: dict[int, int] | None = None,
    ):
        """Refreshes many sockets' entries and notes newest sequences: one pipeline per
        shard. A shard that cannot be reached leaves its conversations out of the answer
        (their sockets treat the beat as missed)."""
        epochs, newest = epochs or {}, newest or {}
        by_shard: dict[int, list[int]] = {}
        for cid in entries:
            by_shard.setdefault(cid % len(self._urls), []).append(cid)
        answers: dict[int, tuple[set[int], int]] = {}

        async def beat(cids: list[int]) -> None:
            now = time.time()
            pipe = self._client(cids[0]).pipeline(transaction=False)
            ends = []
            for cid in cids:
                e = now + _ttl()
                if entries[cid]:
                    pipe.zadd(self._key(cid), {f"{uid}|{ch}": e for uid, ch in entries[cid]})
                if newest.get(cid):
                    self._note(pipe, cid, newest[cid], epochs.get(cid, ""))
                self._expire_and_read(pipe, cid, now, epochs.get(cid, ""))
                ends.append(len(pipe))
            result = await pipe.execute()
            for cid, end in zip(cids, ends, strict=True):
                answers[cid] = self._answer(*result[end - 2 : end])

        outcomes = await asyncio.gather(*map(beat, by_shard.values()), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation
        return answers

    async def note_seq(self, conversation_id: int, seq: int, epoch: str = "") -> None:
        await self._note(self._client(conversation_id), conversation_id, seq, epoch)

    def _note(self, target, conversation_id: int, seq: int, epoch: str):
        """The note on a client (awaitable) or queued on a pipeline: it only grows."""
        return target.eval(_NOTE_SEQ, 1, self._seq_key(conversation_id, epoch), seq, 86400)


_store: PresenceStore | None = None


def presence_store() -> PresenceStore:
    global _store
    if _store is None:
        urls = settings.REDIS_URLS
        _store = RedisPresence(urls) if urls else LocalPresence()
    return _store


def reset_presence_store() -> None:
    """For tests that point REDIS_URL elsewhere."""
    global _store
    _store = None
