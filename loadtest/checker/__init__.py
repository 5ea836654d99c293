"""The delivery checker (`python -m loadtest.checker`, `make soak`): a randomized, seeded
attempt to break "every message is stored, then delivered exactly once, in order, with no
holes, to every member's page", through nginx -> daphne on a private stack with its own Redis
and Postgres, while faults are injected. loadtest/README.md describes it; docs/testing.md says
where CI runs it.

- `run.py`: one run (the stack, pages, traffic, faults, checks, report)
- `page.py`: a member's page, behaving as chat.js makes a browser behave
- `stack.py`: the private stack and its faults
- `check.py`: the checks against the database
- `history.py`: the run's events and the minimal history of a failure
- `fragments.py`, `bodies.py`: reading frames and pages; message texts
"""
