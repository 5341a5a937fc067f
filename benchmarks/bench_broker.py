"""The broker batch: what a broker that refuses or hangs costs a request's ``save()``.

Run by ``make bench`` (``PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_broker.py``). It
starts its own Redis (the broker, reached through the tests' TCP fault proxy), PostgreSQL (the
ledger) and moto, and saves 16 KiB files through the ``default`` queued storage in autocommit
(a view without ``ATOMIC_REQUESTS``: the transfer is dispatched inside ``save()``), one process,
no worker, Celery's default publish retry policy and connection timeout, in three conditions:

* **healthy**: the broker answers (the baseline of every ratio, measured in the same run);
* **refused**: the proxy's port refuses connections (a broker that is down);
* **hung**: the proxy keeps the connections and forwards nothing (a partition, a stalled
  broker; the benchmark's Celery app sets no socket timeout, Celery's default).

For each: ``save()`` p50 / p99 / max, and after the broker is back, the seconds until every
save's message is in the broker's queue (no reconcile pass, no worker start, no new save).
Beside them, the publish a request made before this batch's change (Celery's ``apply_async``
on the request's thread, what ``storage.transfer(name)`` still does) against the refused and
the hung broker, timed once each (the hung one gives up after ``--hang-cap`` seconds).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS  # noqa: E402

from tests.harness.services import ServiceStack  # noqa: E402

BUCKET = "bench-broker-bucket"
ALIAS = "default"
KiB = 1024


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


class BrokerBench:
    def __init__(self, saves: int) -> None:
        self.count = saves
        self.stack = ServiceStack(
            BUCKET, strict=True, services=["redis", "broker_proxy", "moto", "postgres"]
        ).start()
        self.stack.create_database("bench")
        proxy = self.stack.broker_proxy
        assert proxy is not None
        self.proxy = proxy
        os.environ.update(
            {
                **self.stack.env(),
                "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
                "BENCH_DB": "postgres",
                "BENCH_BROKER_URL": proxy.redis_url(0),
            }
        )
        import django

        django.setup()
        import redis
        from django.core.files.storage import storages
        from django.core.management import call_command

        from benchmarks.celery_app import app

        call_command("migrate", verbosity=0)
        # Celery's own defaults, not the test suite's shorter publish retries: what a user runs.
        for key in ("task_publish_retry_policy", "broker_connection_timeout"):
            app.conf[key] = CELERY_DEFAULTS[key]
        logging.disable(logging.CRITICAL)  # the refusals' warnings are not this bench's output
        self.app = app
        self.storage: Any = storages[ALIAS]
        self.queue = self.storage.queue_for(None) or app.conf.task_default_queue
        assert self.stack.redis is not None
        self.redis = redis.Redis(port=self.stack.redis.port)  # directly, not through the proxy
        self.data = os.urandom(16 * KiB)
        self.n = 0
        self.rows: list[list[str]] = []
        self.healthy_p50 = 0.0

    def close(self) -> None:
        self.stack.stop()

    def save(self) -> tuple[str, float]:
        from django.core.files.base import ContentFile

        start = time.perf_counter()
        name = self.storage.save(f"bench-broker/{self.n}.bin", ContentFile(self.data))
        self.n += 1
        return name, (time.perf_counter() - start) * 1000

    def queued(self) -> int:
        return int(self.redis.llen(self.queue))

    def condition(self, label: str, down: Any, up: Any) -> None:
        self.redis.delete(self.queue)
        for _ in range(10):  # warm: connections open, the publisher's last message sent
            self.save()
        self.wait_queued(10, 30)
        self.redis.delete(self.queue)
        down()
        try:
            times = [self.save()[1] for _ in range(self.count)]
        finally:
            up()
        healed = time.perf_counter()
        dispatched = self.wait_queued(self.count, 60)
        after = time.perf_counter() - healed
        p50, p99 = statistics.median(times), percentile(times, 99)
        if label == "healthy":
            self.healthy_p50 = p50
        ratio = f"**{p50 / self.healthy_p50:.1f}x**" if self.healthy_p50 else ""
        got = f"{after:.1f} s" if dispatched >= self.count else f"{dispatched} in 60 s"
        self.rows.append(
            [label, f"{p50:.2f} {ratio}", f"{p99:.2f}", f"{max(times):.1f}", f"{times[0]:.1f}", got]
        )
        print(f"  {label}: p50 {p50:.2f} ms, max {max(times):.1f} ms; heal to queued {got}")

    def wait_queued(self, count: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.queued() < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.queued()

    def inline(self, label: str, down: Any, up: Any, cap: float) -> None:
        """The request-thread publish this batch replaced, timed once against a sick broker."""
        from queued_storage.dispatch import send_transfer

        name, _ = self.save()
        down()
        took: list[float] = []

        def publish() -> None:
            start = time.perf_counter()
            send_transfer(self.storage, name)
            took.append((time.perf_counter() - start) * 1000)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        thread.join(cap)
        up()
        shown = f"{took[0]:.0f} ms" if took else f"> {cap:.0f} s (gave up)"
        self.rows.append([f"{label}: inline publish (before)", shown, "", "", "", ""])
        print(f"  {label}, inline publish: {shown}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--saves", type=int, default=200, help="saves per condition")
    parser.add_argument("--hang-cap", type=float, default=20.0)
    args, others = parser.parse_known_args()
    if others:
        print(f"broker batch: ignoring {' '.join(others)} (options of the other batches)")
    started = time.perf_counter()
    print("broker batch: save() while the broker is healthy, refuses, hangs", flush=True)
    bench = BrokerBench(args.saves)
    proxy = bench.proxy
    try:
        bench.condition("healthy", lambda: None, lambda: None)
        bench.condition("refused", proxy.go_down, proxy.come_up)
        bench.condition("hung", proxy.freeze, proxy.thaw)
        bench.inline("refused", proxy.go_down, proxy.come_up, args.hang_cap)
        bench.inline("hung", proxy.freeze, proxy.thaw, args.hang_cap)
    finally:
        bench.close()
    from django.conf import settings

    print()
    print(
        "baseline: save() with a healthy broker, same run (ratio = p50 / healthy p50); "
        f"QUEUED_STORAGE_DISPATCH_WAIT = {settings.QUEUED_STORAGE_DISPATCH_WAIT} s"
        if hasattr(settings, "QUEUED_STORAGE_DISPATCH_WAIT")
        else "baseline: save() with a healthy broker, same run (ratio = p50 / healthy p50); "
        "QUEUED_STORAGE_DISPATCH_WAIT default (0.25 s)"
    )
    print("| broker | save() p50 (ms) | p99 | max | first save | back to every message queued |")
    print("|---|---|---|---|---|---|")
    for row in bench.rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nrun: {time.perf_counter() - started:.0f}s; {args.saves} saves per condition")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
