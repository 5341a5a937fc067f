"""Fixtures shared by the suite: real services, a real Celery worker, clean storages (the
helpers the tests share are in ``tests/harness/suite.py``).

The services are started here, in ``pytest_configure``, not by importing the settings:
``DJANGO_SETTINGS_MODULE`` is not in the pytest configuration, so pytest-django leaves Django
alone until its own ``pytest_configure`` (which runs last); this module's hook runs before it,
starts the :class:`~tests.harness.services.ServiceStack`, exports its ``QS_TEST_*`` variables
(inherited by every worker and web server the tests start), and only then names and loads
``tests.settings``, which read them. ``pytest_unconfigure`` stops the services.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from qs_dev.processes import free_port
from tests.celery_app import app as celery_app  # noqa: F401  (configures the producer side)
from tests.harness.faults import HttpFaultProxy, TcpFaultProxy
from tests.harness.flush import install as keep_permissions_across_flushes
from tests.harness.services import (
    BROKERS,
    ENV_BROKER,
    ENV_RABBITMQ_CONSUMER_TIMEOUT,
    ServiceStack,
)
from tests.harness.suite import direct_s3_client, empty_bucket, need, reset_storages
from tests.harness.workers import CeleryWorker

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
        broker = os.environ.get(ENV_BROKER) or "redis"
        if broker not in BROKERS:
            raise pytest.UsageError(f"{ENV_BROKER}={broker!r}: choose one of {', '.join(BROKERS)}")
        stack = ServiceStack(
            strict=strict,
            bucket="qs-test",
            broker=broker,
            consumer_timeout=float(os.environ.get(ENV_RABBITMQ_CONSUMER_TIMEOUT) or 1800),
        ).start()
        os.environ.update(stack.env())
        # tests/test_scanning.py starts clamd on it; the settings name it (workers inherit it).
        os.environ["QS_TEST_CLAMD_PORT"] = str(free_port())
    config.stash[_STACK] = stack
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    django.conf.settings.DATABASES  # noqa: B018  (load the settings: pytest-django sets up Django)
    keep_permissions_across_flushes()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the transfer results the storages keep for this thread while Celery can still
    forget them: at interpreter exit ``AsyncResult.__del__`` finds Celery's modules torn down
    and prints an ignored exception per result."""
    from queued_storage.storage import queued_storages  # Django is set up by now

    for storage in queued_storages():
        storage.result = None
    gc.collect()


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
        f"started in {stack.start_seconds or 0:.1f}s; broker: {stack.broker}"
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


@pytest.fixture(params=["default", "postgres"])
def ledger_db(request: pytest.FixtureRequest) -> Iterator[str]:
    """The ledger on SQLite, then on PostgreSQL (``QUEUED_STORAGE_DATABASE``); the test's
    connections are closed afterwards."""
    from django.db import connections
    from django.test import override_settings

    if request.param == "postgres":
        need("postgres")
    with override_settings(QUEUED_STORAGE_DATABASE=request.param):
        yield request.param
    connections.close_all()


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
    proxy.thaw()
    proxy.come_up()


@pytest.fixture
def s3_client() -> Any:
    """A boto3 client talking to moto directly (not through the fault proxy)."""
    need("moto")
    return direct_s3_client()


@pytest.fixture
def clean(s3_client: Any) -> Any:
    """Empty bucket, staging directory and state cache before the test."""
    empty_bucket(s3_client)
    reset_storages()
    return s3_client


#: The fault tests' worker: a 3 s lease (quick takeover after kill -9), backoffs of 0.5 to 4 s,
#: the suite's small budget of 3 retries for errors about a file (outages and lost workers spend
#: none of it: they are retried for QUEUED_STORAGE_RETRY_FOR, a day), and the start-up reconcile
#: pass on (so a restarted worker re-queues what the killed one held), its watch every half
#: second. See
#: tests/settings_faults.py.
FAULT_WORKER_ENV = {
    "QS_FAULT_LEASE_TIMEOUT": "3",
    "QS_FAULT_RETRY_DELAY": "0.5",
    "QS_FAULT_RETRY_MAX_DELAY": "4",
    "QS_FAULT_RECONCILE_ON_START": "500",
    # its watch looks every half second (the suite's shared worker: every second)
    "QS_TEST_WATCH_INTERVAL": "0.5",
}


def host_queue(host: str | None = None) -> str:
    """The queue of transfers routed to *host* (storage option ``queue="host"``)."""
    from queued_storage.conf import settings as qs_settings

    return f"queued_storage.{host or qs_settings.HOST}"


def make_worker(
    name: str,
    *,
    queues: list[str],
    settings_module: str = "tests.settings_faults",
    env: dict[str, str] | None = None,
    concurrency: int = 1,
) -> CeleryWorker:
    """A real worker of the test project (``tests.celery_app``), its log in the workdir."""
    return CeleryWorker(
        "tests.celery_app",
        env={**settings.ENV, "DJANGO_SETTINGS_MODULE": settings_module, **(env or {})},
        queues=queues,
        concurrency=concurrency,
        name=name,
        logfile=Path(settings.WORKDIR) / f"worker-{name}.log",
    )


def _running(worker: CeleryWorker) -> Iterator[CeleryWorker]:
    need("redis")
    need("moto")
    need("broker_proxy")  # the broker (Redis or RabbitMQ) behind it
    worker.start(timeout=60)
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[CeleryWorker]:
    """One real Celery worker process (prefork, concurrency 1) for the whole session."""
    yield from _running(make_worker("main", queues=["celery"], settings_module=SETTINGS_MODULE))


@pytest.fixture(scope="session")
def host_worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[CeleryWorker]:
    """A second real worker (prefork, concurrency 2) consuming this host's own queue, with
    FAULT_WORKER_ENV; the fault tests kill it with SIGKILL and start it again."""
    yield from _running(
        make_worker("faults", queues=[host_queue()], env=FAULT_WORKER_ENV, concurrency=2)
    )
