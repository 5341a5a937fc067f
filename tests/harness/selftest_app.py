"""A throw-away Celery app used only by ``tests/test_harness.py`` to exercise CeleryWorker.

Broker: ``QS_TEST_BROKER_URL``; results: ``QS_TEST_REDIS_URL`` db 1 (both set by the test).
"""

from __future__ import annotations

import os
import time

from celery import Celery

QUEUE = "harness"


def configure(broker_url: str, redis_url: str) -> None:
    app.conf.update(broker_url=broker_url, result_backend=f"{redis_url}/1")


app = Celery("qs_harness")
app.conf.update(
    broker_url=os.environ.get("QS_TEST_BROKER_URL", "memory://"),
    result_backend=(
        f"{os.environ['QS_TEST_REDIS_URL']}/1" if "QS_TEST_REDIS_URL" in os.environ else None
    ),
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
)


@app.task(name="harness.add")  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="harness.getpid")  # type: ignore[untyped-decorator]
def getpid() -> int:
    return os.getpid()


@app.task(name="harness.sleep")  # type: ignore[untyped-decorator]
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
