"""Errors raised by queued_storage.

Three kinds matter for the retry policy (``worker.py``), each one ``except``:

* :class:`InfrastructureError` (a :class:`TransientTransferError`): the remote storage or the way
  to it failed, not the file (connection refused or cut, timeouts, HTTP 5xx, throttling, a
  bucket that does not exist yet). Retried for ``QUEUED_STORAGE_RETRY_FOR`` seconds, however
  many attempts that takes.
* any other :class:`TransientTransferError`: an error about this file that a resend may cure (a
  checksum mismatch, bytes that changed in transit, a task's hook asking to retry). Counted:
  ``QUEUED_STORAGE_RETRIES`` retries.
* :class:`PermanentTransferError`: retrying cannot help (the local file is gone, access is
  denied): ``failed`` at once.

Configuration errors subclass Django's ``ImproperlyConfigured`` so that they read like every
other Django configuration error.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "BadHookResult",
    "ChecksumMismatch",
    "FileRejected",
    "InfrastructureError",
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


class InfrastructureError(TransientTransferError):
    """The remote storage, or the network to it, failed: not the file's fault.

    Connection refused or cut, a timeout, HTTP 5xx, throttling; a missing bucket too (the
    site's configuration, which the files wait for). It spends no retry budget: the
    file is retried, with a backoff as long as the failures have lasted so far (capped by
    ``QUEUED_STORAGE_RETRY_MAX_DELAY``), until ``QUEUED_STORAGE_RETRY_FOR`` seconds after the
    first failure of the run.
    """


class PermanentTransferError(TransferError):
    """A failure that retrying cannot cure: the file goes straight to ``failed``."""


class LocalFileMissing(PermanentTransferError, FileNotFoundError):
    """The local copy that should be transferred does not exist."""


class ChecksumMismatch(TransientTransferError):
    """The remote object does not match the local file (size or checksum).

    Transient because a byte flipped in transit is cured by resending; if the local file keeps
    changing, the retry budget (``QUEUED_STORAGE_RETRIES``: it is an error about the file, so
    it counts) ends it in ``failed`` with this reason.
    """


class RemoteCopyLost(PermanentTransferError):
    """A file recorded ``remote`` is missing from the remote storage, or differs from what was
    verified there (size or checksum): data loss, found by ``queued_storage.verify``."""


class BadHookResult(PermanentTransferError, ValueError):
    """A django-queued-storage ``Transfer`` subclass's ``transfer()`` returned something other
    than ``True`` or ``False``: the file is ``failed``, and the task fails with this error (a
    ``ValueError``, as in django-queued-storage) so that its result shows it."""


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


class FileRejected(QueuedStorageError, FileNotFoundError):
    """``open()`` of a file one of its storage's processors rejected: it is never served.

    A ``FileNotFoundError``, so that code reading files that may have gone keeps working.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"{name!r} was rejected before its transfer ({reason or 'no reason given'}) and is "
            "never served. If that was a mistake, release it (the ledger admin's 'Release' "
            "action, or manage.py queued_storage release); else delete it."
        )
        self.name = name
        self.reason = reason
