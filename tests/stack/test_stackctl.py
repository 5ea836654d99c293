"""deploy/stack/stackctl.py without a stack: what its processes share on disk."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.stack.stackctl import Stack, StackConfig


def test_setup_steps_starting_at_once_share_one_secret_key(tmp_path: Path, monkeypatch) -> None:
    """The setup steps run in parallel threads and each asks for the key: each used to write
    the same temporary file, and one thread's clean-up failed another's chmod."""
    monkeypatch.delenv("SECRET_KEY", raising=False)
    stacks = [Stack(StackConfig(run_dir=tmp_path)) for _ in range(16)]
    for _ in range(20):
        for old in tmp_path.iterdir():
            old.unlink()
        with ThreadPoolExecutor(16) as pool:
            keys = set(pool.map(lambda stack: stack.app_env()["SECRET_KEY"], stacks))
        assert len(keys) == 1 and len(keys.pop()) >= 50
        assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temporary left
        assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600


def _upstream_servers(stack: Stack) -> list[str]:
    text = (stack.nginx_prefix() / "parley" / "upstreams.conf").read_text()
    return [line.split()[1] for line in text.splitlines() if line.strip().startswith("server ")]


def test_nginx_balances_over_every_daphne_of_the_stack(tmp_path: Path) -> None:
    """One daphne, or eight (`make bench-scale`): one upstream server each, and nginx -t."""
    for ports in ((19001,), tuple(range(19001, 19009))):
        stack = Stack(StackConfig(run_dir=tmp_path / str(len(ports)), ws_ports=ports))
        assert _upstream_servers(stack) == ["127.0.0.1:8000;", *(f"127.0.0.1:{p}" for p in ports)]
        result = stack.nginx_test()
        assert result.returncode == 0, result.stderr


def test_conversation_affinity_hashes_the_conversation_id_consistently(tmp_path: Path) -> None:
    stack = Stack(StackConfig(run_dir=tmp_path, ws_ports=(19001, 19002, 19003), ws_affinity=True))
    text = (stack.nginx_prefix() / "parley" / "upstreams.conf").read_text()
    assert "hash $parley_conversation consistent;" in text and "  least_conn;" not in text
    assert "~^/ws/chat/(?<id>[0-9]+) $id;" in text
    result = stack.nginx_test()
    assert result.returncode == 0, result.stderr
