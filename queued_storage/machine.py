"""The file's state machine: its declared table and the one mechanism that makes a transition.

:data:`TRANSITIONS` declares each transition of a file's row: the states it may leave, the
state it enters, what it publishes to the cache and whether it is announced.
:meth:`Machine._transition` builds the write's condition from that table, writes, publishes and
announces; :class:`queued_storage.ledger.Ledger` adds the transitions themselves, one small
method each. The docs draw the same table as a diagram (``docs/index.md``;
``tests/test_state_machine.py`` checks that they agree).

Each transition that creates a row, sets its state or deletes it is announced once, after it
commits, by :meth:`Machine._announce` (``signals.file_state_changed``). The state it moved from
comes from the write's own condition (each transition names the state it leaves), or, where it
allows two, from the write itself (``retry``, ``lease``): no query is added.
"""

from __future__ import annotations

import datetime
import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.db import IntegrityError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Expression, F, Q, QuerySet, Value
from django.db.models.functions import Coalesce

from queued_storage import clock
from queued_storage import state as read_side
from queued_storage.conf import settings
from queued_storage.models import State, StoredFile
from queued_storage.signals import file_state_changed
from queued_storage.state import FileState

__all__ = [
    "ANY",
    "ERROR_LENGTH",
    "NO_LEASE",
    "NO_UPLOAD",
    "TRANSITIONS",
    "Machine",
    "Publish",
    "Row",
    "Transition",
    "failing_since",
    "returns_rows",
    "take_batch_returning",
    "take_returning",
]

#: The ledger's logger: a receiver of ``file_state_changed`` that raises is logged here, under
#: the name the docs give (``docs/operations.md``), which predates this module.
logger = logging.getLogger("queued_storage.ledger")

#: ``StoredFile.last_error`` holds this much of a reason.
ERROR_LENGTH = 4000


def failing_since(now: datetime.datetime | Expression) -> Coalesce:
    """``retrying_since`` after a transient failure: a run of them starts *now* (a time the
    database gave, or :func:`queued_storage.clock.now`) unless one is running (the run's start
    is what ``QUEUED_STORAGE_RETRY_FOR`` is measured from)."""
    return Coalesce(F("retrying_since"), now if isinstance(now, Expression) else Value(now))


# -- the state machine, declared --------------------------------------------------------------
class Row(enum.Enum):
    """The two ends of a transition that are not a state."""

    #: No row: before an INSERT (a transition from it creates the row), after a DELETE.
    ABSENT = "absent"
    #: The state stays as it is (the write changes other fields).
    SAME = "same"


class Publish(enum.Enum):
    """What a transition writes to the cache (the read side): unless said, once it matched."""

    NOTHING = "nothing"
    #: The row as it is after the write (one SELECT).
    ROW = "the row"
    #: The row as it is after the write, also when the write matched nothing (the caller's
    #: view of the row may be stale: the cache follows the row either way).
    ROW_ALWAYS = "the row, also on a miss"
    #: The state the caller computed (no SELECT).
    GIVEN = "the given state"
    #: The state the caller computed, before the write (the cache says it first).
    GIVEN_BEFORE = "the given state, first"
    #: The state the caller computed, when the surrounding transaction commits.
    AT_COMMIT = "the given state, at commit"
    #: The cache entry is dropped.
    DROP = "drop"
    #: The cache entry is dropped, also when the write matched nothing.
    DROP_ALWAYS = "drop, also on a miss"


#: The states of a row, for a transition that may leave any of them.
ANY: tuple[str, ...] = tuple(State.values)

_P, _T, _R, _F = State.PENDING, State.TRANSFERRING, State.REMOTE, State.FAILED
_U, _X = State.UPLOADING, State.REJECTED
_NEW, _GONE, _SAME = Row.ABSENT, Row.ABSENT, Row.SAME


#: The fields that describe an open multipart upload, emptied together.
NO_UPLOAD: dict[str, object] = {"upload_id": "", "part_size": None, "source": "", "parts": []}

#: The fields of a lease, emptied together when it ends.
NO_LEASE: dict[str, object] = {"lease_owner": "", "lease_expires": None}


@dataclass(frozen=True)
class Transition:
    """One row of :data:`TRANSITIONS`."""

    name: str
    #: The states the transition may leave (``Row.ABSENT``: it creates the row).
    sources: tuple[str | Row, ...]
    #: The state it enters (``Row.ABSENT``: it deletes the row; ``Row.SAME``: it keeps it).
    target: str | Row
    publish: Publish
    #: Sent as ``signals.file_state_changed`` after the commit (``transition`` is the name).
    announced: bool

    def enters(self, source: str | Row) -> str | Row:
        """The state a row in *source* is in after this transition."""
        return source if self.target is Row.SAME else self.target


#: Every transition of a file's row. Besides the state, a transition's write may be matched
#: on more (the lease holder, the row as the reconcile pass read it, a mark): those
#: conditions are in its ``Ledger`` method; the state it leaves is always one of these.
# fmt: off
TRANSITIONS: dict[str, Transition] = {
    t.name: t
    for t in (
        #          name                from          to     cache                     announced
        Transition("saved",             (_NEW,),      _P,    Publish.AT_COMMIT,        True),
        Transition("reserve",           (_NEW,),      _P,    Publish.NOTHING,          True),
        Transition("seed_remote",       (_NEW,),      _R,    Publish.NOTHING,          True),
        Transition("forget",            ANY,          _GONE, Publish.DROP_ALWAYS,      True),
        Transition("retry",             (_F, _P),     _P,    Publish.ROW,              True),
        Transition("refused",           (_P,),        _SAME, Publish.NOTHING,          False),
        # a worker's lease; from ``transferring`` only when that lease expired (a takeover)
        Transition("lease",             (_P, _T),     _T,    Publish.NOTHING,          True),
        Transition("renew",             (_T,),        _SAME, Publish.GIVEN,            False),
        Transition("record_upload",     (_T,),        _SAME, Publish.NOTHING,          False),
        Transition("record_parts",      (_T,),        _SAME, Publish.NOTHING,          False),
        Transition("clear_upload",      ANY,          _SAME, Publish.NOTHING,          False),
        Transition("remote",            (_T,),        _R,    Publish.GIVEN,            True),
        Transition("drop_local",        (_R,),        _SAME, Publish.GIVEN_BEFORE,     False),
        Transition("local_missing",     ANY,          _SAME, Publish.NOTHING,          False),
        Transition("retry_later",       (_T,),        _P,    Publish.ROW_ALWAYS,       True),
        Transition("fail",              (_T,),        _F,    Publish.ROW_ALWAYS,       True),
        # the reconcile pass (and verify): each write matches the row as it was read
        Transition("take_back",         (_T,),        _P,    Publish.ROW,              True),
        Transition("claim",             (_P,),        _SAME, Publish.NOTHING,          False),
        Transition("claim_refused",     (_P,),        _SAME, Publish.NOTHING,          False),
        Transition("claim_due",         (_P,),        _SAME, Publish.NOTHING,          False),
        Transition("unclaim",           (_P,),        _SAME, Publish.NOTHING,          False),
        Transition("retry_failed",      (_F,),        _P,    Publish.ROW,              True),
        Transition("lost",              (_P, _T, _F), _F,    Publish.ROW,              True),
        Transition("remote_lost",       (_R,),        _F,    Publish.ROW,              True),
        Transition("give_up",           (_T,),        _F,    Publish.ROW,              True),
        Transition("finish_save",       (_P,),        _SAME, Publish.ROW,              False),
        Transition("drop_reservation",  (_P,),        _GONE, Publish.DROP,             True),
        # processing before the transfer (queued_storage.processors), under the lease
        Transition("processed",         (_T,),        _SAME, Publish.NOTHING,          False),
        Transition("reject",            (_T,),        _X,    Publish.ROW_ALWAYS,       True),
        Transition("release",           (_X,),        _P,    Publish.ROW,              True),
        # a direct upload (queued_storage.direct): the client sends the bytes to the remote;
        # a claim is its completion's (or expiry's, or cancel's) lease, and each end of it
        # matches the claim's holder
        Transition("direct_reserve",    (_NEW,),      _U,    Publish.AT_COMMIT,        True),
        Transition("direct_opened",     (_U,),        _SAME, Publish.NOTHING,          False),
        Transition("direct_declare",    (_U,),        _SAME, Publish.NOTHING,          False),
        Transition("direct_claim",      (_U,),        _SAME, Publish.NOTHING,          False),
        Transition("direct_unclaim",    (_U,),        _SAME, Publish.NOTHING,          False),
        Transition("direct_remote",     (_U,),        _R,    Publish.GIVEN,            True),
        Transition("direct_refused",    (_U,),        _GONE, Publish.DROP,             True),
        Transition("direct_cancel",     (_U,),        _GONE, Publish.DROP,             True),
        Transition("direct_expired",    (_U,),        _GONE, Publish.DROP,             True),
    )
}
# fmt: on


class Machine:
    """How a transition happens, for the files of one queued storage (its alias and cache
    prefix): the conditional write, its cache publish, its announcement.
    :class:`~queued_storage.ledger.Ledger` adds the transitions themselves."""

    def __init__(self, alias: str, cache_prefix: str | None = None) -> None:
        self.alias = alias
        self.cache_prefix = cache_prefix or settings.CACHE_PREFIX

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.alias!r}>"

    # -- reading ---------------------------------------------------------------------------
    def rows(self, name: str) -> QuerySet[StoredFile]:
        return StoredFile.rows(self.alias, name)

    def row(self, name: str) -> StoredFile | None:
        return StoredFile.get_row(self.alias, name)

    def still_refused(self, name: str) -> bool:
        """Whether *name*'s row is ``pending`` with its refusal still marked: no pass or
        starting worker has queued it since (one read by the unique key)."""
        waiting = self.rows(name).filter(state=State.PENDING, dispatch_refused__isnull=False)
        return bool(waiting.exists())

    def state(self, name: str, *, fresh: bool = False) -> FileState | None:
        """The file's state (cache, then ledger); ``None`` when the ledger does not know it."""
        return read_side.get_state(self.cache_prefix, self.alias, name, fresh=fresh)

    def progress(self, name: str) -> tuple[int, int] | None:
        """``(done, total)`` of a running transfer from the cache, else from the row."""
        running = read_side.get_progress(self.cache_prefix, self.alias, name)
        if running is not None:
            return running
        row = self.row(name)
        return None if row is None else (row.bytes_done, row.size or 0)

    # -- the one mechanism: conditional write, cache publish, announcement -------------------
    def _transition(
        self,
        transition: str,
        name: str,
        fields: Mapping[str, object] | None,
        *,
        row: StoredFile | None = None,
        source: str | None = None,
        old: str | None = None,
        where: Mapping[str, object] | None = None,
        condition: Q | None = None,
        found: FileState | None = None,
        before: Callable[[], None] | None = None,
    ) -> bool:
        """Make *transition* (a key of :data:`TRANSITIONS`) happen to *name*, if its row allows.

        One conditional ``UPDATE`` of *fields* (``None``: a ``DELETE``), atomic without locks.
        Its condition: with *row*, the row as it was read (key, state and ``updated``; a row
        read in a state the transition may not leave is not written at all); otherwise the
        row's state is the transition's source (*source* of several), unless it may leave any.
        *where* (and *condition*) add the transition's own conditions (the lease holder, a
        mark). Then the
        cache is written as the table says (*found* for a given state; *before* runs between
        a ``GIVEN_BEFORE`` publish and the write) and, when the write matched, the change is
        announced (from *old*, where the transition may leave any state; unknown: not
        announced). ``True`` when the write matched.
        """
        declared = TRANSITIONS[transition]
        if row is not None:
            if row.state not in declared.sources:
                return False
            rows = self._as_read(row)
            old = State(row.state)
        else:
            rows = self.rows(name)
            if declared.sources != ANY:
                if source is None:
                    (only,) = declared.sources
                    assert isinstance(only, str), transition
                    source = only
                rows = rows.filter(state=source)
                old = source
        if where:
            rows = rows.filter(**where)
        if condition is not None:
            rows = rows.filter(condition)
        if declared.publish is Publish.GIVEN_BEFORE and found is not None:
            self._publish(name, found)
        if before is not None:
            before()
        matched = bool(rows.delete()[0] if fields is None else rows.update(**fields))
        self._effects(declared, name, old, matched, found)
        return matched

    def _effects(
        self,
        declared: Transition,
        name: str,
        old: str | Row | None,
        matched: bool,
        found: FileState | None = None,
    ) -> None:
        """The cache publish and the announcement of a transition whose write is done."""
        publish = declared.publish
        if publish is Publish.ROW_ALWAYS or (matched and publish is Publish.ROW):
            self.republish(name)
        elif publish is Publish.DROP_ALWAYS or (matched and publish is Publish.DROP):
            read_side.drop_state(self.cache_prefix, self.alias, name)
        elif matched and found is not None:
            if publish is Publish.GIVEN:
                self._publish(name, found)
            elif publish is Publish.AT_COMMIT:
                given = found
                transaction.on_commit(lambda: self._publish(name, given), using=StoredFile.db())
        if matched and declared.announced and old is not None:
            self._announce(declared.name, name, old, declared.enters(old))

    def _publish(self, name: str, found: FileState) -> None:
        read_side.write_state(self.cache_prefix, self.alias, name, found)

    def _announce(
        self, transition: str, name: str, old: str | Row | None, new: str | Row | None
    ) -> None:
        """Send ``file_state_changed`` for *name* once the change is committed: at the commit of
        the surrounding transaction (nothing if it rolls back), at once outside one. Free when
        nothing listens. A receiver that raises is logged; the transition stands."""
        if not file_state_changed.has_listeners(type(self)):
            return
        old_state = State(old) if isinstance(old, str) else None
        new_state = State(new) if isinstance(new, str) else None

        def send() -> None:
            for receiver, result in file_state_changed.send_robust(
                sender=type(self),
                alias=self.alias,
                name=name,
                old_state=old_state,
                new_state=new_state,
                transition=transition,
            ):
                if isinstance(result, Exception):
                    logger.error(
                        "a file_state_changed receiver (%r) failed for %r (%s)",
                        receiver,
                        name,
                        transition,
                        exc_info=result,
                    )

        transaction.on_commit(send, using=StoredFile.db())

    def republish(self, name: str, row: StoredFile | None = None) -> None:
        """Publish the row as it is now (after a transition whose result depends on it, or
        when the cache may lag behind the row); *row*: as it was just read (no new read)."""
        row = row if row is not None else self.row(name)
        if row is not None:
            self._publish(name, FileState.from_row(row))

    def _row_and_clock(self, name: str) -> tuple[StoredFile | None, datetime.datetime | None]:
        """The row, and the database's time as it was read, in one ``SELECT`` (no row: no
        time)."""
        row = self.rows(name).annotate(database_now=clock.now()).first()
        if row is None:
            return None, None
        now: datetime.datetime = row.database_now
        return row, now

    def _took_over(self, row: StoredFile, by: str) -> None:
        """Log the takeover of *row*'s expired lease (as it was read) *by* its new owner."""
        expired = row.lease_expires.isoformat(" ", "milliseconds") if row.lease_expires else "?"
        logger.warning(
            "lease takeover: the lease of %s on %s:%s expired at %s (by the database's clock); %s",
            row.lease_owner,
            self.alias,
            row.name,
            expired,
            by,
        )

    # -- the INSERT, the lease's UPDATE ... RETURNING, the row as read ------------------------
    def _insert(self, name: str, then: Callable[[], None] | None = None, **fields: object) -> bool:
        """One INSERT of *name*'s row; ``False`` when another file holds the name.

        Inside a transaction it runs in a savepoint, so that a unique violation does not break
        the caller's transaction (PostgreSQL aborts the whole transaction otherwise); the row
        becomes visible to others at the commit, and a concurrent insert of the same key waits
        for that commit and then fails, which is what we want. In autocommit mode a plain
        INSERT does the same in one round trip. *then* runs after the INSERT, in its savepoint:
        what it raises undoes the row (inside a transaction only).
        """
        db = StoredFile.db()
        manager = StoredFile.objects.using(db)
        try:
            if transaction.get_connection(db).in_atomic_block:
                with transaction.atomic(using=db):
                    manager.create(alias=self.alias, name=name, **fields)
                    if then is not None:
                        then()
            else:
                manager.create(alias=self.alias, name=name, **fields)
        except IntegrityError:
            return False
        read_side.written_in_transaction(self.cache_prefix, self.alias, name)
        return True

    def _take(
        self,
        name: str,
        owner: str,
        seconds: float,
        *,
        lost: tuple[str, str] | None = None,
    ) -> StoredFile | None:
        """One conditional UPDATE giving *owner* the lease of a ``pending`` row for *seconds*
        or, with *lost* (the lost owner and the note to record), of that owner's expired lease;
        the row as it is now, or ``None`` when the row did not match. Every time in it is the
        database's (:mod:`queued_storage.clock`): the expiry, the takeover's condition, the
        row's ``updated`` (which the worker reads back as the time of its lease)."""
        connection = connections[StoredFile.db()]
        if returns_rows(connection):
            return take_returning(connection, self.alias, name, owner, seconds, lost=lost)
        fields: dict[str, object] = {
            "state": State.TRANSFERRING,
            "lease_owner": owner,
            "lease_expires": clock.now(seconds),
            "bytes_done": 0,
            "dispatch_refused": None,
            "retry_at": None,
            "updated": clock.now(),
        }
        rows = self.rows(name)
        if lost is None:
            rows = rows.filter(state=State.PENDING)
        else:
            rows = rows.filter(
                state=State.TRANSFERRING, lease_owner=lost[0], lease_expires__lt=clock.now()
            )
            fields["last_error"] = lost[1][:ERROR_LENGTH]
            fields["retrying_since"] = failing_since(clock.now())
        return self.row(name) if rows.update(**fields) else None

    @staticmethod
    def _as_read(row: StoredFile) -> QuerySet[StoredFile]:
        """*row* as the reconcile pass (or ``verify``) read it: key, state and ``updated``."""
        found: QuerySet[StoredFile] = StoredFile.objects.using(StoredFile.db()).filter(
            pk=row.pk, state=row.state, updated=row.updated
        )
        return found


def returns_rows(connection: BaseDatabaseWrapper) -> bool:
    """Whether *connection*'s database returns the rows an ``UPDATE`` changed (PostgreSQL,
    SQLite 3.35+): the leases are then one statement each."""
    return connection.vendor in ("postgresql", "sqlite") and bool(
        connection.features.can_return_rows_from_bulk_insert
    )


def _lease_sets(
    connection: BaseDatabaseWrapper, owner: str, seconds: float
) -> tuple[str, list[object]]:
    """The ``SET`` clause of a lease for *owner* for *seconds* and its parameters, the same for
    one row and for a batch: ``transferring``, the holder, the expiry and ``updated`` by the
    database's clock, no progress, no refusal mark, no retry due."""
    q = connection.ops.quote_name
    now, now_params = clock.sql(clock.now(), connection)
    expires, expires_params = clock.sql(clock.now(seconds), connection)
    sets = (
        f"{q('state')} = %s, {q('lease_owner')} = %s, {q('lease_expires')} = {expires}, "
        f"{q('bytes_done')} = 0, {q('dispatch_refused')} = NULL, {q('retry_at')} = NULL, "
        f"{q('updated')} = {now}"
    )
    return sets, [str(State.TRANSFERRING), owner, *expires_params, *now_params]


def _update_returning(
    connection: BaseDatabaseWrapper, sets: str, where: str, params: list[object]
) -> list[StoredFile]:
    """``UPDATE`` the ledger's rows matching *where* with *sets*, returning them as they are
    after it."""
    q = connection.ops.quote_name
    columns = ", ".join(q(str(f.column)) for f in StoredFile._meta.concrete_fields)
    sql = f"UPDATE {q(StoredFile._meta.db_table)} SET {sets} WHERE {where} RETURNING {columns}"
    return list(StoredFile.objects.db_manager(connection.alias).raw(sql, params))


def take_returning(
    connection: BaseDatabaseWrapper,
    alias: str,
    name: str,
    owner: str,
    seconds: float,
    *,
    lost: tuple[str, str] | None = None,
) -> StoredFile | None:
    """:meth:`Machine._take` as one ``UPDATE ... RETURNING`` (PostgreSQL, SQLite 3.35+): the
    row as the lease left it, or ``None`` when the row did not match. Its times are the
    database's (:func:`queued_storage.clock.now`, compiled for *connection*)."""
    q = connection.ops.quote_name
    now, now_params = clock.sql(clock.now(), connection)
    sets, params = _lease_sets(connection, owner, seconds)
    where = f"{q('alias')} = %s AND {q('name')} = %s AND {q('state')} = %s"
    where_params: list[object] = [alias, name]
    if lost is None:
        where_params.append(str(State.PENDING))
    else:
        sets += (
            f", {q('last_error')} = %s, "
            f"{q('retrying_since')} = COALESCE({q('retrying_since')}, {now})"
        )
        params += [lost[1][:ERROR_LENGTH], *now_params]
        where += f" AND {q('lease_owner')} = %s AND {q('lease_expires')} < {now}"
        where_params += [str(State.TRANSFERRING), lost[0], *now_params]
    leased = _update_returning(connection, sets, where, params + where_params)
    return leased[0] if leased else None


def take_batch_returning(
    connection: BaseDatabaseWrapper,
    alias: str,
    host: str,
    owner: str,
    seconds: float,
    *,
    exclude: str,
    largest: int,
    count: int,
) -> list[StoredFile]:
    """The lease of up to *count* other ``pending`` rows of *alias* and *host* (not *exclude*)
    of at most *largest* bytes, with no retry held (``retry_at`` unset), oldest first, for
    *owner*, in one ``UPDATE ... RETURNING`` (PostgreSQL, SQLite 3.35+): the rows as the lease
    left them. The outer ``state = 'pending'`` keeps it a conditional write per row (invariant
    7): of two workers that pick the same row, one matches it. On PostgreSQL the inner
    ``SELECT`` skips rows another transaction holds (``FOR UPDATE SKIP LOCKED``). It reads the
    partial index ``queued_storage_fresh`` (invariant 12)."""
    q = connection.ops.quote_name
    pending = str(State.PENDING)
    sets, params = _lease_sets(connection, owner, seconds)
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    inner = (
        f"SELECT {q('id')} FROM {q(StoredFile._meta.db_table)} WHERE {q('alias')} = %s "
        f"AND {q('host')} = %s AND {q('state')} = %s AND {q('retry_at')} IS NULL "
        f"AND {q('size')} <= %s AND {q('name')} <> %s ORDER BY {q('created')} LIMIT %s{lock}"
    )
    where = f"{q('id')} IN ({inner}) AND {q('state')} = %s"
    where_params: list[object] = [alias, host, pending, largest, exclude, count, pending]
    return _update_returning(connection, sets, where, params + where_params)
