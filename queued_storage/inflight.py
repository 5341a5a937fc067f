"""Bodies being received, held in the staging budget for every web process of the host.

One concern: :func:`reserve_in_flight`, a reservation per body being received (a file named
by its size, ``flock``-ed by its process) and the count of the live ones. Where the
reservations of a host live is :func:`queued_storage.uploads.reservations_dir`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import uuid
from collections.abc import Callable, Iterator

__all__ = ["RESERVATIONS_DIRNAME", "reserve_in_flight"]

#: Directory inside the spool with one directory per host of the bodies being received.
RESERVATIONS_DIRNAME = "in-flight"

#: Reservations of this process (see :func:`_reserved_bytes`).
_mine: set[str] = set()
_mine_lock = threading.Lock()


@contextlib.contextmanager
def reserve_in_flight(directory: str, size: int, check: Callable[[int], None]) -> Iterator[None]:
    """Hold *size* bytes of the staging budget while a body is received; *check* decides.

    The budget query counts the files that wait on the disk; a body being received is on
    the disk too but in no row yet, so every request receiving one declares it here: a file
    in *directory*, named by its size, that its process holds locked (``flock``) until the
    block ends, however it ends (an answer, an error, a client gone). Every web process of
    the host (gunicorn and uvicorn workers alike) sees every other's, and a process that dies
    lets go of its locks: the next reservation finds its file unlocked and removes it.

    Reserving is one step for the whole host: under an exclusive lock of *directory* itself,
    *check* is called with the bytes the live reservations hold (it raises to refuse, and
    nothing is reserved), then the file is made; so a burst of concurrent requests is
    admitted one after the other, each counting those before it. Cost: a ``flock`` and one
    open per body being received on the host; no query beyond what *check* makes.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    lock = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        check(_reserved_bytes(directory))
        path = os.path.join(directory, f"{size}-{uuid.uuid4().hex}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with _mine_lock:
            _mine.add(path)
    finally:
        os.close(lock)  # also releases the flock
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with _mine_lock:
            _mine.discard(path)
        os.close(fd)


def _reserved_bytes(directory: str) -> int:
    """The bytes the live reservations in *directory* hold; files of dead processes (no
    one holds their lock) are removed. This process's own are known without a lock (on a
    network filesystem, ``flock`` may be per process)."""
    total = 0
    with _mine_lock:
        mine = set(_mine)
    with os.scandir(directory) as found:
        entries = list(found)
    for entry in entries:
        size, dash, _ = entry.name.partition("-")
        if not dash or not size.isdigit():
            continue
        if entry.path in mine:
            total += int(size)
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # released meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            total += int(size)
            continue
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)  # its process died (or just released it)
    return total
