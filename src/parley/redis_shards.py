"""The Redis servers behind REDIS_URL: plain URLs, or masters that Redis Sentinel fails over.

REDIS_URL lists the shards, comma separated; each is either

- `redis://[:password@]host:port/db` (or `rediss://`): one server, or
- `sentinel://[:password@]master-name/db`: whichever server the Sentinels in
  REDIS_SENTINELS (`host:port,host:port,...`) name as that master's primary now.

Every Redis client in Parley comes from here: the channel layer (channels-redis takes a
Sentinel host as `master_name` + `sentinels`), the presence store, the sequence notes and
the socket caps (`async_client`), and the start-up check (`sync_client`). A client of a
Sentinel shard asks the Sentinels for the primary on every new connection, so after a
failover the next reconnect reaches the promoted replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEME = "sentinel"


class RedisShardError(ValueError):
    """A REDIS_URL entry or REDIS_SENTINELS value Parley cannot use; the message names it."""


@dataclass(frozen=True)
class RedisShard:
    url: str = ""  # a plain server's URL; empty for a Sentinel shard
    master_name: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    db: int = 0
    password: str | None = None

    @property
    def label(self) -> str:
        """For logs: never the password."""
        if self.master_name:
            return f"sentinel {self.master_name}/{self.db}"
        return "redis " + self.url.split("@")[-1]

    def layer_host(self) -> dict[str, Any]:
        """The channels-redis `hosts` entry (channels_redis.utils.create_pool)."""
        if not self.master_name:
            return {"address": self.url}
        host: dict[str, Any] = {
            "master_name": self.master_name,
            "sentinels": list(self.sentinels),
            "db": self.db,
        }
        if self.password:
            host["password"] = self.password
        return host

    def async_client(self, **options: Any):
        import redis.asyncio

        return self._client(redis.asyncio, options)

    def sync_client(self, **options: Any):
        import redis

        return self._client(redis, options)

    def _client(self, module: Any, options: dict[str, Any]):
        """`module`: redis or redis.asyncio, whose Redis and Sentinel classes match."""
        if not self.master_name:
            return module.Redis.from_url(self.url, **options)
        sentinel = module.sentinel.Sentinel(self.sentinels, **_sentinel_options(options))
        return sentinel.master_for(self.master_name, db=self.db, password=self.password, **options)


def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    """The Sentinels are asked with the same timeouts as the servers."""
    keys = ("socket_timeout", "socket_connect_timeout")
    return {"sentinel_kwargs": {k: options[k] for k in keys if k in options}}


def parse_sentinels(values: list[str]) -> tuple[tuple[str, int], ...]:
    sentinels = []
    for value in values:
        host, sep, port = value.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise RedisShardError(f"REDIS_SENTINELS: {value!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    return tuple(sentinels)


def parse_shards(urls: list[str], sentinels: list[str] | None = None) -> list[RedisShard]:
    """REDIS_URL's entries as shards, in order (the order decides which keys live where)."""
    known = parse_sentinels(sentinels or [])
    shards = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("redis", "rediss", "unix"):
            shards.append(RedisShard(url=url))
            continue
        if parts.scheme != SENTINEL_SCHEME:
            raise RedisShardError(
                f"REDIS_URL: {parts.scheme or '?'}:// is not redis://, rediss:// or sentinel://"
            )
        # Not .hostname: that lowercases, and master names are case-sensitive.
        name, db = parts.netloc.rpartition("@")[2], parts.path.strip("/") or "0"
        if not name or not db.isdigit():
            raise RedisShardError("REDIS_URL: a Sentinel shard is sentinel://master-name/db")
        if not known:
            raise RedisShardError(
                f"REDIS_URL names the Sentinel master {name!r} but REDIS_SENTINELS is empty"
            )
        password = unquote(parts.password) if parts.password else None
        shards.append(RedisShard(master_name=name, sentinels=known, db=int(db), password=password))
    return shards
