"""The transfer engine: stream one file from the local to the remote storage and verify it.

Plain functions, no Celery, no cache, no ledger: the task layer (``tasks.py``) leases the file,
calls :func:`transfer_file` and records the outcome. This module is the engine's facade: every
other module asks the remote storage through it (exists, delete, list, abort an open upload,
list open uploads), whatever the remote is.

Two paths:

* **S3** (``storages.backends.s3.S3Storage`` and subclasses, local storage with paths): the one
  S3 adapter, ``queued_storage._s3`` (see ``_s3/upload.py``): one ``PutObject`` below
  ``QUEUED_STORAGE_MULTIPART_THRESHOLD``, else a resumable multipart upload with parts read by
  offset, at most ``MAX_CONCURRENCY`` in flight, each part checked against the checksum the
  server computed, the final checksum and size checked, and the object created with
  ``If-None-Match: *`` so that nothing is ever overwritten.
* **Any other storage** (the slow path): a chunked copy through the Storage API, verified by
  reading the remote copy back and comparing SHA-256 digests.

A mismatch deletes the remote object and raises :class:`ChecksumMismatch`; the local copy is
never touched here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, cast

from django.core.files import File
from django.core.files.storage import Storage
from storages.backends.s3 import S3Storage

from queued_storage._s3 import direct as s3_direct
from queued_storage._s3 import objects as s3_objects
from queued_storage._s3.checksums import CHECKS
from queued_storage._s3.client import is_s3, s3_client, s3_key
from queued_storage._s3.errors import CONNECTION_ERRORS as S3_CONNECTION_ERRORS
from queued_storage._s3.errors import TIMEOUT_ERRORS as S3_TIMEOUT_ERRORS
from queued_storage._s3.errors import translate as translate_s3_error
from queued_storage._s3.objects import OpenUpload
from queued_storage._s3.upload import Checkpoint, Part, Resume, s3_transfer
from queued_storage.conf import settings
from queued_storage.exceptions import (
    ChecksumMismatch,
    InfrastructureError,
    LocalFileMissing,
    PermanentTransferError,
    TransferError,
    TransientTransferError,
)

__all__ = [
    "Checkpoint",
    "EngineConfig",
    "OpenUpload",
    "Part",
    "ProgressCallback",
    "RemoteObject",
    "Resume",
    "TransferResult",
    "abort_open_upload",
    "classify_error",
    "delete_remote",
    "list_remote",
    "open_uploads",
    "remote_checksum_matches",
    "remote_exists",
    "remote_exists_within",
    "remote_holds",
    "remote_object",
    "s3_direct",
    "transfer_file",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called with ``(bytes_done, bytes_total)`` from the thread that called the engine."""


@dataclass(frozen=True)
class EngineConfig:
    multipart_threshold: int
    multipart_chunksize: int
    max_concurrency: int
    chunk_size: int
    checksum: str = "crc32"

    @classmethod
    def from_settings(cls) -> EngineConfig:
        return cls(
            multipart_threshold=settings.MULTIPART_THRESHOLD,
            multipart_chunksize=settings.MULTIPART_CHUNKSIZE,
            max_concurrency=settings.MAX_CONCURRENCY,
            chunk_size=settings.CHUNK_SIZE,
            checksum=settings.CHECKSUM,
        )


@dataclass(frozen=True)
class TransferResult:
    size: int
    checksum: str
    algorithm: str


# --- error classification -----------------------------------------------------------------
#: Connection failures and timeouts, botocore's and the standard library's: infrastructure.
_CONNECTION_ERRORS = (*S3_CONNECTION_ERRORS, ConnectionError, TimeoutError)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify_error(exc: BaseException, name: str) -> TransferError:
    """Turn any error of a transfer into a :class:`TransferError` of the kind the retry policy
    needs (see ``exceptions.py``).

    Throttling, timeouts, connection errors, 5xx and a missing bucket are
    :class:`InfrastructureError` (retried for a time, spending no budget); access denied, bad
    credentials and other 4xx are permanent. Anything unknown is a transient error counted
    against the retry budget: the budget bounds it, and a permanent error retried a few times
    loses nothing.
    """
    if isinstance(exc, TransferError):
        return exc
    for err in _chain(exc):
        translated = translate_s3_error(err, name)
        if translated is not None:
            return translated
        if isinstance(err, _CONNECTION_ERRORS):
            return InfrastructureError(
                f"Transfer of {name!r} failed on a connection error: {err}", name=name
            )
    return TransientTransferError(f"Transfer of {name!r} failed: {exc!r}", name=name)


# --- engine -------------------------------------------------------------------------------
def _local_path(local: Storage, name: str) -> str | None:
    try:
        return local.path(name)
    except NotImplementedError:
        return None


def _missing(name: str) -> LocalFileMissing:
    return LocalFileMissing(
        f"The local copy of {name!r} is missing, so it cannot be transferred. If the file "
        "was deleted on purpose, delete it through the storage too; otherwise restore it "
        "and retry with storage.transfer(name).",
        name=name,
    )


def _open_local(local: Storage, name: str) -> IO[bytes]:
    try:
        return local.open(name, "rb")
    except FileNotFoundError as err:
        raise _missing(name) from err


def _read_chunks(fh: IO[bytes], size: int) -> Iterator[bytes]:
    while True:
        chunk = fh.read(size)
        if not chunk:
            return
        yield chunk


def _sha256(fh: IO[bytes], read_size: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    for chunk in _read_chunks(fh, read_size):
        digest.update(chunk)
        total += len(chunk)
    return digest.hexdigest(), total


def transfer_file(
    local: Storage,
    remote: Storage,
    name: str,
    *,
    config: EngineConfig | None = None,
    progress: ProgressCallback | None = None,
    resume: Resume | None = None,
    checkpoint: Checkpoint | None = None,
) -> TransferResult:
    """Copy *name* from *local* to *remote* under the same name and verify the remote copy.

    Raises :class:`LocalFileMissing` when there is nothing to send, :class:`ChecksumMismatch`
    when the remote copy differs (the remote object is deleted first), and otherwise a
    :class:`TransientTransferError` or :class:`PermanentTransferError` from
    :func:`classify_error`.
    """
    config = config or EngineConfig.from_settings()
    try:
        if is_s3(remote):
            path = _local_path(local, name)
            if path is not None:
                return _transfer_s3(local, remote, name, path, config, progress, resume, checkpoint)
        return _transfer_generic(local, remote, name, config, progress)
    except TransferError:
        raise
    except FileNotFoundError as err:
        if not local.exists(name):
            raise LocalFileMissing(
                f"The local copy of {name!r} disappeared during its transfer.", name=name
            ) from err
        raise classify_error(err, name) from err
    except Exception as err:
        raise classify_error(err, name) from err


def _transfer_s3(
    local: Storage,
    remote: S3Storage,
    name: str,
    path: str,
    config: EngineConfig,
    progress: ProgressCallback | None,
    resume: Resume | None,
    checkpoint: Checkpoint | None,
) -> TransferResult:
    if not os.path.exists(path):
        raise _missing(name)
    result = s3_transfer(
        remote,
        name,
        path,
        multipart_threshold=config.multipart_threshold,
        part_size=config.multipart_chunksize,
        max_concurrency=config.max_concurrency,
        read_size=config.chunk_size,
        checksum=config.checksum,
        progress=progress,
        resume=resume,
        checkpoint=checkpoint,
    )
    return TransferResult(size=result.size, checksum=result.checksum, algorithm=result.algorithm)


def _transfer_generic(
    local: Storage,
    remote: Storage,
    name: str,
    config: EngineConfig,
    progress: ProgressCallback | None,
) -> TransferResult:
    """The slow path: a chunked copy through the Storage API, verified by reading it back."""
    with _open_local(local, name) as fh:
        expected, size = _sha256(fh, config.chunk_size)
    if remote.exists(name):
        # Our own leftover from an earlier attempt: the ledger reserved this name for us.
        remote.delete(name)
    with _open_local(local, name) as fh:
        stored = remote.save(name, File(fh, name))
    if stored != name:
        remote.delete(stored)
        raise PermanentTransferError(
            f"The remote storage saved {name!r} as {stored!r}; queued_storage needs the same "
            "name on both sides. Configure the remote storage not to rename files.",
            name=name,
        )
    if progress is not None:
        progress(size, size)
    remote_size = remote.size(name)
    with remote.open(name, "rb") as rh:
        actual, _ = _sha256(rh, config.chunk_size)
    if remote_size != size or actual != expected:
        remote.delete(name)
        raise ChecksumMismatch(
            f"The remote copy of {name!r} does not match the local file (sha256 {actual} != "
            f"{expected}); it was deleted and the transfer will be retried.",
            name=name,
        )
    return TransferResult(size=size, checksum=expected, algorithm="sha256")


# --- the remote storage's own questions ---------------------------------------------------
def remote_exists(remote: Storage, name: str, *, timeout: float | None = None) -> bool:
    """Whether the remote holds *name*, whatever ``file_overwrite`` says (one HEAD on S3).

    With *timeout*, S3 is asked by a client that neither waits longer nor retries (botocore's
    defaults would wait 60 s per read, three times); see :func:`remote_exists_within`.
    """
    if is_s3(remote):
        return s3_objects.exists(remote, name, timeout=timeout)
    return remote.exists(name)


@dataclass(frozen=True)
class RemoteObject:
    """What the remote says of one object without sending it: its size and the checksums it
    keeps (``""`` where it keeps none: any storage but S3)."""

    size: int
    etag: str = ""
    crc32: str = ""


def remote_object(
    remote: Storage, name: str, *, timeout: float | None = None
) -> RemoteObject | None:
    """Size and kept checksums of *name* on the remote, ``None`` when it does not hold it.

    Nothing is downloaded: one HEAD on S3 (with S3's stored checksum; *timeout*: see
    :func:`remote_exists`), ``exists()`` and ``size()`` elsewhere. Errors other than "not
    there" propagate, so that a network failure is never taken for a missing object.
    """
    if is_s3(remote):
        found = s3_objects.head(remote, name, timeout=timeout)
        return None if found is None else RemoteObject(found.size, found.etag, found.crc32)
    if not remote.exists(name):
        return None
    try:
        return RemoteObject(size=remote.size(name))
    except FileNotFoundError:
        return None  # deleted between the two questions


#: The recorded ``checksum_algorithm`` values an S3 ETag proves (MD5 of a plain object, MD5 of
#: the parts' MD5s, the ETag ``seed`` recorded), and those S3's stored CRC32 proves.
_BY_ETAG = frozenset({CHECKS["md5"].whole, CHECKS["md5"].composite, "s3-etag"})
_BY_CRC32 = frozenset({CHECKS["crc32"].whole, CHECKS["crc32"].composite})


def remote_checksum_matches(algorithm: str, checksum: str, found: RemoteObject) -> bool | None:
    """Whether *found* carries the *checksum* the ledger recorded with *algorithm*.

    ``None`` when the two cannot be compared: the ledger recorded none, or one the remote
    does not keep (``sha256`` of a read-back or generic copy, a task's own ``hook``), or the
    remote keeps no such checksum for this object (an S3 server without stored checksums).
    """
    if not checksum:
        return None
    if algorithm in _BY_ETAG and found.etag:
        return found.etag == checksum
    if algorithm in _BY_CRC32 and found.crc32:
        return CHECKS["crc32"].same(found.crc32, checksum)
    return None


def remote_exists_within(remote: Storage, name: str, timeout: float) -> bool:
    """:func:`remote_exists` with a hard deadline of *timeout* seconds, whatever the remote.

    The question runs in a daemon thread, so that a storage whose ``exists()`` hangs (a
    black-holed endpoint, a stuck network mount) cannot hold the caller; S3 is also asked
    with a client that gives up by itself after *timeout*. Raises :class:`TimeoutError` when
    no answer came in time (the deadline here, or the S3 client's own timeout, whichever
    fires first), else what the remote raised.
    """
    if is_s3(remote):
        # Built here, outside the deadline: making a client loads botocore's service model
        # (local work, a few hundred milliseconds the first time), which is not the remote's.
        s3_client(cast(S3Storage, remote), timeout=timeout)
    answer: list[bool] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def ask() -> None:
        try:
            answer.append(remote_exists(remote, name, timeout=timeout))
        except BaseException as err:  # handed to the caller below
            failure.append(err)
        finally:
            done.set()

    threading.Thread(target=ask, name="queued-storage-remote-check", daemon=True).start()
    late = f"the remote storage did not answer within {timeout:g} s"
    if not done.wait(timeout):
        raise TimeoutError(late)
    if failure:
        if isinstance(failure[0], S3_TIMEOUT_ERRORS):
            raise TimeoutError(late) from failure[0]
        raise failure[0]
    return answer[0]


def list_remote(remote: Storage, prefix: str = "") -> Iterator[tuple[str, int, str]]:
    """Every object of the remote under *prefix*: ``(name, size, etag)``, in listing order.

    S3 is listed page by page under the storage's ``location``, and names are given as the
    storage names them (without the location). Other storages are walked with ``listdir``;
    their ETag is ``""``.
    """
    if is_s3(remote):
        yield from s3_objects.list_objects(remote, prefix)
        return
    directories = [prefix.strip("/")]
    while directories:
        directory = directories.pop()
        try:
            subdirectories, files = remote.listdir(directory)
        except FileNotFoundError:
            continue
        base = f"{directory}/" if directory else ""
        directories.extend(base + d for d in sorted(subdirectories, reverse=True))
        for leaf in sorted(files):
            yield base + leaf, remote.size(base + leaf), ""


def delete_remote(remote: Storage, name: str) -> None:
    """Delete *name* from the remote; a missing object is not an error."""
    if is_s3(remote):
        s3_objects.delete(remote, name)
        return
    if remote.exists(name):
        remote.delete(name)


def abort_open_upload(remote: Storage, name: str, upload_id: str) -> bool:
    """Best effort: abort *name*'s open multipart upload *upload_id* (S3 only; no id, or
    another storage: nothing to do); ``False`` (and a warning) if that failed.

    Used where the file is going away anyway (delete, final failure, data loss, an upload no
    ledger row can resume): an upload left open costs storage, never correctness.
    """
    if not upload_id or not is_s3(remote):
        return True
    try:
        s3_objects.abort_upload(
            s3_client(remote), remote.bucket_name, s3_key(remote, name), upload_id
        )
    except Exception:
        logger.warning("could not abort the open upload of %r", name, exc_info=True)
        return False
    return True


def open_uploads(remote: Storage, max_pages: int) -> Iterator[list[OpenUpload]]:
    """The remote's open multipart uploads, a page (up to 1,000) at a time, at most
    *max_pages* pages: ``OpenUpload(name, upload_id, initiated)``, names as the storage names
    them, *initiated* aware UTC. Only S3 has them: empty for any other storage."""
    if not is_s3(remote):
        return iter(())
    return s3_objects.open_uploads(remote, max_pages)


def remote_holds(remote: Storage, name: str) -> bool:
    """With ``QUEUED_STORAGE_REMOTE_CHECK_TIMEOUT``: whether *remote* holds *name* (a save's
    check of a name before it takes it).

    Off by default: the ledger alone decides, and no request waits on the remote. When it is
    set, the remote is asked with that hard timeout (no retries); a remote that does not
    answer in time or fails must not fail the upload, so the save goes on.
    """
    timeout = settings.REMOTE_CHECK_TIMEOUT
    if timeout is None:
        return False
    try:
        return remote_exists_within(remote, name, timeout)
    except Exception as err:
        logger.warning(
            "could not ask the remote storage whether %r exists (%s: %s); relying on the "
            "ledger for this name",
            name,
            type(err).__name__,
            err,
        )
        return False
