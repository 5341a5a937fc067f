"""botocore's errors, read once: their codes, and which ones a retry can cure.

Throttling, timeouts, connection errors and 5xx are failures of the infrastructure (transient,
and not the file's fault: :class:`InfrastructureError`), and so is a missing bucket (the site's
configuration: the files wait, ``pending``, until the bucket is created); a digest or body that
S3 found wrong is transient and about the bytes of this file (:class:`TransientTransferError`,
counted); access denied, bad credentials and other 4xx are permanent. :func:`translate` answers
for one error; :func:`queued_storage.transfer.classify_error` walks an error's causes and
decides the rest.
"""

from __future__ import annotations

from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from queued_storage.exceptions import (
    InfrastructureError,
    PermanentTransferError,
    TransferError,
    TransientTransferError,
)

__all__ = ["CONNECTION_ERRORS", "TIMEOUT_ERRORS", "error_code", "http_status", "translate"]

#: botocore's own connection failures (it raises these, not the standard ``ConnectionError``).
CONNECTION_ERRORS: tuple[type[Exception], ...] = (BotoConnectionError, HTTPClientError)

#: The client's own connect and read timeouts (both are also ``CONNECTION_ERRORS``).
TIMEOUT_ERRORS: tuple[type[Exception], ...] = (ConnectTimeoutError, ReadTimeoutError)

#: S3 (or the way to it) failed: retried for QUEUED_STORAGE_RETRY_FOR, spending no budget.
_INFRASTRUCTURE_CODES = {
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}

#: The bytes S3 received are not the bytes announced (a file changing under its transfer, a
#: flipped bit): transient, but about this file, so they count against QUEUED_STORAGE_RETRIES.
_FILE_CODES = {"BadDigest", "IncompleteBody"}

_HINTS = {
    "AccessDenied": " Give the worker's credentials s3:PutObject and s3:GetObject.",
    "InvalidAccessKeyId": " Fix the worker's S3 credentials.",
    "SignatureDoesNotMatch": " Fix the worker's S3 credentials.",
}


def error_code(err: ClientError) -> str:
    """S3's error code (``"NoSuchUpload"``, ``"PreconditionFailed"``, ...), or ``""``."""
    return err.response.get("Error", {}).get("Code", "")


def http_status(err: ClientError) -> int:
    """The HTTP status of the failed request, or 0."""
    return err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0


def _sentence(text: str) -> str:
    """*text* ending with a full stop (botocore's messages end without one)."""
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _no_bucket(err: ClientError, name: str) -> InfrastructureError:
    """A missing bucket: the site's configuration, not the file's fault. Retried as an outage
    is (``QUEUED_STORAGE_RETRY_FOR``); the reason names the bucket and the fix."""
    bucket = err.response.get("Error", {}).get("BucketName") or ""
    which = f"the bucket {bucket!r}" if bucket else "its bucket"
    return InfrastructureError(
        f"Transfer of {name!r} to the remote storage failed: {which} does not exist "
        f"({err.operation_name}: NoSuchBucket). Create the bucket or fix the remote storage's "
        "bucket_name; until then the file waits (pending, served from its local copy) and is "
        "retried for up to QUEUED_STORAGE_RETRY_FOR.",
        name=name,
    )


def translate(err: BaseException, name: str) -> TransferError | None:
    """The transfer error that a botocore client or credentials error means, else ``None``.

    Connection errors are left to the caller (see :data:`CONNECTION_ERRORS`), which treats
    botocore's and the standard library's alike.
    """
    if isinstance(err, ClientError):
        code, status = error_code(err), http_status(err)
        text = f"Transfer of {name!r} to the remote storage failed: {_sentence(str(err))}"
        if code == "NoSuchBucket":
            return _no_bucket(err, name)
        if code in _FILE_CODES:
            return TransientTransferError(text, name=name)
        if (
            code in _INFRASTRUCTURE_CODES
            or status >= 500
            or status == 429
            or (code.isdigit() and int(code) >= 500)
        ):
            return InfrastructureError(text, name=name)
        return PermanentTransferError(text + _HINTS.get(code, ""), name=name)
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return PermanentTransferError(
            f"Transfer of {name!r} failed: the worker has no S3 credentials ({err}).",
            name=name,
        )
    return None
