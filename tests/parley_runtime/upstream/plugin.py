"""pytest plugin for a library's own test run (tests/parley_runtime/test_upstream.py starts
it with `-p tests.parley_runtime.upstream.plugin`): puts the tuned classes where their tests
look for the stock ones, points them at Parley's test services, and leaves out EXCLUDED.

Environment (set by test_upstream.py): PARLEY_UPSTREAM_SUITE (a SUITES key),
PARLEY_UPSTREAM_REDIS (the test Redis URL), PARLEY_UPSTREAM_PREFIX (the layer's channel
prefix), PARLEY_UPSTREAM_SENTINEL (host:port of a sentinel), PARLEY_UPSTREAM_TRACE (a file:
a line per test module given the tuned layer and per daphne process, naming the tuned class
it runs), PARLEY_UPSTREAM_OUTCOMES (a file: a JSON line per test phase reported).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import pytest

from tests.parley_runtime.upstream import EXCLUDED


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PARLEY_UPSTREAM_SUITE") == "daphne":
        import daphne.testing

        daphne.testing._reinstall_reactor = functools.partial(
            _reinstall_reactor_with_tuned_server, daphne.testing._reinstall_reactor
        )
        # daphne.testing forks a daphne per test and gives it 2 s to listen; a fork that
        # first imports Twisted, autobahn and daphne (~1.5 s on an idle 2-core machine) runs
        # past that on a busy one. Imported here, every fork starts with them. (The reactor
        # and daphne.server are still made anew in each fork, as daphne.testing does.)
        import autobahn.twisted.websocket  # noqa: F401
        import daphne.http_protocol  # noqa: F401
        import daphne.ws_protocol  # noqa: F401
        import twisted.internet.asyncioreactor  # noqa: F401
        import twisted.internet.endpoints  # noqa: F401
        import twisted.web.http  # noqa: F401

        # The same 2 s, on a machine other test suites share: a harness limit, not theirs.
        daphne.testing.BaseDaphneTestingInstance.startup_timeout = 30


def _reinstall_reactor_with_tuned_server(reinstall) -> None:
    """In each daphne.testing process: daphne's own reactor reinstall (it also forgets
    daphne.server), then daphne.server imported again on the new reactor, the tuned
    runtime's module over it, and TunedServer as the Server that DaphneProcess.run imports
    next."""
    reinstall()
    sys.modules.pop("parley_runtime.websocket", None)
    import daphne.server

    from parley_runtime import websocket

    daphne.server.Server = server = websocket.TunedServer
    _trace(f"daphne.testing {server.__module__}.{server.__qualname__}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    excluded = EXCLUDED[os.environ["PARLEY_UPSTREAM_SUITE"]]
    stale = set(excluded) - {item.nodeid for item in items}
    if stale:
        raise pytest.UsageError(f"EXCLUDED names tests their suite does not have: {sorted(stale)}")
    left_out = [item for item in items if item.nodeid in excluded]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item.nodeid not in excluded]
    modules = {getattr(item, "module", None) for item in items} - {None}
    for module in sorted(modules, key=lambda m: m.__name__):
        if hasattr(module, "RedisPubSubChannelLayer"):
            _use_tuned_layer(module)


def _use_tuned_layer(module) -> None:
    """Their fixtures build `RedisPubSubChannelLayer(hosts=TEST_HOSTS)`: both are read from
    the module when a test runs, so the tuned class and Parley's test Redis go there."""
    from parley_runtime.layers import PubSubChannelLayer

    module.RedisPubSubChannelLayer = functools.partial(
        PubSubChannelLayer, prefix=os.environ["PARLEY_UPSTREAM_PREFIX"]
    )
    if module.__name__.endswith("sentinel"):
        host, port = os.environ["PARLEY_UPSTREAM_SENTINEL"].rsplit(":", 1)
        module.TEST_HOSTS = [
            {
                "sentinels": [(host, int(port))],
                "master_name": module.SENTINEL_MASTER,
                "sentinel_kwargs": module.SENTINEL_KWARGS,
            }
        ]
    else:
        module.TEST_HOSTS = [os.environ["PARLEY_UPSTREAM_REDIS"]]
    _trace(f"{module.__name__} {PubSubChannelLayer.__module__}.{PubSubChannelLayer.__qualname__}")


def _trace(line: str) -> None:
    with open(os.environ["PARLEY_UPSTREAM_TRACE"], "a") as trace:
        trace.write(line + "\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    with open(os.environ["PARLEY_UPSTREAM_OUTCOMES"], "a") as outcomes:
        outcomes.write(json.dumps([report.nodeid, report.when, report.outcome]) + "\n")
