"""Which S3 storage, which key, which client: the adapter's three questions about a remote."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, TypeGuard

from botocore.config import Config
from django.core.files.storage import Storage
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["is_s3", "s3_client", "s3_key"]


def is_s3(storage: Storage) -> TypeGuard[S3Storage]:
    """Whether *storage* is django-storages' ``S3Storage`` (or a subclass)."""
    return isinstance(storage, S3Storage)


def s3_key(remote: S3Storage, name: str) -> str:
    """The object key of the storage name *name*: cleaned and under the storage's location.

    The one key function: the engine, the remote operations and the reconcile pass all name
    objects through it, exactly as django-storages does.
    """
    key: str = remote._normalize_name(clean_name(name))
    return key


_clients: weakref.WeakKeyDictionary[S3Storage, dict[tuple[int, float | None], S3Client]] = (
    weakref.WeakKeyDictionary()
)
_clients_lock = threading.Lock()


def s3_client(
    remote: S3Storage, max_concurrency: int = 4, *, timeout: float | None = None
) -> S3Client:
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


def _build_client(remote: S3Storage, max_concurrency: int, timeout: float | None) -> S3Client:
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
    user_config: Config | None = remote.client_config
    user_s3 = dict(getattr(user_config, "s3", None) or {})
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
    config = user_config.merge(tuned) if user_config else tuned
    client: S3Client = remote._create_session().client(
        "s3",
        region_name=remote.region_name,
        use_ssl=remote.use_ssl,
        endpoint_url=remote.endpoint_url,
        config=config,
        verify=remote.verify,
    )
    return client
