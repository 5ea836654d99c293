"""Password hashing without a database connection, and no more hashes at once than CPUs.

Django's ModelBackend fetches the user, then runs the password hasher on the same request
thread, and the request's pooled connection goes back to the pool only when the request
ends. Measured (tests/parley/test_auth.py): a login held its connection through the whole
PBKDF2 hash, ~0.3-0.4 s of a ~0.4-0.6 s login here, so a pool of 4 let a process start at
most ~10 logins a second whatever its CPUs, and a storm of logins waited out the pool's
timeout and got 500s. Here the connection is handed back before the hash (it is taken again,
from the pool, for whatever the request does next). The hash waits for one of
LOGIN_HASH_CONCURRENCY slots per process (default: the CPUs the process may use; hashlib's
PBKDF2 releases the GIL, so threads hash in parallel, but more at once than CPUs only makes
each slower) until LOGIN_HASH_WAIT_SECONDS after the request arrived. A login that gets no
slot by then is refused with `Overloaded`, which the middleware answers with 503.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from django.db import connection

from parley.cpus import available_cpus
from parley.overload import Overloaded, slot_lent, waited


class HashSlots:
    """`size` hashes at once; at most `max_waiting` more wait for a slot (beyond that, a
    wait could not end in time anyway: it is refused at once)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.max_waiting = 4 * size
        self.semaphore = threading.BoundedSemaphore(size)
        self.lock = threading.Lock()
        self.waiting = 0

    def acquire(self, timeout: float) -> bool:
        if self.semaphore.acquire(blocking=False):
            return True
        with self.lock:
            if self.waiting >= self.max_waiting:
                return False
            self.waiting += 1
        try:
            return timeout > 0 and self.semaphore.acquire(timeout=timeout)
        finally:
            with self.lock:
                self.waiting -= 1

    def release(self) -> None:
        self.semaphore.release()


_slots: HashSlots | None = None
_slots_lock = threading.Lock()


def hash_slots() -> HashSlots:
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = HashSlots(settings.LOGIN_HASH_CONCURRENCY or available_cpus())
        return _slots


def reset_hash_slots() -> None:
    """Forget the slots (tests that change LOGIN_HASH_CONCURRENCY)."""
    global _slots
    with _slots_lock:
        _slots = None


def release_connection() -> None:
    """Hands this thread's pooled database connection back to the pool, unless a
    transaction is open on it (then it is the transaction's)."""
    if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
        connection.close()  # with a pool: putconn, not a real close


@contextmanager
def hashing() -> Iterator[None]:
    """Run a password hash inside: without a pooled connection, in one of the process's
    hashing slots; raises Overloaded when no slot frees up in time. Meanwhile the request's
    admission slot (config.asgi) serves other requests: this thread needs no GIL."""
    release_connection()
    slots = hash_slots()
    with slot_lent():
        # Counted from the request's arrival: time spent queued for a request slot or for
        # the pool is part of the wait, so a refusal still comes back within ~1 s.
        if not slots.acquire(max(0.0, settings.LOGIN_HASH_WAIT_SECONDS - waited())):
            raise Overloaded("hashing_busy", "no password hashing slot free")
        try:
            yield
        finally:
            slots.release()


class PoolFriendlyModelBackend(ModelBackend):
    """ModelBackend whose password check holds no database connection.

    It answers every username/password attempt itself: a failed one raises PermissionDenied
    (Django's "stop here": user_login_failed is sent and authenticate() returns None), so
    ModelBackend, listed after it in AUTHENTICATION_BACKENDS only so that sessions it logged
    in stay valid, never hashes the same password a second time.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        UserModel = get_user_model()
        if username is None:
            username = kwargs.get(UserModel.USERNAME_FIELD)
        if username is None or password is None:
            return None
        try:
            user = UserModel._default_manager.get_by_natural_key(username)
        except UserModel.DoesNotExist:
            # Run the default hasher once, as ModelBackend does, so an unknown username
            # takes as long as a wrong password (#20760).
            with hashing():
                UserModel().set_password(password)
            raise PermissionDenied from None
        with hashing():
            # A hash in an outdated format is upgraded here, saved with a fresh connection.
            valid = user.check_password(password)
        if valid and self.user_can_authenticate(user):
            return user
        raise PermissionDenied

    async def aauthenticate(self, request, username=None, password=None, **kwargs):
        return await sync_to_async(self.authenticate)(request, username, password, **kwargs)
