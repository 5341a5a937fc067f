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

On PostgreSQL the time is ``STATEMENT_TIMESTAMP()`` (Django's ``Now()``) plus an interval,
computed by the server. SQLite has no server: it runs in the process that queries it, and its
``CURRENT_TIMESTAMP`` is that process's clock, the one ``timezone.now()`` reads (SQLite is a
database of one host). There the time is that clock's, passed as a parameter in the form
Django stores a datetime in (text, ``YYYY-MM-DD HH:MM:SS[.ffffff]``, compared as text): it
keeps the microseconds the rows' ``updated`` is matched on, where SQLite's own clock gives
milliseconds in another form (``...15.123`` is not equal, as text, to Django's
``...15.123000``).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from django.db import connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import DateTimeField, DurationField, Expression, Value
from django.db.models.functions import Now
from django.db.models.sql import Query
from django.db.models.sql.compiler import SQLCompiler
from django.utils import timezone

__all__ = ["DatabaseNow", "DatabaseTimeField", "now", "read", "sql"]


#: Compiled :class:`DatabaseNow` SQL by (backend class, connection alias, seconds).
_compiled: dict[tuple[type, str, float], tuple[str, tuple[str | int, ...]]] = {}


class DatabaseNow(Expression):
    """The database's time plus *seconds* (see the module docstring)."""

    output_field = DateTimeField()

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__()
        self.seconds = seconds

    def as_sql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper
    ) -> tuple[str, tuple[str | int, ...]]:
        key = (type(connection), connection.alias, self.seconds)
        found = _compiled.get(key)
        if found is None:
            # The same text and parameters for every query of the connection (the server's
            # clock plus a constant): compiled once, not in every lease and transition (it was
            # 7 % of a small file's transfer, profiled). Few keys: 0, the lease, the watch's.
            delta = Value(datetime.timedelta(seconds=self.seconds), output_field=DurationField())
            combined = (Now() + delta).resolve_expression(compiler.query, allow_joins=False)
            text, params = compiler.compile(combined)
            found = (text, tuple(params))
            if len(_compiled) < 64:  # retry delays have jitter: never one key each
                _compiled[key] = found
        return found

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> tuple[str, tuple[str | int, ...]]:
        value = timezone.now() + datetime.timedelta(seconds=self.seconds)
        stored = connection.ops.adapt_datetimefield_value(value)
        assert stored is not None
        return "%s", (stored,)


if TYPE_CHECKING:
    _TimeField = DateTimeField[datetime.datetime | Expression, datetime.datetime]
else:
    _TimeField = DateTimeField  # not subscriptable at run time


class DatabaseTimeField(_TimeField):
    """A ``DateTimeField`` whose ``auto_now``/``auto_now_add`` value of a new row is the
    database's time (the INSERT writes :func:`now` and returns it, so the instance holds it),
    so that a row's ``created`` and ``updated`` are on the clock that measures leases and
    overdue times, whichever host saved it. A ``save()`` of an existing row keeps Django's
    behaviour (the ledger writes rows with conditional ``UPDATE``s, which set ``updated``
    themselves). It deconstructs as a plain ``DateTimeField``: the column and the migrations
    are Django's own."""

    def pre_save(self, model_instance: Any, add: bool) -> Any:
        if add and (self.auto_now or self.auto_now_add):
            value = DatabaseNow()
            setattr(model_instance, self.attname, value)
            return value
        return super().pre_save(model_instance, add)

    @property
    def db_returning(self) -> bool:
        """The INSERT returns the value it wrote, where the database can."""
        automatic = bool(self.auto_now or self.auto_now_add)
        return automatic and bool(connection.features.can_return_columns_from_insert)

    def deconstruct(self) -> Any:
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.DateTimeField", args, kwargs


def now(seconds: float = 0.0) -> DatabaseNow:
    """The database's time plus *seconds*, as an expression for a write or a filter."""
    return DatabaseNow(seconds)


def sql(expression: Expression, connection: BaseDatabaseWrapper) -> tuple[str, list[object]]:
    """*expression* compiled for *connection*: ``(sql, params)`` for a raw statement."""
    query = Query(None)
    compiler = query.get_compiler(connection=connection)
    resolved = expression.resolve_expression(query, allow_joins=False)
    text, params = compiler.compile(resolved)
    return text, list(params)


def read(using: str) -> datetime.datetime:
    """The database *using*'s time now (one ``SELECT``; none on SQLite, whose clock is this
    process's), as Django reads a column."""
    connection = connections[using]
    if connection.vendor == "sqlite":
        return timezone.now()
    expression = now()
    text, params = sql(expression, connection)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {text}{connection.features.bare_select_suffix}", params)
        (value,) = cursor.fetchone()
    converters = connection.ops.get_db_converters(expression)
    converters += expression.get_db_converters(connection)
    for converter in converters:
        value = converter(value, expression, connection)
    assert isinstance(value, datetime.datetime), value
    return value
