"""What operators do to ledger rows, shared by the admin's actions and ``manage.py
queued_storage`` (whose subcommands choose the rows in :mod:`queued_storage.jobs`).

Every change of a row goes through the ledger (:mod:`queued_storage.ledger`) and every message
through :class:`queued_storage.dispatch.Sender`, as a save sends it (``[alias, name]``):

* :func:`transfer_rows`: pending or failed files get a fresh budget and a transfer message;
* :func:`retry_failed_rows`: failed files whose local copy is there, the same;
* :func:`drop_verified_local_copies`: the local copies of ``remote`` files whose remote copy
  verifies right then (:func:`queued_storage.verify.verify`), deleted by
  :meth:`~queued_storage.ledger.Ledger.drop_local` as the worker deletes them;
* :func:`transfer_here`: one transfer in this process, through the worker's own code path
  (:func:`queued_storage.worker.run_transfer`: lease, engine, outcome, retry policy);
* :func:`status` (:mod:`queued_storage.status`): counts, bytes, what is in flight and what
  failed, as plain data;
* :func:`cleanup_local_copies`: the local copies of files remote for a while, deleted as
  :func:`drop_verified_local_copies` does (the rest of the clean-up, of what killed processes
  and abandoned uploads left behind, is :mod:`queued_storage.cleanup`'s).

``human_bytes`` and ``human_age`` are re-exported from :mod:`queued_storage.formatting`.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from django.utils import timezone

from queued_storage import clock, direct, quarantine
from queued_storage import state as read_side
from queued_storage.cleanup import (  # re-exported: the clean-up's home is cleanup.py
    Cleaned,
    cleanup_spool,
    cleanup_tus,
    cleanup_tus_orphans,
    cleanup_uploads,
)
from queued_storage.conf import settings
from queued_storage.dispatch import Sender, redact
from queued_storage.exceptions import StorageNotFound
from queued_storage.formatting import human_age, human_bytes  # re-exported
from queued_storage.models import State, StoredFile, keyset_pages
from queued_storage.status import status  # re-exported
from queued_storage.storage import QueuedStorage, get_queued_storage
from queued_storage.verify import (  # merge_reports, verify_in_chunks: re-exported
    Problem,
    VerifyReport,
    label,
    merge_reports,
    verify,
    verify_in_chunks,
)
from queued_storage.worker import Outcome, RetryLater, TransferHook, run_transfer

__all__ = [
    "EXAMPLES",
    "AbortedDirect",
    "Cleaned",
    "Examples",
    "LocalCopies",
    "LocalCopiesTotal",
    "Queued",
    "Released",
    "Retried",
    "Sender",
    "Storages",
    "TransferHere",
    "abort_direct_rows",
    "cleanup_local_copies",
    "cleanup_spool",
    "cleanup_tus",
    "cleanup_tus_orphans",
    "cleanup_uploads",
    "counted",
    "drop_verified_local_copies",
    "human_age",
    "human_bytes",
    "merge_reports",
    "pages",
    "release_rows",
    "retry_failed_rows",
    "status",
    "transfer_here",
    "transfer_rows",
    "verify_in_chunks",
]

logger = logging.getLogger(__name__)


class Storages:
    """The queued storages of an operation, resolved once per alias (``None``: unknown here)."""

    def __init__(self) -> None:
        self.found: dict[str, QueuedStorage | None] = {}

    def get(self, alias: str) -> QueuedStorage | None:
        if alias not in self.found:
            try:
                self.found[alias] = get_queued_storage(alias)
            except StorageNotFound:
                self.found[alias] = None
        return self.found[alias]


#: Keyset pagination of ledger rows (its home is ``models.keyset_pages``).
pages = keyset_pages


def counted(parts: Iterable[tuple[int, str]]) -> str:
    """``"; "``-joined texts whose count is not zero, ``{n}`` filled in."""
    return "; ".join(text.format(n=n) for n, text in parts if n)


# -- queueing --------------------------------------------------------------------------------
@dataclass
class Queued:
    """What :func:`transfer_rows` did."""

    queued: int = 0
    refused: int = 0
    skipped: int = 0
    unknown: int = 0

    def message(self) -> str:
        return counted(
            [
                (self.queued, "queued the transfer of {n} file(s)"),
                (
                    self.refused,
                    "{n} not queued: the broker refused (they stay pending; the reconcile pass "
                    "queues them)",
                ),
                (self.skipped, "{n} skipped (transferring or remote already)"),
                (self.unknown, "{n} skipped (a storage this process does not know)"),
            ]
        )


def transfer_rows(rows: Iterable[StoredFile]) -> Queued:
    """Queue the transfer of every pending or failed row, with a fresh budget (what
    ``storage.transfer(name)`` does, without keeping a result)."""
    storages, sender, done = Storages(), Sender(), Queued()
    for row in rows:
        storage = storages.get(row.alias)
        if storage is None:
            done.unknown += 1
        elif row.state not in (State.PENDING, State.FAILED) or not storage.ledger.retry(row.name):
            done.skipped += 1  # a row that moved on meanwhile is skipped too
        elif sender.send_or_mark(storage, row.name, row.host):
            done.queued += 1
        else:
            done.refused += 1
    return done


@dataclass
class Retried:
    """What :func:`retry_failed_rows` did."""

    queued: int = 0
    refused: int = 0
    no_local: int = 0
    changed: int = 0
    skipped: int = 0

    def message(self) -> str:
        return counted(
            [
                (self.queued, "{n} failed file(s) queued again with a new retry budget"),
                (self.refused, "{n} pending again but not queued: the broker refused"),
                (
                    self.no_local,
                    "{n} not retried: the local copy is gone (restore it first, or delete "
                    "the file through its storage)",
                ),
                (self.changed, "{n} changed meanwhile (left alone)"),
                (self.skipped, "{n} skipped (not failed)"),
            ]
        )


_Done = TypeVar("_Done", bound=Retried)


def _local_copy_here_or_there(storage: QueuedStorage, row: StoredFile) -> bool:
    """Whether *row*'s local copy is there: asked of this host's disk; another host's disk
    cannot be seen from here, so its row says whether it holds it."""
    elsewhere = bool(row.host) and row.host != settings.HOST and row.local_exists
    return elsewhere or bool(storage.local.exists(row.name))


def retry_failed_rows(rows: Iterable[StoredFile]) -> Retried:
    """Give every failed row whose local copy is there a new budget, and queue it."""
    now: list[datetime.datetime] = []  # the database's, read once (invariant 13)

    def retry(storage: QueuedStorage, row: StoredFile) -> bool:
        now[:] = now or [clock.read(StoredFile.db())]
        return storage.ledger.retry_failed(row, now[0])

    return _queue_again(rows, State.FAILED, _local_copy_here_or_there, retry, Retried())


def _queue_again(
    rows: Iterable[StoredFile],
    state: str,
    kept: Callable[[QueuedStorage, StoredFile], bool],
    change: Callable[[QueuedStorage, StoredFile], bool],
    done: _Done,
) -> _Done:
    """For every row in *state* whose copy is *kept*: *change* it (its transition), then queue
    its transfer to its host; *done* counts each outcome."""
    storages, sender = Storages(), Sender()
    for row in rows:
        storage = storages.get(row.alias)
        if storage is None or row.state != state:
            done.skipped += 1
        elif not kept(storage, row):
            done.no_local += 1
        elif not change(storage, row):
            done.changed += 1
        elif sender.send_or_mark(storage, row.name, row.host):
            done.queued += 1
        else:
            done.refused += 1
    return done


# -- rejected files -----------------------------------------------------------------------------
@dataclass
class Released(Retried):
    """What :func:`release_rows` did."""

    def message(self) -> str:
        return counted(
            [
                (self.queued, "{n} rejected file(s) released and queued, not to be scanned again"),
                (self.refused, "{n} released but not queued: the broker refused"),
                (
                    self.no_local,
                    "{n} not released: the local copy is gone (QUEUED_STORAGE_QUARANTINE is "
                    "'delete', or it was deleted by hand)",
                ),
                (self.changed, "{n} changed meanwhile (left alone)"),
                (self.skipped, "{n} skipped (not rejected)"),
            ]
        )


def _rejected_copy_here_or_there(storage: QueuedStorage, row: StoredFile) -> bool:
    """Whether *row*'s rejected copy is kept: where :func:`_local_copy_here_or_there` looks,
    or in this host's quarantine directory."""
    quarantined = quarantine.path(row.alias, row.name)
    kept_aside = quarantined is not None and os.path.isfile(quarantined)
    return kept_aside or _local_copy_here_or_there(storage, row)


def release_rows(rows: Iterable[StoredFile]) -> Released:
    """Let every ``rejected`` row whose copy is kept through (a false positive): ``pending``,
    processed (not scanned again), queued to its host, whose worker brings it back from the
    quarantine directory."""
    return _queue_again(
        rows,
        State.REJECTED,
        _rejected_copy_here_or_there,
        lambda storage, row: storage.ledger.release(row.name),
        Released(),
    )


# -- direct uploads --------------------------------------------------------------------------
@dataclass
class AbortedDirect:
    """What :func:`abort_direct_rows` did."""

    aborted: int = 0
    changed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def message(self) -> str:
        return counted(
            [
                (self.aborted, "aborted {n} direct upload(s) (their names are free again)"),
                (self.changed, "{n} left alone: being completed, or finished meanwhile"),
                (
                    self.skipped,
                    "{n} skipped (not uploading, or a storage this process does not know)",
                ),
                (len(self.errors), "{n} not aborted: the remote storage did not answer; try again"),
            ]
        )


def abort_direct_rows(rows: Iterable[StoredFile]) -> AbortedDirect:
    """Abort every ``uploading`` row's direct upload, whoever started it
    (:func:`queued_storage.direct.abort`: the multipart upload aborted, the name released)."""
    storages, done = Storages(), AbortedDirect()
    for row in rows:
        storage = storages.get(row.alias)
        if storage is None or row.state != State.UPLOADING:
            done.skipped += 1
            continue
        try:
            aborted = direct.abort(storage, row.name)
        except direct.DirectRefused as refused:
            done.errors.append(f"{label(row)}: {refused.message}")
            continue
        if aborted:
            done.aborted += 1
        else:
            done.changed += 1
    return done


# -- local copies of remote files ------------------------------------------------------------
@dataclass
class LocalCopies:
    """What :func:`drop_verified_local_copies` did (or, dry, would try)."""

    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    skipped: int = 0
    report: VerifyReport = field(default_factory=VerifyReport)

    def message(self) -> str:
        return counted(
            [
                (
                    len(self.deleted),
                    "deleted the local copy of {n} file(s) whose remote copy verified",
                ),
                (len(self.kept), "{n} kept: the remote copy did not verify"),
                (self.skipped, "{n} skipped (not remote, or no local copy here)"),
            ]
        )


def drop_verified_local_copies(
    rows: Iterable[StoredFile], *, timeout: float | None, dry_run: bool = False
) -> LocalCopies:
    """Delete the local copy of each ``remote`` row whose remote copy verifies now.

    The remote copy is asked about first (:func:`~queued_storage.verify.verify`, a HEAD each,
    *timeout* per request): a copy that is missing or differs is data loss (recorded by
    ``verify``) and its local copy is kept; one the remote could not be asked about is kept
    too. *dry_run*: nothing is asked or deleted, the candidates are listed.
    """
    storages, done = Storages(), LocalCopies()
    candidates: list[StoredFile] = []
    for row in rows:
        storage = storages.get(row.alias)
        if storage is None or row.state != State.REMOTE or not storage.local.exists(row.name):
            done.skipped += 1
        else:
            candidates.append(row)
    done.candidates = [label(row) for row in candidates]
    if dry_run or not candidates:
        return done
    done.report = verify(candidates, timeout=timeout)
    passed = set(done.report.verified)
    for row in candidates:
        storage = storages.get(row.alias)
        if storage is not None and label(row) in passed:
            storage.ledger.drop_local(row.name, row.size, storage.local.delete)
            done.deleted.append(label(row))
        else:
            done.kept.append(label(row))
    return done


# -- one transfer in this process ------------------------------------------------------------
#: What :func:`transfer_here` concluded, by outcome: ``(ok, text)``.
_OUTCOMES: dict[str, tuple[bool, str]] = {
    Outcome.TRANSFERRED.value: (True, "transferred and verified"),
    Outcome.ALREADY_REMOTE.value: (True, "already remote"),
    Outcome.GONE.value: (True, "deleted meanwhile (nothing to send)"),
    Outcome.LOST_LEASE.value: (False, "another worker took the transfer over"),
    Outcome.FAILED.value: (False, "failed"),
    "retry-later": (False, "not transferred, will be retried"),
    "busy": (False, "another worker is transferring it"),
    "elsewhere": (False, "its local copy is on another host"),
    "error": (False, "error"),
}


@dataclass
class TransferHere:
    """The result of :func:`transfer_here`."""

    alias: str
    name: str
    outcome: str
    size: int = 0
    seconds: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return _OUTCOMES[self.outcome][0]

    @property
    def label(self) -> str:
        return f"{self.alias}:{self.name}"

    def __str__(self) -> str:
        text = f"{self.label}: {_OUTCOMES[self.outcome][1]}"
        return f"{text}: {self.reason}" if self.reason else text


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:manage.py-queued_storage:{uuid.uuid4().hex}"


def transfer_here(
    storage: QueuedStorage,
    row: StoredFile,
    *,
    delete_local: bool | None = None,
    hook: TransferHook | None = None,
    progress: Callable[[int, int], None] | None = None,
    interval: float = 0.25,
) -> TransferHere:
    """Transfer *row*'s file in this process, through the worker's own code path.

    A pending or failed file gets a fresh budget first (:meth:`Ledger.retry`), then
    :func:`~queued_storage.worker.run_transfer` takes the lease, runs the engine (with the
    lease kept alive, and the progress published, by the process's lease keeper) and records
    the outcome, exactly as in a Celery worker; *delete_local* and *hook* are the storage's
    task's. *progress* is called with ``(done, total)`` about every *interval* seconds, from
    the progress the lease keeper publishes. A file whose local copy is on another host is not
    attempted (the engine would find no local copy, and record that as a loss).
    """
    alias, name = storage.alias, row.name
    size = row.size or 0
    here = not row.host or row.host == settings.HOST or storage.local.exists(name)
    if not here:
        return TransferHere(alias, name, "elsewhere", size, reason=f"host {row.host!r}")
    if row.state in (State.PENDING, State.FAILED):
        storage.ledger.retry(name)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(interval):
            found = read_side.get_progress(storage.cache_prefix, alias, name)
            if found is not None and progress is not None:
                progress(found[0], found[1] or size)

    watcher = threading.Thread(target=watch, name="queued-storage-progress", daemon=True)
    began = time.monotonic()
    watcher.start()
    try:
        outcome = run_transfer(alias, name, owner=_owner(), delete_local=delete_local, hook=hook)
    except RetryLater as later:
        found = storage.ledger.row(name)
        busy = found is not None and found.state == State.TRANSFERRING
        return TransferHere(
            alias, name, "busy" if busy else "retry-later", size, reason=redact(str(later))
        )
    except Exception as err:
        return TransferHere(
            alias, name, "error", size, reason=redact(f"{type(err).__name__}: {err}")
        )
    finally:
        stop.set()
        watcher.join()
    seconds = time.monotonic() - began
    done = TransferHere(alias, name, outcome.value, size, seconds)
    after = storage.ledger.row(name)
    if after is not None and after.size is not None:
        done.size = after.size
    if outcome == Outcome.FAILED and after is not None:
        done.reason = redact(after.last_error)
    if outcome in (Outcome.TRANSFERRED, Outcome.ALREADY_REMOTE) and progress is not None:
        progress(done.size, done.size)
    return done


#: Items of each kind a total over many pages keeps by name (:class:`Examples`); the command
#: lists as many without ``-v 2``.
EXAMPLES = 20

T = TypeVar("T")


@dataclass
class Examples(Generic[T]):
    """How many items were counted, and the first *keep* of them: a total whose memory does
    not grow with the count."""

    count: int = 0
    first: list[T] = field(default_factory=list)
    keep: int = EXAMPLES

    def add(self, items: Sequence[T]) -> None:
        self.first += items[: max(0, self.keep - len(self.first))]
        self.count += len(items)


@dataclass
class LocalCopiesTotal:
    """What :func:`cleanup_local_copies` did (or, dry, would try) over all its pages: how many
    of each kind, and the first few by name (each page's full lists went to its *each_page*)."""

    #: How many of each kind are kept by name.
    keep: int = EXAMPLES
    skipped: int = 0
    deleted: Examples[str] = field(init=False)
    kept: Examples[str] = field(init=False)
    candidates: Examples[str] = field(init=False)
    #: Remote copies found missing or different (data loss: those rows are ``failed`` now).
    lost: Examples[Problem] = field(init=False)
    #: Why local copies were kept: each page's lost remote copies, then those the remote
    #: could not be asked about (:attr:`VerifyReport.problems`).
    problems: Examples[Problem] = field(init=False)

    def __post_init__(self) -> None:
        self.deleted = Examples[str](keep=self.keep)
        self.kept = Examples[str](keep=self.keep)
        self.candidates = Examples[str](keep=self.keep)
        self.lost = Examples[Problem](keep=self.keep)
        self.problems = Examples[Problem](keep=self.keep)

    def add(self, page: LocalCopies) -> None:
        self.deleted.add(page.deleted)
        self.kept.add(page.kept)
        self.candidates.add(page.candidates)
        self.skipped += page.skipped
        self.lost.add(page.report.lost)
        self.problems.add(page.report.problems)


def cleanup_local_copies(
    aliases: Sequence[str],
    *,
    older_than: float,
    timeout: float | None,
    dry_run: bool = False,
    batch: int = 500,
    each_page: Callable[[LocalCopies], None] | None = None,
    examples: int = EXAMPLES,
) -> LocalCopiesTotal:
    """The local copies on this host of files verified ``remote`` more than *older_than*
    seconds ago, deleted where the remote copy verifies again now
    (:func:`drop_verified_local_copies`, *batch* rows at a time).

    The total counts, and keeps the first *examples* names of each kind: memory follows
    *batch*, not the number of local copies. Each page's own :class:`LocalCopies` (every name,
    and its verify report) goes to *each_page* as soon as it is done.
    """
    cutoff = timezone.now() - datetime.timedelta(seconds=older_than)
    rows = StoredFile.all_rows().of(aliases).on_host(settings.HOST).local_copies_of_remote(cutoff)
    total = LocalCopiesTotal(examples)
    for page in pages(rows, batch):
        done = drop_verified_local_copies(page, timeout=timeout, dry_run=dry_run)
        total.add(done)
        if each_page is not None:
            each_page(done)
    return total
