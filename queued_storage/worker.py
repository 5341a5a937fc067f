"""Running one transfer: the lease, the engine, the outcome and the retry policy.

Plain Python, no Celery: the tasks (``tasks.py``) call :func:`run_transfer`; a retry is
recorded in the ledger (``retry_at``, :class:`RetryLater` says so) and sent when it is due by
the workers' watch (``reconcile.watch``). The policy: lease the ledger row (single flight), call
the engine, record ``remote`` only after verification (the ledger publishes it), send the
signal, and only then delete the local copy. After an error, by its kind
(``exceptions.py``):

* **infrastructure** (:class:`InfrastructureError`: connection refused or cut, timeouts, 5xx,
  throttling, a bucket that does not exist; and a worker lost while it held the lease, found
  at the takeover): back to
  ``pending``, spending no budget. The run of such failures starts at the first
  (``StoredFile.retrying_since``); each retry waits as long as the run has lasted, at least
  ``RETRY_DELAY`` and at most ``RETRY_MAX_DELAY`` (:func:`outage_backoff`), so the attempts
  thin out exponentially; the first failure ``RETRY_FOR`` seconds or more after the run began
  makes the file ``failed``;
* **about the file** (any other transient error: a checksum mismatch, a hook asking to retry,
  an unknown error): counted in ``attempts``; back to ``pending`` with an exponential
  :func:`backoff` until the ``RETRIES + 1``-th, which makes it ``failed``. It ends a run of
  infrastructure failures (the remote answered);
* **permanent**: ``failed`` at once (counted).

A success ends the run too. So an outage, or workers killed again and again, spends nothing of
a healthy file's budget, and a file goes ``failed`` at the latest ``RETRY_FOR`` plus one
backoff (``RETRY_MAX_DELAY``) plus one attempt after its infrastructure began to fail.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable

from django.core.files.storage import Storage
from django.db import connections

from queued_storage import clock, quarantine
from queued_storage.batching import in_parallel, lease_companions
from queued_storage.conf import settings
from queued_storage.exceptions import (
    BadHookResult,
    ChecksumMismatch,
    InfrastructureError,
    LocalFileMissing,
    PermanentTransferError,
    TransferError,
    TransientTransferError,
)
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.processing import run_processors
from queued_storage.signals import file_transferred, transfer_failed
from queued_storage.state import FileState
from queued_storage.storage import QueuedStorage, get_queued_storage
from queued_storage.transfer import (
    EngineConfig,
    Part,
    Resume,
    TransferResult,
    abort_open_upload,
    classify_error,
    delete_remote,
    remote_exists,
    transfer_file,
)

__all__ = [
    "Heartbeat",
    "LedgerCheckpoint",
    "Outcome",
    "RetryLater",
    "backoff",
    "outage_backoff",
    "retried_for",
    "run_transfer",
]

logger = logging.getLogger(__name__)


class Outcome(str, enum.Enum):
    TRANSFERRED = "transferred"
    ALREADY_REMOTE = "already-remote"
    GONE = "gone"
    LOST_LEASE = "lost-lease"
    FAILED = "failed"
    REJECTED = "rejected"


class RetryLater(Exception):
    """The transfer is to run again in *countdown* seconds: a retry the ledger holds
    (``retry_at``: the workers' watch and the reconcile pass send it when it is due), or
    another worker's live lease (*leased*: the watch takes it back if it expires)."""

    def __init__(self, countdown: float, reason: str, *, leased: bool = False) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.leased = leased


def backoff(attempt: int) -> float:
    """Delay after the file's *attempt*-th error about itself: exponential, capped, with jitter
    (half to full)."""
    delay = min(settings.RETRY_MAX_DELAY, settings.RETRY_DELAY * (2 ** max(0, attempt - 1)))
    return float(delay / 2 + random.uniform(0, delay / 2))


def outage_backoff(elapsed: float) -> float:
    """Delay after an infrastructure failure, *elapsed* seconds into the run of them: as long
    as the run has lasted, at least ``RETRY_DELAY``, at most ``RETRY_MAX_DELAY``, with jitter
    (half to full). Waiting as long as one has already waited thins the attempts out
    exponentially without counting them; ``reconcile.overdue`` reads the same bound back
    from the row (``updated - retrying_since``)."""
    delay = min(settings.RETRY_MAX_DELAY, max(settings.RETRY_DELAY, elapsed))
    return float(delay / 2 + random.uniform(0, delay / 2))


class Heartbeat:
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
        leased: FileState | None = None,
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
            ledger = self.storage.ledger
            if not ledger.renew(self.name, self.owner, seconds, self.done, self.total, self.leased):
                self.active = False  # the lease was lost: recording the outcome finds that out
                return
            self.renewed = time.monotonic()
            self.leased = None

    def __enter__(self) -> Heartbeat:
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
        self._beats: set[Heartbeat] = set()
        self._pid = 0

    def add(self, beat: Heartbeat) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._beats = set()
                thread = threading.Thread(
                    target=self._run, name="queued-storage-leases", daemon=True
                )
                thread.start()
            self._beats.add(beat)

    def remove(self, beat: Heartbeat) -> None:
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
                    logger.warning("could not renew the lease on %r", beat.name, exc_info=True)
                    connections.close_all()  # this thread's own; a fresh one next tick


_keeper = _LeaseKeeper()


class LedgerCheckpoint:
    """Writes the open multipart upload and each finished part to the leased ledger row."""

    def __init__(self, ledger: Ledger, name: str, owner: str, resume: Resume | None) -> None:
        self.ledger, self.name, self.owner = ledger, name, owner
        self.parts: list[list[int | str]] = (
            [[p.number, p.etag, p.digest, p.size] for p in resume.parts] if resume else []
        )

    def begin(self, upload_id: str, part_size: int, source: str) -> None:
        self.parts = []
        self.ledger.record_upload(
            self.name, self.owner, upload_id=upload_id, part_size=part_size, source=source
        )

    def part(self, part: Part) -> None:
        self.parts.append([part.number, part.etag, part.digest, part.size])
        self.ledger.record_parts(self.name, self.owner, self.parts)

    def end(self) -> None:
        """The upload is complete (or aborted): nothing left to resume."""


def _resume_of(row: StoredFile) -> Resume | None:
    if not row.upload_id or not row.part_size:
        return None
    parts = [Part(int(n), str(etag), str(digest), int(size)) for n, etag, digest, size in row.parts]
    return Resume(upload_id=row.upload_id, part_size=row.part_size, source=row.source, parts=parts)


def _drop_open_upload(storage: QueuedStorage, name: str) -> None:
    """Abort the file's open multipart upload, if the ledger knows one (best effort)."""
    row = storage.ledger.row(name)
    if row is not None and row.upload_id and abort_open_upload(storage.remote, name, row.upload_id):
        storage.ledger.clear_upload(name)


def _discard_remote(storage: QueuedStorage, name: str) -> None:
    try:
        delete_remote(storage.remote, name)
    except Exception:
        logger.error(
            "%r was deleted during its transfer, and its remote copy could not be removed; "
            "delete it by hand",
            name,
            exc_info=True,
        )


def _fail(
    storage: QueuedStorage,
    name: str,
    owner: str,
    error: TransferError,
    *,
    counted: bool = True,
    reason: str | None = None,
) -> Outcome:
    """``failed`` with *reason* (else the error's text); *counted*: an error about the file."""
    reason = reason or str(error)
    _drop_open_upload(storage, name)
    storage.ledger.fail(name, owner, reason, counted=counted)
    logger.error("transfer of %r failed for good: %s", name, reason)
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


def retried_for(row: StoredFile, now: datetime.datetime | None = None) -> float:
    """Seconds from the start of the row's run of transient failures to *now* (default: the
    database's time, read now); 0 when none is running, never negative (a clock read before
    the run began). The one measure of the ``QUEUED_STORAGE_RETRY_FOR`` budget, for the worker
    and the reconcile pass; *now* is always the database's time (``retrying_since`` is)."""
    if row.retrying_since is None:
        return 0.0
    now = now or clock.read(StoredFile.db())
    return max(0.0, (now - row.retrying_since).total_seconds())


def _give_up(
    storage: QueuedStorage, name: str, owner: str, error: TransferError, row: StoredFile
) -> Outcome:
    """``failed`` after a run of infrastructure failures that outlasted ``RETRY_FOR``."""
    since = row.retrying_since.isoformat(" ", "seconds") if row.retrying_since else "now"
    reason = (
        f"{error} Gave up: transfers of {name!r} have failed on the infrastructure (remote "
        f"storage, network or workers) since {since}, longer than QUEUED_STORAGE_RETRY_FOR "
        f"({settings.RETRY_FOR:g} s). It is served from its local copy; once the cause is "
        "fixed, retry it with storage.transfer(name) or `manage.py queued_storage_reconcile "
        "--failed`."
    )
    return _fail(storage, name, owner, error, counted=False, reason=reason)


#: A django-queued-storage ``Transfer.transfer(name, local, remote)`` hook.
TransferHook = Callable[[str, Storage, Storage], object]


def _run_hook(hook: TransferHook, storage: QueuedStorage, name: str) -> TransferResult:
    """Run a task's own ``transfer(name, local, remote)`` in place of the engine, then check
    what it claims: the remote object must exist with the local copy's size."""
    owner = getattr(getattr(hook, "__self__", None), "__class__", type(hook))
    label = f"{owner.__module__}.{owner.__qualname__}.transfer()"
    try:
        size = storage.local.size(name)
    except FileNotFoundError as err:
        raise LocalFileMissing(
            f"The local copy of {name!r} is missing, so {label} cannot send it.", name=name
        ) from err
    try:
        done = hook(name, storage.local, storage.remote)
    except Exception as err:
        raise classify_error(err, name) from err
    if done is False:
        raise TransientTransferError(f"{label} returned False for {name!r}; retried.", name=name)
    if done is not True:
        raise BadHookResult(
            f"{label} returned {done!r} for {name!r}: it must return True (the remote holds the "
            "file) or False (retry later). Fix the task and retry with storage.transfer(name).",
            name=name,
        )
    if not remote_exists(storage.remote, name) or storage.remote.size(name) != size:
        raise ChecksumMismatch(
            f"{label} returned True, but the remote storage does not hold {name!r} with the "
            f"local copy's {size} bytes; retried.",
            name=name,
        )
    return TransferResult(size=size, checksum="", algorithm="hook")


def run_transfer(
    alias: str,
    name: str,
    *,
    owner: str | None = None,
    delete_local: bool | None = None,
    hook: TransferHook | None = None,
) -> Outcome:
    """Transfer one file, exactly the policy the Celery task applies; no Celery needed.

    Returns what happened. Raises :class:`RetryLater` when the task should run again later
    (a transient error within its bound, see the module docstring, or another worker holding
    the lease), and :class:`~queued_storage.exceptions.BadHookResult` (a ``ValueError``) after
    recording ``failed`` when *hook* returned neither ``True`` nor ``False``. *hook*: a task's
    own ``transfer(name, local, remote)``, run in place of the engine and then checked.
    """
    storage = get_queued_storage(alias)
    ledger = storage.ledger
    owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    lease = ledger.lease(name, owner, settings.LEASE_TIMEOUT)
    row = lease.row
    if not lease.acquired:
        if row is None:
            return Outcome.GONE  # deleted (or never saved): nothing to bring back
        if row.state == State.REMOTE:
            ledger.republish(name, row)  # as the lease read it (a batch's file, say)
            return Outcome.ALREADY_REMOTE
        if row.state == State.FAILED:
            return Outcome.FAILED  # retried on request only (storage.transfer or reconcile)
        # Another worker holds the lease: come back when it would have expired (by the
        # database's clock, as the lease is measured).
        remaining = settings.LEASE_TIMEOUT
        if row.lease_expires is not None and lease.now is not None:
            remaining = max(1.0, (row.lease_expires - lease.now).total_seconds() + 1)
        raise RetryLater(
            remaining, f"{name!r} is being transferred by {row.lease_owner}", leased=True
        )
    if row is None:
        return Outcome.GONE  # deleted between taking the lease and reading the row
    # The database's time of the lease (the take wrote it), and the monotonic clock from it:
    # the retry budget is measured without this host's wall clock.
    job = _Leased(row, time.monotonic())
    if lease.took_over and retried_for(row, job.leased_at) >= settings.RETRY_FOR:
        # Its workers keep dying (a file that kills them?): a lost worker is a transient
        # failure, bounded by time like the others.
        return _give_up(storage, name, owner, InfrastructureError(row.last_error, name=name), row)
    if storage.processors:
        quarantine.restore(storage.local, storage.alias, name)  # released, or a worker died
    if storage.processors and row.processed is None:
        try:
            if run_processors(storage, row, owner) is not None:
                return Outcome.REJECTED
        except TransferError as err:
            return _after_error(storage, owner, job, err)
    if hook is None and not lease.took_over and not storage.delayed and not storage.processors:
        batch = _lease_batch(storage, row, owner)
        if batch:
            return _run_batch(storage, owner, [job, *batch], delete_local)
    job.started = time.monotonic()
    try:
        with Heartbeat(storage, name, owner, FileState.from_row(row)) as beat:
            if hook is not None:
                result = _run_hook(hook, storage, name)
            else:
                result = _engine(storage, owner, job, beat)
    except TransferError as err:
        return _after_error(storage, owner, job, err)
    return _after_success(storage, owner, job, result, delete_local)


def _lease_batch(storage: QueuedStorage, row: StoredFile, owner: str) -> list[_Leased]:
    now = time.monotonic()
    return [_Leased(leased, now) for leased in lease_companions(storage, row, owner)]


def _run_batch(
    storage: QueuedStorage, owner: str, jobs: list[_Leased], delete_local: bool | None
) -> Outcome:
    """Send a batch of leased small files in parallel (:mod:`queued_storage.batching`), and
    record each one's outcome as it ends, exactly as alone; the first job's outcome is the
    task's (its :class:`RetryLater` raised once all are recorded)."""
    first = jobs[0]
    outcome: list[Outcome] = []
    later: list[RetryLater] = []
    with contextlib.ExitStack() as stack:
        beats = {
            job.name: stack.enter_context(
                Heartbeat(storage, job.name, owner, FileState.from_row(job.row))
            )
            for job in jobs
        }

        def send(job: _Leased) -> TransferResult | TransferError:
            job.started = time.monotonic()
            try:
                return _engine(storage, owner, job, beats[job.name])
            except TransferError as err:
                return err

        def record(job: _Leased, result: TransferResult | TransferError) -> None:
            beats[job.name].__exit__()  # the outcome owns the row from here
            try:
                if isinstance(result, TransferError):
                    done = _after_error(storage, owner, job, result)
                else:
                    done = _after_success(storage, owner, job, result, delete_local)
            except RetryLater as retry:  # recorded in the ledger (retry_at)
                if job is first:
                    later.append(retry)
                return
            if job is first:
                outcome.append(done)

        in_parallel(jobs, send, record)
    if later:
        raise later[0]
    return outcome[0]


class _Leased:
    """A leased row on its way: the row as the lease left it (its ``updated`` is the
    database's time of the lease) and the monotonic clock read then."""

    def __init__(self, row: StoredFile, tick: float) -> None:
        self.row, self.name, self.leased_at = row, row.name, row.updated
        self.tick = self.started = tick

    def database_now(self) -> datetime.datetime:
        return self.leased_at + datetime.timedelta(seconds=time.monotonic() - self.tick)


def _engine(storage: QueuedStorage, owner: str, job: _Leased, beat: Heartbeat) -> TransferResult:
    resume = _resume_of(job.row)
    return transfer_file(
        storage.local,
        storage.remote,
        job.name,
        config=EngineConfig.from_settings(),
        progress=beat.progress,
        resume=resume,
        checkpoint=LedgerCheckpoint(storage.ledger, job.name, owner, resume),
    )


def _after_error(storage: QueuedStorage, owner: str, job: _Leased, err: TransferError) -> Outcome:
    """Record a failed transfer by the error's kind (the module docstring); raises
    :class:`RetryLater` for a retry, and *err* itself for a hook's bad result."""
    ledger, name, row = storage.ledger, job.name, job.row
    if ledger.row(name) is None:
        # Deleted while we were sending it (which is why the local copy vanished, say).
        _discard_remote(storage, name)
        return Outcome.GONE
    if isinstance(err, LocalFileMissing):
        # Recorded, so that the reconcile pass reports the loss until it is resolved.
        ledger.local_missing(name)
    if isinstance(err, BadHookResult):
        _fail(storage, name, owner, err)
        raise err  # recorded; the task fails with it too (django-queued-storage's ValueError)
    if isinstance(err, PermanentTransferError):
        return _fail(storage, name, owner, err)
    if isinstance(err, InfrastructureError):
        elapsed = retried_for(row, job.database_now())
        if elapsed >= settings.RETRY_FOR:
            return _give_up(storage, name, owner, err, row)
        delay = outage_backoff(elapsed)
        ledger.retry_later(name, owner, str(err), counted=False, delay=delay)
        logger.warning(
            "transfer of %r failed on the infrastructure (%.0f s into this run of "
            "failures, retried for up to %g s), will retry: %s",
            name,
            elapsed,
            settings.RETRY_FOR,
            err,
        )
        raise RetryLater(delay, str(err)) from err
    errors = row.attempts + 1  # errors about this file, this one included
    if errors > settings.RETRIES:
        return _fail(storage, name, owner, err)
    delay = backoff(errors)
    ledger.retry_later(name, owner, str(err), delay=delay)
    logger.warning(
        "transfer of %r failed (error %d of at most %d about the file), will retry: %s",
        name,
        errors,
        settings.RETRIES + 1,
        err,
    )
    raise RetryLater(delay, str(err)) from err


def _after_success(
    storage: QueuedStorage,
    owner: str,
    job: _Leased,
    result: TransferResult,
    delete_local: bool | None,
) -> Outcome:
    """Record a verified transfer (``remote``), announce it, then delete the local copy."""
    ledger, name = storage.ledger, job.name
    delete = delete_local if delete_local is not None else storage.delete_local
    recorded = ledger.remote(
        name,
        owner,
        size=result.size,
        checksum=result.checksum,
        algorithm=result.algorithm,
        keep_local=not delete,
    )
    if not recorded:
        if ledger.row(name) is None:
            # Deleted while we were uploading: remove what we wrote, bring nothing back.
            _discard_remote(storage, name)
            return Outcome.GONE
        return Outcome.LOST_LEASE  # another worker took over; it records the outcome
    file_transferred.send(
        sender=type(storage),
        name=name,
        local=storage.local,
        remote=storage.remote,
        alias=storage.alias,
        size=result.size,
        checksum=result.checksum,
        algorithm=result.algorithm,
        duration=time.monotonic() - job.started,
    )
    if delete:
        ledger.drop_local(name, result.size, storage.local.delete, announced=True)
    return Outcome.TRANSFERRED
