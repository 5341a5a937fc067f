"""Celery tasks, thin wrappers around :func:`run_transfer`, a plain function.

``run_transfer`` is the whole policy: lease the ledger row (single flight), call the engine,
record ``remote`` only after verification, publish the state, send the signal, and only then
delete the local copy. Transient errors go back to ``pending`` and ask for a retry with
exponential backoff and jitter; permanent errors and a spent budget end in ``failed``.

Task messages carry two plain strings: the storage alias and the file name.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from typing import Any

from celery import shared_task
from django.db import connections
from django.utils import timezone

from queued_storage import state as file_state
from queued_storage.conf import settings
from queued_storage.exceptions import LocalFileMissing, PermanentTransferError, TransferError
from queued_storage.models import State, StoredFile
from queued_storage.signals import file_transferred, transfer_failed
from queued_storage.storage import QueuedStorage, get_queued_storage
from queued_storage.transfer import (
    EngineConfig,
    Part,
    Resume,
    abort_open_upload,
    delete_remote,
    transfer_file,
)

__all__ = [
    "Outcome",
    "RetryLater",
    "Transfer",
    "TransferAndDelete",
    "backoff",
    "dispatch",
    "reconcile",
    "run_transfer",
    "transfer",
]

logger = logging.getLogger("queued_storage")


class Outcome(str, enum.Enum):
    TRANSFERRED = "transferred"
    ALREADY_REMOTE = "already-remote"
    GONE = "gone"
    LOST_LEASE = "lost-lease"
    FAILED = "failed"


class RetryLater(Exception):
    """Ask the task layer to run this transfer again after *countdown* seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


def backoff(attempt: int) -> float:
    """Delay before attempt ``attempt + 1``: exponential, capped, with jitter (half to full)."""
    delay = min(settings.RETRY_MAX_DELAY, settings.RETRY_DELAY * (2 ** max(0, attempt - 1)))
    return float(delay / 2 + random.uniform(0, delay / 2))


class _Heartbeat:
    """Keeps one transfer's lease and progress fresh while the engine runs.

    The engine reports progress as plain numbers; once a second the process's lease keeper
    (one thread for every transfer of the process, started on first use) writes them to the
    ledger, renewing the lease with them, and to the cache, and publishes ``transferring``,
    so progress is visible at a bounded rate however fast the parts finish. A transfer that
    ends within its first second (a small file) costs neither a thread nor a write.
    """

    def __init__(
        self,
        storage: QueuedStorage,
        name: str,
        owner: str,
        leased: file_state.FileState | None = None,
    ) -> None:
        self.storage, self.name, self.owner = storage, name, owner
        self.leased = leased  # published at the first renewal: "transferring", for status pages
        self.done = 0
        self.total = 0
        self.renewed = time.monotonic()
        self.active = True
        self.lock = threading.Lock()

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def beat(self, seconds: float) -> None:
        """Renew the lease with the progress so far; called by the keeper, never concurrently
        with :meth:`__exit__` (after which the transfer's outcome owns the row and the cache)."""
        with self.lock:
            if not self.active:
                return
            alias, prefix = self.storage.alias, self.storage.cache_prefix
            if not StoredFile.renew_lease(alias, self.name, self.owner, seconds, self.done):
                self.active = False  # the lease was lost: recording the outcome finds that out
                return
            self.renewed = time.monotonic()
            if self.leased is not None:
                file_state.publish(prefix, alias, self.name, self.leased)
                self.leased = None
            file_state.publish_progress(prefix, alias, self.name, self.done, self.total)

    def __enter__(self) -> _Heartbeat:
        _keeper.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.active = False
        _keeper.remove(self)


class _LeaseKeeper:
    """One daemon thread per process that renews the leases of the transfers running in it.

    Started on first use and again after a fork (Celery's prefork children), so no thread
    crosses a fork. Its database connection is its own and stays open between transfers; a
    failing renewal is logged and tried again at the next tick.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beats: set[_Heartbeat] = set()
        self._pid = 0

    def add(self, beat: _Heartbeat) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._beats = set()
                thread = threading.Thread(
                    target=self._run, name="queued-storage-leases", daemon=True
                )
                thread.start()
            self._beats.add(beat)

    def remove(self, beat: _Heartbeat) -> None:
        with self._lock:
            self._beats.discard(beat)

    def _run(self) -> None:
        while True:
            seconds = settings.LEASE_TIMEOUT
            interval = min(1.0, seconds / 4)
            time.sleep(interval)
            with self._lock:
                beats = list(self._beats)
            now = time.monotonic()
            for beat in beats:
                if now - beat.renewed < interval:
                    continue  # renewed (or taken) less than an interval ago
                try:
                    beat.beat(seconds)
                except Exception:
                    logger.warning(
                        "queued_storage: could not renew the lease on %r", beat.name, exc_info=True
                    )
                    connections.close_all()  # this thread's own; a fresh one next tick


_keeper = _LeaseKeeper()


class _LedgerCheckpoint:
    """Writes the open multipart upload and each finished part to the leased ledger row."""

    def __init__(self, alias: str, name: str, owner: str, resume: Resume | None) -> None:
        self.alias, self.name, self.owner = alias, name, owner
        self.parts: list[list[Any]] = (
            [[p.number, p.etag, p.digest, p.size] for p in resume.parts] if resume else []
        )

    def begin(self, upload_id: str, part_size: int, source: str) -> None:
        self.parts = []
        StoredFile.record_upload(
            self.alias,
            self.name,
            self.owner,
            upload_id=upload_id,
            part_size=part_size,
            source=source,
        )

    def part(self, part: Part) -> None:
        self.parts.append([part.number, part.etag, part.digest, part.size])
        StoredFile.record_parts(self.alias, self.name, self.owner, self.parts)

    def end(self) -> None:
        """The upload is complete (or aborted): nothing left to resume."""


def _resume_of(row: StoredFile) -> Resume | None:
    if not row.upload_id or not row.part_size:
        return None
    parts = [Part(int(n), str(etag), str(digest), int(size)) for n, etag, digest, size in row.parts]
    return Resume(upload_id=row.upload_id, part_size=row.part_size, source=row.source, parts=parts)


def _abort_upload(storage: QueuedStorage, name: str) -> None:
    """Abort the file's open multipart upload, if the ledger knows one (best effort)."""
    row = StoredFile.get_row(storage.alias, name)
    if row is not None and row.upload_id and abort_open_upload(storage.remote, name, row.upload_id):
        StoredFile.clear_upload(storage.alias, name)


def _publish_row(storage: QueuedStorage, name: str) -> None:
    row = StoredFile.get_row(storage.alias, name)
    if row is not None:
        file_state.publish(
            storage.cache_prefix, storage.alias, name, file_state.FileState.from_row(row)
        )


def _discard_remote(storage: QueuedStorage, name: str) -> None:
    try:
        delete_remote(storage.remote, name)
    except Exception:
        logger.error(
            "queued_storage: %r was deleted during its transfer, and its remote copy could not "
            "be removed; delete it by hand",
            name,
            exc_info=True,
        )


def _fail(storage: QueuedStorage, name: str, owner: str, error: TransferError) -> Outcome:
    reason = str(error)
    _abort_upload(storage, name)
    StoredFile.release(storage.alias, name, owner, state=State.FAILED, error=reason)
    _publish_row(storage, name)
    logger.error("queued_storage: transfer of %r failed for good: %s", name, reason)
    transfer_failed.send(
        sender=type(storage),
        name=name,
        alias=storage.alias,
        local=storage.local,
        remote=storage.remote,
        error=error,
        reason=reason,
    )
    return Outcome.FAILED


def run_transfer(
    alias: str, name: str, *, owner: str | None = None, delete_local: bool | None = None
) -> Outcome:
    """Transfer one file, exactly the policy the Celery task applies; no Celery needed.

    Returns what happened. Raises :class:`RetryLater` when the task should run again later
    (a transient error within budget, or another worker holding the lease).
    """
    storage = get_queued_storage(alias)
    owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    lease = StoredFile.acquire_lease(alias, name, owner, settings.LEASE_TIMEOUT)
    row = lease.row
    if not lease.acquired:
        if row is None:
            return Outcome.GONE  # deleted (or never saved): nothing to bring back
        if row.state == State.REMOTE:
            _publish_row(storage, name)
            return Outcome.ALREADY_REMOTE
        if row.state == State.FAILED:
            return Outcome.FAILED  # retried on request only (storage.transfer or reconcile)
        # Another worker holds the lease: come back when it would have expired.
        remaining = settings.LEASE_TIMEOUT
        if row.lease_expires is not None:
            remaining = max(1.0, (row.lease_expires - timezone.now()).total_seconds() + 1)
        raise RetryLater(remaining, f"{name!r} is being transferred by {row.lease_owner}")
    if row is None:
        return Outcome.GONE  # deleted between taking the lease and reading the row
    resume = _resume_of(row)
    try:
        with _Heartbeat(storage, name, owner, file_state.FileState.from_row(row)) as beat:
            result = transfer_file(
                storage.local,
                storage.remote,
                name,
                config=EngineConfig.from_settings(),
                progress=beat.progress,
                resume=resume,
                checkpoint=_LedgerCheckpoint(alias, name, owner, resume),
            )
    except TransferError as err:
        if StoredFile.get_row(alias, name) is None:
            # Deleted while we were sending it (which is why the local copy vanished, say).
            _discard_remote(storage, name)
            return Outcome.GONE
        if isinstance(err, LocalFileMissing):
            # Recorded, so that the reconcile pass reports the loss until it is resolved.
            StoredFile.mark_local_deleted(alias, name)
        if isinstance(err, PermanentTransferError):
            return _fail(storage, name, owner, err)
        if row.attempts > settings.RETRIES:
            return _fail(storage, name, owner, err)
        StoredFile.release(alias, name, owner, state=State.PENDING, error=str(err))
        _publish_row(storage, name)
        logger.warning(
            "queued_storage: transfer of %r failed (attempt %d of %d), will retry: %s",
            name,
            row.attempts,
            settings.RETRIES + 1,
            err,
        )
        raise RetryLater(backoff(row.attempts), str(err)) from err

    recorded = StoredFile.mark_remote(
        alias, name, owner, size=result.size, checksum=result.checksum, algorithm=result.algorithm
    )
    if not recorded:
        if StoredFile.get_row(alias, name) is None:
            # Deleted while we were uploading: remove what we wrote, bring nothing back.
            _discard_remote(storage, name)
            return Outcome.GONE
        return Outcome.LOST_LEASE  # another worker took over; it records the outcome
    delete = delete_local if delete_local is not None else storage.delete_local
    # One cache write: "remote", and whether the local copy is to stay (invariant 2: it is
    # deleted only once the ledger and the cache say "remote").
    file_state.publish(
        storage.cache_prefix,
        alias,
        name,
        file_state.FileState(State.REMOTE, result.size, not delete),
    )
    file_transferred.send(
        sender=type(storage),
        name=name,
        local=storage.local,
        remote=storage.remote,
        alias=alias,
        size=result.size,
        checksum=result.checksum,
        algorithm=result.algorithm,
    )
    if delete:
        storage.local.delete(name)
        StoredFile.mark_local_deleted(alias, name)
    return Outcome.TRANSFERRED


def _run_task(task: Any, alias: str, name: str, delete_local: bool | None) -> str:
    try:
        return run_transfer(alias, name, delete_local=delete_local).value
    except RetryLater as later:
        raise task.retry(countdown=later.countdown, max_retries=None) from later


_TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "max_retries": None,
}


@shared_task(name="queued_storage.tasks.transfer", **_TASK_OPTIONS)
def transfer(self: Any, alias: str, name: str) -> str:
    """Transfer *name* of the queued storage *alias*, with the storage's ``delete_local``."""
    return _run_task(self, alias, name, None)


@shared_task(name="queued_storage.tasks.TransferAndDelete", **_TASK_OPTIONS)
def TransferAndDelete(self: Any, alias: str, name: str) -> str:
    """django-queued-storage's name: transfer, then delete the local copy."""
    return _run_task(self, alias, name, True)


#: django-queued-storage's name for the keep-the-local-copy task.
Transfer = transfer


def dispatch(task: Any, alias: str, name: str, *, queue: str | None = None) -> Any:
    """Send the transfer message; never raise: a refused message leaves the file ``pending``.

    Returns the ``AsyncResult``, or ``None`` when the broker refused the message.
    """
    options: dict[str, Any] = {}
    if queue:
        options["queue"] = queue
    try:
        return task.apply_async(args=[alias, name], **options)
    except Exception as err:
        logger.warning(
            "queued_storage: could not queue the transfer of %r (%s: %s); it stays pending "
            "and is served locally until the reconcile pass or storage.transfer(name) queues it",
            name,
            type(err).__name__,
            redact(str(err)),
        )
        return None


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")


def redact(text: str) -> str:
    """Hide the password of any URL in *text* (broker errors may quote the broker URL)."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


# --- the reconcile pass ---------------------------------------------------------------------
@shared_task(name="queued_storage.tasks.reconcile", ignore_result=True)
def reconcile(failed: bool = False, adopt: bool = False, all_hosts: bool = False) -> dict[str, int]:
    """One reconcile pass on the worker's host (schedule it with Celery beat; see the README).

    Returns the pass's counts. Data loss is logged as an error by the pass itself; the task
    does not fail for it, so that the schedule keeps running.
    """
    from queued_storage.reconcile import reconcile as run_pass

    return run_pass(failed=failed, adopt=adopt, all_hosts=all_hosts).counts()
