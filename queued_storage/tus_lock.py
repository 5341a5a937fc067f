"""The lock of one tus upload: its appends serialised, and asked whether one is under way.

Appends to one upload are serialised by an exclusive ``flock`` on its partial file
(``<staging root>/.queued_storage-tus/<id>``), taken without waiting (whoever finds it held gets
:class:`Busy`, which the view answers 409), plus a per-process set, since threads of one
process can share lock ownership on network filesystems. A ``flock`` is released by the kernel
when its process dies, so a web process killed mid-append does not block the upload.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator

__all__ = ["Busy", "appending", "exclusive", "settled"]

#: Uploads an append of this process holds (see the module docstring).
_held: set[str] = set()
_held_lock = threading.Lock()


class Busy(Exception):
    """Another request appends to this upload right now."""


@contextlib.contextmanager
def exclusive(upload_id: str, path: str) -> Iterator[int]:
    """The partial file open for writing, held exclusively; :class:`Busy` if it is held,
    ``FileNotFoundError`` if it is gone."""
    with _held_lock:
        if upload_id in _held:
            raise Busy
        _held.add(upload_id)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy from None
            yield fd
        finally:
            os.close(fd)  # also releases the flock
    finally:
        with _held_lock:
            _held.discard(upload_id)


def appending(upload_id: str, path: str) -> bool:
    """Whether a request appends to the upload right now (its lock is held): this process's
    set, then a shared ``flock`` taken and let go at once."""
    with _held_lock:
        if upload_id in _held:
            return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the flock
    return False


def settled(upload_id: str, path: str, seconds: float) -> bool:
    """Wait, at most *seconds*, until no request appends to the upload; whether none does.

    An append commits its offset before it lets go of the lock, so once the lock was free,
    the row has the offset of every chunk that began before."""
    deadline = time.monotonic() + seconds
    while appending(upload_id, path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
