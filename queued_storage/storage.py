"""``QueuedStorage``: the Storage API, routing each call to the local or the remote storage.

A file is written to the local storage, recorded ``pending`` in the ledger, and a transfer is
dispatched when the surrounding transaction commits. Until the ledger says ``remote`` every read
goes to the local copy; after, to the remote. The instance holds configuration only (no per-call
state), so one instance is safely shared by every thread.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar

from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.core.files.utils import validate_file_name
from django.db import transaction
from django.urls import reverse
from django.utils.deconstruct import deconstructible
from django.utils.encoding import filepath_to_uri

from queued_storage import quarantine
from queued_storage.conf import settings
from queued_storage.construction import (
    RENAMED_BACKENDS,
    ConfiguredStorage,
    is_alias,
    queued_entries,
    registered,
    registered_storages,
)
from queued_storage.dispatch import publishes_in_background, send_saved, send_transfer
from queued_storage.exceptions import FileRejected, StorageNotFound
from queued_storage.file_status import FileStatus, file_status
from queued_storage.ledger import check_staging_budget, ledger_database, reads_block_writes
from queued_storage.models import State
from queued_storage.names import stored_name
from queued_storage.staging import declared_size, free_names, make_durable, move_local
from queued_storage.state import FileState, cache_key
from queued_storage.transfer import (
    abort_open_upload,
    delete_remote,
    remote_holds,
)

__all__ = [
    "RENAMED_BACKENDS",
    "FileStatus",
    "Progress",
    "QueuedStorage",
    "get_queued_storage",
    "owned_by",
    "queued_storages",
]

if TYPE_CHECKING:
    from celery.result import AsyncResult

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: The owner the ledger records for files saved in this context (:func:`owned_by`).
_owner: ContextVar[str] = ContextVar("queued_storage_owner", default="")


@contextlib.contextmanager
def owned_by(owner: str) -> Iterator[None]:
    """Record *owner* (``str(user.pk)``) as the owner of every file saved in this block.

    The upload views save inside it; a project's own view can too, also around a model's
    ``FileField`` save, whose ``storage.save()`` takes no extra argument. The owner goes into
    the ledger row's single INSERT (``StoredFile.owner``; ``""`` outside any block, meaning
    unknown). A context variable, so it is per thread and per asyncio task: the storage
    instance, shared by every thread, holds no per-call state.
    """
    token = _owner.set(owner)
    try:
        yield
    finally:
        _owner.reset(token)


def get_queued_storage(alias: str) -> QueuedStorage:
    """The ``QueuedStorage`` a task message names: a ``STORAGES`` alias or a registered digest.

    Storages built in code (a field's ``storage=QueuedStorage(...)``, the old constructor)
    register themselves under a digest of their configuration when they are constructed, which
    in a worker happens when Django imports the project's models.
    """
    if is_alias(alias):
        found = storages[alias]
        if not isinstance(found, QueuedStorage):
            raise StorageNotFound(
                f"STORAGES[{alias!r}] is a {type(found).__name__}, not a QueuedStorage; a "
                "transfer task can only be sent for a QueuedStorage.",
                name="",
            )
        return found
    built = registered(alias)
    if not isinstance(built, QueuedStorage):
        raise StorageNotFound(
            f"This worker does not know the queued storage {alias!r}. A QueuedStorage built in "
            "code registers itself when the module that builds it is imported: make sure the "
            "worker imports it (Celery's Django integration imports every app's models.py), "
            "or configure the storage in settings.STORAGES.",
            name="",
        )
    return built


@deconstructible(path="queued_storage.storage.QueuedStorage")
class QueuedStorage(ConfiguredStorage):
    """Save locally, serve locally until the transfer to the remote storage is verified.

    New style (``settings.STORAGES``)::

        "default": {"BACKEND": "queued_storage.storage.QueuedStorage",
                    "OPTIONS": {"local": "staging", "remote": "s3", "delete_local": True}}

    Old style (django-queued-storage)::

        QueuedStorage(local="django.core.files.storage.FileSystemStorage",
                      remote="storages.backends.s3.S3Storage",
                      local_options={...}, remote_options={...},
                      task="queued_storage.tasks.TransferAndDelete")

    ``local`` and ``remote`` are ``STORAGES`` aliases, or dotted paths of storage classes built
    with ``local_options``/``remote_options``. The construction (options, Celery task, alias,
    registry) is :class:`~queued_storage.construction.ConfiguredStorage`'s; the staging-disk
    work is :mod:`queued_storage.staging`'s.
    """

    # -- state ----------------------------------------------------------------------------------
    def get_cache_key(self, name: str) -> str:
        """The cache key holding the state of *name* (hashed: any length, any characters)."""
        return cache_key(self.cache_prefix, self.alias, name)

    def get_state(self, name: str, *, fresh: bool = False) -> FileState | None:
        """The file's state (cache, then ledger); ``None`` when the ledger does not know it."""
        return self.ledger.state(name, fresh=fresh)

    def _serving(self, found: FileState | None) -> Storage:
        """The copy a file in state *found* is served from: remote once verified there."""
        return self.remote if found is not None and found.is_remote else self.local

    def _route(self, name: str) -> tuple[Storage, FileState | None]:
        """The one place that decides which copy serves *name*, and the state it decided by."""
        found = self.get_state(name)
        if found is not None and found.is_remote:
            return self.remote, found
        if self.local.exists(name):
            return self.local, found
        # The cached answer says "local" but there is no local copy: it may be stale (the
        # transfer finished and deleted the local copy). Ask the ledger itself.
        found = self.get_state(name, fresh=True)
        # A name the ledger does not know is the local storage's, as in django-queued-storage:
        # a write goes there (then save() or transfer() records it), and nothing asks the remote.
        # Objects stored remotely before this app managed the storage are found after
        # ``manage.py queued_storage seed``, which records them.
        return self._serving(found), found

    def get_storage(self, name: str) -> Storage:
        """The storage that serves *name* now: ``self.local`` or ``self.remote``."""
        return self._route(name)[0]

    def get_progress(self, name: str) -> Progress | None:
        """How far the file's transfer is: state, bytes done and total; ``None`` if unknown.

        A running transfer's figures come from the cache (written about once a second by the
        worker), else from the ledger; never from the remote.
        """
        found = self.get_state(name)
        if found is None:
            return None
        total = found.size or 0
        if found.is_remote:
            return Progress(found.state, total, total)
        running = self.ledger.progress(name)
        if running is None:
            return None
        return Progress(found.state, running[0], running[1] or total)

    def status(self, name: str) -> FileStatus | None:
        """What a status page shows of *name* (:func:`queued_storage.file_status.file_status`);
        ``None`` if the ledger has no row for it."""
        return file_status(self, name)

    def get_owner(self, name: str) -> str | None:
        """Who uploaded *name* (``StoredFile.owner``: a user's pk as a string, ``""`` when
        unknown); ``None`` when the ledger has no row for it. One query of the row."""
        row = self.ledger.row(name)
        return None if row is None else row.owner

    def using_local(self, name: str) -> bool:
        return self.get_storage(name) is self.local

    def using_remote(self, name: str) -> bool:
        return self.get_storage(name) is self.remote

    # -- writing ----------------------------------------------------------------------------------
    def save(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        """Write locally, record the ``pending`` row in one INSERT, transfer after commit.

        The ledger is the authority for the names this storage holds, so a save makes no call
        to the remote storage (a slow, hanging or unreachable S3 changes nothing here). The
        local storage picks a name that is free on its disk; the row's unique key then decides
        across processes and hosts: a name the ledger already holds (a file served from the
        remote, one on another host) moves the local file to a free alternative. Objects put
        in the bucket by other means are reserved by ``manage.py queued_storage seed``, and the
        transfer's ``If-None-Match: *`` never overwrites one; ``QUEUED_STORAGE_REMOTE_CHECK_
        TIMEOUT`` also asks the remote, with a hard timeout.
        """
        if name is None:
            name = content.name
        if not name:
            raise SuspiciousFileOperation("QueuedStorage.save() needs a file name.")
        # Django's contract: the name as given is validated before anything else (before the
        # content is looked at, and before get_available_name()), with Django's own message.
        validate_file_name(str(name), allow_relative_path=True)
        if not hasattr(content, "chunks"):
            content = File(content, name)
        name = stored_name(str(name), max_length)
        if type(self).get_available_name is not Storage.get_available_name:
            # A subclass chooses names (UUIDs, say): it proposes, the ledger still decides.
            proposed = self.get_available_name(name, max_length)
            validate_file_name(str(proposed), allow_relative_path=True)
            name = stored_name(proposed, max_length)
        # The budget is read before the local write, where that cannot break the transaction
        # (SQLite); else after the row's INSERT, in its savepoint.
        budget_first = not reads_block_writes()
        if budget_first:
            check_staging_budget(name, declared_size(content))
        try:
            stored = self.local.save(name, content, max_length=max_length)
        except (FileExistsError, NotADirectoryError) as err:
            # FileSystemStorage could not make the file's folders: one of them is a file.
            raise SuspiciousFileOperation(
                f"QueuedStorage cannot store {name!r}: a folder of that name is a file in the "
                "local storage. Choose a name whose folders are not files; nothing was kept."
            ) from err
        except OSError as err:
            if err.errno != errno.ENAMETOOLONG:
                raise
            # The name is taken on the local disk, and the free variant the local storage chose
            # (a suffix of 8 characters) is longer than its filesystem allows.
            raise SuspiciousFileOperation(
                f"QueuedStorage cannot store {name!r}: the local storage holds a file of that "
                "name, and a free variant of it is longer than its filesystem allows. Choose "
                "a shorter name; nothing was kept."
            ) from err
        declared = getattr(content, "content_type", None)
        stored = self._record(
            name,
            stored,
            max_length,
            declared=declared if isinstance(declared, str) else "",
            check_budget=not budget_first,
        )
        if not self.delayed:
            transaction.on_commit(lambda: self._dispatch_saved(stored), using=ledger_database())
        return stored

    def _record(
        self,
        name: str,
        stored: str,
        max_length: int | None,
        *,
        declared: str = "",
        check_budget: bool = False,
    ) -> str:
        """Insert the row of the local file *stored*; the name it was recorded under.
        *declared*: the content type its uploader declared (an ``UploadedFile``'s
        ``content_type``, a tus upload's ``filetype``), kept for the processors.

        When the ledger (or, if asked, the remote) holds *stored* already, the local file
        moves to an alternative built as Django's ``get_available_name`` builds them (random
        suffix, file root truncated to ``max_length``) until a row can be inserted. If that
        fails, the local file is deleted: no row names it, so nothing else can own it.
        """
        try:
            size = self.local.size(stored)
            for candidate in free_names(name, stored, max_length, self.get_alternative_name):
                if candidate != stored:
                    if not move_local(self.local, stored, candidate):
                        continue
                    stored = candidate
                make_durable(self.local, stored)
                if not remote_holds(self.remote, stored) and self.ledger.saved(
                    stored,
                    settings.HOST,
                    size,
                    owner=_owner.get(),
                    declared=declared,
                    check_budget=check_budget,
                ):
                    return stored
        except BaseException:
            self.local.delete(stored)
            raise
        self.local.delete(stored)
        raise SuspiciousFileOperation(f"QueuedStorage could not find a free name for {name!r}.")

    def _dispatch(
        self, name: str, *, host: str | None = None, keep_result: bool = False
    ) -> AsyncResult | None:
        result = send_transfer(self, name, host=host, keep_result=keep_result)
        if result is None:
            self._record_refusal(name)
        return result

    def _dispatch_saved(self, name: str) -> None:
        """A save's dispatch (at its commit): the one that sets :attr:`result`. The message
        is handed to the process's publisher thread (:class:`dispatch.Publisher`), the
        request does not wait for the broker, unless it is inside a transaction (a test
        case's, whose row the publisher's own connection could not see) or the task is not
        sent in the background: then it sends it itself."""
        inline = transaction.get_connection(ledger_database()).in_atomic_block
        if inline or not publishes_in_background(self):
            self._calls.result = self._dispatch(name)
            return
        self._calls.result = send_saved(
            self, name, lambda: self._record_refusal(name), lambda: self.ledger.still_refused(name)
        )

    def _record_refusal(self, name: str) -> None:
        """Mark the row refused, so that a starting worker or the next reconcile pass queues it
        at once. Runs after the commit: a failure is logged, not raised into the request (the
        file is saved; the pass queues it once it is overdue)."""
        try:
            self.ledger.refused(name)
        except Exception:
            logger.warning(
                "could not record that the broker refused the transfer of %r; the reconcile "
                "pass queues it once it is overdue",
                name,
                exc_info=True,
            )

    def transfer(self, name: str) -> AsyncResult | None:
        """Queue the transfer of *name* now (the old API); a ``failed`` file gets a new budget.

        Returns the Celery ``AsyncResult``, or ``None`` when the broker refused the message
        (the file stays ``pending``; the reason is logged). :attr:`result` is left as it was.
        """
        row = self.ledger.row(name)
        if row is not None and row.state == State.UPLOADING:
            raise ValueError(
                f"QueuedStorage cannot transfer {name!r}: it is being uploaded directly to the "
                "remote storage by its client (state 'uploading'); its completion records it."
            )
        if row is None:
            if not self.local.exists(name):
                raise FileNotFoundError(
                    f"QueuedStorage cannot transfer {name!r}: it has no local copy and no "
                    "ledger row."
                )
            self.ledger.saved(name, settings.HOST, self.local.size(name))
        else:
            self.ledger.retry(name)
        return self._dispatch(name, host=row.host if row is not None else None, keep_result=True)

    def delete(self, name: str) -> None:
        """Delete every copy and the ledger row.

        The row goes first: a transfer still running for this name then cannot record it and
        removes what it uploaded, so nothing comes back.
        """
        row = self.ledger.forget(name)
        if row is not None:
            abort_open_upload(self.remote, name, row.upload_id)
        self.local.delete(name)
        if row is not None and row.state == State.REJECTED:
            quarantine.discard(self.alias, name)
        try:
            delete_remote(self.remote, name)
        except Exception:
            logger.error(
                "could not delete the remote copy of %r; delete it by hand",
                name,
                exc_info=True,
            )
            raise

    # -- reading ----------------------------------------------------------------------------------
    def _read(self, name: str, read: Callable[[Storage, FileState | None], _T]) -> _T:
        """*read* from the copy that serves *name*; when the local copy vanishes between the
        routing and the read (its transfer just finished and deleted it), from the remote,
        which the ledger then says holds it. Reads never fail during the switch."""
        storage, found = self._route(name)
        try:
            return read(storage, found)
        except FileNotFoundError:
            if storage is not self.local:
                raise
            found = self.get_state(name, fresh=True)
            if found is None or not found.is_remote:
                raise
            return read(self.remote, found)

    def _open(self, name: str, mode: str = "rb") -> File[Any]:
        def read(storage: Storage, found: FileState | None) -> File[Any]:
            if found is not None and found.state == State.REJECTED:
                row = self.ledger.row(name)
                raise FileRejected(name, row.last_error if row is not None else "")
            return storage.open(name, mode)

        return self._read(name, read)

    def exists(self, name: str) -> bool:
        """From the ledger and the local disk, never from the remote's network API."""
        found = self.get_state(name)
        if found is not None and found.is_remote:
            return True
        if self.local.exists(name):
            return True
        # No local copy: a cached state may lag behind a transfer that just deleted it.
        found = self.get_state(name, fresh=True)
        return found is not None and found.is_remote

    def size(self, name: str) -> int:
        def read(storage: Storage, found: FileState | None) -> int:
            if storage is self.remote and found is not None and found.size is not None:
                return found.size
            return storage.size(name)

        return self._read(name, read)

    def url(self, name: str | None) -> str:
        """The URL of the copy that serves *name*; a name the ledger does not know (even one
        that is no valid file name, such as ``"/evil.com"``) is the local storage's to answer.

        A waiting file's URL is the staged-file view's when ``QUEUED_STORAGE_SERVE_STAGED``
        names one for this storage (:meth:`waiting_url`)."""
        if name is None or self.get_state(name) is None:
            return self.local.url(name)
        storage = self.get_storage(name)
        return self.waiting_url(name) if storage is self.local else storage.url(name)

    def waiting_url(self, name: str) -> str:
        """The URL of *name* while it is served from the local copy: the view that
        ``QUEUED_STORAGE_SERVE_STAGED`` names for this storage (a URL name, reversed with
        ``name``, or a path prefix), else the local storage's own URL."""
        target = settings.serve_staged_for(self.alias)
        if target is None:
            return self.local.url(name)
        if "/" in target:
            return target + filepath_to_uri(name)
        return reverse(target, kwargs={"name": name})

    def path(self, name: str) -> str:
        storage = self.get_storage(name)
        if storage is self.remote and not self.local.exists(name):
            raise NotImplementedError(
                f"{name!r} is only on the remote storage now, which has no filesystem path; "
                "read it with storage.open(name)."
            )
        return self.local.path(name)

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        """Directories and files of *path* in either storage, merged; a side without the
        directory contributes nothing (``FileNotFoundError`` only when neither has it)."""
        sides = []
        for storage in (self.local, self.remote):
            try:
                sides.append(storage.listdir(path))
            except FileNotFoundError:
                continue
        if not sides:
            raise FileNotFoundError(f"No directory {path!r} in either storage.")
        return (
            sorted({d for dirs, _ in sides for d in dirs}),
            sorted({f for _, files in sides for f in files}),
        )

    def _timed(self, name: str) -> Storage:
        """The copy whose times describe *name*: the local copy while it exists (the one
        ``path()`` names), else the remote. One file, one set of answers."""
        return self.local if self.local.exists(name) else self.get_storage(name)

    def get_accessed_time(self, name: str) -> datetime.datetime:
        return self._timed(name).get_accessed_time(name)

    def get_created_time(self, name: str) -> datetime.datetime:
        return self._timed(name).get_created_time(name)

    def get_modified_time(self, name: str) -> datetime.datetime:
        return self._timed(name).get_modified_time(name)

    def open_local(self, name: str, mode: str = "rb") -> IO[bytes]:
        """The local copy, whatever the state (for tools that need the staged file)."""
        return self.local.open(name, mode)


@dataclass(frozen=True)
class Progress:
    """A file's transfer progress: its state and ``done`` of ``total`` bytes sent."""

    state: str
    done: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 1)


def queued_storages() -> list[QueuedStorage]:
    """Every ``QueuedStorage`` this process knows: those in ``STORAGES``, then those built in
    code (registered when constructed). Entries that cannot be built are left out (the system
    checks report them)."""
    found: dict[str, QueuedStorage] = {}
    for alias, _options, _backend in queued_entries():
        try:
            storage = storages[alias]
        except Exception:
            continue
        if isinstance(storage, QueuedStorage):
            found.setdefault(storage.alias, storage)
    for built in registered_storages():
        if isinstance(built, QueuedStorage):
            found.setdefault(built.alias, built)
    return list(found.values())
