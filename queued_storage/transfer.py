"""The transfer engine: stream one file from the local to the remote storage and verify it.

Plain functions, no Celery, no cache, no ledger: the task layer (``tasks.py``) leases the file,
calls :func:`transfer_file` and records the outcome.

Two paths:

* **S3** (``storages.backends.s3.S3Storage`` and subclasses): boto3's transfer manager uploads
  from the local file's path, a single PUT below ``QUEUED_STORAGE_MULTIPART_THRESHOLD`` and a
  multipart upload above it, with at most ``MAX_CONCURRENCY`` parts of ``MULTIPART_CHUNKSIZE``
  bytes in flight: memory is bounded by configuration, not by the file's size. The object is
  then verified against what the *server* computed: its ``ContentLength`` must equal the local
  size and its ETag the MD5 (single PUT) or multipart ETag (MD5 of the parts' MD5s, with the
  same part size) computed from the local file. moto computes both exactly as S3 does. Where
  the ETag is not an MD5 (SSE-KMS, SSE-C), the object is read back and compared by SHA-256.
* **Any other storage** (the slow path): a chunked copy through the Storage API, verified by
  reading the remote copy back and comparing SHA-256 digests.

A mismatch deletes the remote object and raises :class:`ChecksumMismatch`; the local copy is
never touched here.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from django.core.files import File
from django.core.files.storage import Storage

from queued_storage._remote import delete_remote, is_s3, s3_key
from queued_storage.conf import settings
from queued_storage.exceptions import (
    ChecksumMismatch,
    LocalFileMissing,
    PermanentTransferError,
    TransferError,
    TransientTransferError,
)

__all__ = [
    "EngineConfig",
    "ProgressCallback",
    "TransferResult",
    "classify_error",
    "transfer_file",
]

ProgressCallback = Callable[[int, int], None]
"""Called with ``(bytes_done, bytes_total)``; may be called from the transfer's threads."""

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")


@dataclass(frozen=True)
class EngineConfig:
    multipart_threshold: int
    multipart_chunksize: int
    max_concurrency: int
    chunk_size: int

    @classmethod
    def from_settings(cls) -> EngineConfig:
        return cls(
            multipart_threshold=settings.MULTIPART_THRESHOLD,
            multipart_chunksize=settings.MULTIPART_CHUNKSIZE,
            max_concurrency=settings.MAX_CONCURRENCY,
            chunk_size=settings.CHUNK_SIZE,
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
class _Progress:
    """Thread-safe accumulator for the transfer manager's progress callbacks."""

    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total = total
        self.done = 0
        self._callback = callback
        self._lock = threading.Lock()

    def add(self, amount: int) -> None:
        if self._callback is None:
            return
        with self._lock:
            self.done = max(0, min(self.total, self.done + amount))
            done = self.done
        self._callback(done, self.total)


def _local_path(local: Storage, name: str) -> str | None:
    try:
        return str(local.path(name))
    except NotImplementedError:
        return None


def _open_local(local: Storage, name: str) -> IO[bytes]:
    try:
        return local.open(name, "rb")
    except FileNotFoundError as err:
        raise LocalFileMissing(
            f"The local copy of {name!r} is missing, so it cannot be transferred. If the file "
            "was deleted on purpose, delete it through the storage too; otherwise restore it "
            "and retry with storage.transfer(name).",
            name=name,
        ) from err


def _read_chunks(fh: IO[bytes], size: int) -> Iterator[bytes]:
    while True:
        chunk = fh.read(size)
        if not chunk:
            return
        yield chunk


def _multipart_etag(fh: IO[bytes], part_size: int, read_size: int) -> tuple[str, int]:
    """The S3 multipart ETag of a stream uploaded in *part_size* parts, and its length."""
    digests = []
    total = 0
    while True:
        part = hashlib.md5(usedforsecurity=False)
        left = part_size
        while left:
            chunk = fh.read(min(read_size, left))
            if not chunk:
                break
            part.update(chunk)
            left -= len(chunk)
            total += len(chunk)
        if left == part_size:
            break
        digests.append(part.digest())
        if left:
            break
    combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(digests)}", total


def _md5(fh: IO[bytes], read_size: int) -> tuple[str, int]:
    digest = hashlib.md5(usedforsecurity=False)
    total = 0
    for chunk in _read_chunks(fh, read_size):
        digest.update(chunk)
        total += len(chunk)
    return digest.hexdigest(), total


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
            return _transfer_s3(local, remote, name, config, progress)
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
    config: EngineConfig,
    progress: ProgressCallback | None,
) -> TransferResult:
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from s3transfer.manager import TransferManager
    from s3transfer.subscribers import BaseSubscriber
    from s3transfer.utils import ChunksizeAdjuster

    client = remote.connection.meta.client
    bucket = remote.bucket_name
    key = s3_key(remote, name)
    extra = {
        k: v
        for k, v in remote._get_write_parameters(key).items()
        if k in TransferManager.ALLOWED_UPLOAD_ARGS
    }
    path = _local_path(local, name)
    source: IO[bytes] | str
    if path is None:
        source = _open_local(local, name)
        size = int(local.size(name))
    else:
        source = path
        try:
            size = int(local.size(name))
        except FileNotFoundError as err:
            raise LocalFileMissing(
                f"The local copy of {name!r} is missing, so it cannot be transferred. Restore "
                "it and retry with storage.transfer(name), or delete it through the storage.",
                name=name,
            ) from err
    tracker = _Progress(size, progress)

    class _Subscriber(BaseSubscriber):
        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            tracker.add(bytes_transferred)

    transfer_config = TransferConfig(
        multipart_threshold=config.multipart_threshold,
        multipart_chunksize=config.multipart_chunksize,
        max_concurrency=config.max_concurrency,
        use_threads=config.max_concurrency > 1,
        preferred_transfer_client="classic",
    )
    try:
        with create_transfer_manager(client, transfer_config) as manager:
            future = manager.upload(
                source, bucket, key, extra_args=extra, subscribers=[_Subscriber()]
            )
            future.result()
    finally:
        if not isinstance(source, str):
            source.close()

    head = client.head_object(Bucket=bucket, Key=key)
    remote_size = int(head["ContentLength"])
    etag = str(head.get("ETag", "")).strip('"')
    if remote_size != size:
        delete_remote(remote, name)
        raise ChecksumMismatch(
            f"The remote copy of {name!r} has {remote_size} bytes, the local file {size}; "
            "the remote object was deleted and the transfer will be retried.",
            name=name,
        )
    with _open_local(local, name) as fh:
        if size >= config.multipart_threshold:
            part = ChunksizeAdjuster().adjust_chunksize(config.multipart_chunksize, size)
            expected, read = _multipart_etag(fh, part, config.chunk_size)
            algorithm = "s3-multipart-etag"
        else:
            expected, read = _md5(fh, config.chunk_size)
            algorithm = "md5"
    encrypted = head.get("ServerSideEncryption") == "aws:kms" or "SSECustomerAlgorithm" in head
    if encrypted or not _MD5_ETAG.match(etag):
        # The ETag is not an MD5 here: compare the bytes themselves.
        with _open_local(local, name) as fh:
            expected, read = _sha256(fh, config.chunk_size)
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            etag, _ = _sha256(body, config.chunk_size)
        finally:
            body.close()
        algorithm = "sha256"
    if read != size or etag != expected:
        delete_remote(remote, name)
        raise ChecksumMismatch(
            f"The remote copy of {name!r} does not match the local file ({algorithm} "
            f"{etag} != {expected}); the remote object was deleted and the transfer will be "
            "retried. If this repeats, the local file is changing while it is transferred.",
            name=name,
        )
    return TransferResult(size=size, checksum=expected, algorithm=algorithm)


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
