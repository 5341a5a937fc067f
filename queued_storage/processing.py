"""Running a storage's processors on a leased file's local copy: called by the worker after
the lease, before the engine.

All pass: ``processed`` with the metadata they kept (merged in order), and the transfer goes
on. One rejects: the row is ``rejected`` with its reason and the transfer ends (nothing is
sent); the processors after it do not run. One cannot decide now (:class:`Later`, its scanner
is down): an :class:`~queued_storage.exceptions.InfrastructureError`, retried on the outage
budget like a transfer. One that raises: a
:class:`~queued_storage.exceptions.PermanentTransferError` naming it (``failed``, with the
reason; retried on request), never a crash loop.
"""

from __future__ import annotations

import logging

from queued_storage import quarantine
from queued_storage.conf import settings
from queued_storage.exceptions import (
    InfrastructureError,
    LocalFileMissing,
    PermanentTransferError,
)
from queued_storage.ledger_processing import DECLARED_TYPE
from queued_storage.models import StoredFile
from queued_storage.processors import Later, Passed, Processor, Rejected, Staged
from queued_storage.signals import file_rejected
from queued_storage.storage import QueuedStorage

__all__ = ["run_processors"]

logger = logging.getLogger(__name__)


def _label(processor: Processor) -> str:
    kind = processor if isinstance(processor, type) else type(processor)
    if kind.__name__ == "function":
        return f"{processor.__module__}.{processor.__qualname__}"
    return f"{kind.__module__}.{kind.__qualname__}"


def run_processors(storage: QueuedStorage, row: StoredFile, owner: str) -> str | None:
    """Run *storage*'s processors on *row*'s local copy under *owner*'s lease; the reason
    when one rejected it (the row is then ``rejected``), ``None`` when all passed (the row is
    then processed). Raises as the module says."""
    name = row.name
    held = dict(row.metadata or {})
    staged = Staged(
        name=name,
        size=row.size or 0,
        content_type=str(held.get(DECLARED_TYPE, "")),
        owner=row.owner,
        open=lambda: storage.local.open(name, "rb"),
        alias=storage.alias,
    )
    kept: dict[str, object] = {}
    for processor in storage.processors:
        try:
            outcome = processor(staged)
        except FileNotFoundError as err:
            raise LocalFileMissing(
                f"The local copy of {name!r} is missing, so it cannot be processed.", name=name
            ) from err
        except Exception as err:
            raise PermanentTransferError(
                f"The processor {_label(processor)} failed on {name!r} "
                f"({type(err).__name__}: {err}); fix it and retry the file with "
                "storage.transfer(name).",
                name=name,
            ) from err
        if isinstance(outcome, Later):
            raise InfrastructureError(outcome.reason, name=name)
        if isinstance(outcome, Rejected):
            _reject(storage, row, owner, outcome.reason, _label(processor))
            return outcome.reason
        if not isinstance(outcome, Passed):
            raise PermanentTransferError(
                f"The processor {_label(processor)} returned {outcome!r} for {name!r}: it "
                "must return Passed, Rejected or Later (queued_storage.processors).",
                name=name,
            )
        kept.update(outcome.metadata)
    storage.ledger.processed(name, owner, {**held, **kept})
    return None


def _reject(storage: QueuedStorage, row: StoredFile, owner: str, reason: str, by: str) -> None:
    """*row* rejected: its local copy meets its ``QUEUED_STORAGE_QUARANTINE`` fate, the row
    becomes ``rejected``, :data:`file_rejected` is sent.

    Moved into a quarantine directory before the row changes: a worker that dies between the
    two leaves a leased row whose next lease brings the copy back and scans it again
    (:func:`queued_storage.quarantine.restore`). Deleted after: a worker that dies first
    leaves the copy in place, rejected, never served (the ``keep`` fate)."""
    name, fate = row.name, settings.QUARANTINE
    try:
        quarantine.move_in(storage.local, storage.alias, name)
    except OSError as err:
        raise InfrastructureError(
            f"{name!r} was rejected ({reason}) but could not be moved into "
            f"QUEUED_STORAGE_QUARANTINE ({err}); make that directory writable by the "
            "workers: the file waits, unsent, and is scanned again.",
            name=name,
        ) from err
    if not storage.ledger.reject(name, owner, reason, local=fate != "delete"):
        return  # the lease was lost meanwhile: its new owner decides
    if fate == "delete":
        storage.local.delete(name)
    logger.warning("%r rejected by %s: %s", name, by, reason)
    file_rejected.send_robust(
        sender=type(storage),
        name=name,
        alias=storage.alias,
        owner=row.owner,
        reason=reason,
        processor=by,
    )
