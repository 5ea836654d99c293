"""A throwaway redis-server on its own port, for tests that must kill Redis."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

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
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="parley-redis-")
        self.proc: subprocess.Popen | None = None

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
    """A Redis Sentinel on its own port watching one master (e.g. a ThrowawayRedis), for the
    libraries' own sentinel tests. `password`: what clients must AUTH with."""

    def __init__(self, master_name: str, master_port: int, password: str | None = None) -> None:
        self.port = free_port()
        self.master_name = master_name
        self.master_port = master_port
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="parley-sentinel-")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        config = os.path.join(self.dir, "sentinel.conf")  # sentinel rewrites its own config
        with open(config, "w") as fh:
            fh.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                + (f"requirepass {self.password}\n" if self.password else "")
                + f"sentinel monitor {self.master_name} 127.0.0.1 {self.master_port} 1\n"
            )
        self.proc = subprocess.Popen(
            [binary, config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
        while True:
            try:
                if client.sentinel_get_master_addr_by_name(self.master_name):
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
