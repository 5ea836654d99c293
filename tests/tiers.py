"""The suite's tiers (docs/testing.md), and the tests that did not run for want of something.

A pytest plugin (`-p tests.tiers`, pyproject.toml), in every pytest run of this repository:

- each collected test belongs to a tier (`tier_of`);
- the tiers named in SKIP_TIERS are deselected: not run, and nothing is installed for them;
- the dependencies of the remaining tiers are found, started or installed first
  (tests/preflight.py; `make test` does that once, before its lanes, and hands the results
  over in PARLEY_PREFLIGHT), and the tests of a tier that lacks one are skipped;
- a test that finds something missing itself calls `missing()`, which skips it the same way.

Those skips are never quiet: they are counted per tier and listed at the end, and they make
the run exit with TIERS_NOT_RUN unless it failed anyway. A skip for any other reason (a test
that applies to one runtime only, say) is an ordinary skip. Under `make test` each run writes
its tally to PARLEY_TIER_REPORT, from which tests/lanes.py prints the closing summary.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from tests import preflight

PREFIX = "missing dependency: "
# Exit status of a run in which a tier, or some of its tests, did not run for want of a
# dependency (pytest's own statuses are 0-5).
TIERS_NOT_RUN = 6
K8S = Path(__file__).resolve().parent / "k8s"


def missing(dependency: str, detail: str, fix: str = "") -> NoReturn:
    """Skips the current test because `dependency` is missing; counted as not run."""
    pytest.skip(f"{PREFIX}{dependency}: {detail}" + (f" (run: {fix})" if fix else ""))


def tier_of(item: pytest.Item) -> str:
    for marker in ("containers", "browser", "stack"):
        if item.get_closest_marker(marker):
            return marker
    if Path(item.path).is_relative_to(K8S):
        return "k8s"
    return "stock" if os.environ.get("PARLEY_RUNTIME") == "stock" else "unit"


@dataclass
class Tally:
    """One pytest run, as tests/lanes.py reads it back (the JSON of PARLEY_TIER_REPORT)."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # tier -> dependency -> {"tests": n, "detail": why (and what gets it)}
    not_run: dict[str, dict[str, dict]] = field(default_factory=dict)
    deselected: dict[str, int] = field(default_factory=dict)  # by SKIP_TIERS
    preflight: list[dict] = field(default_factory=list)

    def count(self, tier: str, outcome: str) -> None:
        tier_counts = self.counts.setdefault(tier, {"passed": 0, "failed": 0, "skipped": 0})
        tier_counts[outcome] += 1

    def not_running(self, tier: str, dependency: str, detail: str) -> None:
        entry = self.not_run.setdefault(tier, {}).setdefault(
            dependency, {"tests": 0, "detail": detail}
        )
        entry["tests"] += 1

    @classmethod
    def read(cls, path: Path) -> Tally:
        return cls(**json.loads(path.read_text()))


class _State:
    def __init__(self, skip: set[str]) -> None:
        self.skip = skip
        self.tier: dict[str, str] = {}  # nodeid -> tier
        self.blocked: dict[str, list[preflight.Result]] = {}  # nodeid -> what it lacks
        self.tally = Tally()


# This process's run (a pytest run is one per process here; pytest_runtest_logreport is
# handed no config to find it through).
_state: _State | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _state
    try:
        _state = _State(preflight.skip_tiers())
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _preflight(config: pytest.Config, tiers: set[str]) -> list[preflight.Result]:
    """The results `make test` handed over, plus a preflight of any selected tier they do
    not cover (all of them in a run of its own)."""
    given = os.environ.get("PARLEY_PREFLIGHT", "")
    results = preflight.load(Path(given)) if given else []
    covered = {tier for result in results for tier in result.tiers}
    wanted = sorted(tiers - covered, key=list(preflight.TIERS).index)
    if wanted:
        capture = config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            results += preflight.ensure(wanted, out=sys.stdout)
    return results


# Last: after -k and -m have deselected what they do, so only the tiers that will run are
# prepared for.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state
    kept, dropped = [], []
    for item in items:
        tier = tier_of(item)
        state.tier[item.nodeid] = tier
        if tier in state.skip:
            dropped.append(item)
            state.tally.deselected[tier] = state.tally.deselected.get(tier, 0) + 1
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    if config.option.collectonly:
        return  # nothing runs: nothing to prepare
    results = _preflight(config, {state.tier[item.nodeid] for item in kept})
    state.tally.preflight = [asdict(r) for r in results]
    blocked = preflight.blocked(results)
    for item in kept:
        lacks = blocked.get(state.tier[item.nodeid])
        if lacks:
            state.blocked[item.nodeid] = lacks
            reason = "; ".join(f"{r.name}: {r.detail}" for r in lacks)
            item.add_marker(pytest.mark.skip(reason=f"{PREFIX}{reason}"))


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped: ")
    return str(report.longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    state = _state
    if state is None:
        return
    tier = state.tier.get(report.nodeid, "unit")
    if report.failed:
        state.tally.count(tier, "failed")
    elif report.skipped:
        state.tally.count(tier, "skipped")
        reason = _skip_reason(report)
        if report.nodeid in state.blocked:
            for result in state.blocked[report.nodeid]:
                fix = f" (run: {result.fix})" if result.fix else ""
                state.tally.not_running(tier, result.name, result.detail + fix)
        elif reason.startswith(PREFIX) and not hasattr(report, "wasxfail"):
            dependency, _, detail = reason.removeprefix(PREFIX).partition(": ")
            state.tally.not_running(tier, dependency, detail)
    elif report.when == "call":
        state.tally.count(tier, "passed")


def describe(tally: Tally) -> list[str]:
    """Lines about the tiers that did not run, fully or at all."""
    lines = []
    for tier in preflight.TIERS:
        if tier in tally.deselected:
            lines.append(
                f"{tier}: not run, on request (SKIP_TIERS): {tally.deselected[tier]} tests"
            )
        for dependency, entry in tally.not_run.get(tier, {}).items():
            total = sum(tally.counts.get(tier, {}).values())
            scope = "NOT RUN" if entry["tests"] == total else f"{entry['tests']} of {total} tests"
            lines.append(f"{tier}: {scope}: {dependency} missing: {entry['detail']}")
    return lines


def pytest_terminal_summary(terminalreporter) -> None:
    if _state is None:
        return
    lines = describe(_state.tally)
    if not lines:
        return
    terminalreporter.section("tiers not run")
    for line in lines:
        terminalreporter.write_line(line)
    tiers = [t for t in preflight.TIERS if t in _state.tally.not_run]
    if tiers:
        terminalreporter.write_line(
            f"failing the run (exit {TIERS_NOT_RUN}): install what is missing, or skip "
            f"on purpose: SKIP_TIERS={','.join(tiers)}"
        )


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _state is None:
        return
    if _state.tally.not_run and exitstatus in (0, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = TIERS_NOT_RUN
    report = os.environ.get("PARLEY_TIER_REPORT")
    if report:
        Path(report).write_text(json.dumps(asdict(_state.tally), indent=1))
