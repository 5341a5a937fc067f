"""The kept tally of the ledger: files and bytes by alias, host, state and local copy, exact,
at a cost that follows the work and not the size of the table.

The database keeps it (``models.Tally``): triggers on the ledger's table add a row of ``-1`` for
the row as it was and ``+1`` as it is, in the statement that changes the row, whoever changes
it (a transition, the admin's delete, a bulk ``UPDATE`` by hand). Adding rows takes no lock
another writer waits for, so saves on many hosts do not queue behind a counter.
:func:`fold` replaces the rows by their sums; readers fold when they find more than
:data:`FOLD_AT` rows, so a read sums a few hundred rows whatever the ledger holds.

Installed by migration 0007 on PostgreSQL and SQLite; on other databases nothing keeps the
tally and the reads scan the ledger as before (``models.Tally.kept()``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from queued_storage.models import UNFINISHED, State, StoredFile, Tally, TallyGroup

__all__ = [
    "COMPACT_AT",
    "FOLD_AT",
    "REFILL",
    "aliases_with_work",
    "emptied",
    "fold",
    "install",
    "maybe_fold",
    "read",
    "rebuild",
    "unfinished_files",
    "uninstall",
]

logger = logging.getLogger(__name__)

#: A read that sums more rows than this folds them (outside a transaction).
FOLD_AT = 500
#: A fold that removed this many rows compacts the table (PostgreSQL: see ``_compact``).
COMPACT_AT = 10_000

_LEDGER = "queued_storage_storedfile"
_TALLY = "queued_storage_tally"
_COLUMNS = "alias, host, state, local, written, files, bytes"
#: The columns whose change moves a row from one group to another.
_KEY = ("alias", "host", "state", "local_exists", "size")


def _values(row: str, sign: str) -> str:
    return (
        f"{row}.alias, {row}.host, {row}.state, {row}.local_exists, {row}.size IS NOT NULL, "
        f"{sign}1, {sign}COALESCE({row}.size, 0)"
    )


def _changed(distinct: str) -> str:
    return " OR ".join(f"OLD.{c} {distinct} NEW.{c}" for c in _KEY)


_SQLITE = [
    f"""CREATE TRIGGER queued_storage_tally_insert AFTER INSERT ON {_LEDGER}
BEGIN
  INSERT INTO {_TALLY} ({_COLUMNS}) VALUES ({_values("NEW", "")});
END""",
    f"""CREATE TRIGGER queued_storage_tally_delete AFTER DELETE ON {_LEDGER}
BEGIN
  INSERT INTO {_TALLY} ({_COLUMNS}) VALUES ({_values("OLD", "-")});
END""",
    f"""CREATE TRIGGER queued_storage_tally_update AFTER UPDATE OF {", ".join(_KEY)} ON {_LEDGER}
WHEN {_changed("IS NOT")}
BEGIN
  INSERT INTO {_TALLY} ({_COLUMNS}) VALUES ({_values("OLD", "-")}), ({_values("NEW", "")});
END""",
]
_SQLITE_DROP = [
    f"DROP TRIGGER IF EXISTS queued_storage_tally_{event}"
    for event in ("insert", "delete", "update")
]

_POSTGRESQL = [
    f"""CREATE OR REPLACE FUNCTION queued_storage_tally() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    INSERT INTO {_TALLY} ({_COLUMNS}) VALUES ({_values("OLD", "-")}), ({_values("NEW", "")});
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {_TALLY} ({_COLUMNS}) VALUES ({_values("NEW", "")});
  ELSE
    INSERT INTO {_TALLY} ({_COLUMNS}) VALUES ({_values("OLD", "-")});
  END IF;
  RETURN NULL;
END
$$""",
    f"""CREATE OR REPLACE FUNCTION queued_storage_tally_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {_TALLY};
  RETURN NULL;
END
$$""",
    f"""CREATE TRIGGER queued_storage_tally_change AFTER INSERT OR DELETE ON {_LEDGER}
FOR EACH ROW EXECUTE FUNCTION queued_storage_tally()""",
    f"""CREATE TRIGGER queued_storage_tally_update AFTER UPDATE ON {_LEDGER}
FOR EACH ROW WHEN ({_changed("IS DISTINCT FROM")}) EXECUTE FUNCTION queued_storage_tally()""",
    f"""CREATE TRIGGER queued_storage_tally_truncate AFTER TRUNCATE ON {_LEDGER}
FOR EACH STATEMENT EXECUTE FUNCTION queued_storage_tally_truncate()""",
]
_POSTGRESQL_DROP = [
    f"DROP TRIGGER IF EXISTS queued_storage_tally_{event} ON {_LEDGER}"
    for event in ("change", "update", "truncate")
] + [
    "DROP FUNCTION IF EXISTS queued_storage_tally()",
    "DROP FUNCTION IF EXISTS queued_storage_tally_truncate()",
]

#: The sums of the ledger's rows, grouped as the tally groups them.
_COUNT = (
    f"SELECT alias, host, state, local_exists, size IS NOT NULL, COUNT(*), "
    f"COALESCE(SUM(size), 0) FROM {_LEDGER} GROUP BY alias, host, state, local_exists, "
    "size IS NOT NULL"
)


#: The statements that count the tally again from the ledger (in a transaction that keeps
#: writers out, as :func:`install` does).
REFILL = (f"DELETE FROM {_TALLY}", f"INSERT INTO {_TALLY} ({_COLUMNS}) {_COUNT}")


def install(connection: BaseDatabaseWrapper, *, triggers: bool = True) -> None:
    """Create the triggers (unless *triggers* is false) and fill the tally from the ledger as
    it is, in one transaction that keeps writers out of the ledger and folds out of the tally
    meanwhile (PostgreSQL: ``SHARE ROW EXCLUSIVE`` and ``EXCLUSIVE`` locks, each of which also
    waits for another count; SQLite: its one writer), so that no change is counted twice or
    missed. Nothing on other vendors.

    On SQLite, Django rebuilds a table for most changes of a field: a later migration that
    changes the ledger's table must call this again (``tests/test_tally.py`` checks that the
    triggers are there after the latest migration)."""
    if connection.vendor not in Tally.VENDORS:
        return
    postgresql = connection.vendor == "postgresql"
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        if postgresql:
            cursor.execute(f"LOCK TABLE {_LEDGER} IN SHARE ROW EXCLUSIVE MODE")
            # Folds too: one that committed after the count began would be counted again.
            cursor.execute(f"LOCK TABLE {_TALLY} IN EXCLUSIVE MODE")
        if triggers:
            for sql in _POSTGRESQL_DROP[:3] if postgresql else _SQLITE_DROP:
                cursor.execute(sql)
            for sql in _POSTGRESQL if postgresql else _SQLITE:
                cursor.execute(sql)
        for sql in REFILL:
            cursor.execute(sql)


def uninstall(connection: BaseDatabaseWrapper) -> None:
    """Drop the triggers (the migration's way back)."""
    if connection.vendor not in Tally.VENDORS:
        return
    with connection.cursor() as cursor:
        for sql in _POSTGRESQL_DROP if connection.vendor == "postgresql" else _SQLITE_DROP:
            cursor.execute(sql)


def fold() -> int:
    """Replace the tally's rows by one row per group holding their sum (groups that sum to
    nothing go); the number of rows it removed. Safe beside writers and other folds: on
    PostgreSQL the sums are inserted from the rows this statement itself deleted (a row
    another fold deleted first is not counted twice); SQLite has one writer at a time."""
    db = StoredFile.db()
    connection = connections[db]
    sums = (
        "SELECT alias, host, state, local, written, SUM(files), SUM(bytes) FROM {rows} "
        "GROUP BY alias, host, state, local, written HAVING SUM(files) <> 0 OR SUM(bytes) <> 0"
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH gone AS (DELETE FROM {_TALLY} RETURNING {_COLUMNS}), "
                f"kept AS (INSERT INTO {_TALLY} ({_COLUMNS}) {sums.format(rows='gone')} "
                "RETURNING 1) SELECT (SELECT COUNT(*) FROM gone)"
            )
            row = cursor.fetchone()
        removed = int(row[0]) if row else 0
        if removed >= COMPACT_AT and not connection.in_atomic_block:
            _compact(connection)
        return removed
    # SQLite: the rows up to the last one now; read before the transaction, whose first
    # statement then takes the write lock (a read first could not wait for it).
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {_TALLY}")
        row = cursor.fetchone()
    last = int(row[0]) if row else 0
    with transaction.atomic(using=db), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_TALLY} ({_COLUMNS}) "
            + sums.format(rows=f"(SELECT * FROM {_TALLY} WHERE id <= %s)"),
            [last],
        )
        cursor.execute(f"DELETE FROM {_TALLY} WHERE id <= %s", [last])
        return int(cursor.rowcount)


def _compact(connection: BaseDatabaseWrapper) -> None:
    """Give back the pages a fold emptied (PostgreSQL): after a bulk load of the ledger the
    tally's heap holds the pages of every row its triggers added, and a read would scan them
    all (``VACUUM`` cannot truncate them: the fold's sums are in the last ones). ``VACUUM
    FULL`` rewrites its few live rows; it waits at most three seconds for its lock (writers of
    the ledger wait meanwhile), else the next large fold tries again. Three, not one: an
    autovacuum of the tally (which a bulk load starts) yields its lock only when a waiter's
    deadlock check runs, after ``deadlock_timeout`` (a second by default); a shorter wait gave
    up at the same moment and left the pages in place."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")
            try:
                cursor.execute(f"VACUUM FULL {_TALLY}")
            finally:
                cursor.execute("RESET lock_timeout")
    except DatabaseError:
        logger.warning("the ledger's tally could not be compacted; next time", exc_info=True)


def emptied(using: str = DEFAULT_DB_ALIAS, **kwargs: object) -> None:
    """A ledger without a row has an empty tally: empty it (``post_migrate``, sent after
    ``flush`` and ``migrate``). ``flush`` (a ``TransactionTestCase``'s teardown) empties the
    tables one by one in no set order; on SQLite, where a table is emptied row by row, a ledger
    emptied after its tally leaves the tally a row of ``-1`` per file, which a later save can
    cancel out of sight. One indexed read when the ledger holds rows; nothing else then."""
    connection = connections[using]
    if connection.vendor not in Tally.VENDORS:
        return
    if not {_LEDGER, _TALLY} <= set(connection.introspection.table_names()):
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {_LEDGER} LIMIT 1")
        if cursor.fetchone() is None:
            cursor.execute(f"DELETE FROM {_TALLY}")


def read() -> list[TallyGroup]:
    """The tally's groups (:meth:`models.Tally.summed`), folded when more than :data:`FOLD_AT`
    rows were summed. A group with fewer than no files cannot be: the tally is counted again
    from the ledger (the one case known is a test database emptied table by table, tally
    first), and the error logged. Where no tally is kept: the ledger counted by a scan."""
    if not Tally.kept():
        return Tally.counted()
    groups, rows = Tally.summed()
    if any(group.files < 0 or group.bytes < 0 for group in groups):
        logger.error("the ledger's tally was wrong (fewer than no files); counting it again")
        rebuild()
        groups, rows = Tally.summed()
    maybe_fold(rows)
    return groups


def aliases_with_work() -> list[str]:
    """The storages whose files are not all ``remote`` without a local copy, sorted (a direct
    upload under way is work: the reconcile pass expires it)."""
    working = (*UNFINISHED, State.UPLOADING)
    return sorted({g.alias for g in read() if g.state in working or g.local})


def unfinished_files(aliases: Iterable[str] | None = None) -> int:
    """The files of these storages (``None``: of every storage) that are not ``remote``."""
    wanted = None if aliases is None else set(aliases)
    return sum(
        g.files for g in read() if g.state in UNFINISHED and (wanted is None or g.alias in wanted)
    )


def rebuild() -> None:
    """Count the tally again from the ledger (a full scan): after the tally was found wrong.
    The triggers stay as they are."""
    install(connections[StoredFile.db()], triggers=False)


def maybe_fold(rows: int) -> None:
    """Fold when a read summed more than :data:`FOLD_AT` *rows*, unless inside a transaction
    (whose locks the fold would keep until it ends). A fold that fails is logged: the tally
    stays right, only slower to read."""
    if rows <= FOLD_AT:
        return
    if transaction.get_connection(StoredFile.db()).in_atomic_block:
        return
    try:
        fold()
    except Exception:
        logger.warning("the ledger's tally could not be folded", exc_info=True)
