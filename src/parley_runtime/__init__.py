"""Parley's tuned runtime: the only code that touches other libraries' private internals.

Each piece replaces a stock daphne / Channels / channels-redis / Django part with one that
keeps less per idle socket or spends less CPU per request (docs/runtime.md gives each
piece's gain and how it was measured):

- `websocket`: daphne's websocket protocol lets go of the handshake; a small bounded input
  queue per socket.
- `frames`: when a client's frame reached the process, beside the ASGI event, not in it.
- `routing`: Channels' routers hand over to the inner application instead of awaiting it.
- `layers`: channels-redis' pub/sub layer with a small bounded queue per channel.
- `http`: Django's ASGI handler with one thread hop per request.
- `consumer`: Channels' consumer dispatch loop, waiting through one future.

`select()` decides once per process: PARLEY_RUNTIME=stock, or any installed version other
than the pinned one (pins.py), means the stock parts; the rest of Parley works the same on
both (CI runs the websocket suite on each: `make test-stock`). Each tuned class keeps the
public contract of the one it replaces exactly: daphne's and channels-redis' own tests run
against them (tests/parley_runtime/upstream). This package imports no project module.
"""

from __future__ import annotations

import importlib.metadata
import logging

from parley_runtime.pins import PINS

MODES = ("tuned", "stock")
logger = logging.getLogger("parley_runtime")

_selected: str | None = None
_mismatches: list[str] = []


def version_mismatches() -> list[str]:
    """One line per pinned library whose installed version differs from its pin."""
    found = []
    for name, pinned in PINS.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != pinned:
            found.append(f"{name} {installed} is installed, pinned: {pinned}")
    return found


def select(requested: str) -> str:
    """The runtime this process uses: `requested` ("tuned" or "stock"), unless a pinned
    library's installed version differs (then "stock"). Called once, from the settings."""
    global _selected, _mismatches
    if requested not in MODES:
        raise ValueError(f"PARLEY_RUNTIME must be one of {', '.join(MODES)}, got {requested!r}")
    _mismatches = version_mismatches() if requested == "tuned" else []
    _selected = "stock" if _mismatches else requested
    return _selected


def mode() -> str:
    """ "tuned" or "stock" (select() must have run: the settings call it)."""
    if _selected is None:
        raise RuntimeError("parley_runtime.select() has not run (it is called from the settings)")
    return _selected


def tuned() -> bool:
    return mode() == "tuned"


def log_selection() -> None:
    """Logs the choice once logging is configured (parley_runtime.apps): one warning naming
    every mismatched library when the tuned runtime was asked for and is not used."""
    if _mismatches:
        logger.warning(
            "tuned runtime disabled, running on stock daphne/Channels/channels-redis/Django: "
            + "; ".join(_mismatches)
            + " (docs/runtime.md, 'Upgrading a library')",
            extra={"runtime": "stock", "mismatches": _mismatches},
        )
    else:
        logger.info("runtime selected", extra={"runtime": _selected})
