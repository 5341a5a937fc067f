"""The jobs of ``manage.py queued_storage``, one function per subcommand: choose the rows the
command's options name (files, ``--pending``, ``--failed``, ``--since``, ``--prefix``, a
sample) and run :mod:`queued_storage.operations`'s row actions on them, run every clean-up,
record a bucket's objects in the ledger (``seed``) or save a local file (``upload``). Each
returns plain results; the command renders them (:mod:`queued_storage.management.render`).
"""

from __future__ import annotations

import datetime
import itertools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, cast

from django.core.files import File
from django.core.files.storage import Storage

from queued_storage import tally
from queued_storage.cleanup import (
    Cleaned,
    cleanup_direct,
    cleanup_spool,
    cleanup_tus,
    cleanup_tus_orphans,
    cleanup_uploads,
)
from queued_storage.conf import settings
from queued_storage.models import StoredFile, StoredFileQuerySet
from queued_storage.names import LEDGER_NAME_LENGTH
from queued_storage.operations import (
    LocalCopies,
    LocalCopiesTotal,
    Queued,
    Retried,
    Storages,
    TransferHere,
    cleanup_local_copies,
    retry_failed_rows,
    transfer_here,
    transfer_rows,
)
from queued_storage.storage import QueuedStorage
from queued_storage.tasks import Transfer
from queued_storage.transfer import list_remote
from queued_storage.verify import VerifyReport, verify_in_chunks
from queued_storage.worker import TransferHook

__all__ = [
    "SEED_BATCH",
    "Cleanup",
    "Seeded",
    "Transfers",
    "TransfersHere",
    "Uploaded",
    "cleanup",
    "queue_transfers",
    "seed",
    "select_named",
    "task_policy",
    "transfer_files_here",
    "upload",
    "verify_files",
]

#: A job's progress: called with the total once it is known, it returns the callback that
#: is given the progress (a count or a position) as the work goes.
Start = Callable[[int], Callable[[int], None]]


def task_policy(storage: QueuedStorage) -> tuple[bool | None, TransferHook | None]:
    """``delete_local`` and the ``transfer()`` hook the storage's Celery task would run with
    (what :meth:`queued_storage.tasks.Transfer.run` passes to ``run_transfer``)."""
    task = storage.task
    resolve = getattr(task, "_get_current_object", None)
    if callable(resolve):
        task = resolve()
    if not isinstance(task, Transfer):
        return None, None
    return task.delete_local, task.transfer_hook


def select_named(
    names: Sequence[str], aliases: Sequence[str] | None
) -> tuple[list[StoredFile], list[str]]:
    """The rows of *names* (in *aliases*, else in any storage), and the problems with the names:
    not in the ledger, or in several storages."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return [], []
    found: dict[str, list[StoredFile]] = {}
    for row in StoredFile.all_rows().named(wanted).of(aliases or None).order_by("alias"):
        found.setdefault(row.name, []).append(row)
    problems = []
    chosen = []
    for name in wanted:
        matches = found.get(name, [])
        if not matches:
            problems.append(f"{name!r}: not in the ledger (reconcile --adopt records local files)")
        elif len(matches) > 1:
            where = ", ".join(row.alias for row in matches)
            problems.append(f"{name!r} is in several storages ({where}): name one with --storage")
        else:
            chosen.append(matches[0])
    return chosen, problems


def _the_others(named: list[StoredFile], aliases: Sequence[str] | None) -> StoredFileQuerySet:
    return StoredFile.all_rows().other_than(named).of(aliases or None)


@dataclass
class Transfers:
    """What :func:`queue_transfers` did."""

    problems: list[str] = field(default_factory=list)
    queued: Queued | None = None
    retried: Retried | None = None

    @property
    def refused(self) -> int:
        return (self.queued.refused if self.queued else 0) + (
            self.retried.refused if self.retried else 0
        )


def queue_transfers(
    names: Sequence[str], *, aliases: Sequence[str] | None, pending: bool, failed: bool
) -> Transfers:
    """Queue the transfer of the files *names*, of every ``pending`` file (*pending*) and of
    every ``failed`` file whose local copy is there (*failed*, a fresh retry budget)."""
    named, problems = select_named(names, aliases)
    rows = _the_others(named, aliases)
    done = Transfers(problems)
    if named or pending:
        waiting = rows.pending().in_pages() if pending else ()
        done.queued = transfer_rows(itertools.chain(named, itertools.chain.from_iterable(waiting)))
    if failed:
        done.retried = retry_failed_rows(itertools.chain.from_iterable(rows.failed().in_pages()))
    return done


@dataclass
class TransfersHere:
    """What :func:`transfer_files_here` did."""

    problems: list[str] = field(default_factory=list)
    results: list[TransferHere] = field(default_factory=list)
    seconds: float = 0.0


def transfer_files_here(
    names: Sequence[str],
    *,
    aliases: Sequence[str] | None,
    pending: bool,
    failed: bool,
    say: Callable[[str], None],
    warn: Callable[[str], None],
    progress: Callable[[StoredFile], tuple[Callable[[int, int], None], Callable[[], None]]],
) -> TransfersHere:
    """Transfer in this process (:func:`transfer_here`, with the storage task's policy) the
    files *names*, this host's ``pending`` files with a local copy (*pending*) and its
    ``failed`` ones (*failed*), one after the other. Each problem goes to *warn* as it is
    found, each result to *say* (done) or *warn* (not); *progress* gives a file's progress
    callback and what to call when it is over."""
    named, problems = select_named(names, aliases)
    for problem in problems:
        warn(problem)
    rows = _the_others(named, aliases)
    here = rows.on_hosts([settings.HOST, ""])
    chosen: list[Iterable[StoredFile]] = [named]
    if pending:
        chosen.append(itertools.chain.from_iterable(here.pending_with_local_copy().in_pages()))
        if count := rows.pending().not_on_hosts([settings.HOST, ""]).count():
            say(f"{count} pending file(s) of other hosts left to them.")
    if failed:
        chosen.append(itertools.chain.from_iterable(here.failed_with_local_copy().in_pages()))
    known = Storages()
    done = TransfersHere(problems)
    began = time.monotonic()
    for row in itertools.chain.from_iterable(chosen):
        storage = known.get(row.alias)
        if storage is None:
            problems.append(f"{row.alias}:{row.name}: a storage this process does not know")
            warn(problems[-1])
            continue
        delete_local, hook = task_policy(storage)
        moved, over = progress(row)
        try:
            result = transfer_here(
                storage, row, delete_local=delete_local, hook=hook, progress=moved
            )
        finally:
            over()
        done.results.append(result)
        (say if result.ok else warn)(str(result))
    done.seconds = time.monotonic() - began
    return done


def verify_files(
    aliases: Sequence[str] | None,
    *,
    since: datetime.datetime | None = None,
    prefix: str = "",
    sample: int | None = None,
    timeout: float | None = None,
    chunk: int = 100,
    start: Start | None = None,
) -> VerifyReport:
    """Verify the ``remote`` files of *aliases* (every storage: ``None``), transferred *since*,
    whose names begin with *prefix*: all of them, *chunk* at a time, or a random *sample*.
    *start* is called with the number of files once it is known, and returns the callback
    that each chunk's count is given to. The report counts the selected files that are not
    ``remote`` (before the verify fails some)."""
    rows = StoredFile.all_rows().of(aliases or None)
    if since is not None:
        rows = rows.transferred_since(since)
    if prefix:
        rows = rows.starting_with(prefix)
    remote = rows.remote()
    if since is None and not prefix:  # by storage only: the kept tally counts them
        not_remote = tally.unfinished_files(aliases or None)
    else:
        not_remote = rows.not_remote().count()
    selection: Iterable[StoredFile]
    if sample:
        selection = remote.sample(sample)
        total = len(selection)
    else:
        selection, total = itertools.chain.from_iterable(remote.in_pages()), remote.count()
    progress = start(total) if start is not None else None
    report, _ = verify_in_chunks(selection, chunk=chunk, timeout=timeout, progress=progress)
    report.not_remote = not_remote
    return report


@dataclass
class Cleanup:
    """What :func:`cleanup` removed (or, dry, would), by kind."""

    #: ``None``: local copies are kept (``QUEUED_STORAGE_CLEANUP_LOCAL_AFTER = None``).
    local_copies: LocalCopiesTotal | None
    spool: list[Cleaned]
    spool_in_use: list[str]
    tus: list[Cleaned]
    tus_receiving: list[str]
    tus_orphans: list[Cleaned]
    uploads: list[Cleaned]
    upload_errors: list[str]
    #: Direct uploads left alone past ``DIRECT_EXPIRY``, and those left for the next run.
    direct: list[Cleaned]
    direct_busy: list[str]


def cleanup(
    storages: Sequence[QueuedStorage],
    *,
    timeout: float,
    dry_run: bool,
    each_page: Callable[[LocalCopies], None] | None = None,
) -> Cleanup:
    """Every clean-up of ``manage.py queued_storage cleanup``, with the settings' ages: the
    local copies of files remote for ``CLEANUP_LOCAL_AFTER`` (:func:`cleanup_local_copies`,
    *timeout* per remote request, each page given to *each_page* as it is done), spool files,
    expired tus uploads, tus part files no upload owns, direct uploads left alone past
    ``DIRECT_EXPIRY`` and multipart uploads no ledger row records
    (:mod:`queued_storage.cleanup`)."""
    grace = settings.CLEANUP_LOCAL_AFTER
    copies = None
    if grace is not None:
        copies = cleanup_local_copies(
            [s.alias for s in storages],
            older_than=grace,
            timeout=timeout,
            dry_run=dry_run,
            each_page=each_page,
        )
    spool, in_use = cleanup_spool(
        storages, older_than=settings.CLEANUP_SPOOL_AFTER, dry_run=dry_run
    )
    expired, receiving = cleanup_tus(storages, dry_run=dry_run)
    orphans = cleanup_tus_orphans(storages, older_than=settings.TUS_EXPIRY, dry_run=dry_run)
    # Before the orphan sweep, which spares an upload while its ``uploading`` row is there.
    direct, busy = cleanup_direct(storages, dry_run=dry_run)
    aborted, errors = cleanup_uploads(
        storages, older_than=settings.CLEANUP_UPLOADS_AFTER, dry_run=dry_run
    )
    return Cleanup(
        copies, spool, in_use, expired, receiving, orphans, aborted, errors, direct, busy
    )


#: Names looked up and inserted per ledger query by :func:`seed` (under SQLite's limit).
SEED_BATCH = 500


@dataclass
class Seeded:
    """What :func:`seed` did (or, dry, would)."""

    listed: int = 0
    seeded: int = 0
    #: Names over the ledger's limit, not seeded.
    too_long: list[str] = field(default_factory=list)


def seed(storage: QueuedStorage, prefix: str = "", *, dry_run: bool = False) -> Seeded:
    """Record the objects *storage*'s remote holds under *prefix* as ``remote`` rows
    (:meth:`~queued_storage.ledger.Ledger.seed_remote`: names the ledger knows are left
    alone); *dry_run* counts the names that would be seeded."""
    done = Seeded()
    objects = list_remote(storage.remote, prefix)
    while batch := list(itertools.islice(objects, SEED_BATCH)):
        done.listed += len(batch)
        if dry_run:
            names = [name for name, _, _ in batch]
            done.seeded += (
                len(batch) - StoredFile.all_rows().of_storage(storage.alias).named(names).count()
            )
            continue
        done.too_long += [name for name, _, _ in batch if len(name) > LEDGER_NAME_LENGTH]
        batch = [o for o in batch if len(o[0]) <= LEDGER_NAME_LENGTH]
        done.seeded += len(storage.ledger.seed_remote(batch))
    return done


# -- upload ----------------------------------------------------------------------------------
class _Reading:
    """A file read by ``save()`` that tells *progress* the position read."""

    def __init__(self, fh: IO[bytes], size: int, progress: Callable[[int], None]) -> None:
        self._fh, self.size, self._progress = fh, size, progress

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._progress(self._fh.tell())
        return data

    def __getattr__(self, attribute: str) -> object:
        return getattr(self._fh, attribute)


@dataclass
class Uploaded:
    """What :func:`upload` did."""

    #: The name the storage gave the file (another than the one asked for: that was taken).
    stored: str
    size: int
    seconds: float
    #: Whether the storage is a queued storage; then the file's state after the save
    #: (``"unknown"``: none found) and whether the storage is a delayed one.
    queued: bool = False
    state: str = ""
    delayed: bool = False


def upload(storage: Storage, path: str, name: str, *, chunk: int, start: Start) -> Uploaded:
    """Save the local file *path* into *storage* as *name* (``save()``, reading *chunk* bytes
    at a time, so in bounded memory whatever its size); *start* is given its size."""
    size = os.path.getsize(path)
    progress = start(size)
    began = time.monotonic()
    with open(path, "rb") as fh:
        content = File(cast(IO[bytes], _Reading(fh, size, progress)), name=name)
        content.DEFAULT_CHUNK_SIZE = chunk
        stored = storage.save(name, content)
    done = Uploaded(stored, size, time.monotonic() - began)
    if isinstance(storage, QueuedStorage):
        found = storage.get_state(stored)
        done.queued, done.delayed = True, storage.delayed
        done.state = found.state if found else "unknown"
    return done
