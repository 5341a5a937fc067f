"""``make bench``, the scale batch: what each recurring cost does when the ledger grows.

Starts its own Redis, moto S3 server and PostgreSQL on loopback (the test harness, as
``benchmarks/bench.py`` does), fills the ledger with SQL (``generate_series``, never ``save()``)
to each size in turn, and measures the same things at every size in one run. The baseline of
every ratio is the same measurement at 1,000 rows of the same mix, on the same stack, in the
same run. Nothing here asserts a time: targets are printed.

The mix (the issue's): 97 % ``remote``, 2 % ``pending`` (half of them overdue: updated two
hours ago), 0.5 % ``failed``, 0.5 % ``transferring`` with expired leases, two hosts
(``web-1``, ``web-2``), one queued storage (``default``), 16 KiB files, created one second
apart. The tally triggers (migration 0007) fire on the fill's ``INSERT`` as they would on a
live site; the tally is then folded once (a fold that removes that many rows compacts the
table itself: ``tally.COMPACT_AT``), the ledger gets ``VACUUM ANALYZE`` (as autovacuum would
after such a load) and the tally ``ANALYZE``.

Measured at each size (sizes: 1k and 1M rows; ``--quick``: 1k and 100k; ``--full``: 1k, 1M
and 10M):

* ``save()`` of 16 KiB in autocommit (transfer dispatched to Redis, no worker), p50/p99 of 200
  saves after 20 warm-up saves, without and with ``QUEUED_STORAGE_STAGING_BUDGET``
  (interleaved rounds; ``QUEUED_STORAGE_HOST = "web-1"``, the host with files waiting);
* an idle reconcile pass (``QUEUED_STORAGE_HOST = "web-3"``: no file of the mix waits there;
  the other hosts' work is only reported) and a busy one (``web-1``: its overdue ``pending``
  and expired leases, at most ``RECONCILE_BATCH`` of each, are re-queued to Redis; their local
  copies are created as empty files first). ``QUEUED_STORAGE_RECONCILE_VERIFY_SAMPLE = 0`` in
  both (the sample is measured on its own, below);
* ``manage.py queued_storage status --json``;
* the admin changelist (Django's test client, a superuser): page 1, the ``state`` filter's
  ``failed`` link as page 1 shows it, a name search (``q=uploads/0000001``: a prefix of 100
  names at every size) and the date drill-down (year, month, day links as the pages show
  them; the slowest level is reported);
* one metrics scrape (``LedgerCollector().collect()``, what the metrics view serialises);
* ``manage.py queued_storage verify --sample 100``: moto holds none of the filled names, so
  every HEAD answers 404 and the 100 sampled rows become ``failed`` (data loss); the command
  runs in a transaction that is rolled back. Its target is read on its reads as PostgreSQL
  times them (``EXPLAIN ANALYZE`` of each again, after the call): the client-side time of its
  queries runs beside 8 HEAD threads (GIL waits inflate it) and includes the 100 writes of the
  data loss, which a healthy bucket does not cause (both are printed too);
* ``manage.py queued_storage cleanup --dry-run``.

"db" is the time the queries of one call took as Django's cursor saw them (each query's
execute and fetch, client side over the Unix socket: the sum of ``connection.queries``
times); "wall" is the call end to end in this process. S3 requests are counted at botocore's
``Endpoint._send`` (every HTTP request, to moto). Every figure except the saves is the median
of 3 runs after one warm-up run. A figure over its target gets the ``EXPLAIN ANALYZE`` of its
slowest query printed.

Prints a table and writes ``benchmarks/results-scale.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import logging
import os
import re
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.services import ServiceStack  # noqa: E402

BUCKET = "bench-scale-bucket"
DATABASE = "bench"
ALIAS = "default"
KiB = 1024
BASE_ROWS = 1_000
BASELINE = (
    "baseline: the same measurement at 1,000 rows of the same mix, same stack, same run "
    "(ratio = figure at N rows / figure at 1k rows)"
)
#: The fill: %(n)s rows of the issue's mix (see the module docstring).
FILL = """
INSERT INTO queued_storage_storedfile
 (alias, name, state, size, checksum, checksum_algorithm, attempts, last_error, host,
  local_exists, bytes_done, upload_id, part_size, source, parts, lease_owner, lease_expires,
  created, updated, transferred, owner, retrying_since, dispatch_refused)
SELECT %(alias)s, 'uploads/' || lpad(i::text, 9, '0') || '.bin',
  CASE WHEN i %% 200 = 0 THEN 'failed' WHEN i %% 200 = 1 THEN 'transferring'
       WHEN i %% 50 = 2 THEN 'pending' ELSE 'remote' END,
  16384 + (i %% 1000), '', '',
  CASE WHEN i %% 200 = 0 THEN 5 ELSE 0 END,
  CASE WHEN i %% 200 = 0 THEN 'boom' ELSE '' END,
  CASE WHEN (i / 7) %% 2 = 0 THEN 'web-1' ELSE 'web-2' END,
  (i %% 200 = 0 OR i %% 200 = 1 OR i %% 50 = 2),
  0, '', NULL, '', '[]'::jsonb,
  CASE WHEN i %% 200 = 1 THEN 'dead-worker' ELSE '' END,
  CASE WHEN i %% 200 = 1 THEN now() - interval '1 hour' ELSE NULL END,
  now() - (%(n)s - i) * interval '1 second',
  CASE WHEN i %% 100 = 2 THEN now() - interval '2 hours'
       WHEN i %% 50 = 2 THEN now()
       ELSE now() - (%(n)s - i) * interval '1 second' END,
  CASE WHEN i %% 200 > 1 AND i %% 50 <> 2 THEN now() - (%(n)s - i) * interval '1 second'
       ELSE NULL END,
  '', NULL, NULL
FROM generate_series(1, %(n)s) AS i
"""


# -- S3 requests ------------------------------------------------------------------------------
class S3Counter:
    """Counts every HTTP request botocore sends (all clients, all threads) and their time."""

    def __init__(self) -> None:
        self.requests = 0
        self.seconds = 0.0

    def install(self) -> None:
        from botocore.endpoint import Endpoint

        original = Endpoint._send  # type: ignore[attr-defined]
        counter = self

        def _send(endpoint: Any, request: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(endpoint, request)
            finally:
                counter.requests += 1
                counter.seconds += time.perf_counter() - start

        Endpoint._send = _send  # type: ignore[attr-defined]


S3 = S3Counter()


# -- one measured call ----------------------------------------------------------------------
@dataclass
class Call:
    wall_ms: float
    db_ms: float
    db_read_ms: float
    queries: int
    s3_requests: int
    s3_ms: float
    slowest_sql: str = ""
    slowest_ms: float = 0.0
    #: The reads' execution times as PostgreSQL measures them (EXPLAIN ANALYZE of each SELECT
    #: again, after the call), when asked for: no client-side wait (GIL, scheduling) in it.
    server_read_ms: float | None = None
    note: str = ""


class _Rollback(Exception):
    pass


def explain(sql: str, *, analyze: bool = True) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN ({'ANALYZE, BUFFERS' if analyze else 'COSTS'}) {sql}")
        return [str(r[0]) for r in cursor.fetchall()]


def server_ms(sql: str) -> float:
    for line in reversed(explain(sql)):
        if line.startswith("Execution Time:"):
            return float(line.split()[2])
    return 0.0


def is_read(sql: str) -> bool:
    return sql.lstrip().upper().startswith(("SELECT", "WITH"))


def call(
    fn: Callable[[], Any], *, rollback: bool = False, server: bool = False
) -> tuple[Call, Any]:
    """Run *fn* once, its queries captured; *rollback*: in a transaction rolled back after;
    *server*: also the reads' execution times measured by PostgreSQL (EXPLAIN ANALYZE)."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    result: Any = None
    s3_before, s3_time = S3.requests, S3.seconds
    with CaptureQueriesContext(connection) as captured:
        start = time.perf_counter()
        if rollback:
            with contextlib.suppress(_Rollback), transaction.atomic():
                result = fn()
                raise _Rollback
        else:
            result = fn()
        wall = time.perf_counter() - start
    times = [(float(q["time"]) * 1000, q["sql"]) for q in captured.captured_queries]
    reads = [t for t, sql in times if is_read(sql)]
    slowest = max(times, default=(0.0, ""))
    served = sum(server_ms(sql) for _, sql in times if is_read(sql)) if server else None
    return (
        Call(
            wall_ms=wall * 1000,
            db_ms=sum(t for t, _ in times),
            db_read_ms=sum(reads),
            queries=len(times),
            s3_requests=S3.requests - s3_before,
            s3_ms=(S3.seconds - s3_time) * 1000,
            slowest_sql=slowest[1],
            slowest_ms=slowest[0],
            server_read_ms=served,
        ),
        result,
    )


def median_call(
    fn: Callable[[], Any], *, runs: int = 3, rollback: bool = False, server: bool = False
) -> Call:
    """One warm-up run, then the median (by wall time) of *runs* runs."""
    call(fn, rollback=rollback)
    done = sorted(
        (call(fn, rollback=rollback, server=server)[0] for _ in range(runs)),
        key=lambda c: c.wall_ms,
    )
    middle = done[len(done) // 2]
    middle.db_ms = statistics.median(c.db_ms for c in done)
    middle.db_read_ms = statistics.median(c.db_read_ms for c in done)
    if server:
        middle.server_read_ms = statistics.median(c.server_read_ms or 0.0 for c in done)
    return middle


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# -- results --------------------------------------------------------------------------------
@dataclass
class Figure:
    """One measured thing at one size: the value the verdict reads, and what else it shows."""

    key: str
    rows: int
    value_ms: float
    shown: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    key: str
    what: str
    #: ms, or None: no target (printed for the ratio only).
    limit: Callable[[dict[int, Figure]], float] | None
    text: str


TARGETS = [
    Target("save", "save() 16 KiB, no budget: p50 (p99)", None, "- (flat)"),
    Target(
        "save_budget",
        "save() 16 KiB, STAGING_BUDGET: p50 (p99)",
        lambda by: by[BASE_ROWS].value_ms + 1.0,
        "p50 <= 1k-row p50 + 1 ms",
    ),
    Target("reconcile_idle", "reconcile pass, idle: db (wall)", lambda by: 50.0, "db <= 50 ms"),
    Target(
        "reconcile_busy", "reconcile pass, busy: db per file: db (wall) for the files", None, "-"
    ),
    Target("status", "status --json: wall (db)", lambda by: 100.0, "<= 100 ms"),
    Target("admin_page1", "admin changelist page 1: wall (db)", lambda by: 100.0, "<= 100 ms"),
    Target("admin_failed", "admin filtered state=failed: wall (db)", lambda by: 100.0, "<= 100 ms"),
    Target("admin_search", "admin name search: wall (db)", lambda by: 100.0, "<= 100 ms"),
    Target(
        "admin_drill",
        "admin date drill-down, slowest level: wall (db)",
        lambda by: 100.0,
        "<= 100 ms",
    ),
    Target("metrics", "metrics scrape (collect()): wall (db)", lambda by: 10.0, "<= 10 ms"),
    Target(
        "verify",
        "verify --sample 100: reads' db (all db incl. 100 data-loss writes, wall), S3 requests",
        lambda by: 50.0,
        "db <= 50 ms + S3",
    ),
    Target("cleanup", "cleanup --dry-run: wall (db), S3 requests", None, "-"),
]


# -- the bench ------------------------------------------------------------------------------
class ScaleBench:
    def __init__(self) -> None:
        self.stack = ServiceStack(
            BUCKET, strict=True, services=["redis", "moto", "postgres"]
        ).start()
        self.stack.create_database(DATABASE)
        env = {
            **self.stack.env(),
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
            "BENCH_DB": "postgres",
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update(env)
        import django

        django.setup()
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        import benchmarks.celery_app  # noqa: F401  (saves dispatch through the benchmark's app)

        call_command("migrate", verbosity=0)
        get_user_model().objects.create_superuser("bench", "bench@example.com", "bench-pass")
        staging: dict[str, Any] = settings.STORAGES["staging"]  # type: ignore[assignment]
        self.staging = Path(staging["OPTIONS"]["location"])
        S3.install()
        # The reconcile pass and verify log every file they find lost; not this bench's output.
        logging.disable(logging.CRITICAL)
        self.figures: list[Figure] = []
        self.fills: dict[int, dict[str, float]] = {}
        self.slow: dict[tuple[str, int], Call] = {}

    def close(self) -> None:
        self.stack.stop()

    # -- the table ------------------------------------------------------------------------
    def fill(self, rows: int) -> None:
        from django.db import connection

        from queued_storage import tally

        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE queued_storage_storedfile")
            cursor.execute(FILL, {"n": rows, "alias": ALIAS})
        filled = time.perf_counter()
        tally.fold()
        folded = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE queued_storage_storedfile")
            # The fill's INSERT left a row per file in the tally; the fold summed them and,
            # having removed that many, compacted the table itself (tally.COMPACT_AT).
            cursor.execute("ANALYZE queued_storage_tally")
            cursor.execute("SELECT pg_total_relation_size('queued_storage_storedfile')")
            size = cursor.fetchone()
        done = time.perf_counter()
        self.fills[rows] = {
            "insert_s": round(filled - started, 1),
            "fold_s": round(folded - filled, 2),
            "vacuum_analyze_s": round(done - folded, 1),
            "table_and_indexes_mib": round(int(size[0] if size else 0) / 2**20),
        }
        print(
            f"  filled {rows:,} rows: INSERT (tally triggers firing) {filled - started:.1f}s, "
            f"fold {folded - filled:.2f}s, VACUUM ANALYZE {done - folded:.1f}s; table and "
            f"indexes {self.fills[rows]['table_and_indexes_mib']} MiB",
            flush=True,
        )

    def add(self, key: str, rows: int, value_ms: float, shown: str, **extra: Any) -> None:
        self.figures.append(Figure(key, rows, value_ms, shown, extra))

    def add_call(self, key: str, rows: int, c: Call, *, by: str = "wall") -> None:
        """A figure whose value is the call's wall time (*by* "wall") or database time."""
        if by == "db":
            value, shown = c.db_ms, f"{c.db_ms:.1f} ({c.wall_ms:.0f})"
        else:
            value, shown = c.wall_ms, f"{c.wall_ms:.1f} ({c.db_ms:.1f})"
        self.slow[(key, rows)] = c
        self.add(key, rows, value, shown, **asdict(c))

    # -- save() ---------------------------------------------------------------------------
    def saves(self, rows: int) -> None:
        from django.core.files.base import ContentFile
        from django.core.files.storage import storages
        from django.test.utils import override_settings

        from benchmarks.celery_app import app
        from queued_storage.models import StoredFile

        storage = storages[ALIAS]
        data = os.urandom(16 * KiB)
        configs = {
            "save": override_settings(QUEUED_STORAGE_HOST="web-1"),
            "save_budget": override_settings(
                QUEUED_STORAGE_HOST="web-1", QUEUED_STORAGE_STAGING_BUDGET=10**15
            ),
        }
        times: dict[str, list[float]] = {key: [] for key in configs}
        count = 0

        def save(key: str, into: list[float] | None) -> None:
            nonlocal count
            with configs[key]:
                start = time.perf_counter()
                storage.save(f"bench-save/{key}/{count}.bin", ContentFile(data))
                elapsed = time.perf_counter() - start
            count += 1
            if into is not None:
                into.append(elapsed * 1000)

        try:
            for key in configs:
                for _ in range(20):
                    save(key, None)
            for _ in range(4):
                for key in configs:
                    for _ in range(50):
                        save(key, times[key])
        finally:
            app.control.purge()
            StoredFile.objects.filter(name__startswith="bench-save/").delete()
            shutil.rmtree(self.staging / "bench-save", ignore_errors=True)
        for key, values in times.items():
            p50, p99 = statistics.median(values), percentile(values, 99)
            self.add(key, rows, p50, f"{p50:.2f} ({p99:.2f})", p50_ms=p50, p99_ms=p99)

    # -- reconcile ------------------------------------------------------------------------
    def reconcile_idle(self, rows: int) -> None:
        from django.test.utils import override_settings

        from queued_storage.reconcile import reconcile

        with override_settings(
            QUEUED_STORAGE_HOST="web-3", QUEUED_STORAGE_RECONCILE_VERIFY_SAMPLE=0
        ):
            c = median_call(reconcile, server=True)
            _, report = call(reconcile)
        c.note = f"ok={report.ok}, requeued {len(report.requeued)}"
        self.add_call("reconcile_idle", rows, c, by="db")

    def reconcile_busy(self, rows: int) -> None:
        """Last at each size: it changes the rows it re-queues."""
        from django.test.utils import override_settings

        from benchmarks.celery_app import app
        from queued_storage.models import StoredFile
        from queued_storage.reconcile import reconcile

        names = StoredFile.objects.filter(
            alias=ALIAS, host="web-1", state__in=["pending", "transferring"]
        ).values_list("name", flat=True)
        for name in names.iterator():
            path = self.staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        try:
            with override_settings(
                QUEUED_STORAGE_HOST="web-1", QUEUED_STORAGE_RECONCILE_VERIFY_SAMPLE=0
            ):
                c, report = call(reconcile)
        finally:
            app.control.purge()
            shutil.rmtree(self.staging / "uploads", ignore_errors=True)
        files = len(report.requeued) + len(report.taken_over) + len(report.newly_lost)
        per_file = c.db_ms / files if files else 0.0
        self.slow[("reconcile_busy", rows)] = c
        self.add(
            "reconcile_busy",
            rows,
            per_file,
            f"{per_file:.2f}/file: {c.db_ms:.0f} ({c.wall_ms:.0f}) for {files} files",
            files=files,
            requeued=len(report.requeued),
            taken_over=len(report.taken_over),
            lost=len(report.newly_lost),
            **asdict(c),
        )

    # -- commands -------------------------------------------------------------------------
    def command(self, *argv: str) -> Callable[[], str]:
        from django.core.management import call_command
        from django.core.management.base import CommandError

        def run() -> str:
            out, err = StringIO(), StringIO()
            try:
                call_command("queued_storage", *argv, stdout=out, stderr=err)
            except CommandError as exc:
                return f"exit {exc.returncode}: {str(exc)[:120]}"
            return "exit 0"

        return run

    def commands(self, rows: int) -> None:
        from queued_storage.metrics import LedgerCollector

        c = median_call(self.command("status", "--json"))
        self.add_call("status", rows, c)
        c = median_call(lambda: list(LedgerCollector().collect()))
        self.add_call("metrics", rows, c)
        verify = self.command("verify", "--storage", ALIAS, "--sample", "100", "--json")
        c = median_call(verify, rollback=True, server=True)
        _, outcome = call(verify, rollback=True)
        c.note = outcome
        self.slow[("verify", rows)] = c
        served = c.server_read_ms or 0.0
        self.add(
            "verify",
            rows,
            served,
            f"{served:.1f} ({c.db_ms:.0f}, {c.wall_ms:.0f}), {c.s3_requests} HEAD",
            **asdict(c),
        )
        cleanup = self.command("cleanup", "--storage", ALIAS, "--dry-run")
        c = median_call(cleanup)
        _, c.note = call(cleanup)
        self.slow[("cleanup", rows)] = c
        self.add(
            "cleanup",
            rows,
            c.wall_ms,
            f"{c.wall_ms:.0f} ({c.db_ms:.1f}), {c.s3_requests} S3",
            **asdict(c),
        )

    # -- admin ----------------------------------------------------------------------------
    def admin(self, rows: int) -> None:
        from django.contrib.auth import get_user_model
        from django.test import Client

        client = Client()
        client.force_login(get_user_model().objects.get(username="bench"))
        base = "/admin/queued_storage/storedfile/"

        def get(query: str) -> Callable[[], str]:
            def run() -> str:
                response = client.get(base + query)
                if response.status_code != 200:
                    raise RuntimeError(f"{base}{query}: HTTP {response.status_code}")
                return response.content.decode()

            return run

        def link(page: str, pattern: str) -> str | None:
            found = re.search(r'href="(\?[^"]*' + pattern + r'[^"]*)"', page)
            return html.unescape(found.group(1)) if found else None

        c, page = call(get(""))
        c = median_call(get(""))
        self.add_call("admin_page1", rows, c)
        failed = link(page, r'state[^"=]*=failed')
        if failed is None:
            self.add("admin_failed", rows, 0.0, "no state=failed link", missing=True)
        else:
            c = median_call(get(failed))
            c.note = failed
            self.add_call("admin_failed", rows, c)
        c = median_call(get("?q=uploads/0000001"))
        self.add_call("admin_search", rows, c)
        levels: list[tuple[str, Call]] = []
        query: str | None = ""
        for level in ("year", "month", "day"):
            current = query or ""
            _, shown = call(get(current))
            query = link(shown, rf"created__{level}=\d+")
            if query is None:
                break
            c = median_call(get(query))
            c.note = query
            levels.append((level, c))
        if not levels:
            self.add("admin_drill", rows, 0.0, "no date hierarchy on page 1", missing=True)
            return
        level, worst = max(levels, key=lambda item: item[1].wall_ms)
        self.slow[("admin_drill", rows)] = worst
        self.add(
            "admin_drill",
            rows,
            worst.wall_ms,
            f"{worst.wall_ms:.1f} ({worst.db_ms:.1f}) [{level}]",
            levels={name: round(c.wall_ms, 1) for name, c in levels},
            **asdict(worst),
        )

    # -- one size -------------------------------------------------------------------------
    def size(self, rows: int) -> None:
        print(f"ledger of {rows:,} rows", flush=True)
        self.fill(rows)
        steps: list[tuple[str, Callable[[int], None]]] = [
            ("save()", self.saves),
            ("idle reconcile", self.reconcile_idle),
            ("commands and metrics", self.commands),
            ("admin", self.admin),
            ("busy reconcile", self.reconcile_busy),
        ]
        for label, step in steps:
            start = time.perf_counter()
            step(rows)
            print(f"  {label}: {time.perf_counter() - start:.1f}s", flush=True)


# -- printing -------------------------------------------------------------------------------
def by_key(figures: list[Figure]) -> dict[str, dict[int, Figure]]:
    table: dict[str, dict[int, Figure]] = {}
    for f in figures:
        table.setdefault(f.key, {})[f.rows] = f
    return table


def verdicts(figures: list[Figure], sizes: list[int]) -> list[tuple[Target, int, float, float]]:
    """(target, rows, value, limit) of every figure over its target above 1k rows."""
    table = by_key(figures)
    missed = []
    for target in TARGETS:
        by = table.get(target.key, {})
        if target.limit is None or BASE_ROWS not in by:
            continue
        for rows in sizes[1:]:
            if rows in by and not by[rows].extra.get("missing"):
                limit = target.limit(by)
                if by[rows].value_ms > limit:
                    missed.append((target, rows, by[rows].value_ms, limit))
    return missed


def render(figures: list[Figure], sizes: list[int]) -> str:
    table = by_key(figures)
    names = [f"{rows:,} rows" for rows in sizes]
    out = [
        "| what (ms) | " + " | ".join(names) + " | target | met |",
        "|---|" + "---|" * len(sizes) + "---|---|",
    ]
    missed = {(t.key, rows) for t, rows, _, _ in verdicts(figures, sizes)}
    for target in TARGETS:
        by = table.get(target.key, {})
        cells = []
        for rows in sizes:
            figure = by.get(rows)
            if figure is None:
                cells.append("")
                continue
            cell = figure.shown
            base = by.get(BASE_ROWS)
            if rows != BASE_ROWS and base and base.value_ms and not figure.extra.get("missing"):
                cell += f" **{figure.value_ms / base.value_ms:.1f}x**"
            cells.append(cell)
        met = ""
        if target.limit is not None:
            met = "no" if any((target.key, r) in missed for r in sizes) else "yes"
        out.append(f"| {target.what} | " + " | ".join(cells) + f" | {target.text} | {met} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="1k and 100k rows")
    sizes.add_argument("--full", action="store_true", help="1k, 1M and 10M rows")
    sizes.add_argument(
        "--sizes", help="comma-separated sizes after the 1k-row baseline, e.g. 200000"
    )
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results-scale.json"))
    # make bench passes ARGS to every batch: the other batches' options are not this one's.
    args, others = parser.parse_known_args()
    if others:
        print(f"scale batch: ignoring {' '.join(others)} (options of the other batches)")
    if args.sizes:
        chosen = [BASE_ROWS, *(int(r) for r in args.sizes.split(","))]
    elif args.quick:
        chosen = [BASE_ROWS, 100_000]
    elif args.full:
        chosen = [BASE_ROWS, 1_000_000, 10_000_000]
    else:
        chosen = [BASE_ROWS, 1_000_000]
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    print(
        f"scale batch: the ledger on PostgreSQL at {', '.join(f'{n:,}' for n in chosen)} rows",
        flush=True,
    )
    bench = ScaleBench()
    explained: list[str] = []
    try:
        for rows in chosen:
            bench.size(rows)
        missed = verdicts(bench.figures, chosen)
        for target, rows, value, limit in missed:
            c = bench.slow.get((target.key, rows))
            if c is None or not c.slowest_sql:
                continue
            explained.append(
                f"{target.what} at {rows:,} rows: {value:.1f} ms > {limit:.1f} ms; slowest "
                f"query {c.slowest_ms:.1f} ms of {c.queries}:\n  {c.slowest_sql[:600]}\n    "
                + "\n    ".join(
                    explain(c.slowest_sql)[:30] if is_read(c.slowest_sql) else ["(not a read)"]
                )
            )
    finally:
        bench.close()
    print()
    print(BASELINE)
    print(render(bench.figures, chosen))
    print()
    for rows, fill in bench.fills.items():
        print(f"fill of {rows:,} rows: {fill}")
    if missed:
        print("\nover target:")
        for target, rows, value, _limit in missed:
            print(f"  {target.what} at {rows:,} rows: {value:.1f} ms [target {target.text}]")
    else:
        print("\nevery figure within its target")
    for text in explained:
        print("\n" + text)
    elapsed = time.perf_counter() - started
    print(
        f"\nrun: {elapsed:.0f}s on {os.cpu_count()} cores; self peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; 1-min load "
        f"average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    Path(args.json).write_text(
        json.dumps(
            {
                "sizes": chosen,
                "seconds": round(elapsed, 1),
                "cpus": os.cpu_count(),
                "baseline": BASELINE,
                "fills": {str(k): v for k, v in bench.fills.items()},
                "figures": [asdict(f) for f in bench.figures],
                "over_target": [
                    {"what": t.what, "rows": rows, "ms": round(v, 2), "limit_ms": round(lim, 2)}
                    for t, rows, v, lim in missed
                ],
                "explained": explained,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
