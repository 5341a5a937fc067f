"""The transitions of a direct upload's row (``queued_storage.direct``), part of the ledger.

A direct upload's row is ``uploading`` from the reservation of its name to its end: ``remote``
once the server verified the object, or gone (refused, cancelled, expired), which releases the
name. Its client sends the bytes straight to the remote storage, so no worker leases it; what
changes it on the server (a completion, a cancel, the reconcile pass's expiry) first *claims*
it: a lease in the row's lease fields, by the database's clock, so that two of them never act
on one upload at once. Each end matches the claim's holder. :class:`queued_storage.ledger.Ledger`
inherits these; the table is :data:`queued_storage.machine.TRANSITIONS`.
"""

from __future__ import annotations

import datetime

from django.db.models import Q

from queued_storage import clock
from queued_storage.machine import TRANSITIONS, Machine, Row
from queued_storage.models import State, StoredFile
from queued_storage.state import FileState

__all__ = ["DirectTransitions"]


def _free() -> Q:
    """No claim holds the row: none taken, or one that expired (the database's clock)."""
    return Q(lease_owner="") | Q(lease_expires__lt=clock.now())


class DirectTransitions(Machine):
    """A direct upload's transitions (see the module)."""

    def direct_reserve(self, name: str, *, size: int, part_size: int, owner: str) -> bool:
        """Reserve *name* for a direct upload of *size* bytes in parts of *part_size*, in one
        INSERT; ``False`` if the name is taken. No host holds it (no local copy)."""
        inserted = self._insert(
            name,
            state=State.UPLOADING,
            host="",
            size=size,
            part_size=part_size,
            local_exists=False,
            owner=owner,
        )
        found = FileState.of(State.UPLOADING, size, False)
        self._effects(TRANSITIONS["direct_reserve"], name, Row.ABSENT, inserted, found)
        return inserted

    def direct_opened(self, name: str, upload_id: str) -> bool:
        """Record the multipart upload opened for the reservation."""
        return self._transition(
            "direct_opened",
            name,
            {"upload_id": upload_id, "updated": clock.now()},
            where={"upload_id": ""},
        )

    def direct_declare(self, row: StoredFile, parts: list[list[int | str]]) -> bool:
        """Record the parts' declared checksums ``[number, "", checksum, size]`` (all of them,
        the row's and the new ones), matching the row as read: ``False`` when another request
        changed it meanwhile (read it again). Marks the upload active (``updated``)."""
        return self._transition(
            "direct_declare", row.name, {"parts": parts, "updated": clock.now()}, row=row
        )

    def direct_claim(
        self,
        name: str,
        owner: str,
        seconds: float,
        *,
        updated: datetime.datetime | None = None,
    ) -> StoredFile | None:
        """Claim the upload for *owner* for *seconds*; the row as claimed, or ``None`` when
        another claim holds it (or the row is not ``uploading``; with *updated*, the row's
        clock as a caller read it: the row changed since)."""
        fields = {"lease_owner": owner, "lease_expires": clock.now(seconds), "updated": clock.now()}
        where = None if updated is None else {"updated": updated}
        if not self._transition("direct_claim", name, fields, where=where, condition=_free()):
            return None
        return self.row(name)

    def direct_unclaim(self, name: str, owner: str) -> bool:
        """End *owner*'s claim, the upload going on (parts missing, the remote did not answer)."""
        return self._transition(
            "direct_unclaim",
            name,
            {"lease_owner": "", "lease_expires": None, "updated": clock.now()},
            where={"lease_owner": owner},
        )

    def direct_remote(
        self, name: str, owner: str, *, size: int, checksum: str, algorithm: str
    ) -> bool:
        """The verified object: ``remote``, served by the remote storage (no local copy)."""
        now = clock.now()
        fields = {
            "state": State.REMOTE,
            "size": size,
            "bytes_done": size,
            "checksum": checksum,
            "checksum_algorithm": algorithm,
            "last_error": "",
            "lease_owner": "",
            "lease_expires": None,
            "upload_id": "",
            "parts": [],
            "transferred": now,
            "updated": now,
        }
        found = FileState.of(State.REMOTE, size, False)
        return self._transition(
            "direct_remote", name, fields, where={"lease_owner": owner}, found=found
        )

    def direct_refused(self, name: str, owner: str) -> bool:
        """The completion under *owner*'s claim found the upload wrong: the row goes, the name
        is free (nothing was recorded ``remote``; the caller removed what S3 held)."""
        return self._transition("direct_refused", name, None, where={"lease_owner": owner})

    def direct_cancel(self, name: str, owner: str) -> bool:
        """Its owner gave the upload up (under *owner*'s claim): the row goes."""
        return self._transition("direct_cancel", name, None, where={"lease_owner": owner})

    def direct_expired(self, name: str, owner: str) -> bool:
        """Left alone too long (the reconcile pass, under *owner*'s claim): the row goes."""
        return self._transition("direct_expired", name, None, where={"lease_owner": owner})
