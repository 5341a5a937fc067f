"""Taking an upload body onto the staging disk without holding it in memory.

The upload views (the ``views`` package, ``tus.py``) are thin; what they rely on lives here:

* :func:`validate_upload_name` refuses names a client must not choose (``..``, absolute paths,
  NUL and control characters, backslashes, empty segments); :func:`validate_url_name` also
  refuses what a URL cannot name unambiguously (still percent-encoded, not UTF-8);
* :func:`spool_stream` copies a request body, one chunk at a time, into a temporary file in the
  *staging* storage's own directory, so that ``QueuedStorage.save()`` (through Django's
  ``FileSystemStorage._save``) moves it into place with a rename instead of a copy;
  :func:`append_stream` appends one to a resumable (tus) upload's partial file;
* :func:`claim_nginx_file` takes a body nginx already wrote to disk, from a configured
  directory only, and moves it into the same spool directory;
* :class:`StagingUploadHandler` is Django's ``TemporaryFileUploadHandler`` writing into that
  spool directory, so multipart form uploads are moved too, whatever ``FILE_UPLOAD_TEMP_DIR`` is.
* :func:`spool_dir`, :func:`tus_dir` and :func:`reservations_dir`: where these live.

Reading the body (:class:`UploadRefused`, :func:`body_idle_timeout`) is
``queued_storage.bodies``'s, the digests a client announces ``queued_storage.checksums``'s,
the reservation of a body being received (:func:`reserve_in_flight`)
``queued_storage.inflight``'s; their names are importable from here too.

Nothing here knows HTTP status codes beyond :class:`UploadRefused`, which carries one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import HttpRequest

from queued_storage.bodies import (
    CLIENT_GONE,
    BodyReader,
    UploadRefused,
    body_idle_timeout,
    idle_refusal,
    idle_timed_out,
)
from queued_storage.checksums import CHECKSUM_ALGORITHMS, ChunkChecksum, ExpectedChecksums
from queued_storage.conf import settings
from queued_storage.exceptions import QueuedStorageConfigError
from queued_storage.inflight import RESERVATIONS_DIRNAME, reserve_in_flight
from queued_storage.names import (
    LEDGER_NAME_LENGTH,
    SPOOL_DIRNAME,
    TUS_DIRNAME,
    client_name_problem,
    stored_name,
    url_name_problem,
)
from queued_storage.staging import start_writeback

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "CLIENT_GONE",
    "SPOOL_DIRNAME",
    "Appended",
    "ChunkChecksum",
    "ExpectedChecksums",
    "StagedFile",
    "StagingUploadHandler",
    "UploadRefused",
    "append_stream",
    "body_idle_timeout",
    "byte_count",
    "claim_nginx_file",
    "idle_refusal",
    "idle_timed_out",
    "parse_byte_count",
    "reservations_dir",
    "reserve_in_flight",
    "spool_dir",
    "spool_stream",
    "tus_dir",
    "validate_upload_name",
    "validate_url_name",
]


# -- names and byte counts ------------------------------------------------------------------------
#: A count of bytes in a header: ASCII digits only (``int()`` would also take ``+1``, ``1_0``,
#: `` 1 `` and Unicode digits, and raise on ``²``), at most 19 of them (an int64).
_BYTE_COUNT = re.compile(r"[0-9]{1,19}")


def parse_byte_count(raw: str) -> int | None:
    """*raw* as a count of bytes or a byte position (ASCII digits, at most 19), else ``None``.

    The one rule for numbers of bytes a client sends in a header (``Content-Length``,
    ``Upload-Offset``, the positions of a ``Range``): ``int()`` of an unbounded string of
    digits costs time quadratic in its length, and Python refuses more than 4,300 digits.
    """
    return int(raw) if _BYTE_COUNT.fullmatch(raw) is not None else None


def byte_count(header: str, raw: str | None) -> int | None:
    """The value of *header*, a count of bytes (``None`` when absent or empty); anything
    else is refused with 400, naming the header."""
    if not raw:
        return None
    count = parse_byte_count(raw)
    if count is None:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise UploadRefused(400, f"{header} {shown!r} is not a count of bytes (digits 0-9).")
    return count


def validate_upload_name(name: str) -> str:
    """*name* if a client may store a file under it, else :class:`UploadRefused` (400).

    The rules are :func:`queued_storage.names.client_name_problem`'s, then every rule
    ``QueuedStorage.save()`` applies (:func:`queued_storage.names.stored_name`), so that a
    name accepted before the body is not refused once the body has arrived.
    """
    reason = client_name_problem(name)
    if reason is not None:
        raise UploadRefused(400, reason)
    try:
        return stored_name(name, LEDGER_NAME_LENGTH)
    except SuspiciousFileOperation as err:
        raise UploadRefused(400, str(err)) from None


def validate_url_name(name: str) -> str:
    """*name*, taken from a URL's path or query string as Django decoded it, if a client may
    store a file under it; else :class:`UploadRefused` (400).

    On top of :func:`validate_upload_name`, the rules of
    :func:`queued_storage.names.url_name_problem` (a percent-escape left after decoding,
    U+FFFD): names that would mean something else to the next component that decodes them.
    """
    reason = url_name_problem(name)
    if reason is not None:
        raise UploadRefused(400, reason)
    return validate_upload_name(name)


# -- the spool directory ------------------------------------------------------------------------
def spool_dir(local: Storage) -> str:
    """The spool directory inside the local (staging) storage's root, created on first use."""
    try:
        root = local.path("")
    except NotImplementedError as err:
        raise QueuedStorageConfigError(
            f"The upload views need a local storage with filesystem paths; "
            f"{type(local).__name__} has none (see check queued_storage.E003)."
        ) from err
    path = os.path.join(root, SPOOL_DIRNAME)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def tus_dir(local: Storage) -> str:
    """The directory of unfinished tus uploads inside the local storage's root (each upload's
    bytes are the file named by its id), created on first use."""
    path = os.path.join(spool_dir(local).removesuffix(SPOOL_DIRNAME), TUS_DIRNAME)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def reservations_dir(local: Storage, host: str) -> str:
    """Where the bodies *host* is receiving into the staging storage *local* are reserved:
    ``<spool>/in-flight/<hash of host>/`` (a host of its own on a shared staging volume)."""
    digest = hashlib.sha256(host.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return os.path.join(spool_dir(local), RESERVATIONS_DIRNAME, digest)


class StagedFile(File):  # type: ignore[type-arg]
    """A complete body in the spool directory, ready for ``storage.save()``.

    It exposes ``temporary_file_path()`` like Django's ``TemporaryUploadedFile``, so
    ``FileSystemStorage._save`` moves it with ``os.rename`` (same filesystem: no copy). Call
    :meth:`discard` afterwards: it removes the spool file if the save did not take it.
    """

    def __init__(self, path: str, name: str, size: int, *, content_type: str = "") -> None:
        super().__init__(open(path, "rb"), name)  # noqa: SIM115  (closed by discard())
        self._path = path
        self.size = size
        #: The type its uploader declared (a tus upload's ``filetype``), kept in the ledger.
        self.content_type = content_type

    def temporary_file_path(self) -> str:
        return self._path

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


#: The ``errno`` of a write to a full disk (or over a quota): a 507 the client can act on.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _new_spool_file(directory: str) -> tuple[int, str]:
    return tempfile.mkstemp(dir=directory, prefix="body-", suffix=".part")


def _write(out: IO[bytes], chunk: bytes) -> None:
    """Write a chunk; a full disk becomes a 507 the client can act on (retry later)."""
    try:
        out.write(chunk)
    except OSError as err:
        if err.errno in _DISK_FULL:
            raise UploadRefused(
                507, "The staging disk is full; nothing was kept. Retry later."
            ) from err
        raise


def spool_stream(
    read: Callable[[int], bytes],
    directory: str,
    *,
    name: str,
    declared: int | None,
    max_bytes: int,
    chunk_size: int,
    expected: ExpectedChecksums,
    idle_timeout: float | None = None,
) -> StagedFile:
    """Copy a request body into a new file in *directory*, ``chunk_size`` bytes at a time.

    ``declared`` is the ``Content-Length`` (``None`` for a chunked body, then ``max_bytes``
    bounds it). A body that ends early (the client disconnected), a read that timed out
    (:func:`body_idle_timeout`; 408, ``idle_timeout`` is named in its message), a stream that
    yields more than was declared, one over ``max_bytes``, or a checksum that does not match,
    leaves nothing behind: the spool file is removed and :class:`UploadRefused` raised.
    """
    body = BodyReader(
        read,
        declared,
        limit=max_bytes,
        chunk_size=chunk_size,
        too_long=f"The body is larger than {max_bytes} bytes; nothing was kept.",
        kept="nothing was kept",
        idle_timeout=idle_timeout,
    )
    fd, path = _new_spool_file(directory)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in body.chunks():
                expected.update(chunk)
                _write(out, chunk)
        if body.cut is not None:
            raise body.cut
        expected.verify()
        return StagedFile(path, name, body.received)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


# -- appending to a resumable upload (queued_storage.tus) -----------------------------------------
@dataclass
class Appended:
    """What :func:`append_stream` kept: ``received`` bytes after the offset, and why it
    stopped early (``refusal``: the client went away or stalled), if it did."""

    received: int
    refusal: UploadRefused | None = None


#: Bytes of a tus chunk between two starts of their write-back (see :func:`append_stream`).
WRITEBACK_WINDOW = 8 * 1024 * 1024
#: A tus chunk of at least this many bytes hands the memory freed after it back to the system
#: (:func:`release_free_memory`; about 0.2 ms).
_TRIM_AFTER = 1024 * 1024


def append_stream(
    read: Callable[[int], bytes],
    fd: int,
    *,
    offset: int,
    declared: int | None,
    remaining: int,
    chunk_size: int,
    checksum: ChunkChecksum | None,
    idle_timeout: float | None = None,
    fsync: bool = True,
) -> Appended:
    """Append a request body to the partial file open at *fd*, from *offset*, in bounded memory.

    Bytes past *offset* (a process killed mid-append wrote them, uncommitted) are cut off
    first. ``declared`` is the ``Content-Length`` (``None``: chunked, bounded by *remaining*,
    the bytes the upload still lacks). A body longer than *remaining* (413) or than its
    ``Content-Length`` (400), or one whose *checksum* does not match (460), is cut off again:
    :class:`UploadRefused`, nothing kept. A client that goes away or stalls keeps what arrived
    (an :class:`Appended` with its ``refusal``), unless it announced a checksum: a chunk that
    cannot be verified is discarded whole. What is kept is on disk (``fsync``) on return.

    With *fsync*, the write-back of every :data:`WRITEBACK_WINDOW` bytes received is started
    as they arrive (:func:`~queued_storage.staging.start_writeback`): the disk writes while the
    client sends, and the ``fsync`` waits for the last window, not for the whole chunk. A
    chunk of a MiB or more ends with :func:`release_free_memory`.
    """
    os.ftruncate(fd, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    written = started = offset
    hasher = checksum.hasher() if checksum is not None else None
    body = BodyReader(
        read,
        declared,
        limit=remaining,
        chunk_size=chunk_size,
        too_long=f"The chunk is longer than the {remaining} bytes the upload lacks.",
        kept=(
            "the chunk was discarded, send it again"
            if checksum is not None
            else "the bytes that arrived were kept; ask for the offset"
        ),
        idle_timeout=idle_timeout,
    )
    try:
        for chunk in body.chunks():
            if hasher is not None:
                hasher.update(chunk)
            _write_fd(fd, chunk)
            written += len(chunk)
            if fsync and written - started >= WRITEBACK_WINDOW:
                start_writeback(fd, started, written - started)
                started = written
        if checksum is not None and hasher is not None:
            if body.cut is not None:
                os.ftruncate(fd, offset)
                return Appended(0, body.cut)
            if hasher.digest() != checksum.digest:
                raise UploadRefused(
                    460,
                    f"Upload-Checksum ({checksum.algorithm}) does not match the chunk; "
                    "it was discarded, send it again.",
                )
        if fsync and body.received:
            os.fsync(fd)
        if body.received >= _TRIM_AFTER:
            release_free_memory()
        return Appended(body.received, body.cut)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, offset)
        raise


def release_free_memory() -> bool:
    """Hand the memory the C allocator holds free back to the system (glibc's
    ``malloc_trim``); whether it could.

    A large body is read in many allocations of about the read size (the server's buffers and
    ours), which glibc keeps, freed, in the heap of the thread that made them. A raw upload is
    one request, on one thread; the chunks of a tus upload arrive as many requests, each on
    whichever thread of the server is free, so each of those threads would keep a heap's
    worth: the process grows by a few MiB per thread the upload met. Trimming after a chunk
    keeps it at one thread's worth. Nothing happens on other C libraries.
    """
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    found: Callable[[int], int] = trim
    return found


def _write_fd(fd: int, chunk: bytes) -> None:
    """Write all of *chunk* at the file position; a full disk is a 507."""
    view = memoryview(chunk)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as err:
        if err.errno in _DISK_FULL:
            raise UploadRefused(507, "The staging disk is full; the chunk was not kept.") from err
        raise


# -- nginx ----------------------------------------------------------------------------------------
def claim_nginx_file(
    given: str,
    base_dir: str,
    directory: str,
    *,
    name: str,
    declared: int | None,
    chunk_size: int,
) -> StagedFile:
    """Move the body nginx wrote at *given* into *directory* (the spool), and return it.

    *given* must name a regular file (not a symlink, a single hard link) inside *base_dir*
    once every symlink is resolved; anything else is refused (400) and nothing is touched.
    The file is moved with a rename when the spool is on the same filesystem, else copied
    from the opened file and the original removed. The moved file is checked to be the one
    that was validated (same device and inode), so swapping the path meanwhile gains nothing.
    """
    if not given or "\x00" in given or any(ord(c) < 32 for c in given):
        raise UploadRefused(400, "X-File-Path is empty or contains control characters.")
    if not os.path.isabs(given):
        raise UploadRefused(400, "X-File-Path must be an absolute path.")
    if ".." in PurePosixPath(given).parts:
        raise UploadRefused(400, "X-File-Path must not contain '..'.")
    base = os.path.realpath(base_dir)
    real = os.path.realpath(given)
    if os.path.commonpath([base, real]) != base or real == base:
        raise UploadRefused(400, "X-File-Path is outside QUEUED_STORAGE_NGINX_UPLOAD_DIR.")
    try:
        src = os.open(given, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UploadRefused(400, "X-File-Path is a symbolic link.") from err
        raise UploadRefused(400, f"X-File-Path cannot be opened ({err.strerror}).") from err
    try:
        info = os.fstat(src)
        if not stat.S_ISREG(info.st_mode):
            raise UploadRefused(400, "X-File-Path is not a regular file.")
        if info.st_nlink != 1:
            raise UploadRefused(400, "X-File-Path has other hard links; refusing to move it.")
        if declared is not None and info.st_size != declared:
            raise UploadRefused(
                400,
                f"The file nginx wrote has {info.st_size} bytes, the request declared "
                f"{declared}; nothing was moved.",
            )
        fd, path = _new_spool_file(directory)
        os.close(fd)
        try:
            if info.st_dev == os.stat(directory).st_dev:
                os.rename(real, path)
                moved = os.lstat(path)
                if (moved.st_dev, moved.st_ino) != (info.st_dev, info.st_ino):
                    # The path was swapped after it was checked: put nothing in the spool.
                    os.unlink(path)
                    raise UploadRefused(400, "X-File-Path changed while it was being moved.")
            else:
                with open(path, "wb") as out:
                    while chunk := os.read(src, chunk_size):
                        _write(out, chunk)
                current = os.lstat(real)
                if (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino):
                    os.unlink(real)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
    finally:
        os.close(src)
    return StagedFile(path, name, info.st_size)


# -- multipart forms ------------------------------------------------------------------------------
class StagedUploadedFile(TemporaryUploadedFile):
    """Django's ``TemporaryUploadedFile``, created in a given directory (the spool)."""

    def __init__(
        self,
        directory: str,
        name: str,
        content_type: str | None,
        size: int,
        charset: str | None,
        content_type_extra: dict[str, bytes] | None = None,
    ) -> None:
        _, ext = os.path.splitext(name)
        fh = tempfile.NamedTemporaryFile(suffix=".upload" + ext, dir=directory)  # noqa: SIM115
        UploadedFile.__init__(self, fh, name, content_type, size, charset, content_type_extra)


class StagingUploadHandler(TemporaryFileUploadHandler):
    """``TemporaryFileUploadHandler`` writing into the staging storage's spool directory.

    With it, ``request.FILES`` files are on the staging filesystem as they arrive, and
    ``QueuedStorage.save()`` moves them into place with a rename, even when
    ``FILE_UPLOAD_TEMP_DIR`` (or the system temporary directory) is another filesystem.
    Memory per file is Django's chunk size (64 KiB by default).
    """

    def __init__(self, request: HttpRequest | None = None, *, directory: str | None = None) -> None:
        super().__init__(request)
        self.directory = directory or spool_dir(_default_local())

    def new_file(
        self,
        field_name: str,
        file_name: str,
        content_type: str,
        content_length: int | None,
        charset: str | None = None,
        content_type_extra: dict[str, bytes] | None = None,
    ) -> None:
        super(TemporaryFileUploadHandler, self).new_file(
            field_name, file_name, content_type, content_length, charset, content_type_extra
        )
        self.file = StagedUploadedFile(
            self.directory,
            self.file_name or "upload",
            self.content_type,
            0,
            self.charset,
            self.content_type_extra,
        )


def _default_local() -> Storage:
    storage = storages[settings.UPLOAD_STORAGE]
    local: Storage = getattr(storage, "local", storage)
    return local
