"""Helpers the suite's tests share (the fixtures are in ``tests/conftest.py``).

Unlike the rest of the harness these depend on pytest and on the test settings: skipping or
failing when a service is missing (:func:`need`), polling (:func:`wait_for`), the web servers
of the test project (:func:`django_server`, :func:`nginx_in_front`), and talking to the
services directly, past the fault proxies (:func:`direct_s3_client`, :func:`redis_client`).
"""

from __future__ import annotations

import base64
import glob
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import amqp.exceptions
import pytest
from django.conf import settings
from kombu.connection import Connection

from tests.harness.services import (
    ENV_BROKER,
    ENV_RABBITMQ_URL,
    ENV_REDIS_URL,
    ENV_S3_DIRECT_ENDPOINT,
    make_s3_client,
)
from tests.harness.webservers import DjangoServer, Nginx

if TYPE_CHECKING:
    import redis

__all__ = [
    "broker_is_rabbitmq",
    "broker_messages",
    "direct_s3_client",
    "django_server",
    "empty_bucket",
    "faketime_env",
    "need",
    "need_tool",
    "nginx_in_front",
    "open_uploads",
    "purge_queues",
    "redis_client",
    "remote_keys",
    "reset_storages",
    "s3_bytes",
    "wait_for",
]


def need_tool(what: str, available: bool, hint: str) -> None:
    """Fail (strict mode, CI) or skip (a developer's machine) unless *what* is *available*."""
    if available:
        return
    message = f"{what} is not available: {hint}"
    if settings.STRICT:
        pytest.fail(message)
    pytest.skip(message)


#: Where libfaketime is installed (Debian's ``faketime`` package: ``apt-get install faketime``;
#: a build of one's own under /usr/local).
LIBFAKETIME = (
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


def faketime_env(offset: str) -> dict[str, str]:
    """The environment that runs a process with its wall clock *offset* (libfaketime's
    ``FAKETIME``, e.g. ``"+10m"``, ``"-10m"``) from the real one (its monotonic clock is
    shifted too, which changes no interval: with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` Debian's
    libfaketime 0.9.10 makes Python's ``time.sleep`` fail with EINVAL). Fails (strict mode) or
    skips without libfaketime."""
    found = [path for pattern in LIBFAKETIME for path in sorted(glob.glob(pattern))]
    need_tool("libfaketime", bool(found), "install Debian's faketime (apt-get install faketime)")
    return {"LD_PRELOAD": found[0], "FAKETIME": offset}


def need(service: str) -> None:
    """Fail (strict mode, CI) or skip (a developer's machine) when *service* is unavailable."""
    unavailable = getattr(settings, "UNAVAILABLE", {})
    reason = unavailable.get(service) or unavailable.get("all")
    if reason:
        need_tool(f"service {service!r}", False, reason)


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, what: str = "condition") -> Any:
    """Poll *predicate* until it returns a truthy value; fail with *what* after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# --- web servers ---------------------------------------------------------------------------------
def django_server(
    kind: str, workdir: str, env: Mapping[str, str] | None = None, *, threads: int = 8
) -> DjangoServer:
    """*kind* (``gunicorn``, ``uvicorn``...: :class:`DjangoServer`) serving the test project with
    this run's services and ``tests.settings``, *env* on top, its files in ``WORKDIR/workdir``.
    Not started: ``with django_server(...) as server:`` starts it and stops it afterwards."""
    module = kind.split("-")[0]
    need_tool(
        module,
        importlib.util.find_spec(module) is not None,
        f'pip install -e ".[test]" (the {module} package)',
    )
    return DjangoServer(
        kind,
        Path(settings.WORKDIR) / workdir,
        {**settings.ENV, "DJANGO_SETTINGS_MODULE": "tests.settings", **(env or {})},
        threads=threads,
    )


def nginx_in_front(
    upstream: DjangoServer, workdir: str, *, staging_dir: Path | None = None
) -> Nginx:
    """nginx with ``docs/nginx.conf`` in front of *upstream*, with the test settings' upload
    directory and secret, its files in ``WORKDIR/workdir``; not started (``with ... as nginx:``).
    *staging_dir*: where it sends waiting files from (X-Accel-Redirect)."""
    need_tool(
        "nginx",
        shutil.which("nginx") is not None or os.path.exists("/usr/sbin/nginx"),
        "apt-get install nginx (.ci/run installs it)",
    )
    return Nginx(
        Path(settings.WORKDIR) / workdir,
        upstream_port=upstream.port,
        body_dir=Path(settings.QUEUED_STORAGE_NGINX_UPLOAD_DIR),
        secret=settings.QUEUED_STORAGE_NGINX_SECRET,
        staging_dir=staging_dir,
    )


# --- S3, past the fault proxy --------------------------------------------------------------------
def direct_s3_client() -> Any:
    """A boto3 client talking to moto directly (not through the fault proxy)."""
    return make_s3_client(settings.ENV[ENV_S3_DIRECT_ENDPOINT])


def s3_bytes(client: Any, key: str) -> bytes:
    """The content of *key* in the test bucket."""
    return client.get_object(Bucket=settings.BUCKET, Key=key)["Body"].read()  # type: ignore[no-any-return]


def remote_keys(client: Any) -> list[str]:
    """Every key in the test bucket, sorted."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.BUCKET):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


def open_uploads(client: Any) -> list[Any]:
    """The multipart uploads open in the test bucket."""
    return list(client.list_multipart_uploads(Bucket=settings.BUCKET).get("Uploads", []))


def empty_bucket(client: Any) -> None:
    """Create the test bucket if it is missing, delete its objects, abort its open uploads."""
    bucket = settings.BUCKET
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    except Exception as err:  # BucketAlreadyExists on some moto versions
        if "BucketAlready" not in type(err).__name__ and "BucketAlready" not in str(err):
            raise
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    for upload in open_uploads(client):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


# --- local state ---------------------------------------------------------------------------------
def reset_storages() -> None:
    """Empty the staging directory and the filesystem remote; clear the state cache."""
    from django.core.cache import caches

    for path in (settings.STAGING_ROOT, Path(settings.WORKDIR) / "fs_remote"):
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)
    caches["default"].clear()


# --- Redis, past the broker's fault proxy --------------------------------------------------------
@contextmanager
def redis_client() -> Iterator[redis.Redis]:
    """A client of Redis db 0 (the broker's database), closed afterwards."""
    import redis

    client = redis.Redis.from_url(settings.ENV[ENV_REDIS_URL])
    try:
        yield client
    finally:
        client.close()


def broker_is_rabbitmq() -> bool:
    """Whether the suite's broker is RabbitMQ (``QS_TEST_BROKER=rabbitmq``), not Redis; then
    skips (fails, strict) when the node did not start."""
    if settings.ENV.get(ENV_BROKER) != "rabbitmq":
        return False
    need("rabbitmq")
    return True


def broker_messages(queue: str) -> list[dict[str, Any]]:
    """The task messages waiting in *queue*, left where they are, each as Celery's Redis
    transport stores it (``body`` in base64, ``headers``, ``properties``...). On RabbitMQ they
    are fetched unacknowledged, past the fault proxy, and given back by closing the channel.
    This process's saves' messages are sent first (a save hands its message to a thread)."""
    from queued_storage import dispatch

    dispatch.flush()
    if not broker_is_rabbitmq():
        with redis_client() as client:
            raw = client.lrange(queue, 0, -1)
        return [json.loads(item) for item in raw]
    found: list[dict[str, Any]] = []
    with Connection(settings.ENV[ENV_RABBITMQ_URL], connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            while (message := channel.basic_get(queue, no_ack=False)) is not None:
                properties = dict(message.properties)
                body = message.body  # py-amqp decodes a body with a content encoding
                if isinstance(body, str):
                    body = body.encode(properties.get("content_encoding") or "utf-8")
                found.append(
                    {
                        "body": base64.b64encode(body).decode(),
                        "content-type": properties.pop("content_type", None),
                        "content-encoding": properties.pop("content_encoding", None),
                        "headers": properties.pop("application_headers", {}),
                        "properties": properties,
                    }
                )
        except amqp.exceptions.NotFound:  # no such queue: nothing was ever sent to it
            pass
    return found


def purge_queues(*queues: str) -> None:
    """Drop the messages waiting in *queues* (on RabbitMQ the queues stay declared: the
    producers remember declaring them), this process's saves' messages included (sent first:
    a save hands its message to a thread)."""
    from queued_storage import dispatch

    dispatch.flush()
    if not broker_is_rabbitmq():
        with redis_client() as client:
            client.delete(*queues)
        return
    with Connection(settings.ENV[ENV_RABBITMQ_URL], connect_timeout=5) as connection:
        for queue in queues:
            channel = connection.channel()
            try:
                channel.queue_purge(queue)
            except amqp.exceptions.NotFound:
                continue
            channel.close()
