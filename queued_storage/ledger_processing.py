"""The transitions of processing before the transfer (``queued_storage.processors``), part of
the ledger.

Under the transfer's lease, the worker runs the storage's processors on the local copy: all
passed, ``processed`` records the database's time and the metadata they kept (the lease goes
on to the transfer; a redelivered message finds the row processed and does not scan again);
one rejected, ``reject`` ends the lease in ``rejected`` with the reason (never sent, never
served). ``release`` puts a rejected file back to ``pending`` (a false positive), processed,
so that it is not scanned again. :class:`queued_storage.ledger.Ledger` inherits these; the
table is :data:`queued_storage.machine.TRANSITIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping

from queued_storage import clock
from queued_storage.machine import ERROR_LENGTH, NO_LEASE, Machine
from queued_storage.models import State

__all__ = ["DECLARED_TYPE", "ProcessingTransitions"]

#: The key of ``metadata`` holding the content type the uploader declared (kept at the save).
DECLARED_TYPE = "declared_type"


class ProcessingTransitions(Machine):
    """Processing's transitions (see the module)."""

    def processed(self, name: str, owner: str, metadata: Mapping[str, object]) -> bool:
        """The processors passed the leased file: record when, and what they kept (*metadata*
        replaces the row's: the caller merges what the row held, such as the declared type)."""
        fields = {"processed": clock.now(), "metadata": dict(metadata), "updated": clock.now()}
        return self._transition("processed", name, fields, where={"lease_owner": owner})

    def reject(self, name: str, owner: str, reason: str, *, local: bool = True) -> bool:
        """A processor refused the leased file: ``rejected``, the lease ended, *reason* kept;
        *local* ``False`` when its local copy is about to be deleted."""
        fields: dict[str, object] = {
            "state": State.REJECTED,
            "last_error": reason[:ERROR_LENGTH],
            **NO_LEASE,
            "retry_at": None,
            "updated": clock.now(),
        }
        if not local:
            fields["local_exists"] = False
        return self._transition("reject", name, fields, where={"lease_owner": owner})

    def release(self, name: str) -> bool:
        """A rejected file let through by a person: ``pending``, processed now (not scanned
        again), its budget new; the caller queues its transfer."""
        fields = {
            "state": State.PENDING,
            "processed": clock.now(),
            "attempts": 0,
            "retrying_since": None,
            "last_error": "",
            "updated": clock.now(),
        }
        return self._transition("release", name, fields)
