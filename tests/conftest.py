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


@pytest.fixture
def s3_client() -> Any:
    """A boto3 client talking to moto directly (not through the fault proxy)."""
    need("moto")
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.ENV["QS_TEST_S3_DIRECT_ENDPOINT"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


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
    from tests.workers import CeleryWorker

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
