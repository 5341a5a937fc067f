"""The remote storage's own questions, asked the cheapest way: exists and delete.

Shared by the proxy (name reservation, ``delete()``) and the engine (clean-up after a failed
verification). For S3 these bypass django-storages' ``file_overwrite`` shortcut: an ``exists``
that answers ``False`` whenever overwriting is allowed would let two uploads share a name.
"""

from __future__ import annotations

from typing import Any

from django.core.files.storage import Storage

__all__ = ["abort_multipart", "abort_upload", "delete_remote", "is_s3", "remote_exists", "s3_key"]


def is_s3(storage: Storage) -> bool:
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # pragma: no cover - django-storages is a dependency
        return False
    return isinstance(storage, S3Storage)


def s3_key(remote: Any, name: str) -> str:
    from storages.utils import clean_name

    return str(remote._normalize_name(clean_name(name)))


def remote_exists(remote: Storage, name: str) -> bool:
    """Whether the remote holds *name*, whatever ``file_overwrite`` says (one HEAD on S3)."""
    if is_s3(remote):
        from botocore.exceptions import ClientError

        client = remote.connection.meta.client  # type: ignore[attr-defined]
        try:
            client.head_object(Bucket=remote.bucket_name, Key=s3_key(remote, name))  # type: ignore[attr-defined]
        except ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True
    return bool(remote.exists(name))


def delete_remote(remote: Storage, name: str) -> None:
    """Delete *name* from the remote; a missing object is not an error."""
    if is_s3(remote):
        client = remote.connection.meta.client  # type: ignore[attr-defined]
        client.delete_object(Bucket=remote.bucket_name, Key=s3_key(remote, name))  # type: ignore[attr-defined]
        return
    if remote.exists(name):
        remote.delete(name)


def abort_upload(client: Any, bucket: str, key: str, upload_id: str) -> None:
    """Abort a multipart upload; one that is already gone is not an error."""
    from botocore.exceptions import ClientError

    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
            raise


def abort_multipart(remote: Any, name: str, upload_id: str) -> None:
    """Abort an open multipart upload of *name* in the remote storage (S3 only)."""
    if upload_id and is_s3(remote):
        abort_upload(
            remote.connection.meta.client, remote.bucket_name, s3_key(remote, name), upload_id
        )
