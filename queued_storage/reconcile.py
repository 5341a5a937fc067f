"""The reconcile pass: find every file whose transfer was lost, and say so loudly when a file is.

Plain functions, no Celery: the periodic task ``queued_storage.tasks.reconcile`` and the
management command ``queued_storage_reconcile`` both call :func:`reconcile`. A pass does, for
each queued storage and at most ``QUEUED_STORAGE_RECONCILE_BATCH`` rows of each kind:

0. ``pending`` rows whose transfer message the broker refused (``dispatch_refused``, recorded by
   the save, ``storage.transfer``, the commands and earlier passes): queued at once, not when
   they become overdue; the mark is cleared as the message goes, and put back if the broker
   refuses again. Then ``pending`` rows whose retry is due (``retry_at``, recorded by the
   worker that failed): retries wait in the ledger, not in the broker.
1. ``transferring`` rows whose lease expired (their worker died): back to ``pending``, queued
   again (the lead's resume picks up an open multipart upload). A lost worker is a transient
   failure: it starts a run of them (``retrying_since``), and a file whose run has lasted
   ``QUEUED_STORAGE_RETRY_FOR`` (its workers keep dying) becomes ``failed`` instead.
2. ``pending`` rows whose transfer is overdue (:func:`overdue`): not started
   ``QUEUED_STORAGE_RECONCILE_AFTER`` seconds (default: the lease timeout) after the latest
   moment their message was due, the save or the last attempt plus that attempt's longest
   backoff (the broker refused or lost the message, the worker was killed holding it, Redis
   was flushed): queued again through :class:`queued_storage.dispatch.Sender`, so the message
   is still ``[alias, name]``. A re-queue is a transient failure too, so a file re-queued again
   and again (it waits in a long queue) is re-queued less and less often, as retries are.
3. ``failed=True`` only: ``failed`` rows get a fresh retry budget and are queued again.
4. Stale reservations (a save that crashed before it wrote the local copy: ``pending``, no size,
   no local file, older than ``RECONCILE_AFTER``) are deleted; the save never returned, so
   nothing is lost. If the crashed save did write the file, ``adopt=True`` finishes it.
5. ``adopt=True`` only: local files that no ledger row knows (saved before the app was
   installed, or by a crashed process) and unchanged for ``RECONCILE_AFTER`` get a row and are
   queued, unless the remote already holds the name (nothing is ever overwritten):
   :mod:`queued_storage.adopt`.
6. ``remote`` rows of a ``delete_local`` storage whose local copy is still there (the worker
   died between recording ``remote`` and deleting it): the local copy is deleted.
   S3 multipart uploads of a file the ledger knows that no row can resume (a worker killed
   between opening the upload and recording it in the ledger) are aborted, unless a live lease
   holder may be about to record them: an open upload costs storage until it is aborted.
7. Data loss: a row that is not ``remote`` and whose local copy is gone. Found in steps 1-3 (and
   by the worker, which records a missing local copy), it becomes ``failed`` with the reason,
   ``transfer_failed`` is sent and an error is logged; every pass reports all such rows (error
   log, ``Report.ok`` false, non-zero exit of the command) until the file is restored and
   retried (``failed=True``) or deleted through the storage. Never silently dropped.
8. ``QUEUED_STORAGE_RECONCILE_VERIFY_SAMPLE`` ``remote`` files (default 100; 0: none) are
   verified (:func:`queued_storage.verify.verify`, a HEAD each), the next ones in a rotation
   over the ledger kept in the cache, so that successive passes cover every file; a missing
   or different remote copy is data loss, recorded as ``verify`` records it. A remote that does
   not answer ends the sample early (one chunk of unanswered questions, not the whole sample).

Each pass records when it ran, on which host and whether it was ok, in the cache
(:func:`last_run`, for ``manage.py queued_storage doctor``; :mod:`queued_storage.pass_record`).
What a pass did and found is a :class:`~queued_storage.report.Report`.

Several hosts may run passes at once: every change is a conditional ``UPDATE``/``DELETE`` that
matches only the row as this pass read it, so whoever loses a race skips the row. Work that
looks at the local disk concerns only rows whose ``host`` is this host
(``QUEUED_STORAGE_HOST``), unless ``all_hosts=True`` (a staging volume shared by hosts that
record different names). Re-queued transfers are routed like the save routed them: with the
storage option ``queue="host"`` to the queue of the host that holds the local copy.

:func:`reconcile_on_start` is the part of a pass a worker runs when it starts (steps 0 to 2
for its own host, at most ``QUEUED_STORAGE_RECONCILE_ON_START`` files, once per host however
many workers start together); :func:`watch`, the part it runs every ``WATCH_INTERVAL``
seconds after (due retries, expired leases).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Collection, Sequence

from django.db import connections
from django.utils import timezone

from queued_storage import clock, direct, tally
from queued_storage import state as read_side
from queued_storage.adopt import adopt_all
from queued_storage.cleanup import PASS_UPLOAD_PAGES, abort_orphan_uploads
from queued_storage.conf import settings
from queued_storage.dispatch import Sender
from queued_storage.exceptions import InfrastructureError, LocalFileMissing, StorageNotFound
from queued_storage.models import StoredFile, overdue
from queued_storage.pass_record import (
    PassRecord,
    last_run,
    record_run,
    remember_sample_position,
    sample_position,
)
from queued_storage.report import Report, label
from queued_storage.signals import transfer_failed
from queued_storage.storage import QueuedStorage, get_queued_storage, queued_storages
from queued_storage.transfer import abort_open_upload
from queued_storage.verify import DEFAULT_CONCURRENCY, verify_in_chunks
from queued_storage.worker import retried_for

__all__ = [
    "LOST",
    "PassRecord",
    "Report",
    "last_run",
    "overdue",
    "reconcile",
    "reconcile_on_start",
    "start_up_passes",
    "watch",
    "watch_once",
]

logger = logging.getLogger(__name__)

#: How ``last_error`` of a row whose local copy is gone begins.
LOST = "Data loss"


class _Pass:
    """One storage's share of a pass."""

    def __init__(
        self,
        storage: QueuedStorage,
        report: Report,
        sender: Sender,
        *,
        hosts: list[str] | None,
        now: datetime.datetime,
        after: float,
        batch: int,
        adopt: bool,
    ) -> None:
        self.storage, self.report, self.sender = storage, report, sender
        self.ledger = storage.ledger
        self.now, self.after, self.batch, self.adopt = now, after, batch, adopt
        self.rows = StoredFile.all_rows().of_storage(storage.alias).on_hosts(hosts)

    # -- helpers ---------------------------------------------------------------------------
    def _present(self, name: str) -> bool:
        return self.storage.local.exists(name)

    def _requeue(self, row: StoredFile, into: list[str]) -> None:
        """Send the row's transfer; when the broker refuses, undo the claim for the next pass."""
        if self.sender.send(self.storage, row.name, row.host):
            into.append(label(row))
            return
        self.ledger.unclaim(row, self.now)
        self.report.not_queued.append(label(row))

    def _lost(self, row: StoredFile) -> None:
        """Record that *row*'s local copy is gone: ``failed``, the reason, the signal, a log."""
        try:
            where = self.storage.local.path(row.name)
        except Exception:
            where = row.name
        reason = (
            f"{LOST}: {row.name!r} of storage {row.alias!r} never reached the remote storage "
            f"and its local copy {where} is gone from host {row.host!r}. Restore the file "
            "there and run `manage.py queued_storage_reconcile --failed`, or delete it "
            "through the storage."
        )
        self._fail(row, self.ledger.lost, LocalFileMissing(reason, name=row.name))

    def _give_up(self, row: StoredFile) -> None:
        """An expired lease of a file whose transient failures have outlasted ``RETRY_FOR``:
        ``failed``, the reason, the signal, a log."""
        since = row.retrying_since.isoformat(" ", "seconds") if row.retrying_since else "now"
        reason = (
            f"Gave up on {row.name!r}: the lease of {row.lease_owner} expired (its worker was "
            f"lost), and its transfers have failed on the infrastructure (remote storage, "
            f"network or workers) since {since}, longer than QUEUED_STORAGE_RETRY_FOR "
            f"({settings.RETRY_FOR:g} s). It is served from its local copy; once the cause is "
            "fixed, retry it with storage.transfer(name) or `manage.py queued_storage_reconcile "
            "--failed`."
        )
        self._fail(row, self.ledger.give_up, InfrastructureError(reason, name=row.name))

    def _fail(
        self,
        row: StoredFile,
        transition: Callable[[StoredFile, str, datetime.datetime], bool],
        error: LocalFileMissing | InfrastructureError,
    ) -> None:
        """Abort the row's open multipart upload, make the ledger *transition* to ``failed``
        and, when it was this pass that made it, report it and send ``transfer_failed``."""
        abort_open_upload(self.storage.remote, row.name, row.upload_id)
        if not transition(row, str(error), self.now):
            return
        lost = isinstance(error, LocalFileMissing)
        (self.report.newly_lost if lost else self.report.given_up).append(label(row))
        logger.error("%s", error)
        transfer_failed.send(
            sender=type(self.storage),
            name=row.name,
            alias=row.alias,
            local=self.storage.local,
            remote=self.storage.remote,
            error=error,
            reason=str(error),
        )

    # -- the kinds of work -----------------------------------------------------------------
    def refused(self) -> None:
        """``pending`` rows whose message the broker refused (``dispatch_refused``): queued
        now, without waiting until they are overdue (one partial index finds them)."""
        for row in self.rows.refused().order_by("dispatch_refused")[: self.batch]:
            if not self._present(row.name):
                self._lost(row)
            elif self.ledger.claim_refused(row, self.now):
                self._requeue(row, self.report.requeued_refused)

    def due(self) -> None:
        """``pending`` rows whose retry is due (``retry_at``): queued now. Retries wait in the
        ledger, not in the broker (the task ends when it records one)."""
        for row in self.rows.due(self.now).order_by("retry_at")[: self.batch]:
            if not self._present(row.name):
                self._lost(row)
            elif self.ledger.claim_due(row, self.now):
                self._requeue(row, self.report.requeued_due)

    def expired_leases(self) -> None:
        for row in self.rows.expired_leases(self.now).order_by("lease_expires")[: self.batch]:
            if not self._present(row.name):
                self._lost(row)
            elif retried_for(row, self.now) >= settings.RETRY_FOR:
                self._give_up(row)
            elif self.ledger.take_back(row, self.now):
                self._requeue(row, self.report.taken_over)

    def overdue(self) -> None:
        rows = self.rows.overdue(self.now, self.after)
        for row in rows.order_by("updated")[: self.batch]:
            if not self._present(row.name):
                self._lost(row)
            elif self.ledger.claim(row, self.now):
                self._requeue(row, self.report.requeued)

    def handled(self) -> int:
        """Rows this pass has re-queued, failed or found lost so far (of every storage)."""
        report = self.report
        return sum(
            len(items)
            for items in (
                report.requeued,
                report.requeued_refused,
                report.requeued_due,
                report.taken_over,
                report.given_up,
                report.newly_lost,
                report.not_queued,
            )
        )

    def failed(self) -> None:
        rows = self.rows.failed()
        for local_exists in (True, False):  # lost rows apart, so they never starve the others
            for row in rows.filter(local_exists=local_exists).order_by("updated")[: self.batch]:
                if not self._present(row.name):
                    if row.local_exists:
                        self._lost(row)
                elif self.ledger.retry_failed(row, self.now):
                    self._requeue(row, self.report.retried)

    def stale_reservations(self) -> None:
        cutoff = self.now - datetime.timedelta(seconds=self.after)
        for row in self.rows.stale_reservations(cutoff).order_by("updated")[: self.batch]:
            if self._present(row.name):
                # The save wrote the file, then crashed before recording it.
                if not self.adopt:
                    self.report.skipped.append(
                        f"{label(row)}: an interrupted save left the file; adopt it with --adopt"
                    )
                    continue
                size = self.storage.local.size(row.name)
                if self.ledger.finish_save(row, size, self.now):
                    self._requeue(row, self.report.adopted)
            elif self.ledger.drop_reservation(row):
                self.report.stale.append(label(row))
                logger.warning(
                    "removed the stale reservation of %r (storage %r): its save stopped before "
                    "writing the file",
                    row.name,
                    row.alias,
                )

    def leftover_local_copies(self) -> None:
        if not self.storage.delete_local:
            return
        cutoff = self.now - datetime.timedelta(seconds=self.after)
        rows = self.rows.local_copies_of_remote(cutoff)
        for row in rows.order_by("transferred")[: self.batch]:
            if self.ledger.drop_local(row.name, row.size, self.storage.local.delete):
                self.report.cleaned.append(label(row))


def _orphan_uploads(
    storage: QueuedStorage, report: Report, *, now: datetime.datetime, after: float, batch: int
) -> None:
    """Abort the S3 multipart uploads of this storage's files that no ledger row can resume
    (:func:`queued_storage.cleanup.orphaned`): only names the ledger knows for this storage (a
    bucket may be shared), none younger than *after* seconds, at most *batch*; the first that
    cannot be aborted ends it until the next pass."""
    done = abort_orphan_uploads(
        storage,
        older_than=after,
        max_pages=PASS_UPLOAD_PAGES,
        known_only=True,
        limit=batch,
        stop_at_failure=True,
        now=now,
    )
    for upload in done.aborted:
        report.aborted_uploads.append(f"{storage.alias}:{upload.what}")
        logger.warning(
            "aborted an open multipart upload of %r that no ledger row can resume (its "
            "worker died before recording it)",
            upload.what,
        )
    for error in done.errors:
        logger.warning("orphaned multipart uploads: %s; next pass", error)


def _expired_direct(
    storage: QueuedStorage, report: Report, *, now: datetime.datetime, batch: int
) -> None:
    """Abort the direct uploads of this storage left alone for ``QUEUED_STORAGE_DIRECT_EXPIRY``
    seconds (by the database's clock) and release their names; of every host (a direct
    upload has none), at most *batch*, oldest first."""
    rows = StoredFile.all_rows().of_storage(storage.alias).expired_direct(now).order_by("updated")
    for row in rows[:batch]:
        if direct.expire(storage, row):
            report.expired_direct.append(label(row))


def _storages(aliases: Sequence[str] | None, report: Report) -> dict[str, QueuedStorage]:
    """The storages of the pass: the ones named, else every one the ledger has work for."""
    wanted = list(dict.fromkeys(aliases)) if aliases is not None else tally.aliases_with_work()
    found: dict[str, QueuedStorage] = {}
    for alias in wanted:
        try:
            found[alias] = get_queued_storage(alias)
        except StorageNotFound as err:
            count = tally.unfinished_files([alias])
            if aliases is not None or count:
                report.errors.append(
                    f"{count} file(s) of the storage {alias!r} cannot be transferred: {err}"
                )
    return found


def reconcile(
    *,
    aliases: Sequence[str] | None = None,
    failed: bool = False,
    adopt: bool = False,
    all_hosts: bool = False,
    now: datetime.datetime | None = None,
) -> Report:
    """Run one pass (see the module docstring) and return what it did and found.

    *aliases* limits the pass to these queued storages (default: all). The result is logged:
    an info line, and an error line for data loss.

    *now* (default: the database's time, read once: leases, overdue times and retry budgets
    are measured with the database's clock) is the time of the whole pass; the age of local
    files to adopt and the record of the pass go by this host's clock (file times are).
    """
    here = now or timezone.now()
    now = now or clock.read(StoredFile.db())
    after, batch = settings.RECONCILE_AFTER, settings.RECONCILE_BATCH
    host = settings.HOST
    report = Report(host=host, staging_budget=settings.STAGING_BUDGET)
    sender = Sender()
    hosts = None if all_hosts else [host]
    selected = _storages(aliases, report)
    for storage in selected.values():
        work = _Pass(
            storage,
            report,
            sender,
            hosts=hosts,
            now=now,
            after=after,
            batch=batch,
            adopt=adopt,
        )
        work.refused()
        work.due()
        work.expired_leases()
        work.overdue()
        if failed:
            work.failed()
        work.stale_reservations()
        work.leftover_local_copies()
        _orphan_uploads(storage, report, now=now, after=after, batch=batch)
        _expired_direct(storage, report, now=now, batch=batch)
    if adopt:
        owners = selected if aliases is not None else {s.alias: s for s in queued_storages()}
        adopt_all(owners, report, sender, now=here, after=after, batch=batch)
    if hosts is not None:
        _report_elsewhere(report, selected, hosts, now, after)
    _verify_sample(report, aliases)
    _report_lost(report, aliases, batch)
    report.staging_bytes = StoredFile.waiting_bytes(host)
    report.log(logger)
    record_run(report, here)
    return report


def reconcile_on_start(*, now: datetime.datetime | None = None) -> Report | None:
    """The part of a pass a starting worker runs: this host's transfers the broker refused,
    expired leases and overdue transfers (steps 0 to 2 of the module docstring), at most
    ``RECONCILE_ON_START`` files.

    ``None`` when that setting is 0, or when a worker of this host ran it less than
    ``RECONCILE_AFTER`` seconds ago: a guard in the state cache lets one of many workers that
    start together (a deploy, a reboot) run it. Where the cache fails, each runs it, which
    costs each a few bounded queries and sends no message twice: every re-queue is a
    conditional claim of the row as read, and a claimed row is not overdue again for at least
    ``RECONCILE_AFTER``. No S3 request, no scan of the staging directory.
    """
    limit = settings.RECONCILE_ON_START
    if limit <= 0:
        return None
    host, after = settings.HOST, settings.RECONCILE_AFTER
    if not read_side.first_to_mark(settings.CACHE_PREFIX, f"reconcile-on-start:{host}", after):
        return None
    now = now or clock.read(StoredFile.db())
    report = Report(host=host, staging_budget=settings.STAGING_BUDGET)
    sender = Sender()
    for alias in StoredFile.all_rows().in_progress_on(host).aliases():
        try:
            storage = get_queued_storage(alias)
        except StorageNotFound as err:
            report.errors.append(f"the files of the storage {alias!r} cannot be transferred: {err}")
            continue
        work = _Pass(
            storage, report, sender, hosts=[host], now=now, after=after, batch=limit, adopt=False
        )
        for kind in (work.refused, work.due, work.expired_leases, work.overdue):
            work.batch = limit - work.handled()
            if work.batch <= 0:
                break
            kind()
    logger.info(
        "worker start-up on host %s: re-queued %d overdue transfer(s) and %d expired lease(s), "
        "queued %d the broker had refused and %d retries due; %d failed (workers lost for "
        "longer than RETRY_FOR), %d lost, %d not queued",
        host,
        len(report.requeued),
        len(report.taken_over),
        len(report.requeued_refused),
        len(report.requeued_due),
        len(report.given_up),
        len(report.newly_lost),
        len(report.not_queued),
    )
    for error in report.errors:
        logger.error("reconcile on start: %s", error)
    return report


def watch(
    *, aliases: Collection[str] | None = None, now: datetime.datetime | None = None
) -> Report:
    """One look of a worker's watch (:func:`watch_once`, run by ``tasks.WatchStep``) at its
    host's rows: the retries
    that are due (``retry_at``) and the leases that expired (a worker lost mid-transfer: step
    1), at most ``RECONCILE_BATCH`` rows of each kind and storage, each queued as the pass
    queues it. Two queries a storage, each on its partial index; no S3 request, no scan of the
    staging directory. What the ledger does not schedule (a message the broker refused or
    lost) is the pass's and the start-up's (steps 0 and 2). Every worker of the host runs it
    for the storages whose transfers it consumes (*aliases*; ``None``: every storage): each
    row is a conditional claim, so one of them sends it. Logged only when it queued or failed
    something."""
    host = settings.HOST
    now = now or clock.read(StoredFile.db())
    report = Report(host=host, staging_budget=settings.STAGING_BUDGET)
    sender = Sender()
    for storage in queued_storages():
        if aliases is not None and storage.alias not in aliases:
            continue
        work = _Pass(
            storage,
            report,
            sender,
            hosts=[host],
            now=now,
            after=settings.RECONCILE_AFTER,
            batch=settings.RECONCILE_BATCH,
            adopt=False,
        )
        work.due()
        work.expired_leases()
    if any(report.counts().values()):
        logger.info(
            "watch on host %s: %s",
            host,
            ", ".join(f"{k}={v}" for k, v in report.counts().items() if v),
        )
    return report


def _logged(run: Callable[[], object], what: str) -> None:
    """Run *run*; log a failure and go on; close this thread's database connections after
    (a worker's main process forks its pool processes: no connection of it may be open)."""
    try:
        run()
    except Exception:
        logger.warning(
            "the worker's %s failed; the next one (or the scheduled pass) finds what it would have",
            what,
            exc_info=True,
        )
    finally:
        connections.close_all()


def start_up_passes() -> None:
    """What a starting worker runs in a thread of its own (``tasks.py``):
    :func:`reconcile_on_start` at once; with ``WATCH_INTERVAL = 0`` (no watch) once more
    ``LEASE_TIMEOUT + RECONCILE_AFTER`` later, when the leases of a worker that died just
    before this one started have expired. A failure is logged; the scheduled passes find what
    these would have."""
    _logged(reconcile_on_start, "start-up reconcile pass")
    if settings.WATCH_INTERVAL <= 0:
        time.sleep(settings.LEASE_TIMEOUT + settings.RECONCILE_AFTER)
        _logged(reconcile_on_start, "start-up reconcile pass")


def watch_once(aliases: Collection[str] | None = None) -> None:
    """One :func:`watch` as a worker runs it every ``WATCH_INTERVAL`` seconds (``tasks.py``:
    on the worker's own timer, in the loop that also forks its pool processes, so that no fork
    happens in the middle of one): a failure is logged, the connections are closed after."""
    _logged(lambda: watch(aliases=aliases), "watch")


def _report_elsewhere(
    report: Report,
    selected: dict[str, QueuedStorage],
    hosts: list[str],
    now: datetime.datetime,
    after: float,
) -> None:
    """Count the overdue files of other hosts, which this pass leaves to their own passes."""
    rows = StoredFile.all_rows().of(selected).not_on_hosts(hosts)
    for host, count in rows.late_by_host(now, after):
        report.elsewhere[host] = count


def _report_lost(report: Report, aliases: Sequence[str] | None, batch: int) -> None:
    """Every row (of any host) that is not remote and whose local copy is gone."""
    rows = StoredFile.all_rows().lost().of(aliases)
    report.lost_total = rows.count()
    report.lost = [
        f"{row.alias}:{row.name} (host {row.host}, {row.size} bytes)"
        for row in rows.order_by("updated")[:batch]
    ]


# -- the verify sample (step 8) ---------------------------------------------------------------
#: Seconds one HEAD of the verify sample may take (no retries): a pass must not hang on S3.
VERIFY_TIMEOUT = 10.0


def _verify_sample(report: Report, aliases: Sequence[str] | None) -> None:
    """Verify the next ``RECONCILE_VERIFY_SAMPLE`` remote files of the rotation (step 8).

    The rotation's position (the last primary key verified) is kept in the cache
    (:mod:`queued_storage.pass_record`).
    """
    sample = settings.RECONCILE_VERIFY_SAMPLE
    if not sample:
        return
    rows = StoredFile.all_rows().remote().of(aliases)
    after = sample_position()
    chosen = list(rows.filter(pk__gt=after).order_by("pk")[:sample])
    if len(chosen) < sample:  # the end of the ledger: go round
        chosen += rows.filter(pk__lte=after).order_by("pk")[: sample - len(chosen)]
    if not chosen:
        return
    report.verify, report.verify_stopped = verify_in_chunks(
        chosen, chunk=DEFAULT_CONCURRENCY, timeout=VERIFY_TIMEOUT, stop_when_unanswered=True
    )
    if report.verify_stopped:
        return  # the same files again next time
    remember_sample_position(chosen[-1].pk)
