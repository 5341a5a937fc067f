"""A worker process's connection to the ledger database, kept from one transfer to the next.

Used by the transfer task (``tasks.py``); plain Django, no Celery.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from queued_storage.models import StoredFile

__all__ = ["KeptConnection", "kept_connection"]

logger = logging.getLogger("queued_storage.worker")

T = TypeVar("T")


class KeptConnection:
    """The ledger database's connection of one worker process, kept between its transfers.

    Celery's Django fixup closes every database connection of the task's thread before and
    after each task, whatever ``CONN_MAX_AGE`` says (Celery went back to that in 2025, its
    pull request 9824: Django cannot tell every broken connection from a usable one, say one
    cut by a time limit in the middle of a query). A small file's transfer would then
    open a new connection each time: TCP, authentication, Django's set-up, and on PostgreSQL a
    new server process, several milliseconds of CPU for two short statements.

    So a transfer that ended without an exception hands its connection here (:meth:`keep`): it
    leaves the thread's ``django.db.connections``, out of the fixup's reach, and the next
    transfer of the process puts it back (:meth:`take`). It is not kept when it may not be
    sound: after an exception (a time limit in the middle of a query, a lost server: the fixup
    closes it), after a database error, inside a transaction or with autocommit off. Before
    reuse, a connection idle for :attr:`IDLE_CHECK` seconds or more is checked with a
    ``SELECT 1`` (a server restarted meanwhile, an idle timeout) and replaced if it fails;
    one that fails all the same (the server restarted during a burst of transfers) fails the
    transfer's first statement, and :meth:`run` runs the transfer once more on a new
    connection (a transfer is idempotent and single-flight). One connection per process at
    most; a forked child never uses its parent's.
    """

    #: Seconds of idleness after which a kept connection is checked before reuse.
    IDLE_CHECK = 1.0

    def __init__(self) -> None:
        self.wrapper: BaseDatabaseWrapper | None = None
        self.pid = 0
        self.since = 0.0

    def run(self, transfer: Callable[[], T]) -> T:
        """*transfer()* on the kept connection (:meth:`take`), which is kept again after it
        (:meth:`keep`); run once more on a new connection when the kept one turns out broken
        (a database error that is not the statement's: ``OperationalError``,
        ``InterfaceError``). Any other exception propagates, and the connection is left to
        Celery's fixup."""
        reused = self.take()
        try:
            result = transfer()
        except (OperationalError, InterfaceError):
            if not reused:
                raise
            logger.info("the kept database connection was broken; the transfer runs again")
            with contextlib.suppress(DatabaseError):
                connections[StoredFile.db()].close()
            result = transfer()
        self.keep()
        return result

    def take(self) -> bool:
        """Make the kept connection this thread's connection to the ledger database, if it
        is sound (else a new one opens when the transfer needs it); ``True`` if it did."""
        db = StoredFile.db()
        kept, self.wrapper = self.wrapper, None
        if kept is None or self.pid != os.getpid():
            return False  # nothing kept, or the parent's (its socket is the parent's to close)
        current = connections[db]
        if kept.alias != db or current.connection is not None:
            _close(kept)  # the ledger moved, or the thread has an open one (no fixup): use it
            return False
        if time.monotonic() - self.since >= self.IDLE_CHECK and not kept.is_usable():
            _close(kept)
            return False
        connections[db] = kept
        return True

    def keep(self) -> None:
        """Take this thread's connection to the ledger database out of it, for the next
        transfer, if it is open and sound; otherwise leave it where it is (the fixup closes
        it)."""
        db = StoredFile.db()
        current = connections[db]
        if (
            current.connection is None
            or current.errors_occurred
            or current.in_atomic_block
            or not current.get_autocommit()
        ):
            return
        del connections[db]
        self.wrapper, self.pid, self.since = current, os.getpid(), time.monotonic()

    def close(self) -> None:
        kept, self.wrapper = self.wrapper, None
        if kept is not None and self.pid == os.getpid():
            _close(kept)


def _close(connection: BaseDatabaseWrapper) -> None:
    """Close *connection*; a broken one may say so, which changes nothing."""
    with contextlib.suppress(DatabaseError):
        connection.close()


#: The worker process's :class:`KeptConnection` (the transfer task uses it).
kept_connection = KeptConnection()
