"""Debian packages for the tests: installed with apt-get when this process is root on a
machine with apt-get, otherwise the command that would install them.

Standard library only: tests/preflight.py imports it before anything else is known to work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# Other users of the machine may hold dpkg's lock for a while (their own installs).
LOCK_WAIT = ["-o", "DPkg::Lock::Timeout=300"]


class AptUnavailable(Exception):
    """The packages could not be installed; the text says why and what to run."""


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def command(*packages: str) -> str:
    """The command that installs `packages`, for a person to run."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install -y {' '.join(packages)}"


def install(*packages: str, timeout: float = 1200) -> None:
    """Installs `packages`; reads the package lists first when the install fails (a fresh
    machine may never have read them). Raises AptUnavailable."""
    if not can_install():
        why = "not root" if shutil.which("apt-get") else "no apt-get on this machine"
        raise AptUnavailable(f"cannot install {' '.join(packages)}: {why}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"preflight: apt-get install {' '.join(packages)}", file=sys.stderr, flush=True)
    argv = ["apt-get", *LOCK_WAIT, "install", "-y", "-q", *packages]

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )

    result = run(argv)
    if result.returncode != 0:
        run(["apt-get", *LOCK_WAIT, "update", "-q"])
        result = run(argv)
    if result.returncode != 0:
        raise AptUnavailable(
            f"apt-get install {' '.join(packages)} failed: {result.stderr.strip()[-500:]}"
        )
