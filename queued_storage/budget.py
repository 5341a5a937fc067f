"""The staging budget: how many bytes may wait on this host for their transfer.

``QUEUED_STORAGE_STAGING_BUDGET`` bounds the bytes of local copies not yet verified remote (and
of the tus uploads being received) on one host, so that a remote storage that is down fills no
disk: a save (``QueuedStorage.save()``, through the ledger) or an upload view over the budget
gets :class:`StagingFull`. What waits is read from the kept tally (``tally.py``), never by a
scan of the ledger: a save costs the same at 10 files and 10 million.
``queued_storage.ledger`` re-exports both checks for the callers that import them from there.
"""

from __future__ import annotations

from queued_storage import tally
from queued_storage.conf import settings
from queued_storage.exceptions import StagingFull
from queued_storage.models import TusUpload, waiting_in

__all__ = ["check_staging_budget", "check_staging_budget_in_flight"]


def _waiting(host: str) -> int:
    """The bytes waiting on *host*: local copies not verified remote (the kept tally) and
    the tus uploads being received (their partial index)."""
    return waiting_in(tally.read(), host) + TusUpload.reserved_bytes(host)


def check_staging_budget(name: str, size: int | None, *, recorded: bool = False) -> None:
    """Raise :class:`StagingFull` when *size* more bytes would exceed this host's budget.

    ``QUEUED_STORAGE_STAGING_BUDGET`` bounds the bytes waiting on this host for their transfer;
    an unknown *size* (``None``) compares only what already waits (read from the kept
    tally).
    *recorded*: the file's own row is already in the ledger (counted in what waits).
    """
    budget = settings.STAGING_BUDGET
    if budget is None:
        return
    size = size or 0
    waiting = _waiting(settings.HOST)
    if recorded:
        waiting -= size
    if waiting + size > budget:
        raise StagingFull(
            f"QueuedStorage cannot stage {name!r} ({size} bytes): {waiting} of the {budget} "
            f"bytes of QUEUED_STORAGE_STAGING_BUDGET already wait on host {settings.HOST!r} "
            "for their transfer to the remote storage. Check that the transfer workers run "
            "and the remote is reachable (queued_storage_reconcile reports what waits), or "
            "raise the budget.",
            name=name,
            size=size,
            waiting=waiting,
            budget=budget,
        )


def check_staging_budget_in_flight(name: str, size: int, in_flight: int) -> None:
    """Raise :class:`StagingFull` when a body of *size* bytes, about to be received, would not
    fit this host's budget beside what waits and the *in_flight* bytes of the bodies this
    host is receiving (``queued_storage.uploads.reserve_in_flight`` counts them).

    The upload views' check before a body is read; ``save()`` checks with
    :func:`check_staging_budget`. The same reads.
    """
    budget = settings.STAGING_BUDGET
    if budget is None:
        return
    waiting = _waiting(settings.HOST)
    if waiting + in_flight + size > budget:
        raise StagingFull(
            f"QueuedStorage cannot receive {name!r} ({size} bytes): of the {budget} bytes of "
            f"QUEUED_STORAGE_STAGING_BUDGET, {waiting} wait on host {settings.HOST!r} for their "
            f"transfer to the remote storage and {in_flight} are bodies being received. Check "
            "that the transfer workers run and the remote is reachable (queued_storage_reconcile "
            "reports what waits), or raise the budget.",
            name=name,
            size=size,
            waiting=waiting + in_flight,
            budget=budget,
        )
