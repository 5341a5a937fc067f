"""The remote storage's own questions, asked the cheapest way: exists and delete.

Shared by the proxy (name reservation, ``delete()``) and the engine (clean-up after a failed
verification). For S3 these bypass django-storages' ``file_overwrite`` shortcut: an ``exists``
that answers ``False`` whenever overwriting is allowed would let two uploads share a name.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from django.core.files.storage import Storage

__all__ = [
    "abort_multipart",
    "abort_open_upload",
    "abort_upload",
    "delete_remote",
    "is_s3",
    "remote_exists",
    "s3_client",
    "s3_key",
]


def is_s3(storage: Storage) -> bool:
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # pragma: no cover - django-storages is a dependency
        return False
    return isinstance(storage, S3Storage)


def s3_key(remote: Any, name: str) -> str:
    from storages.utils import clean_name

    return str(remote._normalize_name(clean_name(name)))


_clients: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def s3_client(remote: Any, max_concurrency: int = 4) -> Any:
    """One client per storage and process, shared by every thread (boto3 clients are).

    django-storages builds a boto3 resource per thread (about 13 MiB and 0.2 CPU-seconds);
    a web server that runs each request in a new thread would pay that on every upload, and
    a small file's transfer would cost more in client set-up than in sending.
    """
    with _clients_lock:
        per_storage = _clients.setdefault(remote, {})
        client = per_storage.get(max_concurrency)
        if client is None:
            client = per_storage[max_concurrency] = _build_client(remote, max_concurrency)
        return client


def _build_client(remote: Any, max_concurrency: int) -> Any:
    """A client built like the storage's own, tuned for the engine.

    Same credentials, endpoint, region, TLS and user ``client_config``; on top of it: no
    automatic CRC32 of every request (each part carries its MD5 instead, which the server
    checks on real S3 and which we compare with the ETag it computes), and enough pooled
    connections for the parts in flight.
    """
    from botocore.config import Config

    tuned = Config(
        request_checksum_calculation="when_required",
        max_pool_connections=max(10, max_concurrency + 2),
    )
    config = remote.client_config.merge(tuned) if remote.client_config else tuned
    return remote._create_session().client(
        "s3",
        region_name=remote.region_name,
        use_ssl=remote.use_ssl,
        endpoint_url=remote.endpoint_url,
        config=config,
        verify=remote.verify,
    )


def remote_exists(remote: Storage, name: str) -> bool:
    """Whether the remote holds *name*, whatever ``file_overwrite`` says (one HEAD on S3)."""
    if is_s3(remote):
        from botocore.exceptions import ClientError

        client = s3_client(remote)
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
        client = s3_client(remote)
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
        abort_upload(s3_client(remote), remote.bucket_name, s3_key(remote, name), upload_id)


def abort_open_upload(remote: Any, name: str, upload_id: str) -> bool:
    """Best effort: abort *name*'s open upload; ``False`` (and a warning) if that failed.

    Used where the file is going away anyway (delete, final failure, data loss): an upload
    left open costs storage, never correctness.
    """
    try:
        abort_multipart(remote, name, upload_id)
    except Exception:
        logging.getLogger("queued_storage").warning(
            "queued_storage: could not abort the open upload of %r", name, exc_info=True
        )
        return False
    return True
