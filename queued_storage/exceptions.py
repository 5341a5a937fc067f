"""Errors raised by queued_storage.

Two families matter for the retry policy: :class:`TransientTransferError` (worth retrying:
connection errors, timeouts, throttling, 5xx, a checksum mismatch that a resend may cure) and
:class:`PermanentTransferError` (retrying cannot help: the local file is gone, access is denied,
the bucket does not exist). The task's retry policy is a single ``except`` on these classes.

Configuration errors subclass Django's ``ImproperlyConfigured`` so that they read like every
other Django configuration error.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "ChecksumMismatch",
    "LocalFileMissing",
    "PermanentTransferError",
    "QueuedStorageConfigError",
    "QueuedStorageError",
    "RemoteCopyLost",
    "StagingFull",
    "StorageNotFound",
    "TransferError",
    "TransientTransferError",
]


class QueuedStorageError(Exception):
    """Base class of every error this app raises on purpose."""


class QueuedStorageConfigError(QueuedStorageError, ImproperlyConfigured):
    """The storage is configured in a way that cannot work (unknown option, wrong type...)."""


class TransferError(QueuedStorageError):
    """A transfer of one file from the local to the remote storage did not succeed."""

    def __init__(self, message: str, *, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class TransientTransferError(TransferError):
    """A failure that a later attempt may not meet: the transfer is retried with backoff."""


class PermanentTransferError(TransferError):
    """A failure that retrying cannot cure: the file goes straight to ``failed``."""


class LocalFileMissing(PermanentTransferError, FileNotFoundError):
    """The local copy that should be transferred does not exist."""


class ChecksumMismatch(TransientTransferError):
    """The remote object does not match the local file (size or checksum).

    Transient because a byte flipped in transit is cured by resending; if the local file keeps
    changing, the retry budget ends it in ``failed`` with this reason.
    """


class RemoteCopyLost(PermanentTransferError):
    """A file recorded ``remote`` is missing from the remote storage, or differs from what was
    verified there (size or checksum): data loss, found by ``queued_storage.verify``."""


class StorageNotFound(PermanentTransferError, ImproperlyConfigured):
    """A worker received a transfer for a storage alias it cannot resolve."""


class StagingFull(QueuedStorageError):
    """``save()`` refused a file: the bytes waiting locally would exceed the staging budget.

    ``QUEUED_STORAGE_STAGING_BUDGET`` bounds the bytes that wait on one host for their transfer;
    upload views answer HTTP 507 (Insufficient Storage). Nothing was written or reserved.
    """

    def __init__(self, message: str, *, name: str, size: int, waiting: int, budget: int) -> None:
        super().__init__(message)
        self.name = name
        self.size = size
        self.waiting = waiting
        self.budget = budget
