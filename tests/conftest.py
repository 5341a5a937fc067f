"""Fixtures shared by the suite: real services, a real Celery worker, clean storages.

The services are started here, in ``pytest_configure``, not by importing the settings:
``DJANGO_SETTINGS_MODULE`` is not in the pytest configuration, so pytest-django leaves Django
alone until its own ``pytest_configure`` (which runs last); this module's hook runs before it,
starts the :class:`~tests.harness.services.ServiceStack`, exports its ``QS_TEST_*`` variables
(inherited by every worker and web server the tests start), and only then names and loads
``tests.settings``, which read them. ``pytest_unconfigure`` stops the services.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.celery_app import app as celery_app  # noqa: F401  (configures the producer side)
from tests.harness.faults import HttpFaultProxy, TcpFaultProxy
from tests.harness.services import ServiceStack

_STACK = pytest.StashKey["ServiceStack | None"]()
SETTINGS_MODULE = "tests.settings"


def pytest_configure(config: pytest.Config) -> None:
    """Start the services and export them before the settings are loaded (see the module)."""
    if not config.pluginmanager.has_plugin("django"):  # -p no:django: the harness self-test
        return
    import django.conf

    if django.conf.settings.configured:
        raise pytest.UsageError(
            f"Django settings were loaded before {__file__} could start the test services: "
            "DJANGO_SETTINGS_MODULE is set in the environment or given with --ds; unset it "
            f"(the suite always uses {SETTINGS_MODULE})"
        )
    stack = None
    if "QS_TEST_WORKDIR" not in os.environ and not os.environ.get("QS_TEST_NO_SERVICES"):
        strict = os.environ.get("QUEUED_STORAGE_TEST_STRICT", "") not in ("", "0")
        stack = ServiceStack(strict=strict, bucket="qs-test").start()
        os.environ.update(stack.env())
    config.stash[_STACK] = stack
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    django.conf.settings.DATABASES  # noqa: B018  (load the settings: pytest-django sets up Django)


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(_STACK, None)
    if stack is not None:
        stack.stop()


def pytest_report_header(config: pytest.Config) -> list[str]:
    stack = config.stash.get(_STACK, None)
    if stack is None:
        return []
    lines = [
        f"settings: {SETTINGS_MODULE}; services in {stack.workdir}, "
        f"started in {stack.start_seconds or 0:.1f}s"
    ]
    if stack.unavailable:
        lines.append(f"unavailable: {stack.unavailable}")
    return lines


@pytest.fixture(scope="session")
def stack(pytestconfig: pytest.Config) -> ServiceStack:
    """The services this pytest process started (the fault proxies are threads of it)."""
    found = pytestconfig.stash.get(_STACK, None)
    if found is None:
        need("stack")  # skips (or fails, strict) when no service runs at all
        pytest.fail("the fault proxies belong to the process that started the services")
    return found


@pytest.fixture
def s3_proxy(stack: ServiceStack, clean: Any) -> Iterator[HttpFaultProxy]:
    """The HTTP fault proxy between the storages and moto (the bucket emptied), with an empty
    request log; afterwards it is up again, without faults and without a black hole."""
    need("s3_proxy")
    proxy = stack.s3_proxy
    assert proxy is not None
    proxy.clear_log()
    yield proxy
    proxy.come_up()
    proxy.clear_faults()
    proxy.end_black_hole()


@pytest.fixture
def broker_proxy(stack: ServiceStack) -> Iterator[TcpFaultProxy]:
    """The TCP fault proxy between Celery and Redis (the broker); afterwards it is up again."""
    need("broker_proxy")
    proxy = stack.broker_proxy
    assert proxy is not None
    yield proxy
    proxy.come_up()


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
