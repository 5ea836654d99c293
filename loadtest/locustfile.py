"""Parley websocket load test. Run from the repository root (see loadtest/README.md):

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --users-file users.json

Knobs come from the command line, LOCUST_* environment variables or loadtest/locust.conf.
"""

from locust import events

from loadtest.chatuser import ChatUser
from loadtest.coordinator import add_arguments, coordinator

__all__ = ["ChatUser"]


@events.init_command_line_parser.add_listener
def _arguments(parser, **_):
    add_arguments(parser)


events.init.add_listener(coordinator.on_init)
events.test_start.add_listener(coordinator.on_test_start)
events.test_stopping.add_listener(coordinator.on_test_stopping)
