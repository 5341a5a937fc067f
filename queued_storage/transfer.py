"""The transfer engine: stream one file from the local to the remote storage and verify it.

Plain functions, no Celery, no cache, no ledger: the task layer (``tasks.py``) leases the file,
calls :func:`transfer_file` and records the outcome.

Two paths:

* **S3** (``storages.backends.s3.S3Storage`` and subclasses, local storage with paths): see
  ``_s3engine``: one ``PutObject`` below ``QUEUED_STORAGE_MULTIPART_THRESHOLD``, else a
  resumable multipart upload with parts read by offset, at most ``MAX_CONCURRENCY`` in flight,
  each part's MD5 checked against the ETag the server computed, the final ETag and size checked,
  and the object created with ``If-None-Match: *`` so that nothing is ever overwritten.
* **Any other storage** (the slow path): a chunked copy through the Storage API, verified by
  reading the remote copy back and comparing SHA-256 digests.

A mismatch deletes the remote object and raises :class:`ChecksumMismatch`; the local copy is
never touched here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from django.core.files import File
from django.core.files.storage import Storage

from queued_storage._remote import is_s3
from queued_storage._s3engine import Checkpoint, Part, Resume, s3_transfer
from queued_storage.conf import settings
from queued_storage.exceptions import (
    ChecksumMismatch,
    LocalFileMissing,
    PermanentTransferError,
    TransferError,
    TransientTransferError,
)

__all__ = [
    "Checkpoint",
    "EngineConfig",
    "Part",
    "ProgressCallback",
    "Resume",
    "TransferResult",
    "classify_error",
    "transfer_file",
]

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
_TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "BadDigest",
    "IncompleteBody",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify_error(exc: BaseException, name: str) -> TransferError:
    """Turn any error of a transfer into a transient or permanent :class:`TransferError`.

    Throttling, timeouts, connection errors and 5xx are transient; access denied, a missing
    bucket, bad credentials and other 4xx are permanent. Anything unknown is transient: the
    retry budget bounds it, and a permanent error retried a few times loses nothing.
    """
    if isinstance(exc, TransferError):
        return exc
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    for err in _chain(exc):
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            text = f"Transfer of {name!r} to the remote storage failed: {err}"
            if (
                code in _TRANSIENT_CODES
                or status >= 500
                or status == 429
                or (code.isdigit() and int(code) >= 500)
            ):
                return TransientTransferError(text, name=name)
            hint = {
                "NoSuchBucket": " Create the bucket or fix the remote storage's bucket_name.",
                "AccessDenied": " Give the worker's credentials s3:PutObject and s3:GetObject.",
                "InvalidAccessKeyId": " Fix the worker's S3 credentials.",
                "SignatureDoesNotMatch": " Fix the worker's S3 credentials.",
            }.get(code, "")
            return PermanentTransferError(text + hint, name=name)
        if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
            return PermanentTransferError(
                f"Transfer of {name!r} failed: the worker has no S3 credentials ({err}).",
                name=name,
            )
        if isinstance(err, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
            return TransientTransferError(
                f"Transfer of {name!r} failed on a connection error: {err}", name=name
            )
    return TransientTransferError(f"Transfer of {name!r} failed: {exc!r}", name=name)


# --- engine -------------------------------------------------------------------------------
def _local_path(local: Storage, name: str) -> str | None:
    try:
        return str(local.path(name))
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
        path = _local_path(local, name) if is_s3(remote) else None
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
    remote: Any,
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
    remote_size = int(remote.size(name))
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
