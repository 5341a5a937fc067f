"""The broker batch: what a broker that refuses or hangs costs a request's ``save()``.

Run by ``make bench`` (``PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_broker.py``), on
both brokers by default (``--broker redis|rabbitmq|both``; ``both`` runs each in a child
process of its own, one after the other, since a process's Django settings name one broker).
Each starts its own services: the broker, reached through the tests' TCP fault proxy
(``tests/harness/faults.py``'s ``TcpFaultProxy``), PostgreSQL (the ledger), moto, and Redis
(the cache; with ``--broker redis`` also the broker). The RabbitMQ broker is Debian's
``rabbitmq-server`` started by ``tests/harness/services.py``'s ``RabbitMQServer``.

It saves 16 KiB files through the ``default`` queued storage in autocommit (a view without
``ATOMIC_REQUESTS``: the transfer is dispatched inside ``save()``), one process, no worker.
The Celery settings are a user's:

* Celery's default publish retry policy (``task_publish_retry_policy``: ``max_retries`` 3,
  ``interval_start`` 0, ``interval_step`` 0.2, ``interval_max`` 1) and connection timeout
  (``broker_connection_timeout``: 4 s), on both brokers; no socket timeout and no publish
  timeout (Celery's defaults);
* Redis: ``broker_transport_options = {"visibility_timeout": 3600}`` (the test project's);
* RabbitMQ: docs/deployment.md's RabbitMQ settings, ``broker_transport_options =
  {"confirm_publish": True}`` (a publish waits for the broker's confirm) and
  ``broker_channel_error_retry = True``.

Three conditions per broker:

* **healthy**: the broker answers (the baseline of that broker's ratios, same run);
* **refused**: the proxy's port refuses connections (a broker that is down);
* **hung**: the proxy keeps the connections and forwards nothing (a partition, a stalled
  broker).

For each: ``save()`` p50 / p99 / max, and after the broker is back, the seconds until every
save's message is in the broker's queue (Redis: the list's length; RabbitMQ: the queue's
message count, ``queue_declare(passive=True)``, read directly, not through the proxy); no
reconcile pass, no worker start, no new save. Beside them, the publish a request made before
the publisher thread (Celery's ``apply_async`` on the request's thread, what
``storage.transfer(name)`` still does) against the refused and the hung broker, timed once
each (the hung one gives up after ``--hang-cap`` seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
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
#: The brokers measured, and their names in the tables.
BROKERS = {"redis": "Redis", "rabbitmq": "RabbitMQ"}
HEADER = "save() p50 (ms) | p99 | max | first save | back to every message queued"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


class BrokerBench:
    def __init__(self, broker: str, saves: int) -> None:
        self.broker = broker
        self.count = saves
        self.stack = ServiceStack(
            BUCKET,
            strict=True,
            services=["redis", "broker_proxy", "moto", "postgres"],
            broker=broker,
        ).start()
        self.stack.create_database("bench")
        proxy, url = self.stack.broker_proxy, self.stack.broker_url
        assert proxy is not None and url is not None
        self.proxy = proxy
        os.environ.update(
            {
                **self.stack.env(),
                "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
                "BENCH_DB": "postgres",
                "BENCH_BROKER_URL": url,
            }
        )
        import django

        django.setup()
        from django.core.files.storage import storages
        from django.core.management import call_command

        from benchmarks.celery_app import app

        call_command("migrate", verbosity=0)
        # Celery's own defaults, not the test suite's shorter publish retries: what a user runs.
        for key in ("task_publish_retry_policy", "broker_connection_timeout"):
            app.conf[key] = CELERY_DEFAULTS[key]
        logging.disable(logging.CRITICAL)  # the refusals' warnings are not this bench's output
        self.app = app
        storage: Any = storages[ALIAS]
        self.storage = storage
        self.queue: str = storage.queue_for(None) or app.conf.task_default_queue
        self.data = os.urandom(16 * KiB)
        self.n = 0
        self.rows: list[list[str]] = []
        self.healthy_p50 = 0.0
        # The queue is read directly, not through the proxy.
        if broker == "redis":
            import redis

            assert self.stack.redis is not None
            self.redis = redis.Redis(port=self.stack.redis.port)
        else:
            from kombu.connection import Connection

            assert self.stack.rabbitmq_url is not None
            self.amqp = Connection(self.stack.rabbitmq_url)

    def close(self) -> None:
        if self.broker == "rabbitmq":
            with contextlib.suppress(Exception):
                self.amqp.release()
        self.stack.stop()

    def settings(self) -> dict[str, Any]:
        """The Celery settings the saves ran with (printed beside the table)."""
        conf = self.app.conf
        return {
            key: conf[key]
            for key in (
                "broker_transport_options",
                "task_publish_retry_policy",
                "broker_connection_timeout",
            )
        }

    def save(self) -> tuple[str, float]:
        from django.core.files.base import ContentFile

        start = time.perf_counter()
        name = self.storage.save(f"bench-broker/{self.n}.bin", ContentFile(self.data))
        self.n += 1
        return name, (time.perf_counter() - start) * 1000

    def queued(self) -> int:
        if self.broker == "redis":
            return int(self.redis.llen(self.queue))
        from amqp.exceptions import NotFound

        channel = self.amqp.channel()
        try:
            return int(channel.queue_declare(self.queue, passive=True).message_count)
        except NotFound:  # not declared yet: no message sent
            return 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def empty(self) -> None:
        if self.broker == "redis":
            self.redis.delete(self.queue)
            return
        from amqp.exceptions import NotFound

        channel = self.amqp.channel()
        try:
            channel.queue_purge(self.queue)
        except NotFound:
            pass
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def condition(self, label: str, down: Any, up: Any) -> None:
        self.empty()
        for _ in range(10):  # warm: connections open, the publisher's last message sent
            self.save()
        self.wait_queued(10, 30)
        self.empty()
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
        print(
            f"  {BROKERS[self.broker]} {label}: p50 {p50:.2f} ms, max {max(times):.1f} ms; "
            f"heal to queued {got}",
            flush=True,
        )

    def wait_queued(self, count: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.queued() < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.queued()

    def inline(self, label: str, down: Any, up: Any, cap: float) -> None:
        """The request-thread publish the publisher thread replaced, timed once against a sick
        broker."""
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
        print(f"  {BROKERS[self.broker]} {label}, inline publish: {shown}", flush=True)


def measure(broker: str, saves: int, hang_cap: float) -> dict[str, Any]:
    """One broker's conditions in this process: its rows and the settings they ran with."""
    bench = BrokerBench(broker, saves)
    proxy = bench.proxy
    try:
        bench.condition("healthy", lambda: None, lambda: None)
        bench.condition("refused", proxy.go_down, proxy.come_up)
        bench.condition("hung", proxy.freeze, proxy.thaw)
        bench.inline("refused", proxy.go_down, proxy.come_up, hang_cap)
        bench.inline("hung", proxy.freeze, proxy.thaw, hang_cap)
        from django.conf import settings

        wait = getattr(settings, "QUEUED_STORAGE_DISPATCH_WAIT", None)
        return {
            "broker": broker,
            "rows": bench.rows,
            "settings": bench.settings(),
            "dispatch_wait": "default (0.25 s)" if wait is None else f"{wait} s",
        }
    finally:
        bench.close()


def in_child(broker: str, saves: int, hang_cap: float) -> dict[str, Any]:
    """:func:`measure` in a child process (a process's settings name one broker)."""
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, __file__, "--broker", broker, "--saves", str(saves)]
        argv += ["--hang-cap", str(hang_cap), "--result", str(out)]
        subprocess.run(argv, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def table(result: dict[str, Any]) -> str:
    name = BROKERS[result["broker"]]
    lines = [
        f"{name}: {json.dumps(result['settings'], sort_keys=True)}; "
        f"QUEUED_STORAGE_DISPATCH_WAIT {result['dispatch_wait']}",
        f"| {name} | {HEADER} |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in result["rows"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--saves", type=int, default=200, help="saves per condition")
    parser.add_argument("--hang-cap", type=float, default=20.0)
    parser.add_argument("--broker", choices=[*BROKERS, "both"], default="both")
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)  # a child's JSON
    args, others = parser.parse_known_args()
    if others:
        print(f"broker batch: ignoring {' '.join(others)} (options of the other batches)")
    if args.result is not None:  # a child of --broker both
        args.result.write_text(json.dumps(measure(args.broker, args.saves, args.hang_cap)))
        return 0
    started = time.perf_counter()
    brokers = list(BROKERS) if args.broker == "both" else [args.broker]
    print(
        f"broker batch: save() while the broker ({', '.join(BROKERS[b] for b in brokers)}) is "
        "healthy, refuses, hangs",
        flush=True,
    )
    if len(brokers) == 1:
        results = [measure(brokers[0], args.saves, args.hang_cap)]
    else:
        results = [in_child(broker, args.saves, args.hang_cap) for broker in brokers]
    print()
    print("baseline: save() with a healthy broker, same broker, same run (ratio = p50 / its p50)")
    for result in results:
        print()
        print(table(result))
    print(f"\nrun: {time.perf_counter() - started:.0f}s; {args.saves} saves per condition")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
