"""channels-redis' and daphne's own tests, run against the tuned classes that replace theirs
(tests/parley_runtime/upstream says which, how, and which of their tests are left out)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from parley_runtime.pins import PINS
from tests.parley_runtime.upstream import EXCLUDED, SUITES, extract
from tests.redis_server import ThrowawayRedis, ThrowawaySentinel

REPO = Path(__file__).resolve().parents[2]


def upstream_run(test):
    """A whole upstream suite: ~10 s (channels-redis) or ~30 s (daphne: a daphne process per
    test) on 2 cores; once per `make test`, not per runtime."""
    test = pytest.mark.slow(pytest.mark.timeout(600)(test))
    return pytest.mark.skipif(
        os.environ.get("PARLEY_RUNTIME") == "stock",
        reason="once per run: they test the tuned classes whatever PARLEY_RUNTIME says",
    )(test)


def run_suite(name: str, tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, str], str]:
    """Runs the suite's files in a pytest of its own, with its own configuration; returns
    each test's outcome by node id, and the trace of what the plugin put in place."""
    suite = SUITES[name]
    root = extract(suite, tmp_path / "src")
    log, outcomes_file, trace = tmp_path / "log", tmp_path / "outcomes", tmp_path / "trace"
    trace.touch()
    outcomes_file.touch()
    private_tmp = tmp_path / "tmp"  # daphne.testing keeps its state in fixed temp files
    private_tmp.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    with log.open("w") as out:
        # A session of its own: a daphne that daphne.testing gave up on is never stopped
        # by it, and the whole group goes when the run ends.
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "pytest", *suite.files, "-q", "-rfEs"),
                *("-p", "tests.parley_runtime.upstream.plugin", "-p", "no:django"),
                *("-p", "no:cacheprovider"),
            ],
            cwd=root,
            env={
                **base,
                "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]),
                "TMPDIR": str(private_tmp),
                "PARLEY_UPSTREAM_SUITE": name,
                "PARLEY_UPSTREAM_TRACE": str(trace),
                "PARLEY_UPSTREAM_OUTCOMES": str(outcomes_file),
                **env,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=540)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text()
    assert returncode == 0, f"{name} {suite.version}'s own tests failed:\n{output[-8000:]}"
    outcomes: dict[str, str] = {}
    for line in outcomes_file.read_text().splitlines():
        nodeid, when, outcome = json.loads(line)
        # Passed once its call passed; a failed or skipped phase (or subtest) is final.
        if outcomes.get(nodeid, "passed") == "passed" and (outcome != "passed" or when == "call"):
            outcomes[nodeid] = outcome
    summary = output.strip().splitlines()[-1]
    print(f"{name} {suite.version}'s own tests on the tuned runtime: {summary}")
    return outcomes, trace.read_text()


def assert_all_ran_and_passed(name: str, outcomes: dict[str, str]) -> None:
    assert {nodeid.split("::")[0] for nodeid in outcomes} == set(SUITES[name].files)
    assert set(outcomes.values()) == {"passed"}, outcomes


@upstream_run
def test_channels_redis_own_pubsub_tests_pass_on_the_tuned_layer(tmp_path):
    url = os.environ["REDIS_URL"].split(",")[0]
    prefix = f"parley-upstream-{os.environ['CHANNEL_LAYER_PREFIX']}."
    master = ThrowawayRedis()  # their sentinel tests: a sentinel watching a Redis of its own
    master.start()
    # Their SENTINEL_MASTER and SENTINEL_KWARGS' password.
    sentinel = ThrowawaySentinel({"sentinel": master.port}, password="channels_redis")
    try:
        sentinel.start()
        outcomes, trace = run_suite(
            "channels-redis",
            tmp_path,
            {
                "PARLEY_UPSTREAM_REDIS": url,
                "PARLEY_UPSTREAM_PREFIX": prefix,
                "PARLEY_UPSTREAM_SENTINEL": f"127.0.0.1:{sentinel.port}",
            },
        )
    finally:
        sentinel.stop()
        master.stop()
        shutil.rmtree(master.dir, ignore_errors=True)
    assert_all_ran_and_passed("channels-redis", outcomes)
    tuned = "parley_runtime.layers.PubSubChannelLayer"
    assert trace.splitlines() == [f"test_pubsub {tuned}", f"test_pubsub_sentinel {tuned}"]
    # Left as found: pub/sub stores no keys, and every channel they subscribed is gone.
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 5
    while client.pubsub_channels(f"{prefix}*") and time.monotonic() < deadline:
        time.sleep(0.1)  # unsubscribes of their last test still on their way
    assert client.pubsub_channels(f"{prefix}*") == []
    assert list(client.scan_iter(match=f"{prefix}*")) == []


@upstream_run
def test_daphne_own_server_tests_pass_on_the_tuned_server(tmp_path):
    outcomes, trace = run_suite("daphne", tmp_path, {})
    assert_all_ran_and_passed("daphne", outcomes)
    # Every daphne they started ran the tuned server (one line per daphne process).
    servers = set(trace.splitlines())
    assert servers == {"daphne.testing parley_runtime.websocket.TunedServer"}, servers


def test_the_exclusions_are_per_suite_and_give_their_reason():
    assert set(EXCLUDED) == set(SUITES)
    for suite, excluded in EXCLUDED.items():
        for nodeid, reason in excluded.items():
            assert nodeid.split("::")[0] in SUITES[suite].files, nodeid
            assert len(reason) > 20, nodeid


def test_the_runtime_pins_have_their_sdist_hash():
    for suite in SUITES.values():
        assert suite.version == PINS[suite.library]
        assert len(suite.sha256.get(suite.version, "")) == 64, suite.library
