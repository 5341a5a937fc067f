"""A ``TransactionTestCase``'s flush without re-creating Django's permissions each time.

After every transactional test Django empties each table (``flush``) and then sends
``post_migrate``, whose receivers in ``django.contrib.auth`` and ``contenttypes`` create every
content type and permission again: two thirds of a test's teardown (about 0.16 s of 0.25 s on
this suite's two databases), for tables the tests never change. :func:`install` keeps those
two tables across flushes (``migrate`` filled them once for the test databases) and sends, in
place of ``post_migrate``, only what the package itself needs after a flush: its tally emptied
with its ledger (:func:`queued_storage.tally.emptied`; ``tests/test_tally.py`` sends the real
signal where it tests that receiver). Every other table is emptied as before; on PostgreSQL
with ``DELETE`` rather than ``TRUNCATE`` (the rest of a teardown's time).
"""

from __future__ import annotations

from typing import Any

from django.core.management.color import Style
from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["KEPT", "install"]

#: Filled by ``migrate`` and never changed by a test: not emptied between tests.
KEPT = frozenset({"auth_permission", "django_content_type"})


def _sql_flush(
    style: Style,
    connection: BaseDatabaseWrapper,
    reset_sequences: bool = True,
    allow_cascade: bool = False,
) -> list[str]:
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    emptied = [t for t in tables if t not in KEPT]
    if connection.vendor == "postgresql" and not reset_sequences:
        # A DELETE of the few rows a test leaves costs a millisecond; a TRUNCATE of the
        # tables, about 70 ms (new files for each). Django's foreign keys are deferred to the
        # commit, so the order does not matter to them; the tally goes last, after the rows
        # its triggers count.
        emptied.sort(key=lambda table: table == "queued_storage_tally")
        quote = connection.ops.quote_name
        return [f"DELETE FROM {quote(table)}" for table in emptied]
    statements: list[str] = connection.ops.sql_flush(
        style, emptied, reset_sequences=reset_sequences, allow_cascade=allow_cascade
    )
    return statements


def _after_flush(verbosity: int, interactive: bool, db: str, **kwargs: Any) -> None:
    from queued_storage import tally

    tally.emptied(using=db)


def install() -> None:
    """Make ``manage.py flush`` (as the test cases call it) keep :data:`KEPT` and send only the
    package's own receiver: for the test run only."""
    from django.core.management.commands import flush

    flush.sql_flush = _sql_flush  # type: ignore[assignment]
    flush.emit_post_migrate_signal = _after_flush  # type: ignore[assignment]
