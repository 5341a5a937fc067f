"""Prometheus metrics (needs the ``metrics`` extra, which installs prometheus-client).

Two kinds, because they answer two questions:

* **What is in the ledger now** (files and bytes by alias and state, the oldest file of each
  state, lost files): :class:`LedgerCollector` asks the ledger at scrape time, in ONE aggregate
  query, whatever the number of files. The numbers are the database's, so every process that
  exports them exports the same ones: scrape them from one place, or aggregate with ``max``.
* **What happened** (transfers started, succeeded and failed, their duration and throughput,
  every state change, reconcile findings): counters and histograms fed by the signals
  (``file_state_changed``, ``file_transferred``) and by the reconcile task's result, in the
  process where it happened: transfers happen in Celery worker processes, so a worker must
  export too. With Celery's prefork pool, run every process (web and worker) with
  prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): each process writes its
  values to files there, and :func:`metrics_view` or :func:`start_http_server` add them up.

:func:`register` puts both in a registry (prometheus-client's default one, which
django-prometheus and ``prometheus_client.start_http_server`` export) and connects the
receivers; ``QUEUED_STORAGE_METRICS = True`` calls it at start-up. Labels are the storage
alias, states and transition names: never a file name, never anything of a storage's options.
"""

from __future__ import annotations

import datetime
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from celery.signals import task_success
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from queued_storage import tally
from queued_storage.conf import settings
from queued_storage.models import UNFINISHED, State, StoredFile
from queued_storage.signals import file_state_changed, file_transferred

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.multiprocess import MultiProcessCollector
except ImportError as err:  # pragma: no cover - the extra is installed in the test env
    raise ImproperlyConfigured(
        "queued_storage.metrics needs prometheus-client: "
        'pip install "django-queued-remote-storage[metrics]"'
    ) from err

__all__ = [
    "LedgerCollector",
    "exposition_registry",
    "metrics_view",
    "observe_reconcile",
    "register",
    "start_http_server",
]

logger = logging.getLogger(__name__)

#: Name of the reconcile task (``queued_storage.tasks.reconcile``), whose result is counted.
RECONCILE_TASK = "queued_storage.tasks.reconcile"

#: Seconds: from a small file on a fast link to a large one on a slow link.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
#: Bytes per second: 64 KiB/s to 1 GiB/s, by factors of 4.
THROUGHPUT_BUCKETS = tuple(float(4**k * 65536) for k in range(9))

#: Reconcile counts that describe the ledger at the pass (gauges), not work done (counters).
_RECONCILE_LEVELS = {
    "lost": "queued_storage_reconcile_lost_files",
    "overdue_elsewhere": "queued_storage_reconcile_overdue_elsewhere_files",
    "staging_bytes": "queued_storage_reconcile_staging_waiting_bytes",
}

# -- what happened: fed by signals, in the process where it happened -------------------------
# Created unregistered: register() puts them in a registry; in multiprocess mode they write to
# PROMETHEUS_MULTIPROC_DIR whatever the registry.
STATE_CHANGES = Counter(
    "queued_storage_state_changes",
    "Ledger transitions (file_state_changed), by storage alias, transition and states.",
    ["alias", "transition", "old_state", "new_state"],
    registry=None,
)
TRANSFERS_STARTED = Counter(
    "queued_storage_transfers_started",
    "Transfers started (a worker took the lease).",
    ["alias"],
    registry=None,
)
TRANSFERS_SUCCEEDED = Counter(
    "queued_storage_transfers_succeeded",
    "Transfers verified and recorded remote.",
    ["alias"],
    registry=None,
)
TRANSFERS_FAILED = Counter(
    "queued_storage_transfers_failed",
    "Transfer attempts that ended without a verified copy: outcome 'retry' (transient error, "
    "pending again), 'failed' (permanent error or retries spent) or 'lease_expired' (its "
    "worker was lost; taken back or over).",
    ["alias", "outcome"],
    registry=None,
)
TRANSFERRED_BYTES = Counter(
    "queued_storage_transferred_bytes",
    "Bytes of the files transferred and verified.",
    ["alias"],
    registry=None,
)
TRANSFER_DURATION = Histogram(
    "queued_storage_transfer_duration_seconds",
    "Seconds from the lease to the verified copy recorded, per transferred file.",
    ["alias"],
    buckets=DURATION_BUCKETS,
    registry=None,
)
TRANSFER_THROUGHPUT = Histogram(
    "queued_storage_transfer_throughput_bytes_per_second",
    "Size over duration of each transferred file.",
    ["alias"],
    buckets=THROUGHPUT_BUCKETS,
    registry=None,
)
RECONCILE_RUNS = Counter(
    "queued_storage_reconcile_runs",
    "Reconcile passes counted (the reconcile task, or observe_reconcile()).",
    registry=None,
)
RECONCILE_FINDINGS = Counter(
    "queued_storage_reconcile_findings",
    "What reconcile passes did and found, by kind (the keys of Report.counts()).",
    ["kind"],
    registry=None,
)
RECONCILE_LAST_RUN = Gauge(
    "queued_storage_reconcile_last_run_timestamp_seconds",
    "Unix time of the last reconcile pass counted.",
    registry=None,
    multiprocess_mode="max",
)
RECONCILE_LEVELS = {
    key: Gauge(
        name,
        f"The reconcile report's {key!r} at the last pass counted.",
        registry=None,
        multiprocess_mode="mostrecent",
    )
    for key, name in _RECONCILE_LEVELS.items()
}

_EVENTS: tuple[Counter | Gauge | Histogram, ...] = (
    STATE_CHANGES,
    TRANSFERS_STARTED,
    TRANSFERS_SUCCEEDED,
    TRANSFERS_FAILED,
    TRANSFERRED_BYTES,
    TRANSFER_DURATION,
    TRANSFER_THROUGHPUT,
    RECONCILE_RUNS,
    RECONCILE_FINDINGS,
    RECONCILE_LAST_RUN,
    *RECONCILE_LEVELS.values(),
)

#: The attempt outcome of a transition that ends a transfer attempt without success.
_ATTEMPT_FAILED = {"retry_later": "retry", "fail": "failed", "take_back": "lease_expired"}


def _state_label(state: str | None) -> str:
    return "none" if state is None else str(state)


def _on_state_changed(
    sender: Any,
    *,
    alias: str,
    old_state: str | None,
    new_state: str | None,
    transition: str,
    **kwargs: Any,
) -> None:
    STATE_CHANGES.labels(alias, transition, _state_label(old_state), _state_label(new_state)).inc()
    if transition == "lease":
        TRANSFERS_STARTED.labels(alias).inc()
        if old_state == State.TRANSFERRING:  # taken over: the previous attempt's worker is gone
            TRANSFERS_FAILED.labels(alias, "lease_expired").inc()
    elif transition == "remote":
        TRANSFERS_SUCCEEDED.labels(alias).inc()
    elif transition in _ATTEMPT_FAILED:
        TRANSFERS_FAILED.labels(alias, _ATTEMPT_FAILED[transition]).inc()


def _on_file_transferred(
    sender: Any,
    *,
    alias: str,
    size: int | None = None,
    duration: float | None = None,
    **kwargs: Any,
) -> None:
    if size is not None:
        TRANSFERRED_BYTES.labels(alias).inc(size)
    if duration is not None:
        TRANSFER_DURATION.labels(alias).observe(duration)
        if size is not None and duration > 0:
            TRANSFER_THROUGHPUT.labels(alias).observe(size / duration)


def observe_reconcile(counts: Mapping[str, int]) -> None:
    """Count one reconcile pass from its report's counts (``Report.counts()``).

    The reconcile task's result is counted by itself (in the worker); call this where you run
    the pass yourself and export from that process: ``observe_reconcile(reconcile().counts())``.
    """
    RECONCILE_RUNS.inc()
    RECONCILE_LAST_RUN.set(time.time())
    for kind, value in counts.items():
        if kind in RECONCILE_LEVELS:
            RECONCILE_LEVELS[kind].set(value)
        elif value:
            RECONCILE_FINDINGS.labels(kind).inc(value)


def _on_task_success(sender: Any = None, result: Any = None, **kwargs: Any) -> None:
    if getattr(sender, "name", None) == RECONCILE_TASK and isinstance(result, dict):
        observe_reconcile(result)


# -- what is in the ledger now: asked at scrape time ------------------------------------------
class LedgerCollector:
    """Files and bytes by alias and state, the oldest file of each state and the lost files,
    from the kept tally (``tally.py``): a scrape costs the same whatever the ledger holds."""

    def describe(self) -> list[Metric]:
        """The metric names without asking the ledger (a registry asks at registration)."""
        return list(self._families())

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "queued_storage_files", "Files in the ledger.", labels=["alias", "state"]
            ),
            GaugeMetricFamily(
                "queued_storage_bytes",
                "Bytes of the files in the ledger (their recorded size).",
                labels=["alias", "state"],
            ),
            GaugeMetricFamily(
                "queued_storage_oldest_created_timestamp_seconds",
                "Unix time at which the oldest file of this state was saved, or its direct "
                "upload started (not remote).",
                labels=["alias", "state"],
            ),
            GaugeMetricFamily(
                "queued_storage_lost_files",
                "Files that never reached the remote and whose local copy is gone (data loss).",
                labels=["alias"],
            ),
            GaugeMetricFamily(
                "queued_storage_ledger_up", "1 if the ledger answered this scrape, else 0."
            ),
        )

    def collect(self) -> Iterator[Metric]:
        files, size, oldest, lost, up = self._families()
        try:
            groups = self._query()
        except DatabaseError:
            logger.warning("the ledger could not be read for the metrics", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        by_alias: dict[str, int] = {}
        for group in groups:
            alias, state = str(group["alias"]), str(group["state"])
            files.add_metric([alias, state], group["files"])
            size.add_metric([alias, state], group["bytes"] or 0)
            created: datetime.datetime | None = group["oldest"]
            if state != State.REMOTE and created is not None:
                oldest.add_metric([alias, state], created.timestamp())
            by_alias[alias] = by_alias.get(alias, 0) + group["lost"]
        for alias in sorted(by_alias):
            lost.add_metric([alias], by_alias[alias])
        up.add_metric([], 1)
        yield from (files, size, oldest, lost, up)

    @staticmethod
    def _query() -> list[dict[str, Any]]:
        """Files, bytes, oldest and lost files by alias and state: from the kept tally (its
        few rows, and one seek of a partial index for the oldest file of each unfinished
        state; of ``(state, updated)`` for the few ``uploading`` ones), so a scrape costs the
        same at 10 files and 10 million. A connection this
        opens outside a request (the scrape thread of :func:`start_http_server`) is closed
        again, so scrapes leave no connection behind."""
        db = StoredFile.db()
        connection = connections[db]
        opened = connection.connection is None
        try:
            found: dict[tuple[str, str], dict[str, Any]] = {}
            for group in tally.read():
                key = (group.alias, group.state)
                sums = found.setdefault(
                    key,
                    {"alias": group.alias, "state": group.state, "files": 0, "bytes": 0, "lost": 0},
                )
                sums["files"] += group.files
                sums["bytes"] += group.bytes
                if group.lost:
                    sums["lost"] += group.files
            rows = StoredFile.all_rows()
            for (alias, state), sums in found.items():
                unfinished = state in (*UNFINISHED, State.UPLOADING) and sums["files"] > 0
                sums["oldest"] = rows.oldest_created(alias, state) if unfinished else None
            return [found[key] for key in sorted(found)]
        finally:
            if opened and not connection.in_atomic_block:
                connection.close()


# -- registration and export -------------------------------------------------------------------
_lock = threading.Lock()
_registered: set[int] = set()
_COLLECTOR = LedgerCollector()


def register(registry: CollectorRegistry | None = None) -> None:
    """Register the metrics and the ledger collector in *registry* (default: prometheus-client's
    default registry) and connect the receivers that feed them. Idempotent."""
    registry = prometheus_client.REGISTRY if registry is None else registry
    with _lock:
        if id(registry) not in _registered:
            for collector in (*_EVENTS, _COLLECTOR):
                registry.register(collector)
            _registered.add(id(registry))
    file_state_changed.connect(_on_state_changed, dispatch_uid="queued_storage.metrics")
    file_transferred.connect(_on_file_transferred, dispatch_uid="queued_storage.metrics")
    # The reconcile task's result is its report's counts (Celery's signal, in the worker).
    task_success.connect(_on_task_success, dispatch_uid="queued_storage.metrics", weak=False)


def multiprocess_mode() -> bool:
    """Whether prometheus-client writes this process's values to ``PROMETHEUS_MULTIPROC_DIR``."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition_registry() -> CollectorRegistry:
    """The registry to export: in multiprocess mode a new one that adds up the values of every
    process writing to ``PROMETHEUS_MULTIPROC_DIR``, plus the ledger collector; else the
    default registry (with this module's metrics registered)."""
    if multiprocess_mode():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(_COLLECTOR)
        return registry
    register()
    return prometheus_client.REGISTRY


def _authorized(request: HttpRequest) -> bool | None:
    """``True``: the token or a staff user; ``False``: a signed-in user who is not staff;
    ``None``: no credentials."""
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if (
        token
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), token.encode())
    ):
        return True
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return bool(user.is_active and user.is_staff)


@never_cache
@require_http_methods(["GET", "HEAD"])
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics page, for a Prometheus scraper (``Authorization: Bearer <token>``, with
    ``QUEUED_STORAGE_METRICS_TOKEN``) or a staff user; 401 without credentials, 403 for others."""
    allowed = _authorized(request)
    if allowed is None:
        response = HttpResponse("Authentication required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not allowed:
        return HttpResponse("Staff only.\n", status=403, content_type="text/plain")
    page = prometheus_client.generate_latest(exposition_registry())
    return HttpResponse(page, content_type=prometheus_client.CONTENT_TYPE_LATEST)


def start_http_server(port: int, addr: str = "0.0.0.0") -> tuple[Any, threading.Thread]:
    """Serve the metrics page (:func:`exposition_registry`) on *port* from a daemon thread of
    this process: for a Celery worker, which has no web view. Returns prometheus-client's
    ``(server, thread)``; ``server.shutdown()`` stops it."""
    server, thread = prometheus_client.start_http_server(port, addr, registry=exposition_registry())
    return server, thread
