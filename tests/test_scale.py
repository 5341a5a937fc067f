"""A ledger of hundreds of thousands of files: every recurring query uses an index.

The ledger on PostgreSQL is filled with 300,000 rows of a realistic mix (97 % ``remote``
without a local copy, 2 % ``pending`` half of them overdue, 0.5 % ``failed``, 0.5 %
``transferring`` with expired leases, on two hosts), analysed, and then each recurring path
runs for real: a save with a staging budget, a reconcile pass, ``status``, a metrics scrape,
the admin's changelist (page 1, a state filter, a name search), ``verify --sample``, the
clean-up of local copies, and what reads the few direct uploads under way. Every query they
send that reads the ledger's table is explained: none may read it by a sequential scan. (How
fast they are is measured by ``make bench``'s scale batch, not here.)
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db import connections
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from queued_storage import cleanup, jobs, metrics, operations, reconcile, status, tally
from queued_storage.conf import settings as qs_settings
from queued_storage.models import State, StoredFile
from queued_storage.storage import get_queued_storage
from tests.harness.suite import need

# Each test runs in a transaction rolled back at its end: the table filled once for the module
# stays as it is (a transactional test would empty every table after it).
pytestmark = pytest.mark.django_db(databases=["default", "postgres"])

ROWS = 300_000
LEDGER = "queued_storage_storedfile"
ADMIN = "/admin/queued_storage/storedfile/"

#: The mix, by the row's number *i*: failed, transferring (lease expired), pending (half of
#: them overdue), else remote without a local copy; every other row on the other host.
FILL = f"""
INSERT INTO {LEDGER}
 (alias, name, state, size, checksum, checksum_algorithm, attempts, last_error, host,
  local_exists, bytes_done, upload_id, part_size, source, parts, lease_owner, lease_expires,
  created, updated, transferred, owner, retrying_since, dispatch_refused)
SELECT 'queued_delayed', 'scale/' || lpad(i::text, 9, '0') || '.bin',
  CASE WHEN i %% 200 = 0 THEN 'failed' WHEN i %% 200 = 1 THEN 'transferring'
       WHEN i %% 50 = 2 THEN 'pending' ELSE 'remote' END,
  16384 + i %% 1000, '', '', CASE WHEN i %% 200 = 0 THEN 5 ELSE 0 END,
  CASE WHEN i %% 200 = 0 THEN 'boom' ELSE '' END,
  CASE WHEN i %% 2 = 0 THEN %(here)s ELSE 'elsewhere' END,
  (i %% 200 < 2 OR i %% 50 = 2), 0, '', NULL, '', '[]'::jsonb,
  CASE WHEN i %% 200 = 1 THEN 'dead-worker' ELSE '' END,
  CASE WHEN i %% 200 = 1 THEN now() - interval '1 hour' END,
  now() - ({ROWS} - i) * interval '1 second',
  CASE WHEN i %% 100 = 2 THEN now() - interval '2 hours' WHEN i %% 50 = 2 THEN now()
       ELSE now() - ({ROWS} - i) * interval '1 second' END,
  CASE WHEN i %% 200 > 1 AND i %% 50 <> 2 THEN now() - ({ROWS} - i) * interval '1 second' END,
  '', NULL, NULL
FROM generate_series(1, {ROWS}) AS i
"""


@pytest.fixture(scope="module")
def big_ledger(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """The PostgreSQL ledger holding :data:`ROWS` rows (the tally counted once, after), for
    the tests of this module; emptied afterwards."""
    need("postgres")

    def run(*statements: str) -> None:
        # A connection of its own, in autocommit: the fill is committed whatever state the
        # test's connection is in.
        with django_db_blocker.unblock():
            postgres = connections["postgres"]
            raw = postgres.get_new_connection(postgres.get_connection_params())
        try:
            raw.autocommit = True
            with raw.cursor() as cursor:
                for sql in statements:
                    cursor.execute(sql, {"here": qs_settings.HOST} if "%(here)s" in sql else None)
        finally:
            raw.close()

    # The triggers are off while the table fills; the tally is counted once, after.
    run(
        f"ALTER TABLE {LEDGER} DISABLE TRIGGER USER",
        FILL,
        f"ALTER TABLE {LEDGER} ENABLE TRIGGER USER",
        *tally.REFILL,
        f"ANALYZE {LEDGER}",
    )
    try:
        yield "postgres"
    finally:
        run(f"TRUNCATE {LEDGER}")


@pytest.fixture
def ledger(big_ledger: str) -> Iterator[str]:
    with override_settings(QUEUED_STORAGE_DATABASE=big_ledger):
        yield big_ledger


def scans(run: Callable[[], object]) -> list[str]:
    """Run *run*; the queries it sent that read the ledger's table by a sequential scan, each
    with its plan. Fails when it sent none that reads the table (a test that checks nothing)."""
    with CaptureQueriesContext(connections["postgres"]) as captured:
        run()
    reads = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].lstrip().upper().startswith("SELECT") and LEDGER in q["sql"]
    ]
    assert reads, "the path sent no query that reads the ledger"
    found = []
    with connections["postgres"].cursor() as cursor:
        for sql in reads:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            if f"Seq Scan on {LEDGER}" in plan:
                found.append(f"{sql}\n{plan}")
    return found


def test_a_save_with_a_staging_budget_reads_no_ledger_row_in_bulk(ledger: str) -> None:
    storage = get_queued_storage("queued_delayed")  # delayed: the save queues no message
    with (
        override_settings(QUEUED_STORAGE_STAGING_BUDGET=10**12),
        CaptureQueriesContext(connections["postgres"]) as captured,
    ):
        storage.save("scale/new-file.bin", ContentFile(b"x" * 1000))
    sent = [q["sql"] for q in captured.captured_queries]
    assert any("queued_storage_tally" in sql for sql in sent), sent
    # Only the save's own row is read or written: by its key, never in bulk.
    reads = [s for s in sent if s.lstrip().upper().startswith("SELECT") and LEDGER in s]
    assert all("new-file.bin" in sql for sql in reads), reads


def test_a_reconcile_pass_uses_indexes(ledger: str) -> None:
    """Every query of a pass (its storages, refused messages, expired leases, overdue files,
    failed ones, stale reservations, leftover local copies, expired direct uploads, other
    hosts' late files, the lost files, the verify sample, what waits). On a host that holds
    none of the files, so that the pass queues no message: the queries are the same, whatever
    they find."""
    with override_settings(QUEUED_STORAGE_HOST="idle-host"):
        assert scans(lambda: reconcile.reconcile(failed=True)) == []


def test_a_workers_watch_uses_indexes(ledger: str) -> None:
    """What each worker runs every WATCH_INTERVAL seconds: due retries, expired leases."""
    with override_settings(QUEUED_STORAGE_HOST="idle-host"):
        assert scans(lambda: reconcile.watch()) == []


def test_status_uses_indexes(ledger: str) -> None:
    assert scans(lambda: status.status()) == []


def test_a_metrics_scrape_uses_indexes(ledger: str) -> None:
    assert scans(lambda: list(metrics.LedgerCollector().collect())) == []


def test_a_verify_sample_uses_indexes(ledger: str) -> None:
    assert scans(lambda: jobs.verify_files(["queued_delayed"], sample=100, timeout=10)) == []


def test_the_cleanup_of_local_copies_uses_indexes(ledger: str) -> None:
    assert (
        scans(
            lambda: operations.cleanup_local_copies(
                ["queued_delayed"], older_than=0, timeout=5, dry_run=True
            )
        )
        == []
    )


def test_the_admin_changelist_uses_indexes(
    ledger: str, client: Client, django_user_model: Any
) -> None:
    django_user_model.objects.create_superuser("scale", "scale@example.com", "a-password")
    client.login(username="scale", password="a-password")
    for query in ("", "?state__exact=failed", "?q=scale/00012", "?host=elsewhere"):

        def page(query: str = query) -> None:
            response = client.get(ADMIN + query)
            assert response.status_code == 200, query

        assert scans(page) == [], query


def test_direct_uploads_are_counted_listed_and_cleaned_up_through_indexes(
    ledger: str, client: Client, django_user_model: Any
) -> None:
    """A few direct uploads under way, some past their expiry (inserted in this test's
    transaction, after the table was analysed): ``status`` counts those past the expiry, the
    scrape reads the oldest, the admin lists them, ``cleanup`` finds them."""
    uploads = [
        StoredFile(
            alias="queued_delayed",
            name=f"scale/direct-{n}.bin",
            state=State.UPLOADING,
            size=1000,
            owner="7",
        )
        for n in range(5)
    ]
    StoredFile.objects.using(ledger).bulk_create(uploads)
    long_ago = timezone.now() - datetime.timedelta(days=3)
    names = [u.name for u in uploads[:2]]
    StoredFile.objects.using(ledger).filter(name__in=names).update(updated=long_ago)
    assert status.status()["direct"]["expired"] == 2
    assert scans(lambda: status.status()) == []
    assert scans(lambda: list(metrics.LedgerCollector().collect())) == []
    storage = get_queued_storage("queued_delayed")
    assert len(cleanup.cleanup_direct([storage], dry_run=True)[0]) == 2
    assert scans(lambda: cleanup.cleanup_direct([storage], dry_run=True)) == []
    django_user_model.objects.create_superuser("direct", "direct@example.com", "a-password")
    client.login(username="direct", password="a-password")

    def page() -> None:
        response = client.get(ADMIN + "?state__exact=uploading")
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) == 5

    assert scans(page) == []


def test_a_workers_batch_of_small_files_is_leased_through_an_index(ledger: str) -> None:
    """The statement that leases a batch of small ``pending`` files (issue 24) runs on every
    small file's task: its plan reads the ledger by an index, never by a sequential scan."""
    from queued_storage.ledger import Ledger

    with CaptureQueriesContext(connections["postgres"]) as captured:
        taken = Ledger("queued_delayed").lease_batch(
            qs_settings.HOST, "scale-worker", 60, exclude="", largest=1 << 20, count=15
        )
    assert len(taken) == 15  # the fill's pending rows of this host
    updates = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1
    with connections["postgres"].cursor() as cursor:
        cursor.execute(f"EXPLAIN {updates[0]}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert f"Seq Scan on {LEDGER}" not in plan, plan
    assert "queued_storage_fresh" in plan, plan
