"""Fixtures shared by the suite: real services, a real Celery worker, clean storages."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.celery_app import app as celery_app  # noqa: F401  (configures the producer side)


def need(service: str) -> None:
    """Fail (strict mode, CI) or skip (a developer's machine) when *service* is unavailable."""
    unavailable = getattr(settings, "UNAVAILABLE", {})
    reason = unavailable.get(service) or unavailable.get("all")
    if reason:
        message = f"service {service!r} is not available: {reason}"
        if settings.STRICT:
            pytest.fail(message)
        pytest.skip(message)


def direct_s3_client() -> Any:
    """A boto3 client talking to moto directly (not through the fault proxy)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.ENV["QS_TEST_S3_DIRECT_ENDPOINT"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture
def s3_client() -> Any:
    """A boto3 client talking to moto directly (not through the fault proxy)."""
    need("moto")
    return direct_s3_client()


def _empty_bucket(client: Any) -> None:
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
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for upload in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def _reset_storages() -> None:
    from django.core.cache import caches

    for path in (settings.STAGING_ROOT, Path(settings.WORKDIR) / "fs_remote"):
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)
    caches["default"].clear()


@pytest.fixture
def clean(s3_client: Any) -> Any:
    """Empty bucket, staging directory and state cache before the test."""
    _empty_bucket(s3_client)
    _reset_storages()
    return s3_client


@pytest.fixture(scope="session")
def worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """One real Celery worker process (prefork, concurrency 1) for the whole session."""
    need("redis")
    need("moto")
    from tests.harness.workers import CeleryWorker

    logfile = Path(settings.WORKDIR) / "worker-main.log"
    w = CeleryWorker(
        "tests.celery_app",
        env={**settings.ENV, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        queues=["celery"],
        concurrency=1,
        name="main",
        logfile=logfile,
    )
    w.start(timeout=60)
    try:
        yield w
    finally:
        w.stop()


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


#: The fault tests' worker: a 3 s lease (quick takeover after kill -9) and a retry budget that
#: outlasts a 15 s S3 outage: 12 retries whose backoffs add up to at least 19.75 s (each waits
#: half to all of min(4, 0.5 * 2**(n-1)) s). See tests/settings_faults.py.
FAULT_WORKER_ENV = {
    "QS_FAULT_LEASE_TIMEOUT": "3",
    "QS_FAULT_RETRIES": "12",
    "QS_FAULT_RETRY_DELAY": "0.5",
    "QS_FAULT_RETRY_MAX_DELAY": "4",
}


def host_queue(host: str | None = None) -> str:
    """The queue of transfers routed to *host* (storage option ``queue="host"``)."""
    from queued_storage.conf import settings as qs_settings

    return f"queued_storage.{host or qs_settings.HOST}"


def make_worker(
    name: str, *, queues: list[str], env: dict[str, str] | None = None, concurrency: int = 1
) -> Any:
    from tests.harness.workers import CeleryWorker

    return CeleryWorker(
        "tests.celery_app",
        env={**settings.ENV, "DJANGO_SETTINGS_MODULE": "tests.settings_faults", **(env or {})},
        queues=queues,
        concurrency=concurrency,
        name=name,
        logfile=Path(settings.WORKDIR) / f"worker-{name}.log",
    )


@pytest.fixture(scope="session")
def host_worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """A second real worker (prefork, concurrency 2) consuming this host's own queue, with
    FAULT_WORKER_ENV; the fault tests kill it with SIGKILL and start it again."""
    need("redis")
    need("moto")
    w = make_worker("faults", queues=[host_queue()], env=FAULT_WORKER_ENV, concurrency=2)
    w.start(timeout=60)
    try:
        yield w
    finally:
        w.stop()
