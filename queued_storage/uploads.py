"""Taking an upload body onto the staging disk without holding it in memory.

The upload views (the ``views`` package, ``tus.py``) are thin; what they rely on lives here:

* :func:`validate_upload_name` refuses names a client must not choose (``..``, absolute paths,
  NUL and control characters, backslashes, empty segments); :func:`validate_url_name` also
  refuses what a URL cannot name unambiguously (still percent-encoded, not UTF-8);
* :func:`spool_stream` copies a request body, one chunk at a time, into a temporary file in the
  *staging* storage's own directory, so that ``QueuedStorage.save()`` (through Django's
  ``FileSystemStorage._save``) moves it into place with a rename instead of a copy;
* :func:`claim_nginx_file` takes a body nginx already wrote to disk, from a configured
  directory only, and moves it into the same spool directory;
* :class:`StagingUploadHandler` is Django's ``TemporaryFileUploadHandler`` writing into that
  spool directory, so multipart form uploads are moved too, whatever ``FILE_UPLOAD_TEMP_DIR`` is.
* :func:`body_idle_timeout` makes each read of a body give up when the client stops sending
  (``QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT``), where the server lets the view set that.
* :func:`reserve_in_flight` holds a body's declared length in the staging budget while it is
  received, for every web process of the host to see.

Nothing here knows HTTP status codes beyond :class:`UploadRefused`, which carries one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import functools
import hashlib
import logging
import os
import re
import socket
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from django.core.exceptions import RequestAborted, SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import HttpRequest, UnreadablePostError

from queued_storage.asgi import BODY_STREAM
from queued_storage.conf import settings
from queued_storage.exceptions import QueuedStorageConfigError, QueuedStorageError
from queued_storage.names import (
    LEDGER_NAME_LENGTH,
    SPOOL_DIRNAME,
    TUS_DIRNAME,
    client_name_problem,
    stored_name,
    url_name_problem,
)

if TYPE_CHECKING:
    from _hashlib import HASH

__all__ = [
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
    "parse_byte_count",
    "reservations_dir",
    "reserve_in_flight",
    "spool_dir",
    "spool_stream",
    "tus_dir",
    "validate_upload_name",
    "validate_url_name",
]

logger = logging.getLogger(__name__)


class UploadRefused(QueuedStorageError):
    """The upload cannot be accepted; ``status`` is the HTTP status the views answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- names --------------------------------------------------------------------------------------
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


# -- checksums ------------------------------------------------------------------------------------
@dataclass
class ExpectedChecksums:
    """Digests a client announced (``Content-MD5``, ``X-Checksum-SHA256``), checked on arrival."""

    md5: bytes | None = None
    sha256: bytes | None = None
    _hashers: dict[str, HASH] = field(default_factory=dict, repr=False)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> ExpectedChecksums:
        """Parse the headers; a malformed value is refused (400) before the body is read."""
        found = cls()
        md5 = headers.get("Content-MD5")
        if md5:
            try:
                found.md5 = base64.b64decode(md5.strip(), validate=True)
            except (binascii.Error, ValueError):
                found.md5 = None
            if found.md5 is None or len(found.md5) != 16:
                raise UploadRefused(400, "Content-MD5 must be the base64 of a 16-byte MD5.")
        sha256 = headers.get("X-Checksum-SHA256")
        if sha256:
            try:
                found.sha256 = bytes.fromhex(sha256.strip())
            except ValueError:
                found.sha256 = None
            if found.sha256 is None or len(found.sha256) != 32:
                raise UploadRefused(400, "X-Checksum-SHA256 must be 64 hexadecimal digits.")
        if found.md5 is not None:
            found._hashers["md5"] = hashlib.md5(usedforsecurity=False)
        if found.sha256 is not None:
            found._hashers["sha256"] = hashlib.sha256()
        return found

    def update(self, chunk: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(chunk)

    def verify(self) -> None:
        """Raise :class:`UploadRefused` (400) when a digest of what arrived differs."""
        if self.md5 is not None and self._hashers["md5"].digest() != self.md5:
            raise UploadRefused(400, "Content-MD5 does not match the received body; not kept.")
        if self.sha256 is not None and self._hashers["sha256"].digest() != self.sha256:
            raise UploadRefused(
                400, "X-Checksum-SHA256 does not match the received body; not kept."
            )

    def verify_file(self, path: str, chunk_size: int) -> None:
        """Hash a file already on disk (the nginx path) and verify it."""
        if not self._hashers:
            return
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_size):
                self.update(chunk)
        self.verify()


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


class StagedFile(File):  # type: ignore[type-arg]
    """A complete body in the spool directory, ready for ``storage.save()``.

    It exposes ``temporary_file_path()`` like Django's ``TemporaryUploadedFile``, so
    ``FileSystemStorage._save`` moves it with ``os.rename`` (same filesystem: no copy). Call
    :meth:`discard` afterwards: it removes the spool file if the save did not take it.
    """

    def __init__(self, path: str, name: str, size: int) -> None:
        super().__init__(open(path, "rb"), name)  # noqa: SIM115  (closed by discard())
        self._path = path
        self.size = size

    def temporary_file_path(self) -> str:
        return self._path

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


def _new_spool_file(directory: str) -> tuple[int, str]:
    return tempfile.mkstemp(dir=directory, prefix="body-", suffix=".part")


def _write(out: IO[bytes], chunk: bytes) -> None:
    """Write a chunk; a full disk becomes a 507 the client can act on (retry later)."""
    try:
        out.write(chunk)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UploadRefused(
                507, "The staging disk is full; nothing was kept. Retry later."
            ) from err
        raise


# -- bodies being received, in the staging budget ------------------------------------------------
#: Directory inside the spool with one directory per host of the bodies being received.
RESERVATIONS_DIRNAME = "in-flight"

#: Reservations of this process (see :func:`_reserved_bytes`).
_mine: set[str] = set()
_mine_lock = threading.Lock()


def reservations_dir(local: Storage, host: str) -> str:
    """Where the bodies *host* is receiving into the staging storage *local* are reserved:
    ``<spool>/in-flight/<hash of host>/`` (a host of its own on a shared staging volume)."""
    digest = hashlib.sha256(host.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return os.path.join(spool_dir(local), RESERVATIONS_DIRNAME, digest)


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


# -- request bodies -------------------------------------------------------------------------------
#: What a body stream raises when the client went away mid-body (WSGI servers raise OSError
#: subclasses; Django raises UnreadablePostError / RequestAborted).
CLIENT_GONE = (OSError, UnreadablePostError, RequestAborted)

#: The client's socket in a gunicorn ``environ`` (every worker class sets it).
GUNICORN_SOCKET = "gunicorn.socket"


@contextlib.contextmanager
def body_idle_timeout(meta: Mapping[str, Any], seconds: float | None) -> Iterator[bool]:
    """Within the block, a read of the request body waits at most *seconds* for a byte.

    A read that waits longer raises a ``TimeoutError`` (Django wraps it in
    ``UnreadablePostError``; ``queued_storage.asgi`` raises ``RequestAborted`` from it), which
    :func:`spool_stream` and the form view answer with 408. It is a limit per read, not per
    upload: a slow client that keeps sending is never cut off. Yields whether it applies:

    * gunicorn, HTTP/1.x (sync, gthread, gevent workers): ``environ["gunicorn.socket"]`` is
      the client's socket. Its timeout is set for the block and put back afterwards, so the
      response is written as gunicorn would write it. (Over HTTP/2, gunicorn bounds each body
      read by its own ``--timeout`` and the socket is shared: it is left alone.)
    * ``queued_storage.asgi``: its body stream's wait for the next ASGI message.
    * Django's own ``ASGIHandler`` has the whole body before the view runs: nothing to do.
    * Any other WSGI server (``runserver``, uWSGI, mod_wsgi) does not expose its socket; its
      own limits apply, and that is logged once per server software.

    ``None`` changes nothing: the server's limits apply (the streaming ASGI handler's is
    ``StreamingASGIHandler.body_timeout``, 60 s).
    """
    if seconds is None:
        yield False
        return
    stream = meta.get(BODY_STREAM)
    if stream is not None:
        stream.timeout = seconds
        yield True
        return
    sock = meta.get(GUNICORN_SOCKET)
    http1 = str(meta.get("SERVER_PROTOCOL", "")).startswith("HTTP/1")
    if sock is None or not http1 or not hasattr(sock, "settimeout"):
        if "wsgi.input" in meta and http1:
            _log_no_idle_timeout(str(meta.get("SERVER_SOFTWARE", "an unknown WSGI server")))
        yield False
        return
    previous = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        yield True
    except BaseException as err:
        if idle_timed_out(err):
            # The rest of the body will not be read: no more reads on this connection, so
            # gunicorn closes it after the 408 (some releases would keep it alive, waiting).
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
        raise
    finally:
        with contextlib.suppress(OSError):  # the socket may be closed by now
            sock.settimeout(previous)


@functools.cache
def _log_no_idle_timeout(server: str) -> None:
    logger.warning(
        "QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT cannot be applied under %s (only under gunicorn and "
        "queued_storage.asgi): a client that stops sending holds its thread as long as the "
        "server allows. Put nginx in front or serve through queued_storage.asgi (docs/uploads.md, "
        "Slow clients).",
        server,
    )


def idle_timed_out(err: BaseException) -> bool:
    """Whether a body read failed because the client sent nothing for the idle timeout."""
    seen: BaseException | None = err
    for _ in range(8):  # e.g. UploadRefused from UnreadablePostError from TimeoutError
        if seen is None:
            return False
        if isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def idle_refusal(seconds: float | None, kept: str = "nothing was kept") -> UploadRefused:
    """The 408 for a client that stopped sending (``seconds``: the idle timeout, if known;
    ``kept``: what the server did with the bytes that arrived)."""
    waited = f"for {seconds:g} s" if seconds is not None else "for too long"
    return UploadRefused(408, f"No bytes of the body arrived {waited}; {kept}.")


@dataclass
class BodyReader:
    """A request body, ``chunk_size`` bytes at a time, never more than ``limit`` bytes.

    ``declared`` is the ``Content-Length`` (``None`` for a chunked body; then ``limit`` bounds
    it and ``too_long`` is the 413's message). A body longer than either raises
    :class:`UploadRefused`. One that stops early (the client went away, stalled for the idle
    timeout, or sent less than it declared) ends :meth:`chunks`, with ``cut`` saying why:
    the caller decides what becomes of the bytes that arrived, and ``kept`` says it in the
    refusal (the raw upload view removes them, a tus chunk keeps them).
    """

    read: Callable[[int], bytes]
    declared: int | None
    limit: int
    chunk_size: int
    too_long: str
    kept: str
    idle_timeout: float | None = None
    received: int = 0
    cut: UploadRefused | None = None

    def chunks(self) -> Iterator[bytes]:
        limit = self.declared if self.declared is not None else self.limit
        while True:
            want = self.chunk_size
            if self.declared is not None:
                want = min(want, limit - self.received)
                if want <= 0:
                    break
            try:
                chunk = self.read(want)
            except CLIENT_GONE as err:
                if idle_timed_out(err):
                    self.cut = idle_refusal(self.idle_timeout, self.kept)
                else:
                    self.cut = UploadRefused(
                        400,
                        f"The client stopped sending after {self.received} bytes ({err!r}); "
                        f"{self.kept}.",
                    )
                self.cut.__cause__ = err
                return
            if not chunk:
                break
            self.received += len(chunk)
            if self.received > limit:
                if self.declared is None:
                    raise UploadRefused(413, self.too_long)
                raise UploadRefused(
                    400, f"The body is longer than its Content-Length ({self.declared})."
                )
            yield chunk
        if self.declared is None:
            return
        if self.received < self.declared:
            self.cut = UploadRefused(
                400,
                f"The body ended after {self.received} of {self.declared} bytes (the client "
                f"disconnected?); {self.kept}.",
            )
            return
        # A stream that is not bounded by the server (Django's ASGI request reads whatever
        # the body file holds) must not have more than was declared.
        try:
            extra = self.read(1)
        except CLIENT_GONE:
            extra = b""
        if extra:
            raise UploadRefused(
                400, f"The body is longer than its Content-Length ({self.declared})."
            )


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
#: ``Upload-Checksum`` algorithms (tus checksum extension), by their tus name.
CHECKSUM_ALGORITHMS: dict[str, Callable[[], HASH]] = {
    "sha1": lambda: hashlib.sha1(usedforsecurity=False),
    "md5": lambda: hashlib.md5(usedforsecurity=False),
    "sha256": hashlib.sha256,
}


@dataclass
class ChunkChecksum:
    """The digest a tus client announced for one chunk (``Upload-Checksum: <algo> <base64>``)."""

    algorithm: str
    digest: bytes

    @classmethod
    def from_header(cls, value: str | None) -> ChunkChecksum | None:
        """Parse the header; an unknown algorithm or a malformed digest is a 400, unread."""
        if not value:
            return None
        algorithm, _, encoded = value.strip().partition(" ")
        factory = CHECKSUM_ALGORITHMS.get(algorithm.lower())
        if factory is None:
            known = ", ".join(CHECKSUM_ALGORITHMS)
            raise UploadRefused(
                400, f"Upload-Checksum algorithm {algorithm!r} is not supported; use {known}."
            )
        try:
            digest = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != factory().digest_size:
            raise UploadRefused(400, f"Upload-Checksum is not the base64 of a {algorithm} digest.")
        return cls(algorithm.lower(), digest)

    def hasher(self) -> HASH:
        return CHECKSUM_ALGORITHMS[self.algorithm]()


@dataclass
class Appended:
    """What :func:`append_stream` kept: ``received`` bytes after the offset, and why it
    stopped early (``refusal``: the client went away or stalled), if it did."""

    received: int
    refusal: UploadRefused | None = None


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
    """
    os.ftruncate(fd, offset)
    os.lseek(fd, offset, os.SEEK_SET)
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
        return Appended(body.received, body.cut)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, offset)
        raise


def _write_fd(fd: int, chunk: bytes) -> None:
    """Write all of *chunk* at the file position; a full disk is a 507."""
    view = memoryview(chunk)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
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

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super(TemporaryFileUploadHandler, self).new_file(*args, **kwargs)
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
