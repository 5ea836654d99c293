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
