"""The remote's objects and open uploads, asked the cheapest way S3 allows.

For S3 these bypass django-storages' ``file_overwrite`` shortcut: an ``exists`` that answers
``False`` whenever overwriting is allowed would let two uploads share a name. Names in and out
are storage names (relative to the storage's ``location``); keys come from :func:`s3_key`.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from botocore.exceptions import ClientError
from storages.backends.s3 import S3Storage

from queued_storage._s3.client import s3_client, s3_key
from queued_storage._s3.errors import error_code, http_status

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ListMultipartUploadsRequestTypeDef

__all__ = [
    "ObjectHead",
    "OpenUpload",
    "abort_upload",
    "delete",
    "exists",
    "head",
    "list_objects",
    "open_uploads",
]

#: What a server that does not date an upload is taken for: as old as can be.
_UNDATED = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)

#: The object parameters a HEAD of an SSE-C object must repeat.
#: The parameters of a customer-provided encryption key (SSE-C).
SSE_C = ("SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5")


class OpenUpload(NamedTuple):
    """A multipart upload that was started and neither completed nor aborted."""

    name: str
    upload_id: str
    initiated: datetime.datetime  # aware, UTC


class ObjectHead(NamedTuple):
    """What one HEAD tells of an object: its size and the checksums the server keeps."""

    size: int
    etag: str  # without quotes
    crc32: str  # S3's ChecksumCRC32 ("<base64>" or "<base64>-<parts>"), "" if none is kept


def _location(remote: S3Storage) -> str:
    """The key prefix of every object of the storage: ``""`` or ``"<location>/"``."""
    location = s3_key(remote, "")
    return location.rstrip("/") + "/" if location.strip("/") else ""


def exists(remote: S3Storage, name: str, *, timeout: float | None = None) -> bool:
    """Whether the bucket holds *name* (one HEAD); *timeout*: see :func:`s3_client`."""
    client = s3_client(remote, timeout=timeout)
    try:
        client.head_object(Bucket=remote.bucket_name, Key=s3_key(remote, name))
    except ClientError as err:
        if http_status(err) == 404:
            return False
        raise
    return True


def head(remote: S3Storage, name: str, *, timeout: float | None = None) -> ObjectHead | None:
    """Size and checksums of *name* (one HEAD, nothing downloaded); ``None`` on a 404.

    Asks for S3's stored checksum (``ChecksumMode=ENABLED``) and sends the storage's SSE-C
    key, if it has one (an object encrypted with it cannot be asked about without). Any other
    error propagates: only a 404 says the object is not there.
    """
    key = s3_key(remote, name)
    sse_c = {k: v for k, v in remote.get_object_parameters(key).items() if k in SSE_C}
    client = s3_client(remote, timeout=timeout)
    try:
        found = client.head_object(
            Bucket=remote.bucket_name, Key=key, ChecksumMode="ENABLED", **sse_c
        )
    except ClientError as err:
        if http_status(err) == 404:
            return None
        raise
    return ObjectHead(
        size=int(found["ContentLength"]),
        etag=str(found.get("ETag", "")).strip('"'),
        crc32=str(found.get("ChecksumCRC32") or ""),
    )


def delete(remote: S3Storage, name: str) -> None:
    """Delete *name*; a missing object is not an error (S3 answers 204 either way)."""
    s3_client(remote).delete_object(Bucket=remote.bucket_name, Key=s3_key(remote, name))


def list_objects(remote: S3Storage, prefix: str = "") -> Iterator[tuple[str, int, str]]:
    """``(name, size, etag)`` of every object under the location and *prefix*, page by page
    (1,000 keys a request), in listing order; "folder" markers are skipped."""
    location = _location(remote)
    paginator = s3_client(remote).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=remote.bucket_name, Prefix=location + prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue  # a "folder" marker, not a file
            yield key[len(location) :], item["Size"], item.get("ETag", "").strip('"')


def abort_upload(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """Abort a multipart upload; one that is already gone is not an error.

    The one abort: the engine calls it with its own client, everything else through
    :func:`queued_storage.transfer.abort_open_upload`.
    """
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as err:
        if error_code(err) not in ("NoSuchUpload", "404"):
            raise


def open_uploads(remote: S3Storage, max_pages: int) -> Iterator[list[OpenUpload]]:
    """The storage's open multipart uploads, a page (up to 1,000) at a time, at most
    *max_pages* pages. Only keys under the storage's location are listed (a bucket may be
    shared); S3 gives aware UTC times, whatever ``USE_TZ`` says."""
    location = _location(remote)
    client = s3_client(remote)
    request: ListMultipartUploadsRequestTypeDef = {
        "Bucket": remote.bucket_name,
        "Prefix": location,
    }
    for _ in range(max_pages):
        page = client.list_multipart_uploads(**request)
        yield [
            OpenUpload(
                name=upload["Key"][len(location) :],
                upload_id=upload["UploadId"],
                initiated=upload.get("Initiated", _UNDATED).astimezone(datetime.timezone.utc),
            )
            for upload in page.get("Uploads", [])
        ]
        if not page.get("IsTruncated"):
            return
        request["KeyMarker"] = page.get("NextKeyMarker", "")
        request["UploadIdMarker"] = page.get("NextUploadIdMarker", "")
