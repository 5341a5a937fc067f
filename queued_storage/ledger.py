"""The ledger: every change of a file's row, each one conditional write plus its cache publish.

The state machine is data in :mod:`queued_storage.machine` (:data:`TRANSITIONS`, re-exported
here), and every write goes through its one mechanism, ``Machine._transition``, which builds
the condition from that table, writes, publishes and announces. :class:`Ledger` holds the
transitions, one small method each (``docs/index.md`` draws them; ``test_state_machine`` walks
each from every state).

The table (``models.StoredFile``) is the system of record; the cache is a read-through copy
(``state.py``). Nothing else in the package writes a row or publishes a state: each method
here is one conditional ``INSERT``/``UPDATE``/``DELETE``, atomic on SQLite and PostgreSQL
alike without ``SELECT ... FOR UPDATE``, followed by the cache write that makes the change
visible to readers:

* the unique key on ``(alias, name)`` reserves a name across processes and hosts;
* a worker takes the lease with ``UPDATE ... WHERE state = 'pending'``, or takes over a lease
  that expired with ``UPDATE ... WHERE lease_owner = <the lost one> AND lease expired``: only
  one ``UPDATE`` can match, so only one worker transfers a file at a time;
* a lease holder's writes match ``lease_owner = me``: a worker whose lease was taken over, or
  whose row was deleted meanwhile, records nothing;
* the reconcile pass's writes match the row as the pass read it (state and ``updated``), so
  whoever loses a race between passes on several hosts skips the row;
* a transfer message the broker refused is recorded on the row (``dispatch_refused``), so
  that a starting worker and every reconcile pass queue it at once; the write that precedes
  the next message (a claim, a retry) clears the mark, an unclaim after another refusal puts
  it back, and a lease clears it (a message got through);
* the local copy goes only after ``remote`` is in the ledger *and* the cache
  (:meth:`Ledger.drop_local` is the one place that deletes it; invariant 2);
* each transition that creates a row, sets its state or deletes it is announced once, after
  it commits (``signals.file_state_changed``; see :mod:`queued_storage.machine`).

A :class:`Ledger` is bound to one queued storage's alias and cache prefix.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from queued_storage import clock
from queued_storage import state as read_side
from queued_storage.budget import check_staging_budget, check_staging_budget_in_flight
from queued_storage.ledger_direct import DirectTransitions
from queued_storage.ledger_pass import PassTransitions
from queued_storage.ledger_processing import DECLARED_TYPE, ProcessingTransitions
from queued_storage.machine import (
    ANY,
    ERROR_LENGTH,
    NO_LEASE,
    NO_UPLOAD,
    TRANSITIONS,
    Publish,
    Row,
    Transition,
    failing_since,
    returns_rows,
    take_batch_returning,
)
from queued_storage.models import State, StoredFile
from queued_storage.state import FileState
from queued_storage.tus_store import TusStore

__all__ = [
    "ANY",
    "TRANSITIONS",
    "LeaseResult",
    "Ledger",
    "PassTransitions",
    "Publish",
    "Row",
    "Transition",
    "check_staging_budget",
    "check_staging_budget_in_flight",
    "ledger_database",
    "reads_block_writes",
    "tus_advance",
    "tus_complete",
    "tus_create",
    "tus_expired",
    "tus_forget",
    "tus_named",
    "tus_set_length",
    "tus_upload",
]


@dataclass(frozen=True)
class LeaseResult:
    acquired: bool
    row: StoredFile | None
    #: The lease was taken over from a worker whose lease expired (not a ``pending`` row's).
    took_over: bool = False
    #: The database's time when a lease not acquired was read (when another worker's lease
    #: expires, by the one clock); ``None`` when the lease was acquired (the row's
    #: ``updated`` is the database's time of the lease).
    now: datetime.datetime | None = field(default=None, compare=False)


def ledger_database() -> str:
    """The database alias of the ledger (for the transaction a save belongs to)."""
    return StoredFile.db()


def reads_block_writes() -> bool:
    """Whether a read now would keep this transaction from taking the write lock later.

    A SQLite transaction that has read cannot wait for the write lock (SQLite answers "database
    is locked" at once rather than risk a deadlock), so inside one a save must write its row
    before it reads the staging budget. Elsewhere (PostgreSQL, or autocommit) reading first is
    harmless.
    """
    connection = transaction.get_connection(StoredFile.db())
    return bool(connection.vendor == "sqlite" and connection.in_atomic_block)


# -- tus uploads: their rows have a store of their own (queued_storage.tus_store) ----------------
# Kept under these names for the callers that import them from here.
tus_upload = TusStore.get
tus_create = TusStore.create
tus_advance = TusStore.advance
tus_set_length = TusStore.set_length
tus_complete = TusStore.complete
tus_named = TusStore.named
tus_forget = TusStore.forget
tus_expired = TusStore.expired


class Ledger(PassTransitions, DirectTransitions, ProcessingTransitions):
    """Every transition of the files of one queued storage (its alias and cache prefix): its
    own (saving, a worker's lease), the pass's (:class:`PassTransitions`) and a direct
    upload's (:class:`~queued_storage.ledger_direct.DirectTransitions`)."""

    # -- saving ------------------------------------------------------------------------------
    def saved(
        self,
        name: str,
        host: str,
        size: int,
        *,
        owner: str = "",
        declared: str = "",
        check_budget: bool = False,
    ) -> bool:
        """Record a file written locally as ``pending``, in one INSERT; ``False`` if the name
        is taken. Its state reaches the cache when the surrounding transaction commits.
        *owner* is who uploaded it (a user's pk as a string; ``""``: unknown); *declared*, the
        content type its uploader declared (kept for the processors, if any). *check_budget*
        (inside a transaction): the staging budget is checked after the INSERT, in its
        savepoint (see :func:`reads_block_writes`); :class:`StagingFull` undoes the row."""
        inserted = self._insert(
            name,
            (lambda: check_staging_budget(name, size, recorded=True)) if check_budget else None,
            state=State.PENDING,
            host=host,
            size=size,
            local_exists=True,
            owner=owner,
            metadata={DECLARED_TYPE: declared[:255]} if declared else None,
        )
        found = FileState.of(State.PENDING, size, True)
        self._effects(TRANSITIONS["saved"], name, Row.ABSENT, inserted, found)
        return inserted

    def reserve(self, name: str, host: str) -> bool:
        """Insert a ``pending`` row without a local file yet (the name is taken, nothing else)."""
        inserted = self._insert(name=name, state=State.PENDING, host=host, local_exists=False)
        self._effects(TRANSITIONS["reserve"], name, Row.ABSENT, inserted)
        return inserted

    def forget(self, name: str) -> StoredFile | None:
        """Delete the row (the name is free again, no transfer may record it); the row it was."""
        row = self.row(name)
        old = None if row is None else State(row.state)
        self._transition("forget", name, None, old=old)
        return row

    def retry(self, name: str) -> bool:
        """A ``failed`` (or stale ``pending``) file may be transferred again, with a new budget
        (no file errors counted, no run of transient failures running).

        ``failed`` first, so that the state it left is known without a query; a ``pending``
        file costs a second ``UPDATE`` (a rare, user-initiated case).
        """
        for old in (State.FAILED, State.PENDING):
            fields = {
                "state": State.PENDING,
                "attempts": 0,
                "retrying_since": None,
                "dispatch_refused": None,
                "retry_at": None,
                "updated": clock.now(),
            }
            if self._transition("retry", name, fields, source=old):
                return True
        return False

    def seed_remote(self, objects: list[tuple[str, int, str]]) -> list[str]:
        """Record objects the remote already holds ``(name, size, etag)`` as ``remote`` rows.

        For a site that adopts the package with a bucket full of files: their names become
        reserved (no save takes them) and reads route to the remote without asking it. Names
        the ledger knows are left as they are. Returns the names inserted (one query to find
        the known names, one INSERT for the rest; concurrent seeds or saves of the same name
        are skipped by the unique key).
        """
        manager = StoredFile.objects.using(StoredFile.db())
        names = [name for name, _, _ in objects]
        known = set(manager.filter(alias=self.alias, name__in=names).values_list("name", flat=True))
        now = timezone.now()
        new = [
            StoredFile(
                alias=self.alias,
                name=name,
                state=State.REMOTE,
                size=size,
                bytes_done=size,
                checksum=etag,
                checksum_algorithm="s3-etag" if etag else "",
                host="",
                local_exists=False,
                transferred=now,
            )
            for name, size, etag in objects
            if name not in known
        ]
        manager.bulk_create(new, ignore_conflicts=True)
        for row in new:
            self._effects(TRANSITIONS["seed_remote"], row.name, Row.ABSENT, True)
        return [row.name for row in new]

    def refused(self, name: str) -> bool:
        """The broker refused the transfer message of a ``pending`` file (a save's, a retry's):
        recorded (``dispatch_refused``), so that a starting worker and every reconcile pass
        queue it at once instead of waiting until it is overdue. No state changes and the row's
        clock stays; a second refusal keeps the first one's time. ``False``: the row is not
        ``pending`` (a worker took it meanwhile) or was marked already."""
        return self._transition(
            "refused",
            name,
            {"dispatch_refused": clock.now()},
            where={"dispatch_refused__isnull": True},
        )

    # -- a worker's lease -------------------------------------------------------------------
    def lease(self, name: str, owner: str, seconds: float) -> LeaseResult:
        """Take the single-flight lease on a ``pending`` row, or take over a lease that expired.

        A lease counts no attempt (``attempts`` counts errors about the file). A takeover is
        the failure of a worker, not of the file: it starts a run of transient failures
        (``retrying_since``) unless one is running, and ``last_error`` names the lost lease.
        ``LeaseResult.took_over`` says which of the two happened.

        A ``pending`` row costs one ``UPDATE ... RETURNING`` (PostgreSQL, SQLite 3.35+; an
        ``UPDATE`` and a ``SELECT`` elsewhere); a refused lease a ``SELECT`` more, to say why;
        a takeover one ``UPDATE`` more, matching the expired lease as that ``SELECT`` read it.
        No cache write: the lease keeper publishes ``transferring`` when the transfer outlives
        its first renewal. (Not through :meth:`_transition`: it returns the row it leased.)
        Every time is the database's (:mod:`queued_storage.clock`), ``LeaseResult.now`` too.
        A takeover is logged at WARNING with both owners.
        """
        lease = TRANSITIONS["lease"]
        taken = self._take(name, owner, seconds)
        if taken is not None:
            self._effects(lease, name, State.PENDING, True)
            return LeaseResult(acquired=True, row=taken)
        row, now = self._row_and_clock(name)
        if (
            row is None
            or now is None
            or row.state != State.TRANSFERRING
            or row.lease_expires is None
            or row.lease_expires >= now
        ):
            return LeaseResult(acquired=False, row=row, now=now)
        note = (
            f"The lease of {row.lease_owner} expired (its worker was lost?); taken over by {owner}."
        )
        taken = self._take(name, owner, seconds, lost=(row.lease_owner, note))
        if taken is not None:
            self._took_over(row, f"taken over by {owner}")
            self._effects(lease, name, State.TRANSFERRING, True)
            return LeaseResult(acquired=True, row=taken, took_over=True)
        row, now = self._row_and_clock(name)
        return LeaseResult(acquired=False, row=row, now=now)

    def lease_batch(
        self, host: str, owner: str, seconds: float, *, exclude: str, largest: int, count: int
    ) -> list[StoredFile]:
        """Lease for *owner* up to *count* other small ``pending`` rows of *host* in one
        statement (``machine.take_batch_returning``): the rows leased, each a ``lease`` of its
        own (announced per row). Empty where the database cannot return updated rows."""
        connection = connections[StoredFile.db()]
        if count <= 0 or not returns_rows(connection):
            return []
        taken = take_batch_returning(
            connection,
            self.alias,
            host,
            owner,
            seconds,
            exclude=exclude,
            largest=largest,
            count=count,
        )
        lease = TRANSITIONS["lease"]
        for row in taken:
            self._effects(lease, row.name, State.PENDING, True)
        return taken

    def renew(
        self,
        name: str,
        owner: str,
        seconds: float,
        done: int,
        total: int = 0,
        leased: FileState | None = None,
    ) -> bool:
        """Extend the lease with the progress so far; publish the progress (and *leased*, the
        ``transferring`` state, at the first renewal). ``False``: the lease was lost."""
        fields = {
            "lease_expires": clock.now(seconds),
            "bytes_done": done,
            "updated": clock.now(),
        }
        renewed = self._transition(
            "renew", name, fields, where={"lease_owner": owner}, found=leased
        )
        if renewed:
            read_side.write_progress(self.cache_prefix, self.alias, name, done, total)
        return renewed

    def record_upload(
        self, name: str, owner: str, *, upload_id: str, part_size: int, source: str
    ) -> bool:
        """Remember the multipart upload a leased transfer opened (for a resume)."""
        fields = {"upload_id": upload_id, "part_size": part_size, "source": source, "parts": []}
        return self._transition("record_upload", name, fields, where={"lease_owner": owner})

    def record_parts(self, name: str, owner: str, parts: list[list[int | str]]) -> bool:
        """Remember the finished parts ``[number, etag, digest, size]`` of the open upload."""
        return self._transition(
            "record_parts", name, {"parts": parts}, where={"lease_owner": owner}
        )

    def clear_upload(self, name: str) -> None:
        """The open upload was aborted: nothing left to resume."""
        self._transition("clear_upload", name, dict(NO_UPLOAD))

    def remote(
        self,
        name: str,
        owner: str,
        *,
        size: int,
        checksum: str,
        algorithm: str,
        keep_local: bool = True,
    ) -> bool:
        """Record the verified remote copy and publish ``remote``: one cache write, saying
        whether the local copy stays. Ends any run of transient failures. ``False`` if the
        lease or the row was lost."""
        now = clock.now()
        fields = {
            "state": State.REMOTE,
            "size": size,
            "bytes_done": size,
            "checksum": checksum,
            "checksum_algorithm": algorithm,
            "last_error": "",
            **NO_LEASE,
            "retrying_since": None,
            "transferred": now,
            "updated": now,
            **NO_UPLOAD,
        }
        found = FileState.of(State.REMOTE, size, keep_local)
        return self._transition("remote", name, fields, where={"lease_owner": owner}, found=found)

    def drop_local(
        self,
        name: str,
        size: int | None,
        delete: Callable[[str], None],
        *,
        announced: bool = False,
    ) -> bool:
        """Delete the local copy of a ``remote`` file, the one place that does (invariant 2).

        The cache says ``remote`` (without a local copy) before *delete* runs, unless the
        caller's :meth:`remote` already *announced* it; the row says so after.
        """
        return self._transition(
            "drop_local",
            name,
            {"local_exists": False, "updated": clock.now()},
            found=None if announced else FileState.of(State.REMOTE, size, False),
            before=lambda: delete(name),
        )

    def local_missing(self, name: str) -> None:
        """The worker found no local copy: recorded, so the reconcile pass reports the loss."""
        self._transition("local_missing", name, {"local_exists": False, "updated": clock.now()})

    def _release(
        self,
        name: str,
        owner: str,
        state: str,
        error: str,
        transition: str,
        *,
        counted: bool,
        delay: float | None = None,
    ) -> bool:
        """End the lease in *state* with *error*. *counted*: an error about the file (one more
        ``attempts``, and the run of transient failures, if any, is over); otherwise a failure
        of the infrastructure, which starts such a run unless one is running. *delay*: seconds
        from now (the database's clock) to the retry (``retry_at``); ``None``: none is due."""
        assert TRANSITIONS[transition].target == state, transition
        now = clock.now()
        if counted:
            effect: dict[str, object] = {"attempts": F("attempts") + 1, "retrying_since": None}
        else:
            effect = {"retrying_since": failing_since(now)}
        fields = {
            "state": state,
            "last_error": error[:ERROR_LENGTH],
            **NO_LEASE,
            "updated": now,
            "retry_at": None if delay is None else clock.now(delay),
            **effect,
        }
        return self._transition(transition, name, fields, where={"lease_owner": owner})

    def retry_later(
        self, name: str, owner: str, error: str, *, counted: bool = True, delay: float = 0.0
    ) -> bool:
        """End the lease after a transient error: back to ``pending``, *error* kept, the retry
        due in *delay* seconds (``retry_at``, by the database's clock: the workers' watch and
        the reconcile pass send it then); *counted* for an error about the file, else the
        infrastructure's (see :meth:`_release`)."""
        return self._release(
            name, owner, State.PENDING, error, "retry_later", counted=counted, delay=delay
        )

    def fail(self, name: str, owner: str, error: str, *, counted: bool = True) -> bool:
        """End the lease for good: ``failed``, *error* kept (served locally, retried on request).
        *counted*: the last error was about the file; otherwise the run of infrastructure
        failures that outlasted ``QUEUED_STORAGE_RETRY_FOR`` stays recorded."""
        return self._release(name, owner, State.FAILED, error, "fail", counted=counted)
