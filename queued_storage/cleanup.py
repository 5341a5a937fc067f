"""Clean-up: what killed processes and abandoned uploads left behind, for the command
(``manage.py queued_storage cleanup``) and the reconcile pass.

* :func:`cleanup_spool`: spool files of the upload views a killed web process left;
* :func:`cleanup_tus` and :func:`cleanup_tus_orphans`: expired tus uploads, and tus part files
  no upload row owns;
* :func:`abort_orphan_uploads`: S3 multipart uploads no ledger row can resume, the one rule
  (:func:`orphaned`) for the reconcile pass (names the ledger knows, a few pages, a batch) and
  the command (:func:`cleanup_uploads`: unknown names too, more pages);
* :func:`cleanup_direct`: direct uploads left alone for ``QUEUED_STORAGE_DIRECT_EXPIRY``, as
  the reconcile pass expires them (:func:`queued_storage.direct.expire`).

Every change of a row goes through the ledger (:mod:`queued_storage.ledger`).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import stat
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from django.utils import timezone

from queued_storage import clock, direct
from queued_storage.conf import settings
from queued_storage.dispatch import redact
from queued_storage.ledger import tus_expired, tus_forget
from queued_storage.models import State, StoredFile, TusUpload
from queued_storage.names import SPOOL_DIRNAME, TUS_DIRNAME
from queued_storage.storage import QueuedStorage
from queued_storage.transfer import OpenUpload, abort_open_upload, open_uploads
from queued_storage.uploads import tus_dir

__all__ = [
    "COMMAND_UPLOAD_PAGES",
    "PASS_UPLOAD_PAGES",
    "Cleaned",
    "OrphanUploads",
    "abort_orphan_uploads",
    "cleanup_direct",
    "cleanup_spool",
    "cleanup_tus",
    "cleanup_tus_orphans",
    "cleanup_uploads",
    "orphaned",
]


@dataclass
class Cleaned:
    """One thing a clean-up removed (or would)."""

    where: str
    what: str
    size: int | None = None
    age: float = 0.0
    #: Who started it (a direct upload's ``owner``: a user's primary key, ``""`` unknown).
    owner: str = ""


def _open_files() -> set[tuple[int, int]] | None:
    """``(device, inode)`` of every file a process holds open, as far as ``/proc`` shows this
    user (every process for root); ``None`` where there is no ``/proc``."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    found: set[tuple[int, int]] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        directory = f"/proc/{pid}/fd"
        try:
            descriptors = os.listdir(directory)
        except OSError:
            continue  # gone, or another user's
        for fd in descriptors:
            try:
                info = os.stat(f"{directory}/{fd}")
            except OSError:
                continue
            found.add((info.st_dev, info.st_ino))
    return found


def _local_roots(storages: Iterable[QueuedStorage]) -> list[str]:
    roots = set()
    for storage in storages:
        try:
            roots.add(os.path.realpath(storage.local.path("")))
        except Exception:
            continue  # no paths: no spool either (the upload views need paths)
    return sorted(roots)


def _old_files(
    storages: Iterable[QueuedStorage], dirname: str, older_than: float, now: float
) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
    """The regular files (not links, not folders) directly in each staging root's *dirname*
    that are unchanged (``mtime``) for more than *older_than* seconds, by name."""
    for root in _local_roots(storages):
        try:
            entries = list(os.scandir(os.path.join(root, dirname)))
        except FileNotFoundError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > older_than:
                yield entry, info


def cleanup_spool(
    storages: Iterable[QueuedStorage], *, older_than: float, dry_run: bool = False
) -> tuple[list[Cleaned], list[str]]:
    """Remove the upload views' spool files that a killed web process left.

    A body being received is written to ``<staging root>/.queued_storage-incoming/`` and moved
    into place by the save; a process killed in between leaves it there. Removed: regular
    files unchanged for *older_than* seconds that no process holds open (a slow upload in
    progress keeps its file open and keeps writing to it). Returns ``(removed, in_use)``.
    """
    now = time.time()
    candidates = [
        (entry.path, info) for entry, info in _old_files(storages, SPOOL_DIRNAME, older_than, now)
    ]
    if not candidates:
        return [], []
    held = _open_files() or set()
    removed: list[Cleaned] = []
    in_use: list[str] = []
    for path, info in candidates:
        if (info.st_dev, info.st_ino) in held:
            in_use.append(path)
            continue
        if not dry_run:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue  # taken by its save, or removed by another cleanup meanwhile
        removed.append(Cleaned(os.path.dirname(path), path, info.st_size, now - info.st_mtime))
    return removed, in_use


def cleanup_tus(
    storages: Iterable[QueuedStorage], *, dry_run: bool = False
) -> tuple[list[Cleaned], list[str]]:
    """Remove the tus uploads of this host whose ``expires`` has passed: the bytes of an
    unfinished one (which end its reservation in the staging budget) and the row.

    An upload a request is appending to right now (its file is locked) is left for the next
    run. Returns ``(removed, in_use)``.
    """
    now = timezone.now()
    chosen = {storage.alias: storage for storage in storages}
    removed: list[Cleaned] = []
    in_use: list[str] = []
    for row in tus_expired(now, host=settings.HOST):
        storage = chosen.get(row.alias)
        if storage is None:
            continue
        path = os.path.join(tus_dir(storage.local), str(row.id))
        age = (now - row.expires).total_seconds()
        size: int | None = None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    in_use.append(f"{row.alias}:{row.name} (tus {row.id})")
                    continue
                size = os.fstat(fd).st_size
                if not dry_run:
                    os.unlink(path)
            if not dry_run:
                tus_forget(row.id)
        finally:
            if fd is not None:
                os.close(fd)
        removed.append(Cleaned(row.alias, f"{row.name} (tus {row.id})", size, age))
    return removed, in_use


def cleanup_tus_orphans(
    storages: Iterable[QueuedStorage], *, older_than: float, dry_run: bool = False
) -> list[Cleaned]:
    """Remove the tus part files that no upload row owns, unchanged for *older_than* seconds.

    A creation writes the part file (``<staging root>/.queued_storage-tus/<id>``) and then the
    row; a web process killed in between leaves a file no row names, and so does a row deleted
    by hand or lost with a database restore. :func:`cleanup_tus` never sees those (it works
    from the rows). Only regular files named by an upload id (a UUID, as the view writes it)
    directly in that directory are considered, on every host (no row means no host owns it):
    those whose id has no row, unchanged (``mtime``) for *older_than* seconds, and not locked
    by a request right now. A creation still about to write its row has a file seconds old.
    """
    now = time.time()
    candidates: list[tuple[str, uuid.UUID, os.stat_result]] = []
    for entry, info in _old_files(storages, TUS_DIRNAME, older_than, now):
        try:
            upload_id = uuid.UUID(entry.name)
        except ValueError:
            continue
        if str(upload_id) == entry.name:  # a name the view writes
            candidates.append((entry.path, upload_id, info))
    if not candidates:
        return []
    owned = TusUpload.known(upload_id for _, upload_id, _ in candidates)
    removed: list[Cleaned] = []
    for path, upload_id, info in candidates:
        if upload_id in owned:
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue  # removed meanwhile (a DELETE of its upload)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            if not dry_run:
                os.unlink(path)
        finally:
            os.close(fd)
        removed.append(Cleaned(os.path.dirname(path), path, info.st_size, now - info.st_mtime))
    return removed


# -- S3 multipart uploads no ledger row can resume -------------------------------------------
#: Most pages of ``ListMultipartUploads`` (1,000 uploads each) the command reads per remote.
COMMAND_UPLOAD_PAGES = 20
#: Most pages one reconcile pass reads per storage (a pass runs every few minutes).
PASS_UPLOAD_PAGES = 5


@dataclass
class _Ledgered:
    """What the ledger says about the names of one page of open uploads."""

    #: Upload ids rows record: each is the resume point of its transfer.
    recorded: set[str]
    #: Names whose row is ``transferring`` under a lease that has not expired.
    leased: set[str]
    #: Names the ledger knows for the storage (``None``: not asked, every name counts).
    known: set[str] | None


def orphaned(upload: OpenUpload, ledgered: _Ledgered) -> bool:
    """The rule: an open multipart upload (old enough, see :func:`abort_orphan_uploads`) is
    orphaned, and aborted, when no ledger row records it (a recorded upload is the resume point
    of its transfer), no live lease holds its name (its worker may be about to record the
    upload it opened), and, where only names the ledger knows are touched, the ledger knows
    its name."""
    if upload.upload_id in ledgered.recorded or upload.name in ledgered.leased:
        return False
    return ledgered.known is None or upload.name in ledgered.known


def _ledgered(
    storage: QueuedStorage, uploads: list[OpenUpload], *, known_only: bool, now: datetime.datetime
) -> _Ledgered:
    names = [u.name for u in uploads]
    rows = StoredFile.all_rows()
    if known_only:  # one query, by the ledger's unique key (alias, name)
        found = list(rows.of_storage(storage.alias).named(names))
        return _Ledgered(
            recorded={row.upload_id for row in found if row.upload_id},
            leased={row.name for row in found if _leased(row, now)},
            known={row.name for row in found},
        )
    return _Ledgered(
        recorded=rows.recording_uploads(u.upload_id for u in uploads),
        leased=rows.leased_names(names, now),
        known=None,
    )


def _leased(row: StoredFile, now: datetime.datetime) -> bool:
    """A live lease holds the row's name, or a direct upload does (its client's, until the
    reconcile pass expires it)."""
    return row.state == State.UPLOADING or (
        row.state == State.TRANSFERRING
        and row.lease_expires is not None
        and row.lease_expires > now
    )


@dataclass
class OrphanUploads:
    """What :func:`abort_orphan_uploads` aborted (or, dry, would), and what went wrong."""

    aborted: list[Cleaned] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def abort_orphan_uploads(
    storage: QueuedStorage,
    *,
    older_than: float,
    max_pages: int,
    known_only: bool,
    limit: int | None = None,
    stop_at_failure: bool = False,
    dry_run: bool = False,
    seen: set[str] | None = None,
    now: datetime.datetime | None = None,
) -> OrphanUploads:
    """Abort the open multipart uploads of *storage*'s remote (under its location) initiated
    more than *older_than* seconds ago that are :func:`orphaned`.

    At most *max_pages* pages are listed and *limit* uploads aborted. *known_only*: only the
    names the ledger knows for this storage (the reconcile pass: a bucket may be shared);
    otherwise names it does not know too (the command: a file deleted while a killed worker
    held its upload open). *stop_at_failure*: the first upload that cannot be aborted ends
    the listing (logged; the next pass tries again), else each is an error and the rest go
    on. *seen*: upload ids looked at already (storages that share a bucket), updated.
    """
    now = now or clock.read(StoredFile.db())  # the leases' clock: the database's
    # S3 gives aware UTC times, whatever USE_TZ says.
    young = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=older_than)
    done = OrphanUploads()
    try:
        for page in open_uploads(storage.remote, max_pages):
            uploads = [u for u in page if u.initiated <= young]
            if seen is not None:
                uploads = [u for u in uploads if u.upload_id not in seen]
                seen.update(u.upload_id for u in uploads)
            if not uploads:
                continue
            ledgered = _ledgered(storage, uploads, known_only=known_only, now=now)
            for upload in uploads:
                if not orphaned(upload, ledgered):
                    continue
                if not dry_run and not abort_open_upload(
                    storage.remote, upload.name, upload.upload_id
                ):
                    done.errors.append(f"{storage.alias}:{upload.name}: could not abort (logged)")
                    if stop_at_failure:
                        return done
                    continue
                age = (now - upload.initiated).total_seconds()
                done.aborted.append(Cleaned(storage.alias, upload.name, None, age))
                if limit is not None and len(done.aborted) >= limit:
                    return done
    except Exception as err:
        done.errors.append(
            f"{storage.alias}: could not list the open multipart uploads "
            f"({type(err).__name__}: {redact(str(err))})"
        )
    return done


def cleanup_uploads(
    storages: Iterable[QueuedStorage], *, older_than: float, dry_run: bool = False
) -> tuple[list[Cleaned], list[str]]:
    """The command's clean-up of multipart uploads: :func:`abort_orphan_uploads` of each
    storage, names the ledger does not know included (a bucket shared with other applications
    needs a storage ``location`` of its own), ``COMMAND_UPLOAD_PAGES`` pages each;
    ``(aborted, errors)``."""
    aborted: list[Cleaned] = []
    errors: list[str] = []
    seen: set[str] = set()
    now = clock.read(StoredFile.db())  # whether a lease is alive: by the database's clock
    for storage in storages:
        done = abort_orphan_uploads(
            storage,
            older_than=older_than,
            max_pages=COMMAND_UPLOAD_PAGES,
            known_only=False,
            dry_run=dry_run,
            seen=seen,
            now=now,
        )
        aborted += done.aborted
        errors += done.errors
    return aborted, errors


# -- direct uploads left alone -----------------------------------------------------------------
def cleanup_direct(
    storages: Iterable[QueuedStorage], *, dry_run: bool = False
) -> tuple[list[Cleaned], list[str]]:
    """Abort the direct uploads untouched for ``QUEUED_STORAGE_DIRECT_EXPIRY`` seconds (by the
    database's clock) and release their names, through :func:`queued_storage.direct.expire`
    as the reconcile pass does; *dry_run* lists them and asks the remote nothing. Each is
    listed with its declared size, owner and time untouched (``age``). Returns ``(aborted,
    busy)``: *busy* are those a completion held, that changed since they were read, or whose
    abort the remote did not answer (logged); the next run or pass tries them again."""
    now = clock.read(StoredFile.db())
    aborted: list[Cleaned] = []
    busy: list[str] = []
    for storage in storages:
        rows = StoredFile.all_rows().of_storage(storage.alias).expired_direct(now)
        for page in rows.in_pages():
            for row in page:
                if not dry_run and not direct.expire(storage, row):
                    busy.append(f"{row.alias}:{row.name}")
                    continue
                age = (now - row.updated).total_seconds()
                aborted.append(Cleaned(row.alias, row.name, row.size, age, row.owner))
    return aborted, busy
