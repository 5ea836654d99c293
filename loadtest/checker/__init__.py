"""The delivery checker (`python -m loadtest.checker`, `make soak`): a randomized, seeded
attempt to break "every entry of a conversation (a message, an edit or a delete of one,
someone added or leaving) is stored, then delivered exactly once, in order, with no holes, to
every member's page, which shows each message as the database now has it", through nginx ->
daphne on a private stack with its own Redis and Postgres, while faults are injected.
loadtest/README.md describes it; docs/testing.md says where CI runs it.

- `run.py`: one run (the stack, pages, traffic, faults, checks, report)
- `page.py`: a member's page, behaving as chat.js makes a browser behave
- `actions.py`: its owner's edits, deletes, adds and leaving, over HTTP, retried
- `stack.py`: the private stack and its faults
- `check.py`: the checks against the database
- `history.py`: the run's events and the minimal history of a failure
- `fragments.py`, `bodies.py`: reading frames and pages; message texts
"""
