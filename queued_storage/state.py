"""The read path of a file's state: the cache first, the ledger on a miss.

The ledger (``models.StoredFile``) is the truth; the cache is a read-through copy that makes
the common read free of database queries. Rules that keep the copy honest:

* transitions (save committed, transfer verified, delete) *set* the cache after the ledger
  commit;
* a read that missed the cache fills it with ``cache.add``, which never overwrites a value a
  transition wrote meanwhile, so a slow reader cannot put back a stale state;
* a cache that fails (Redis down, flushed) only costs speed: the ledger answers, and the
  failure is logged once per kind (read, write, drop, guard) per minute per process, as one
  WARNING line without a traceback (the traceback at DEBUG), so that a cache outage does not
  bury the log under a traceback per request. No state is ever learned from the remote
  storage's network API;
* a row written inside a transaction that is still open is read from the ledger, bypassing the
  cache, until that transaction ends: the cache may hold what other processes see (an
  "unknown" cached by an ``exists()`` just before the save, say), and the row is published to
  the cache only at the commit (a rollback must leave nothing behind).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import TypedDict

from django.core.cache import BaseCache, caches
from django.db import transaction

from queued_storage.conf import settings
from queued_storage.models import State, StoredFile

__all__ = [
    "CACHE_WARNING_INTERVAL",
    "FileState",
    "cache_failed",
    "cache_key",
    "first_to_mark",
    "get_progress",
    "get_state",
    "written_in_transaction",
]

logger = logging.getLogger(__name__)

#: How long a "no ledger row" answer may be cached: such a file routes like a pending one,
#: so a stale answer only delays nothing; keep it short anyway.
ABSENT_TIMEOUT = 60


class _CachedStateKey(TypedDict):
    s: State


class CachedState(_CachedStateKey, total=False):
    """A state as the cache holds it, in short keys (an entry written before ``z``/``l``
    existed lacks them). A name the ledger does not hold is cached as ``{"s": None}``."""

    z: int | None
    l: bool  # noqa: E741 (the key the cache has always used)


@dataclass(frozen=True)
class FileState:
    """What the read path needs to know about one file."""

    state: State
    size: int | None = None
    local_exists: bool = True

    @property
    def is_remote(self) -> bool:
        return self.state == State.REMOTE

    @classmethod
    def of(cls, state: str, size: int | None, local_exists: bool = True) -> FileState:
        """A state from one of :class:`State`'s values (typed ``str`` by the Django stubs)."""
        return cls(State(state), size, local_exists)

    @classmethod
    def from_row(cls, row: StoredFile) -> FileState:
        return cls(state=State(row.state), size=row.size, local_exists=row.local_exists)

    def to_cache(self) -> CachedState:
        return {"s": self.state, "z": self.size, "l": self.local_exists}

    @classmethod
    def from_cache(cls, value: CachedState) -> FileState:
        return cls(State(value["s"]), size=value.get("z"), local_exists=value.get("l", True))


_ABSENT = {"s": None}

#: Seconds between two WARNINGs of one kind of cache failure in one process.
CACHE_WARNING_INTERVAL = 60.0

_warned_at: dict[str, float] = {}
_warned_lock = threading.Lock()


def cache_failed(kind: str, err: BaseException, consequence: str) -> None:
    """Log that the state cache failed to *kind* (``read``, ``write``, ``drop``, ``guard``, or
    what the reconcile pass records there).

    One WARNING per kind per :data:`CACHE_WARNING_INTERVAL` seconds in this process, one line
    naming the cache, the error and *consequence* (what happens instead), with no traceback;
    every failure, the first too, at DEBUG with its traceback.
    """
    now = time.monotonic()
    with _warned_lock:
        last = _warned_at.get(kind)
        due = last is None or now - last >= CACHE_WARNING_INTERVAL
        if due:
            _warned_at[kind] = now
    if due:
        logger.warning(
            "the state cache CACHES[%r] failed to %s (%s: %s); %s. Start the cache or fix "
            "CACHES[%r]; the same failure is logged again in %g s at the earliest (at DEBUG "
            "each time, with its traceback).",
            settings.CACHE,
            kind,
            type(err).__name__,
            err,
            consequence,
            settings.CACHE,
            CACHE_WARNING_INTERVAL,
        )
    logger.debug("the state cache failed to %s", kind, exc_info=err)


#: Progress entries only matter while a transfer runs; they expire on their own.
PROGRESS_TIMEOUT = 300


def cache_key(prefix: str, alias: str, name: str) -> str:
    """A key that is short, ASCII and collision-free whatever the name's length or characters.

    Memcached refuses keys over 250 bytes or with spaces/control characters; a SHA-256 of the
    alias and name keeps every key at a fixed length. Long prefixes are hashed as well.
    """
    if len(prefix) > 100 or not prefix.isascii():
        prefix = hashlib.sha256(prefix.encode()).hexdigest()[:32]
    digest = hashlib.sha256(f"{alias}\x00{name}".encode()).hexdigest()
    return f"{prefix}:{digest}"


def _cache() -> BaseCache:
    return caches[settings.CACHE]


#: The attribute of a ledger connection that holds the cache keys of the rows written in its
#: open transaction (a connection belongs to one thread, and so does its transaction).
_WRITTEN = "_queued_storage_written"


def _written_keys() -> set[str] | None:
    """The keys of the rows written in the ledger connection's open transaction; ``None`` when
    no transaction is open (then the keys of the last one, committed or rolled back, go)."""
    connection = transaction.get_connection(StoredFile.db())
    written: set[str] | None = getattr(connection, _WRITTEN, None)
    if not connection.in_atomic_block:
        if written:
            written.clear()
        return None
    if written is None:
        written = set()
        setattr(connection, _WRITTEN, written)
    return written


def written_in_transaction(prefix: str, alias: str, name: str) -> None:
    """Note that *name*'s row was written in the ledger connection's open transaction (if one
    is open): until it ends, this thread reads that row from the ledger, not from the cache."""
    written = _written_keys()
    if written is not None:
        written.add(cache_key(prefix, alias, name))


def get_state(prefix: str, alias: str, name: str, *, fresh: bool = False) -> FileState | None:
    """The state of *name*, or ``None`` when the ledger has no row for it.

    ``fresh=True`` skips the cache (used when the cached state contradicts the disk). A row
    this thread wrote in a transaction still open is read from the ledger and not cached (the
    cache shows committed rows only; see the module).
    """
    key = cache_key(prefix, alias, name)
    written = _written_keys()
    if written and key in written:
        row = StoredFile.get_row(alias, name)
        return FileState.from_row(row) if row is not None else None
    replace = fresh
    if not fresh:
        try:
            value = _cache().get(key)
        except Exception as err:  # a cache outage costs speed, never correctness
            cache_failed("read", err, "states are read from the ledger")
            value = None
        if value is not None:
            try:
                return None if value["s"] is None else FileState.from_cache(value)
            except (TypeError, KeyError, ValueError):
                # Not ours (``True`` written by django-queued-storage's code to the same key,
                # say): a miss, replaced below by what the ledger says.
                replace = True
    row = StoredFile.get_row(alias, name)
    found = FileState.from_row(row) if row is not None else None
    if found is None:
        value, timeout = _ABSENT, ABSENT_TIMEOUT
    else:
        value, timeout = found.to_cache(), settings.CACHE_TIMEOUT
    try:
        if replace:
            _cache().set(key, value, timeout)
        else:
            _cache().add(key, value, timeout)
    except Exception as err:
        cache_failed("write", err, "states are not cached; the ledger holds them")
    return found


def get_progress(prefix: str, alias: str, name: str) -> tuple[int, int] | None:
    """``(bytes_done, bytes_total)`` of a running transfer from the cache, if it is there."""
    try:
        value = _cache().get(cache_key(prefix, alias, name) + ":progress")
    except Exception:
        return None
    return None if value is None else (int(value[0]), int(value[1]))


# -- the write primitives: called by ``ledger.py`` only, after the row holds the change ------
def write_state(prefix: str, alias: str, name: str, state: FileState) -> None:
    """Set the cached state of *name* (a cache that fails costs speed, never correctness)."""
    try:
        _cache().set(cache_key(prefix, alias, name), state.to_cache(), settings.CACHE_TIMEOUT)
    except Exception as err:
        cache_failed("write", err, "states are not cached; the ledger holds them")


def write_progress(prefix: str, alias: str, name: str, done: int, total: int) -> None:
    """Set a running transfer's progress; it expires on its own."""
    try:
        _cache().set(cache_key(prefix, alias, name) + ":progress", (done, total), PROGRESS_TIMEOUT)
    except Exception:
        logger.debug("could not write the progress of %r", name, exc_info=True)


def drop_state(prefix: str, alias: str, name: str) -> None:
    """Drop the cached state of a deleted file."""
    try:
        _cache().delete(cache_key(prefix, alias, name))
    except Exception as err:
        cache_failed(
            "drop",
            err,
            "a deleted file's cached state stays until it expires (QUEUED_STORAGE_CACHE_TIMEOUT)",
        )


def first_to_mark(prefix: str, what: str, seconds: float) -> bool:
    """Whether this call is the first to mark *what* in the state cache in *seconds*: a guard
    (``cache.add``) that lets one of many processes do some work. ``True`` as well when the
    cache fails, so the guarded work must be safe to repeat."""
    key = cache_key(prefix, "", what) + ":once"
    try:
        return bool(_cache().add(key, os.getpid(), max(1, math.ceil(seconds))))
    except Exception as err:
        cache_failed("guard", err, f"{what} runs unguarded")
        return True
