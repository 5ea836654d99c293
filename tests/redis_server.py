"""A throwaway redis-server on its own port, for tests that must kill Redis."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests import apt
from tests.tiers import missing


def delete_keys(prefixes: list[str]) -> None:
    """Every key under `prefixes` on the test Redis servers (REDIS_URL); an unreachable one
    is skipped."""
    for url in [u for u in os.environ.get("REDIS_URL", "").split(",") if u]:
        with contextlib.suppress(redis.exceptions.ConnectionError):
            client = redis.Redis.from_url(url)
            for prefix in prefixes:
                for key in client.scan_iter(match=f"{prefix}*", count=500):
                    client.delete(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayRedis:
    def __init__(self, port: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="parley-redis-")
        self.proc: subprocess.Popen | None = None
        self.args = args  # more redis-server options, e.g. ("--replicaof", "127.0.0.1", "6380")

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            missing("redis-server", "not installed", apt.command("redis-server"))
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        while True:
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # an outage, not a shutdown
            self.proc.wait(timeout=10)
        self.proc = None


class ThrowawaySentinel:
    """A Redis Sentinel on its own port watching `masters` (name -> port on 127.0.0.1), for
    the libraries' own sentinel tests and FailoverShards. `password`: what clients must AUTH
    with; `quorum`: Sentinels that must agree a primary is down; `down_after_ms`: its
    silence before it is (None: Sentinel's default, 30 s)."""

    def __init__(
        self,
        masters: dict[str, int],
        password: str | None = None,
        quorum: int = 1,
        down_after_ms: int | None = None,
    ) -> None:
        self.port = free_port()
        self.masters = masters
        self.password = password
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.dir = tempfile.mkdtemp(prefix="parley-sentinel-")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}"]
        if self.password:
            lines.append(f"requirepass {self.password}")
        for name, port in self.masters.items():
            lines.append(f"sentinel monitor {name} 127.0.0.1 {port} {self.quorum}")
            if self.down_after_ms is not None:
                lines += [
                    f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                    f"sentinel failover-timeout {name} 5000",
                ]
        config = Path(self.dir) / "sentinel.conf"  # Sentinel rewrites its own config
        config.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [binary, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
        while True:
            try:
                if all(client.sentinel_get_master_addr_by_name(name) for name in self.masters):
                    return
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis sentinel on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class FailoverShards:
    """Redis shards that fail over: per shard a primary and a replica, watched by three
    Sentinels (quorum 2) that call a primary down after `down_after_ms` without an answer
    and promote its replica. REDIS_URL/REDIS_SENTINELS for the app: `urls`, `sentinels`."""

    def __init__(self, names: tuple[str, ...] = ("shard-a", "shard-b"), down_after_ms: int = 1000):
        self.names = names
        self.down_after_ms = down_after_ms
        self.primaries = {name: ThrowawayRedis() for name in names}
        self.replicas = {
            name: ThrowawayRedis(args=("--replicaof", "127.0.0.1", str(primary.port)))
            for name, primary in self.primaries.items()
        }
        self.watchers = [
            ThrowawaySentinel(
                {name: primary.port for name, primary in self.primaries.items()},
                quorum=2,
                down_after_ms=down_after_ms,
            )
            for _ in range(3)
        ]
        self.sentinel_ports = [watcher.port for watcher in self.watchers]

    @property
    def urls(self) -> list[str]:
        return [f"sentinel://{name}/0" for name in self.names]

    @property
    def sentinels(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def start(self, timeout: float = 20.0) -> None:
        for server in (*self.primaries.values(), *self.replicas.values()):
            server.start()
        for watcher in self.watchers:
            watcher.start()
        # Ready: every Sentinel knows every master and its replica, and the replicas synced.
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinels did not see every primary and replica")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            for port in self.sentinel_ports:
                client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=1)
                for name in self.names:
                    if not client.sentinel_slaves(name):
                        return False
            for replica in self.replicas.values():
                info = redis.Redis(port=replica.port).info("replication")
                if info.get("master_link_status") != "up":
                    return False
        except redis.exceptions.ConnectionError:
            return False
        return True

    def primary_port(self, name: str) -> int:
        client = redis.Redis(port=self.sentinel_ports[0], socket_connect_timeout=1)
        return int(client.sentinel_get_master_addr_by_name(name)[1])

    def kill_primary(self, name: str) -> int:
        """SIGKILL the shard's primary now; its port (the replica takes over)."""
        port = self.primary_port(name)
        server = next(s for s in (self.primaries[name], self.replicas[name]) if s.port == port)
        server.stop()
        return port

    def wait_promoted(self, name: str, old_port: int, timeout: float = 30.0) -> float:
        """Seconds until the Sentinels name another primary for the shard."""
        started = time.monotonic()
        while self.primary_port(name) == old_port:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{name}: no replica promoted within {timeout} s")
            time.sleep(0.05)
        return time.monotonic() - started

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        for server in (*self.primaries.values(), *self.replicas.values()):
            server.stop()


@contextlib.contextmanager
def failover_shards(names: tuple[str, ...] = ("shard-a", "shard-b")):
    """FailoverShards started, and stopped on the way out (a start that failed included)."""
    group = FailoverShards(names)
    try:
        group.start()
        yield group
    finally:
        group.stop()
