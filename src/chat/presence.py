"""What the cluster shares in Redis beside the channel layer: who is online in each
conversation, the newest sequence number each conversation's processes handed out, and how
many sockets each user holds open.

- Presence entries are per user per process (the conversation's hub, chat.online) and carry
  an expiry, refreshed by the process's heartbeat (chat.heartbeat): several tabs of one user
  count once, and a crashed process's entries lapse after CHAT_PRESENCE_TTL.
- The newest-sequence note lets a process notice a broadcast the layer dropped (a "tail gap"
  that no later message reveals) when the database cannot answer, and is evidence that a
  history went back (chat.stream.judge). The heartbeat writes it in its pipeline, never a
  send (a Redis call on every send's path).
- Socket counts are per user per process, counted only while the process is alive (its
  heartbeat refreshes its liveness): a crashed process's sockets stop counting after
  CHAT_PRESENCE_TTL. Keys are sharded by conversation or user over REDIS_URL's servers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from django.conf import settings

from parley.layer import PROCESS
from parley.redis_shards import RedisShard


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

    async def noted_seq(self, conversation_id: int, epoch: str) -> int:
        """The newest sequence noted for the conversation in `epoch` (0: none)."""
        ...

    async def socket_opened(self, user_id: int, cap: int) -> bool:
        """Counts one more socket of the user for this process, unless the user already holds
        `cap` in the cluster (then False, nothing counted)."""
        ...

    async def socket_closed(self, user_id: int) -> None: ...


def _ttl() -> int:
    return settings.CHAT_PRESENCE_TTL


class LocalPresence:
    """Process-local store for the embedded (in-memory layer) mode."""

    def __init__(self) -> None:
        self._entries: dict[int, dict[str, tuple[int, float]]] = {}
        self._seq: dict[tuple[int, str], int] = {}
        self._sockets: dict[int, int] = {}

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

    async def noted_seq(self, conversation_id: int, epoch: str) -> int:
        return self._seq.get((conversation_id, epoch), 0)

    async def socket_opened(self, user_id: int, cap: int) -> bool:
        if self._sockets.get(user_id, 0) >= cap:
            return False
        self._sockets[user_id] = self._sockets.get(user_id, 0) + 1
        return True

    async def socket_closed(self, user_id: int) -> None:
        left = self._sockets.get(user_id, 0) - 1
        if left > 0:
            self._sockets[user_id] = left
        else:
            self._sockets.pop(user_id, None)


_NOTE_SEQ = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 0
"""


# KEYS: the user's counts (process -> sockets), the shard's live processes (process -> until)
# ARGV: this process, the cap, now, liveness seconds, the counts' expiry
_SOCKET_OPENED = """
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
local counts = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #counts, 2 do
  if redis.call('ZSCORE', KEYS[2], counts[i]) then
    total = total + tonumber(counts[i + 1])
  else
    redis.call('HDEL', KEYS[1], counts[i])
  end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
_SOCKET_CLOSED = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


class RedisPresence:
    def __init__(self, shards: list[RedisShard]) -> None:
        """`shards`: REDIS_URL's, as settings.REDIS_SHARDS holds them (parley.redis_shards)."""
        self._shards = shards
        self._clients: dict[tuple[int, int], object] = {}
        self.process = PROCESS  # this process's name in the socket counts

    def _client(self, key_id: int):
        index = key_id % len(self._shards)
        key = (id(asyncio.get_running_loop()), index)
        client = self._clients.get(key)
        if client is None:
            if len(self._clients) > 64:  # loops come and go in tests; don't hoard clients
                self._clients.clear()
            client = self._shards[index].async_client(socket_timeout=2, socket_connect_timeout=2)
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
        # Every shard, conversations or not: each keeps this process's liveness.
        by_shard: dict[int, list[int]] = {index: [] for index in range(len(self._shards))}
        for cid in entries:
            by_shard[cid % len(self._shards)].append(cid)
        answers: dict[int, tuple[set[int], int]] = {}

        async def beat(index: int, cids: list[int]) -> None:
            now = time.time()
            pipe = self._client(index).pipeline(transaction=False)
            self._alive(pipe, now)
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

        outcomes = await asyncio.gather(
            *(beat(i, cids) for i, cids in by_shard.items()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation
        return answers

    async def note_seq(self, conversation_id: int, seq: int, epoch: str = "") -> None:
        await self._note(self._client(conversation_id), conversation_id, seq, epoch)

    async def noted_seq(self, conversation_id: int, epoch: str) -> int:
        value = await self._client(conversation_id).get(self._seq_key(conversation_id, epoch))
        return int(value or 0)

    @staticmethod
    def _socket_keys(user_id: int) -> list[str]:
        prefix = settings.REDIS_KEY_PREFIX
        return [f"{prefix}:sockets:{user_id}", f"{prefix}:processes"]

    async def socket_opened(self, user_id: int, cap: int) -> bool:
        opened = await self._client(user_id).eval(
            _SOCKET_OPENED,
            2,
            *self._socket_keys(user_id),
            self.process,
            cap,
            time.time(),
            _ttl(),
            86400,
        )
        return bool(opened)

    async def socket_closed(self, user_id: int) -> None:
        await self._client(user_id).eval(
            _SOCKET_CLOSED, 1, self._socket_keys(user_id)[0], self.process
        )

    def _alive(self, pipe, now: float) -> None:
        """Queues this process's liveness on a shard (its socket counts keep counting)."""
        pipe.zadd(f"{settings.REDIS_KEY_PREFIX}:processes", {self.process: now + _ttl()})

    def _note(self, target, conversation_id: int, seq: int, epoch: str):
        """The note on a client (awaitable) or queued on a pipeline: it only grows."""
        return target.eval(_NOTE_SEQ, 1, self._seq_key(conversation_id, epoch), seq, 86400)


async def noted_seq(conversation_id: int, epoch: str) -> int:
    """The newest sequence any process noted handing out in `epoch` (0 if none, or if Redis
    cannot answer)."""
    from parley.layer import LAYER_ERRORS

    try:
        return await presence_store().noted_seq(conversation_id, epoch)
    except LAYER_ERRORS:
        return 0


_store: PresenceStore | None = None


def presence_store() -> PresenceStore:
    global _store
    if _store is None:
        shards = settings.REDIS_SHARDS
        _store = RedisPresence(shards) if shards else LocalPresence()
    return _store


def reset_presence_store() -> None:
    """For tests that point REDIS_URL elsewhere."""
    global _store
    _store = None
