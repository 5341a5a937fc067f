"""Testing a project that uses queued_storage: transfers run at once, in the test's process.

:class:`synchronous_transfers` (a context manager and a decorator) makes every queued storage
this process knows send its files to a local directory instead of its remote (S3), runs each
transfer in the calling thread when it is dispatched (no broker, no worker), and keeps the
files' states in a cache of this process (``LocMemCache``): no Redis and no S3 server needed.

A save dispatches its transfer when its transaction commits. In a ``django.test.TestCase``
(and pytest-django's ``db`` fixture) the test's transaction never commits, so run the commit
callbacks of the code that saves with :meth:`SynchronousTransfers.run_on_commit` (Django's
``captureOnCommitCallbacks(execute=True)``)::

    from queued_storage.testing import SynchronousTransfersMixin


    class VideoTests(SynchronousTransfersMixin, TestCase):
        def test_upload_reaches_the_remote(self):
            with self.transfers():
                video = Video.objects.create(file=ContentFile(b"data", name="a.mp4"))
            self.assertEqual(video.file.state, "remote")
            self.assertEqual((self.remote_dir / video.file.name).read_bytes(), b"data")

With pytest-django, add ``pytest_plugins = ["queued_storage.testing"]`` to your
``conftest.py`` and use the ``queued_transfers`` fixture (a :class:`SynchronousTransfers`).

What it changes, until the block ends: the ``remote`` (and, with ``staging_dir=``, the
``local``) storage of every ``QueuedStorage`` built so far (those in ``STORAGES`` are built
now) and the Celery task each one sends; ``CACHES`` gains ``"queued_storage_testing"``, which
``QUEUED_STORAGE_CACHE`` names. Not for concurrent use: the storages are shared by every
thread. A storage built inside the block (``override_settings(STORAGES=...)`` rebuilds them)
is not changed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ContextDecorator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from django.conf import settings as django_settings
from django.core.files.storage import FileSystemStorage, Storage
from django.test import TestCase, override_settings

from queued_storage.ledger import ledger_database
from queued_storage.storage import QueuedStorage, queued_storages

if TYPE_CHECKING:
    from celery import Task
    from celery.result import EagerResult

try:
    import pytest
except ImportError:  # pytest is optional: the TestCase helpers work without it
    pytest = None  # type: ignore[assignment]

__all__ = [
    "CACHE_ALIAS",
    "SynchronousTransfers",
    "SynchronousTransfersMixin",
    "synchronous_transfers",
]

#: The ``CACHES`` alias of the process-local state cache the helper adds.
CACHE_ALIAS = "queued_storage_testing"


class _EagerTask:
    """A storage's Celery task whose ``apply_async`` runs it at once, in this thread.

    ``Task.apply`` needs no broker and stores no result; errors propagate to the test
    (``throw=True``). Everything else is the task's own.
    """

    def __init__(self, task: Task) -> None:
        self._task = task

    @property
    def name(self) -> str:
        return str(self._task.name)

    def apply_async(
        self,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> EagerResult:  # options (queue, ignore_result) only matter to a broker
        return self._task.apply(args=args, kwargs=kwargs, throw=True)

    def __getattr__(self, attribute: str) -> object:
        return getattr(self._task, attribute)


class SynchronousTransfers(ContextDecorator):
    """Run transfers synchronously into *remote_dir* (a new temporary directory by default,
    removed afterwards); see the module. With *staging_dir*, files are also staged there.

    ``with synchronous_transfers() as transfers:`` gives this object: ``remote_dir`` (a
    ``Path``), ``remote`` (the ``FileSystemStorage`` standing in for every remote) and
    :meth:`run_on_commit`.
    """

    def __init__(
        self, remote_dir: str | Path | None = None, *, staging_dir: str | Path | None = None
    ) -> None:
        self._given = remote_dir
        self._staging_dir = staging_dir
        self._saved: list[tuple[QueuedStorage, Storage, Storage, Task]] = []
        self._settings: override_settings | None = None
        self._made: Path | None = None
        self.remote_dir = Path(remote_dir) if remote_dir is not None else Path()
        self.remote = FileSystemStorage(location=str(self.remote_dir))

    def __enter__(self) -> SynchronousTransfers:
        if self._saved or self._settings is not None:
            raise RuntimeError("synchronous_transfers() is already active; it does not nest.")
        if self._given is None:
            self._made = Path(tempfile.mkdtemp(prefix="queued-storage-remote-"))
            self.remote_dir = self._made
        self.remote_dir.mkdir(parents=True, exist_ok=True)
        self.remote = FileSystemStorage(location=str(self.remote_dir))
        caches = dict(getattr(django_settings, "CACHES", {}))
        caches[CACHE_ALIAS] = {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"{CACHE_ALIAS}-{id(self)}",
        }
        self._settings = override_settings(CACHES=caches, QUEUED_STORAGE_CACHE=CACHE_ALIAS)
        self._settings.enable()
        local = (
            FileSystemStorage(location=str(self._staging_dir))
            if self._staging_dir is not None
            else None
        )
        for storage in queued_storages():
            self._saved.append((storage, storage.local, storage.remote, storage.task))
            storage.remote = self.remote
            storage.task = _EagerTask(storage.task)
            if local is not None:
                storage.local = local
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for storage, local, remote, task in reversed(self._saved):
            storage.local, storage.remote, storage.task = local, remote, task
        self._saved = []
        if self._settings is not None:
            self._settings.disable()
            self._settings = None
        if self._made is not None:
            shutil.rmtree(self._made, ignore_errors=True)
            self._made = None

    def run_on_commit(self) -> AbstractContextManager[list[Callable[[], object]]]:
        """``with transfers.run_on_commit():`` runs, when the block ends, the on-commit
        callbacks it registered in the ledger's database (the transfers of its saves, and
        those their transitions register), as ``captureOnCommitCallbacks(execute=True)``
        does. Needed where the test's transaction never commits (``TestCase``)."""
        return TestCase.captureOnCommitCallbacks(using=ledger_database(), execute=True)


#: The usual spelling: ``with synchronous_transfers():`` or ``@synchronous_transfers()``.
synchronous_transfers = SynchronousTransfers

if TYPE_CHECKING:
    _MixinBase = TestCase
else:
    _MixinBase = object


class SynchronousTransfersMixin(_MixinBase):
    """For ``django.test.TestCase``: each test runs inside :class:`synchronous_transfers`
    (``self.remote_dir``, ``self.queued_transfers``); wrap the code that saves in
    ``with self.transfers():`` to run its transfers when the block ends."""

    queued_transfers: SynchronousTransfers
    remote_dir: Path

    def setUp(self) -> None:
        super().setUp()
        transfers = SynchronousTransfers()
        self.queued_transfers = transfers.__enter__()
        self.remote_dir = transfers.remote_dir
        self.addCleanup(transfers.__exit__, None, None, None)

    def transfers(self) -> AbstractContextManager[list[Callable[[], object]]]:
        """:meth:`SynchronousTransfers.run_on_commit`."""
        return self.queued_transfers.run_on_commit()


if pytest is not None:

    @pytest.fixture
    def queued_transfers(tmp_path: Path) -> Iterator[SynchronousTransfers]:
        """:class:`synchronous_transfers` into ``tmp_path / "remote"`` for one test (enable
        with ``pytest_plugins = ["queued_storage.testing"]``; the test needs the database:
        ``@pytest.mark.django_db``). Use ``queued_transfers.run_on_commit()`` around saves
        unless the test is ``transaction=True``."""
        with SynchronousTransfers(tmp_path / "remote") as transfers:
            yield transfers
