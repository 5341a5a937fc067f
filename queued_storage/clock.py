"""One clock: the database's (invariant 13).

Leases, takeovers, overdue times and retry budgets are measured with the ledger database's
clock, never a host's own, so that hosts whose clocks disagree never share a file and never
wait for a lost one longer than its timeout:

* a conditional write computes its times in the database (:func:`now`: ``Now()`` plus a
  duration, an expression): a lease's expiry, the renewal, the takeover of an expired lease;
* where a value must be computed in Python (a reconcile pass, the commands), the database's
  time is read once (:func:`read`) and used throughout;
* a worker measures a retry budget from the database time its lease returned, plus the
  monotonic time since (no wall clock at all).

On PostgreSQL the time is ``STATEMENT_TIMESTAMP()``. SQLite has no server: its clock is the
clock of the host that runs the query, which is one host by the nature of SQLite. There
Django stores a datetime as text (``YYYY-MM-DD HH:MM:SS[.ffffff]`` in UTC) and compares
texts, so the expression is formatted by Django's own ``django_format_dtdelta`` (what
``Now() + duration`` compiles to), which writes exactly what Django writes: a time the
database computed compares and matches like one Python wrote (a plain ``Now()`` would write
milliseconds, ``...15.123``, which is not equal to the ``...15.123000`` Django writes back).
"""

from __future__ import annotations

import datetime

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import DurationField, Expression, Value
from django.db.models.functions import Now
from django.db.models.sql import Query

__all__ = ["now", "read", "sql"]


def now(seconds: float = 0.0) -> Expression:
    """The database's time plus *seconds*, as an expression for a write or a filter."""
    delta = Value(datetime.timedelta(seconds=seconds), output_field=DurationField())
    combined: Expression = Now() + delta
    return combined


def sql(expression: Expression, connection: BaseDatabaseWrapper) -> tuple[str, list[object]]:
    """*expression* compiled for *connection*: ``(sql, params)`` for a raw statement."""
    query = Query(None)
    compiler = query.get_compiler(connection=connection)
    resolved = expression.resolve_expression(query, allow_joins=False)
    text, params = compiler.compile(resolved)
    return text, list(params)


def read(using: str) -> datetime.datetime:
    """The database *using*'s time now (one ``SELECT``), as Django would read a column."""
    connection = connections[using]
    query = Query(None)
    compiler = query.get_compiler(connection=connection)
    expression = now().resolve_expression(query, allow_joins=False)
    text, params = compiler.compile(expression)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {text}{connection.features.bare_select_suffix}", params)
        (value,) = cursor.fetchone()
    converters = connection.ops.get_db_converters(expression)
    converters += expression.get_db_converters(connection)
    for converter in converters:
        value = converter(value, expression, connection)
    assert isinstance(value, datetime.datetime), value
    return value
