"""The ledger's kept tally (``queued_storage/tally.py``, migrations 0007 and 0008), on SQLite
and on PostgreSQL.

Whatever changes the ledger (a save, a transition, an ``UPDATE`` or ``DELETE`` by hand, a bulk
insert, a transaction rolled back), the tally read afterwards equals a ``GROUP BY`` of the
ledger counted afresh; folding keeps the sums, beside writers and other folds; a tally found
wrong is counted again. The migrations install and remove the triggers and the indexes on a
ledger that already holds rows.
"""

from __future__ import annotations

import datetime
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.management.sql import emit_post_migrate_signal
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.executor import MigrationExecutor
from django.db.models import BooleanField, Count, ExpressionWrapper, Q, Sum
from django.db.models.functions import Coalesce
from django.test import override_settings
from django.utils import timezone

from queued_storage import tally
from queued_storage.budget import check_staging_budget
from queued_storage.conf import settings as qs_settings
from queued_storage.exceptions import StagingFull
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile, Tally, TallyGroup, TusUpload
from queued_storage.storage import QueuedStorage
from queued_storage.worker import Outcome, run_transfer
from tests.harness.suite import need, reset_storages, wait_for
from tests.test_ledger import race
from tests.test_state_machine import CASES, STATES, _make

pytestmark = pytest.mark.django_db(
    transaction=True, databases=[a for a in ("default", "postgres") if a in settings.DATABASES]
)

APP = "queued_storage"
BEFORE_TALLY = (APP, "0006_dispatch_refused")
#: The indexes of migration 0008, by table.
INDEXES = {
    "queued_storage_storedfile": {
        "queued_storage_unfinished",
        "queued_storage_local",
        "queued_storage_lost",
        "queued_storage_leases",
        "queued_storage_waiting",
        "queued_storage_host",
        "queued_storage_alias",
        "queued_storage_name",
        "queued_storage_due",
    },
    "queued_storage_tusupload": {"queued_storage_tus_receiving"},
}
TRIGGERS = {
    "sqlite": {
        "queued_storage_tally_insert",
        "queued_storage_tally_delete",
        "queued_storage_tally_update",
    },
    "postgresql": {
        "queued_storage_tally_change",
        "queued_storage_tally_update",
        "queued_storage_tally_truncate",
    },
}


def counted(db: str) -> list[TallyGroup]:
    """The ledger's groups counted afresh: one ``GROUP BY`` over every row."""
    written = ExpressionWrapper(Q(size__isnull=False), output_field=BooleanField())
    grouped = (
        StoredFile.objects.using(db)
        .annotate(written=written)
        .values_list("alias", "host", "state", "local_exists", "written")
        .annotate(files=Count("pk"), total=Coalesce(Sum("size"), 0))
        .order_by()
    )
    return sorted(
        TallyGroup(alias, host, state, bool(local), bool(w), int(files), int(total))
        for alias, host, state, local, w, files, total in grouped
    )


def kept(db: str) -> list[TallyGroup]:
    """Assert that the tally reads what the ledger holds; its groups."""
    found = sorted(tally.read())
    assert found == counted(db)
    return found


def tally_rows(db: str) -> int:
    rows: int = Tally.objects.using(db).count()
    return rows


@pytest.fixture(autouse=True)
def _counted_from_the_empty_ledger(ledger_db: str) -> None:
    # A test database is emptied table by table between tests, in no set order: the tally may
    # hold the rows the ledger's emptying added after its own.
    tally.rebuild()
    assert tally_rows(ledger_db) == 0


# --- every kind of change --------------------------------------------------------------------
def test_saves_transfers_and_deletes_through_a_queued_storage_move_the_tally(
    ledger_db: str,
) -> None:
    need("redis")
    reset_storages()
    keep = QueuedStorage(local="staging", remote="fs_remote", delayed=True)
    drop = QueuedStorage(local="staging", remote="fs_remote", delayed=True, delete_local=True)
    assert kept(ledger_db) == []
    one = keep.save("tally/one.txt", ContentFile(b"12345"))
    two = drop.save("tally/two.txt", ContentFile(b"1234567"))
    empty = keep.save("tally/empty.txt", ContentFile(b""))
    host = qs_settings.HOST
    assert kept(ledger_db) == sorted(
        [
            TallyGroup(keep.alias, host, State.PENDING, True, True, 2, 5),
            TallyGroup(drop.alias, host, State.PENDING, True, True, 1, 7),
        ]
    )
    assert run_transfer(keep.alias, one) is Outcome.TRANSFERRED
    assert run_transfer(drop.alias, two) is Outcome.TRANSFERRED
    assert kept(ledger_db) == sorted(
        [
            TallyGroup(keep.alias, host, State.PENDING, True, True, 1, 0),
            TallyGroup(keep.alias, host, State.REMOTE, True, True, 1, 5),
            TallyGroup(drop.alias, host, State.REMOTE, False, True, 1, 7),
        ]
    )
    keep.delete(empty)
    drop.delete(two)
    assert kept(ledger_db) == [TallyGroup(keep.alias, host, State.REMOTE, True, True, 1, 5)]


def test_a_file_walked_through_its_states_moves_between_groups(ledger_db: str) -> None:
    ledger = Ledger("walk")
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("reserve", lambda: ledger.reserve("f.bin", "h")),
        ("finish_save", lambda: ledger.finish_save(_row("f.bin"), 4, timezone.now())),
        ("lease", lambda: ledger.lease("f.bin", "w", 60).acquired),
        ("renew", lambda: ledger.renew("f.bin", "w", 60, 2, 4)),
        ("retry_later", lambda: ledger.retry_later("f.bin", "w", "throttled")),
        ("lease", lambda: ledger.lease("f.bin", "w", 60).acquired),
        ("fail", lambda: ledger.fail("f.bin", "w", "boom")),
        ("retry", lambda: ledger.retry("f.bin")),
        ("lease", lambda: ledger.lease("f.bin", "w", 60).acquired),
        ("remote", lambda: ledger.remote("f.bin", "w", size=4, checksum="c", algorithm="md5")),
        ("drop_local", lambda: ledger.drop_local("f.bin", 4, lambda name: None)),
        ("forget", lambda: ledger.forget("f.bin") is not None),
    ]
    states = []
    for step, call in steps:
        assert call(), step
        groups = kept(ledger_db)
        states.append(tuple((g.state, g.local, g.written, g.files, g.bytes) for g in groups))
    assert states == [
        (("pending", False, False, 1, 0),),
        (("pending", True, True, 1, 4),),
        (("transferring", True, True, 1, 4),),
        (("transferring", True, True, 1, 4),),
        (("pending", True, True, 1, 4),),
        (("transferring", True, True, 1, 4),),
        (("failed", True, True, 1, 4),),
        (("pending", True, True, 1, 4),),
        (("transferring", True, True, 1, 4),),
        (("remote", True, True, 1, 4),),
        (("remote", False, True, 1, 4),),
        (),
    ]


def _row(name: str, alias: str = "walk") -> StoredFile:
    found = StoredFile.get_row(alias, name)
    assert found is not None
    return found


def test_every_transition_from_every_state_keeps_the_tally(ledger_db: str) -> None:
    # The state machine's own cases (tests/test_state_machine.py): each transition tried from
    # each state, whether or not it is declared there.
    ledger = Ledger("machine")
    for transition, case in CASES.items():
        for state in STATES:
            name = f"{transition}-{state}.bin"
            case.call(ledger, name, _make(ledger_db, name, state, case.row))
        assert sorted(tally.read()) == counted(ledger_db), transition
    assert {g.state for g in kept(ledger_db)} == set(State.values)


def test_updates_and_deletes_by_hand_and_bulk_inserts_move_the_tally(ledger_db: str) -> None:
    rows = StoredFile.objects.using(ledger_db)
    rows.bulk_create(
        StoredFile(alias="a", name=f"{i}.bin", host="h1", state=state, size=size, local_exists=True)
        for i, (state, size) in enumerate(
            [("pending", 10), ("pending", 20), ("failed", 30), ("remote", 40), ("pending", None)]
        )
    )
    assert kept(ledger_db) == [
        TallyGroup("a", "h1", "failed", True, True, 1, 30),
        TallyGroup("a", "h1", "pending", True, False, 1, 0),
        TallyGroup("a", "h1", "pending", True, True, 2, 30),
        TallyGroup("a", "h1", "remote", True, True, 1, 40),
    ]
    assert rows.filter(state="pending").update(state="transferring") == 3
    kept(ledger_db)
    assert rows.filter(name="0.bin").update(size=11) == 1
    assert rows.filter(name="1.bin").update(host="h2") == 1
    assert rows.filter(name="2.bin").update(alias="b") == 1
    assert rows.filter(name="3.bin").update(local_exists=False) == 1
    assert rows.filter(name="4.bin").update(size=5) == 1  # a reservation gets its file
    assert rows.filter(name="0.bin").update(size=None) == 1
    assert kept(ledger_db) == [
        TallyGroup("a", "h1", "remote", False, True, 1, 40),
        TallyGroup("a", "h1", "transferring", True, False, 1, 0),
        TallyGroup("a", "h1", "transferring", True, True, 1, 5),
        TallyGroup("a", "h2", "transferring", True, True, 1, 20),
        TallyGroup("b", "h1", "failed", True, True, 1, 30),
    ]
    # A change of no column the tally groups by adds no row to it.
    before = tally_rows(ledger_db)
    assert rows.update(last_error="x", attempts=3, lease_owner="w") == 5
    assert rows.filter(name="1.bin").update(host="h2", state="transferring") == 1  # the same
    assert tally_rows(ledger_db) == before
    # The admin's delete: a queryset's delete().
    assert rows.filter(host="h1", alias="a").delete()[0] == 3
    assert kept(ledger_db) == [
        TallyGroup("a", "h2", "transferring", True, True, 1, 20),
        TallyGroup("b", "h1", "failed", True, True, 1, 30),
    ]
    assert rows.all().delete()[0] == 2
    assert kept(ledger_db) == []


def test_emptying_the_ledger_in_one_statement_empties_the_tally(ledger_db: str) -> None:
    StoredFile.objects.using(ledger_db).bulk_create(
        StoredFile(alias="a", name=f"{i}.bin", host="h", state="pending", size=i, local_exists=True)
        for i in range(5)
    )
    assert kept(ledger_db) == [TallyGroup("a", "h", "pending", True, True, 5, 10)]
    connection = connections[ledger_db]
    with connection.cursor() as cursor:
        # SQLite's own "truncate" (a DELETE without WHERE, which it skips row by row only
        # when the table has no trigger); PostgreSQL's TRUNCATE has a trigger of its own.
        empty = "TRUNCATE" if connection.vendor == "postgresql" else "DELETE FROM"
        cursor.execute(f"{empty} queued_storage_storedfile")
    assert kept(ledger_db) == []


def test_a_ledger_emptied_after_its_tally_as_flush_may_leaves_the_tally_empty(
    ledger_db: str,
) -> None:
    """``flush`` (a TransactionTestCase's teardown) empties the tables in no set order: the
    tally first, then the ledger row by row (SQLite) leaves a ``-1`` per file, which a later
    save would cancel out of sight. ``post_migrate``, which ``flush`` sends, empties it."""
    StoredFile.objects.using(ledger_db).bulk_create(
        StoredFile(alias="a", name=f"{i}.bin", host="h", state="pending", size=1, local_exists=True)
        for i in range(3)
    )
    Tally.objects.using(ledger_db).all().delete()
    StoredFile.objects.using(ledger_db).all().delete()
    emit_post_migrate_signal(verbosity=0, interactive=False, db=ledger_db)
    assert Tally.objects.using(ledger_db).count() == 0
    assert Ledger("a").saved("new.bin", "h", 1)
    assert (
        kept(ledger_db) == counted(ledger_db) == [TallyGroup("a", "h", "pending", True, True, 1, 1)]
    )


def test_post_migrate_leaves_the_tally_of_a_ledger_with_rows_alone(ledger_db: str) -> None:
    assert Ledger("a").saved("kept.bin", "h", 4)
    before = list(Tally.objects.using(ledger_db).values_list("alias", "files", "bytes"))
    emit_post_migrate_signal(verbosity=0, interactive=False, db=ledger_db)
    assert list(Tally.objects.using(ledger_db).values_list("alias", "files", "bytes")) == before
    assert kept(ledger_db) == counted(ledger_db)


def test_a_rolled_back_transaction_leaves_the_tally_as_it_was(ledger_db: str) -> None:
    ledger = Ledger("s")
    assert ledger.saved("stays.bin", "h", 3)
    before = kept(ledger_db)
    rows_before = tally_rows(ledger_db)

    def change_then_fail() -> None:
        with transaction.atomic(using=ledger_db):
            assert ledger.saved("gone.bin", "h", 5)
            assert ledger.lease("stays.bin", "w", 60).acquired
            StoredFile.objects.using(ledger_db).filter(name="gone.bin").update(host="h2")
            # The transaction reads its own changes.
            assert kept(ledger_db) == [
                TallyGroup("s", "h", "transferring", True, True, 1, 3),
                TallyGroup("s", "h2", "pending", True, True, 1, 5),
            ]
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        change_then_fail()
    assert kept(ledger_db) == before == [TallyGroup("s", "h", "pending", True, True, 1, 3)]
    assert tally_rows(ledger_db) == rows_before


# --- folding ---------------------------------------------------------------------------------
def test_fold_keeps_the_sums_and_leaves_one_row_per_group(ledger_db: str) -> None:
    ledger = Ledger("s")
    for i in range(6):
        assert ledger.saved(f"{i}.bin", f"h{i % 2}", i + 1)
    assert ledger.lease("0.bin", "w", 60).acquired
    assert ledger.remote("0.bin", "w", size=1, checksum="c", algorithm="md5")
    assert ledger.forget("1.bin") is not None
    # 6 saves, a lease and a remote (2 rows each), a forget: 11 rows of 3 groups.
    groups = kept(ledger_db)
    assert tally_rows(ledger_db) == 11
    assert tally.fold() == 11
    assert kept(ledger_db) == groups
    assert tally_rows(ledger_db) == len(groups) == 3
    # A group that sums to nothing goes.
    assert ledger.forget("0.bin") is not None
    assert tally.fold() == 4
    assert kept(ledger_db) == groups[:1] + groups[2:] and tally_rows(ledger_db) == 2


def test_a_read_of_more_than_fold_at_rows_folds_them_outside_a_transaction_only(
    ledger_db: str,
) -> None:
    StoredFile.objects.using(ledger_db).bulk_create(
        StoredFile(
            alias="a", name=f"{i}.bin", host=f"h{i % 2}", state="pending", size=1, local_exists=True
        )
        for i in range(tally.FOLD_AT)
    )
    assert kept(ledger_db) == [
        TallyGroup("a", "h0", "pending", True, True, tally.FOLD_AT // 2, tally.FOLD_AT // 2),
        TallyGroup("a", "h1", "pending", True, True, tally.FOLD_AT // 2, tally.FOLD_AT // 2),
    ]
    assert tally_rows(ledger_db) == tally.FOLD_AT  # not more than FOLD_AT: not folded
    Ledger("a").saved("one-more.bin", "h0", 1)
    with transaction.atomic(using=ledger_db):
        groups = kept(ledger_db)
        assert tally_rows(ledger_db) == tally.FOLD_AT + 1  # its locks would last the transaction
    assert kept(ledger_db) == groups
    assert tally_rows(ledger_db) == 2


@pytest.mark.parametrize("ledger_db", ["postgres"], indirect=True)
def test_folds_beside_writers_keep_the_sums_exact_on_postgresql(ledger_db: str) -> None:
    writers, files = 4, 15
    left = [writers]
    lock = threading.Lock()
    done = threading.Event()

    def write(i: int) -> None:
        ledger = Ledger("race")
        for n in range(files):
            name = f"{i}-{n}.bin"
            assert ledger.saved(name, f"h{i % 2}", n + 1)
            if n % 3 == 0:
                assert ledger.lease(name, f"w{i}", 60).acquired
                assert ledger.remote(name, f"w{i}", size=n + 1, checksum="c", algorithm="md5")
            if n % 5 == 0:
                assert ledger.forget(name) is not None

    def work(i: int) -> int:
        if i >= writers:  # two folders, until the writers are done, then once more each
            removed = 0
            while not done.is_set():
                removed += tally.fold()
            return removed + tally.fold()
        try:
            write(i)
        finally:
            with lock:
                left[0] -= 1
                if not left[0]:
                    done.set()
        return 0

    removed = race(writers + 2, work)
    assert sum(removed) > 0
    groups = kept(ledger_db)
    # Each writer keeps 12 of its 15 files (0, 5 and 10 forgotten): 120 - 18 bytes.
    assert (sum(g.files for g in groups), sum(g.bytes for g in groups)) == (
        writers * 12,
        writers * 102,
    )
    tally.fold()
    assert kept(ledger_db) == groups and tally_rows(ledger_db) == len(groups)


def _waiting_for_a_lock(db: str) -> bool:
    with connections[db].cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM pg_locks WHERE NOT granted")
        row = cursor.fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("ledger_db", ["postgres"], indirect=True)
def test_a_fold_after_a_bulk_load_gives_the_tallys_pages_back_on_postgresql(
    ledger_db: str,
) -> None:
    """A bulk insert leaves one tally row per ledger row; the fold that sums them compacts the
    table, so that a read scans a page or two, not the pages those rows filled."""
    files = tally.COMPACT_AT + 500
    StoredFile.objects.using(ledger_db).bulk_create(
        StoredFile(alias="bulk", name=f"b{i}.bin", state=State.REMOTE, size=3) for i in range(files)
    )

    def pages() -> int:
        with connections[ledger_db].cursor() as cursor:
            cursor.execute("SELECT pg_relation_size('queued_storage_tally') / 8192")
            (found,) = cursor.fetchone()
        return int(found)

    assert pages() > 20
    assert tally.fold() >= files
    assert pages() <= 2
    [group] = [g for g in tally.read() if g.alias == "bulk"]
    assert (group.files, group.bytes) == (files, 3 * files)


@pytest.mark.parametrize("ledger_db", ["postgres"], indirect=True)
def test_a_count_again_beside_a_fold_counts_each_file_once_on_postgresql(
    ledger_db: str,
) -> None:
    ledger = Ledger("s")
    for i in range(3):
        assert ledger.saved(f"{i}.bin", "h", 1)
    groups = kept(ledger_db)

    def rebuild() -> None:
        tally.rebuild()
        connections.close_all()

    rebuilt = threading.Thread(target=rebuild)
    with transaction.atomic(using=ledger_db):
        tally.fold()  # its rows deleted and their sum inserted, not yet committed
        rebuilt.start()
        wait_for(lambda: _waiting_for_a_lock(ledger_db), timeout=10, what="the rebuild waits")
    rebuilt.join()
    assert kept(ledger_db) == groups


# --- a tally found wrong ---------------------------------------------------------------------
@pytest.mark.parametrize("wrong", ["a group inserted by hand", "emptied tally first"])
def test_a_tally_with_fewer_than_no_files_is_counted_again_and_logged(
    ledger_db: str, wrong: str, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger("s")
    assert ledger.saved("a.bin", "h", 3)
    if wrong == "a group inserted by hand":
        Tally.objects.using(ledger_db).create(
            alias="s", host="h", state="failed", local=True, written=True, files=-1, bytes=-3
        )
    else:
        # A test database emptied table by table (Django's flush on SQLite), the tally first:
        # the ledger's rows are then taken out of an empty tally.
        assert ledger.saved("b.bin", "h", 5)
        with connections[ledger_db].cursor() as cursor:
            cursor.execute("DELETE FROM queued_storage_tally")
            cursor.execute("DELETE FROM queued_storage_storedfile WHERE name = 'b.bin'")
    # The reads that do not count again read the ledger meanwhile.
    assert StoredFile.waiting_bytes("h") == 3
    with caplog.at_level(logging.ERROR, logger="queued_storage.tally"):
        assert kept(ledger_db) == [TallyGroup("s", "h", "pending", True, True, 1, 3)]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "the ledger's tally was wrong (fewer than no files); counting it again")
    ]
    assert tally_rows(ledger_db) == 1
    caplog.clear()
    kept(ledger_db)
    assert caplog.records == []


# --- the migrations --------------------------------------------------------------------------
def _tables(connection: BaseDatabaseWrapper) -> set[str]:
    with connection.cursor() as cursor:
        return set(connection.introspection.table_names(cursor))


def _indexes(connection: BaseDatabaseWrapper) -> dict[str, set[str]]:
    with connection.cursor() as cursor:
        return {
            table: set(connection.introspection.get_constraints(cursor, table)) & names
            for table, names in INDEXES.items()
        }


def _triggers(connection: BaseDatabaseWrapper) -> set[str]:
    sql = (
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
        "AND tgrelid = 'queued_storage_storedfile'::regclass"
        if connection.vendor == "postgresql"
        else "SELECT name FROM sqlite_master WHERE type = 'trigger' "
        "AND tbl_name = 'queued_storage_storedfile'"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return {name for (name,) in cursor.fetchall()}


def _migrate(connection: BaseDatabaseWrapper, target: list[tuple[str, str]]) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(target)


def test_the_migrations_count_the_ledger_install_the_triggers_and_indexes_and_remove_them(
    ledger_db: str,
) -> None:
    connection = connections[ledger_db]
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes(APP)
    assert [name for _, name in latest] == ["0012_processing"]
    rows = StoredFile.objects.using(ledger_db)
    try:
        _migrate(connection, [BEFORE_TALLY])
        assert "queued_storage_tally" not in _tables(connection)
        assert _triggers(connection) == set()
        assert _indexes(connection) == {table: set() for table in INDEXES}
        # The table as the tally's migration finds it: the model of that migration's state.
        before = MigrationExecutor(connection).loader.project_state([BEFORE_TALLY])
        historical = before.apps.get_model(APP, "StoredFile")
        historical.objects.using(ledger_db).bulk_create(
            historical(
                alias=alias, name=f"{i}.bin", host=host, state=state, size=size, local_exists=local
            )
            for i, (alias, host, state, size, local) in enumerate(
                [
                    ("a", "h1", "pending", 1, True),
                    ("a", "h1", "pending", 2, True),
                    ("a", "h2", "transferring", 4, True),
                    ("a", "h1", "failed", 8, False),
                    ("b", "h1", "remote", 16, False),
                    ("b", "h1", "remote", 32, True),
                    ("b", "h1", "pending", None, False),
                ]
            )
        )
        _migrate(connection, latest)
        assert _triggers(connection) == TRIGGERS[connection.vendor]
        assert _indexes(connection) == INDEXES
        assert kept(ledger_db) == [
            TallyGroup("a", "h1", "failed", False, True, 1, 8),
            TallyGroup("a", "h1", "pending", True, True, 2, 3),
            TallyGroup("a", "h2", "transferring", True, True, 1, 4),
            TallyGroup("b", "h1", "pending", False, False, 1, 0),
            TallyGroup("b", "h1", "remote", False, True, 1, 16),
            TallyGroup("b", "h1", "remote", True, True, 1, 32),
        ]
        assert Ledger("a").saved("new.bin", "h1", 64)
        assert rows.filter(name="3.bin").update(state="pending", local_exists=True) == 1
        assert kept(ledger_db)[:2] == [
            TallyGroup("a", "h1", "pending", True, True, 4, 75),
            TallyGroup("a", "h2", "transferring", True, True, 1, 4),
        ]

        _migrate(connection, [BEFORE_TALLY])
        assert "queued_storage_tally" not in _tables(connection)
        assert _triggers(connection) == set()
        assert _indexes(connection) == {table: set() for table in INDEXES}
        # Writes go on without a tally (a trigger left behind would fail them), in the table
        # as it was then.
        old_rows = historical.objects.using(ledger_db)
        old_rows.create(alias="a", name="after.bin", host="h1", size=1, local_exists=True)
        assert old_rows.filter(name="after.bin").update(state="failed") == 1
        assert old_rows.filter(name="after.bin").delete()[0] == 1
    finally:
        _migrate(connection, latest)
    assert _triggers(connection) == TRIGGERS[connection.vendor]
    assert _indexes(connection) == INDEXES
    kept(ledger_db)


# --- the staging budget ----------------------------------------------------------------------
def test_the_staging_budget_counts_exactly_what_waits_on_this_host(ledger_db: str) -> None:
    here, there = qs_settings.HOST, "elsewhere"
    waiting = [  # counted: not verified remote, a local copy on this host
        (here, "pending", 1, True),
        (here, "transferring", 2, True),
        (here, "failed", 4, True),
    ]
    not_waiting = [
        (here, "remote", 1000, True),  # verified remote, only kept
        (here, "failed", 2000, False),  # lost: no local copy
        (here, "pending", None, False),  # a reservation, nothing written yet
        (there, "pending", 4000, True),  # another host's disk
    ]
    StoredFile.objects.using(ledger_db).bulk_create(
        StoredFile(
            alias="s", name=f"{i}.bin", host=host, state=state, size=size, local_exists=local
        )
        for i, (host, state, size, local) in enumerate(waiting + not_waiting)
    )
    expires = timezone.now() + datetime.timedelta(hours=1)
    for host, length, offset, completed in [
        (here, 8, 3, None),  # its whole Upload-Length is reserved
        (here, None, 16, None),  # deferred length: what was received
        (here, 10_000, 10_000, timezone.now()),  # completed: its file is in the ledger
        (there, 20_000, 0, None),
    ]:
        TusUpload.objects.using(ledger_db).create(
            id=uuid.uuid4(),
            alias="s",
            name="t.bin",
            host=host,
            length=length,
            offset=offset,
            expires=expires,
            completed=completed,
        )
    kept(ledger_db)
    waits = 1 + 2 + 4 + 8 + 16
    with override_settings(QUEUED_STORAGE_STAGING_BUDGET=waits + 10):
        check_staging_budget("fits.bin", 10)
        with pytest.raises(StagingFull) as raised:
            check_staging_budget("over.bin", 11)
    assert str(raised.value).startswith(
        f"QueuedStorage cannot stage 'over.bin' (11 bytes): {waits} of the {waits + 10} bytes "
        f"of QUEUED_STORAGE_STAGING_BUDGET already wait on host {here!r} for their transfer"
    )
    assert (raised.value.waiting, raised.value.size) == (waits, 11)
