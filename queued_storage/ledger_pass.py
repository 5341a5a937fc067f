"""The transitions of the reconcile pass, the workers' watch and ``verify``, part of the
ledger (:class:`queued_storage.ledger.Ledger` inherits them): each write matches the row as
the pass read it (state and ``updated``), so whoever loses a race between passes on several
hosts skips the row."""

from __future__ import annotations

import datetime

from queued_storage.conf import settings
from queued_storage.machine import (
    ERROR_LENGTH,
    NO_LEASE,
    NO_UPLOAD,
    Machine,
    failing_since,
)
from queued_storage.models import State, StoredFile

__all__ = ["PassTransitions"]


class PassTransitions(Machine):
    """The transitions of the reconcile pass, the workers' watch and ``verify``: each write
    matches the row as it was read (:class:`Ledger` has them all)."""

    def take_back(self, row: StoredFile, now: datetime.datetime) -> bool:
        """An expired lease (its worker died): back to ``pending`` for a new transfer. A lost
        worker is a transient failure, not the file's: no attempt is counted, and a run of
        transient failures begins unless one is running."""
        fields = {
            "state": State.PENDING,
            **NO_LEASE,
            "last_error": f"The lease of {row.lease_owner} expired (worker lost?); "
            "queued again by the reconcile pass.",
            "retrying_since": failing_since(now),
            "updated": now,
        }
        taken = self._transition("take_back", row.name, fields, row=row)
        if taken:
            self._took_over(row, f"taken back by the reconcile pass on host {settings.HOST}")
        return taken

    def claim(self, row: StoredFile, now: datetime.datetime) -> bool:
        """Mark an overdue ``pending`` row as queued again now (no state change).

        Its message was lost (or waits behind a long queue): a transient failure, so a run of
        them starts unless one is running. The next re-queue of the row then waits as long as
        a retry would (see ``reconcile.overdue``): re-queues of a file that waits in a long
        queue are spaced out, up to ``RETRY_MAX_DELAY`` apart.
        """
        fields = {
            "updated": now,
            "retrying_since": failing_since(now),
            "dispatch_refused": None,
            "retry_at": None,
        }
        return self._transition("claim", row.name, fields, row=row)

    def claim_refused(self, row: StoredFile, now: datetime.datetime) -> bool:
        """Claim a ``pending`` row whose message the broker refused (:meth:`refused`), to queue
        it now rather than when it is overdue: the mark is cleared and the row's clock moved,
        so one pass sends it and the next one finds it neither refused nor overdue. No run of
        transient failures starts: no message was lost, none had been sent."""
        return self._transition(
            "claim_refused",
            row.name,
            {"dispatch_refused": None, "updated": now},
            row=row,
            where={"dispatch_refused__isnull": False},
        )

    def claim_due(self, row: StoredFile, now: datetime.datetime) -> bool:
        """Claim a ``pending`` row whose retry is due (:meth:`StoredFileQuerySet.due`), to queue
        it now: ``retry_at`` is cleared and the row's clock moved, so that of the workers'
        watches and passes that read it one sends it. The run of transient failures, if any,
        goes on (the retry's outcome ends it or not)."""
        return self._transition(
            "claim_due",
            row.name,
            {"retry_at": None, "updated": now},
            row=row,
            where={"retry_at": row.retry_at},
        )

    def unclaim(self, row: StoredFile, now: datetime.datetime) -> None:
        """Undo :meth:`claim` (or the claim of another transition) when the broker refused:
        the row looks as it did, for the next pass, and is marked refused (:meth:`refused`),
        so that the next pass or a starting worker queues it at once. It matches the row as
        the claim left it (``pending``, its clock at *now*), not as *row* was read."""
        fields = {
            "updated": row.updated,
            "retrying_since": row.retrying_since,
            "dispatch_refused": row.dispatch_refused or now,
        }
        self._transition("unclaim", row.name, fields, where={"updated": now})

    def retry_failed(self, row: StoredFile, now: datetime.datetime) -> bool:
        """A ``failed`` row whose local copy is there: ``pending`` with a new budget."""
        fields = {
            "state": State.PENDING,
            "attempts": 0,
            "retrying_since": None,
            "dispatch_refused": None,
            "local_exists": True,
            "updated": now,
        }
        return self._transition("retry_failed", row.name, fields, row=row)

    def lost(self, row: StoredFile, reason: str, now: datetime.datetime) -> bool:
        """The local copy of a file that never reached the remote is gone: ``failed``."""
        fields = {
            "state": State.FAILED,
            "local_exists": False,
            "last_error": reason[:ERROR_LENGTH],
            **NO_LEASE,
            "updated": now,
            **NO_UPLOAD,
        }
        return self._transition("lost", row.name, fields, row=row)

    def remote_lost(
        self, row: StoredFile, reason: str, now: datetime.datetime, *, local_exists: bool
    ) -> bool:
        """A ``remote`` file's remote copy is missing or differs (found by ``verify``): ``failed``.

        Unlike :meth:`lost` the local copy is recorded as the caller found it (*local_exists*):
        reads go back to it where it is still there, and a retry sends it again.
        """
        fields = {
            "state": State.FAILED,
            "local_exists": local_exists,
            "last_error": reason[:ERROR_LENGTH],
            "updated": now,
        }
        return self._transition("remote_lost", row.name, fields, row=row)

    def give_up(self, row: StoredFile, reason: str, now: datetime.datetime) -> bool:
        """An expired lease of a file whose transient failures have lasted longer than
        ``QUEUED_STORAGE_RETRY_FOR`` (its workers keep dying): ``failed`` with *reason*; the
        caller aborted its open upload."""
        fields = {
            "state": State.FAILED,
            "last_error": reason[:ERROR_LENGTH],
            **NO_LEASE,
            "updated": now,
            **NO_UPLOAD,
        }
        return self._transition("give_up", row.name, fields, row=row)

    def finish_save(self, row: StoredFile, size: int, now: datetime.datetime) -> bool:
        """A reservation whose save wrote the file and then stopped: ``pending`` with it."""
        fields = {"size": size, "local_exists": True, "updated": now}
        return self._transition("finish_save", row.name, fields, row=row)

    def drop_reservation(self, row: StoredFile) -> bool:
        """Delete a reservation whose save stopped before writing the file."""
        return self._transition(
            "drop_reservation",
            row.name,
            None,
            row=row,
            where={"local_exists": False, "size__isnull": True},
        )
