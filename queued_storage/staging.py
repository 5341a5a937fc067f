"""Work on the staging disk for ``QueuedStorage.save()``: flushing a staged file to stable
storage (invariant 11), the free names it may move to, and moving it to another name without
replacing a file; starting the write-back of bytes being received (:func:`start_writeback`).

Each function takes the local storage: it uses the filesystem where the storage has paths, and
the Storage API otherwise.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
import sys
from collections.abc import Callable, Iterator

from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import Storage

from queued_storage.conf import settings
from queued_storage.names import check_length

__all__ = ["declared_size", "free_names", "make_durable", "move_local", "start_writeback"]

#: ``SYNC_FILE_RANGE_WRITE`` of ``<fcntl.h>`` (Linux): start writing the range, do not wait.
_SYNC_FILE_RANGE_WRITE = 2


def make_durable(local: Storage, name: str) -> None:
    """Flush the local file *name* and the folders that name it to disk (invariant 11).

    A committed ``pending`` row promises bytes that are there after a power cut: the file's
    data, and each directory entry from the storage's root down to it (a save may have
    made the folders). Off with ``QUEUED_STORAGE_FSYNC = False``; nothing to do for a
    local storage without paths.
    """
    if not settings.FSYNC:
        return
    try:
        path, root = local.path(name), local.path("")
    except NotImplementedError:
        return
    _fsync(path)
    directory = os.path.dirname(path)
    while True:
        _fsync(directory)
        if os.path.samefile(directory, root) or os.path.dirname(directory) == directory:
            return
        directory = os.path.dirname(directory)


def move_local(local: Storage, source: str, target: str) -> bool:
    """Move the local file *source* to *target*; ``False`` when *target* exists.

    A hard link and an unlink where the local storage has paths (never replaces an
    existing file, costs no copy); through the Storage API otherwise.
    """
    source_path: str | None
    try:
        source_path, target_path = local.path(source), local.path(target)
    except NotImplementedError:
        source_path = target_path = None
    if source_path is not None and target_path is not None:
        try:
            os.link(source_path, target_path)
        except FileExistsError:
            return False
        except OSError:
            pass  # no hard links on this filesystem: copy below
        else:
            os.unlink(source_path)
            return True
    if local.exists(target):
        return False
    with local.open(source, "rb") as fh:
        moved = local.save(target, fh)
    if moved != target:
        local.delete(moved)
        return False
    local.delete(source)
    return True


def free_names(
    name: str, first: str, max_length: int | None, alternative: Callable[[str, str], str]
) -> Iterator[str]:
    """*first*, then up to 99 alternatives of *name* as ``get_available_name`` makes them
    (*alternative* is the storage's ``get_alternative_name``: a random suffix), the file root
    truncated to fit *max_length*. Each is checked against the name limits."""
    check_length(first)
    yield first
    dir_name, file_name = os.path.split(name)
    file_ext = "".join(pathlib.PurePath(file_name).suffixes)
    file_root = file_name.removesuffix(file_ext)
    for _ in range(99):
        candidate = os.path.join(dir_name, alternative(file_root, file_ext))
        if max_length is not None and len(candidate) > max_length:
            file_root = file_root[: -(len(candidate) - max_length)]
            if not file_root:
                raise SuspiciousFileOperation(
                    f"Storage can not find an available filename for {name!r}. Please "
                    "make sure that the corresponding file field allows sufficient "
                    "max_length."
                )
            candidate = os.path.join(dir_name, alternative(file_root, file_ext))
        check_length(candidate)
        yield candidate


def declared_size(content: object) -> int | None:
    """The size *content* says it has, or ``None`` when it cannot say."""
    try:
        return int(content.size)  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError, OSError):
        return None


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Start writing *length* bytes of the file open at *fd*, from *offset*, to the disk, without
    waiting for them (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``); whether it could.

    It promises nothing: an ``fsync`` still decides what is on stable storage (and reports a
    write that failed). Called as a body arrives, it lets the disk write what was received
    while the rest is still coming, so the ``fsync`` at the end waits for the last bytes only,
    not for all of them. ``False`` where the system has no such call (nothing happens).
    """
    call = _sync_file_range()
    if call is None:
        return False
    return call(fd, offset, length, _SYNC_FILE_RANGE_WRITE) == 0


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (it releases the GIL while it runs), or ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    found: Callable[[int, int, int, int], int] = call
    return found


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
