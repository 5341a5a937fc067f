"""The remote storage's own questions, asked the cheapest way: exists and delete.

Shared by the proxy (name reservation, ``delete()``) and the engine (clean-up after a failed
verification). For S3 these bypass django-storages' ``file_overwrite`` shortcut: an ``exists``
that answers ``False`` whenever overwriting is allowed would let two uploads share a name.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from django.core.files.storage import Storage

__all__ = [
    "abort_multipart",
    "abort_open_upload",
    "abort_upload",
    "delete_remote",
    "is_s3",
    "list_remote",
    "remote_exists",
    "remote_exists_within",
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


_clients: weakref.WeakKeyDictionary[Any, dict[tuple[int, float | None], Any]] = (
    weakref.WeakKeyDictionary()
)
_clients_lock = threading.Lock()


def s3_client(remote: Any, max_concurrency: int = 4, *, timeout: float | None = None) -> Any:
    """One client per storage and process, shared by every thread (boto3 clients are).

    django-storages builds a boto3 resource per thread (about 13 MiB and 0.2 CPU-seconds);
    a web server that runs each request in a new thread would pay that on every upload, and
    a small file's transfer would cost more in client set-up than in sending. *timeout*: a
    client that gives up after that many seconds to connect or to read, and never retries.
    """
    key = (max_concurrency, timeout)
    with _clients_lock:
        per_storage = _clients.setdefault(remote, {})
        client = per_storage.get(key)
        if client is None:
            client = per_storage[key] = _build_client(remote, max_concurrency, timeout)
        return client


def _build_client(remote: Any, max_concurrency: int, timeout: float | None) -> Any:
    """A client built like the storage's own, tuned for the engine.

    Same credentials, endpoint, region, TLS and user ``client_config``; on top of it:

    * no automatic CRC32 of every request: the engine sends its own checksum with each body;
    * no SHA-256 signature of request bodies (``UNSIGNED-PAYLOAD``), over plain HTTP as botocore
      already does over HTTPS: every body the engine sends carries a checksum the server
      verifies (``Content-MD5`` or ``x-amz-checksum-crc32``), and a completed multipart
      upload's size and composite checksum are compared afterwards, so the signature's hash
      only costs CPU (about 0.6 s per GiB). An explicit ``payload_signing_enabled`` in the
      storage's ``client_config`` wins;
    * enough pooled connections for the parts in flight.
    """
    from botocore.config import Config

    user_s3 = dict(getattr(remote.client_config, "s3", None) or {})
    options: dict[str, Any] = {
        "request_checksum_calculation": "when_required",
        "max_pool_connections": max(10, max_concurrency + 2),
        "s3": {"payload_signing_enabled": False, **user_s3},
    }
    if timeout is not None:
        options.update(
            connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1}
        )
    tuned = Config(**options)
    config = remote.client_config.merge(tuned) if remote.client_config else tuned
    return remote._create_session().client(
        "s3",
        region_name=remote.region_name,
        use_ssl=remote.use_ssl,
        endpoint_url=remote.endpoint_url,
        config=config,
        verify=remote.verify,
    )


def remote_exists(remote: Storage, name: str, *, timeout: float | None = None) -> bool:
    """Whether the remote holds *name*, whatever ``file_overwrite`` says (one HEAD on S3).

    With *timeout*, S3 is asked by a client that neither waits longer nor retries (botocore's
    defaults would wait 60 s per read, three times); see :func:`remote_exists_within`.
    """
    if is_s3(remote):
        from botocore.exceptions import ClientError

        client = s3_client(remote, timeout=timeout)
        try:
            client.head_object(Bucket=remote.bucket_name, Key=s3_key(remote, name))  # type: ignore[attr-defined]
        except ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True
    return bool(remote.exists(name))


def remote_exists_within(remote: Storage, name: str, timeout: float) -> bool:
    """:func:`remote_exists` with a hard deadline of *timeout* seconds, whatever the remote.

    The question runs in a daemon thread, so that a storage whose ``exists()`` hangs (a
    black-holed endpoint, a stuck network mount) cannot hold the caller; S3 is also asked
    with a client that gives up by itself after *timeout*. Raises :class:`TimeoutError` when
    no answer came in time, else what the remote raised.
    """
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
    if not done.wait(timeout):
        raise TimeoutError(f"the remote storage did not answer within {timeout:g} s")
    if failure:
        raise failure[0]
    return answer[0]


def list_remote(remote: Storage, prefix: str = "") -> Iterator[tuple[str, int, str]]:
    """Every object of the remote under *prefix*: ``(name, size, etag)``, in listing order.

    S3 is listed page by page (1,000 keys a request) under the storage's ``location``, and
    names are given as the storage names them (without the location). Other storages are
    walked with ``listdir``; their ETag is ``""``.
    """
    if is_s3(remote):
        location = s3_key(remote, "")
        location = location.rstrip("/") + "/" if location.strip("/") else ""
        paginator = s3_client(remote).get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=remote.bucket_name, Prefix=location + prefix)  # type: ignore[attr-defined]
        for page in pages:
            for item in page.get("Contents", []):
                key = str(item["Key"])
                if key.endswith("/"):
                    continue  # a "folder" marker, not a file
                yield key[len(location) :], int(item["Size"]), str(item.get("ETag", "")).strip('"')
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
            yield base + leaf, int(remote.size(base + leaf)), ""


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
