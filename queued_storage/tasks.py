"""The Celery tasks: thin glue around :func:`queued_storage.worker.run_transfer`.

Task messages carry two plain strings, the storage alias and the file name. The policy (lease,
engine, outcome, retries) is the worker's. No message waits on a worker longer than it takes a
pool process to start it: a transfer's message is acknowledged when it starts (the ledger's
lease, not the message, keeps a lost worker's file: the watch and the reconcile pass take an
expired lease back), and a retry is a due time in the ledger (``retry_at``), not a Celery
countdown: the task ends, and the workers' watch sends it again when it is due. So neither a
long transfer nor a long outage holds a delivery past RabbitMQ's ``consumer_timeout`` or
Redis's ``visibility_timeout``.

:class:`Transfer` and :class:`TransferAndDelete` are task classes, as in django-queued-storage:
a subclass that overrides ``transfer(self, name, local, remote)`` replaces the engine with its
own copy (``True``: done, then checked as any transfer; ``False``: retry later). Every subclass
is registered with every Celery app under its dotted path when it is defined, so a worker that
imports the module defining it (Celery's ``autodiscover_tasks`` does) knows it.

When a worker starts (Celery's ``worker_ready``), a thread of it queues its host's transfers
the broker refused and re-queues its expired leases and overdue transfers
(``reconcile.start_up_passes``); while its consumer runs, :class:`WatchStep` watches its host's
rows every ``QUEUED_STORAGE_WATCH_INTERVAL`` seconds (retries that are due, leases that
expired), so that files saved while the broker was down, retries and what a dead worker held
do not wait for the next scheduled reconcile pass.

A pool process keeps its connection to the ledger database from one transfer to the next
(:class:`~queued_storage.kept_connection.KeptConnection`): Celery's Django fixup closes every
connection of the task's thread before and after each task, whatever ``CONN_MAX_AGE`` says,
and a new connection per small file costs more of the worker's CPU than the file's own ledger
writes.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, ClassVar

from celery import Task, bootsteps, shared_task
from celery import _state as celery_state
from celery.local import Proxy
from celery.signals import worker_init, worker_process_shutdown, worker_ready
from django.core.files.storage import Storage

from queued_storage.conf import settings
from queued_storage.dispatch import routed_queue
from queued_storage.kept_connection import kept_connection
from queued_storage.reconcile import reconcile as run_pass
from queued_storage.reconcile import start_up_passes, watch_once
from queued_storage.storage import queued_storages
from queued_storage.worker import RetryLater, TransferHook, run_transfer

if TYPE_CHECKING:
    from celery import Celery
    from celery.worker import WorkController
    from celery.worker.consumer import Consumer

__all__ = [
    "LEASED",
    "RETRY_DUE",
    "Transfer",
    "TransferAndDelete",
    "WatchStep",
    "reconcile",
    "transfer",
    "watched_aliases",
]

#: What a transfer task returns when it recorded a retry (due at the row's ``retry_at``) ...
RETRY_DUE = "retry-due"
#: ... and when another worker holds the file's lease (its outcome is that worker's).
LEASED = "leased-elsewhere"


def _share(task_class: type[Transfer]) -> None:
    """Register *task_class* with every Celery app, now and when one is finalized (what
    ``shared_task`` does for functions)."""

    def register(app: Celery) -> Task:
        found = app.tasks.get(task_class.name)
        if type(found) is task_class:
            return found
        return app.register_task(task_class())

    celery_state.connect_on_app_finalize(register)
    for app in celery_state._get_active_apps():
        if app.finalized:
            with app._finalize_mutex:
                register(app)


class Transfer(Task):  # type: ignore[misc]
    """Transfer a file of a queued storage: ``run(alias, name)``, with the storage's
    ``delete_local`` (django-queued-storage's name for the keep-the-local-copy task)."""

    name = "queued_storage.tasks.transfer"
    #: Acknowledged when a pool process starts it: the ledger's lease keeps the file of a
    #: worker lost mid-transfer (the module docstring), not an unacknowledged message.
    acks_late = False
    max_retries = None
    #: Kept only when asked for (``storage.transfer(name)``): a save's dispatch stays cheap.
    ignore_result = True
    #: ``None``: the storage's ``delete_local``; ``True``: always delete the local copy.
    delete_local: ClassVar[bool | None] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}.{cls.__qualname__}"
        _share(cls)

    def run(self, alias: str, name: str) -> str:
        # Only in a worker's own thread (prefork, solo): never the caller's connection of an
        # eager or direct call, never a thread or greenlet of another pool.
        request = self.request
        keep = (
            not request.called_directly
            and not request.is_eager
            and threading.current_thread() is threading.main_thread()
        )
        if keep:
            return kept_connection.run(lambda: self._transfer(alias, name))
        return self._transfer(alias, name)

    def _transfer(self, alias: str, name: str) -> str:
        try:
            return run_transfer(
                alias, name, delete_local=self.delete_local, hook=self.transfer_hook
            ).value
        except RetryLater as later:
            # Recorded in the ledger: a retry due at ``retry_at``, or another worker's lease.
            return LEASED if later.leased else RETRY_DUE

    @property
    def transfer_hook(self) -> TransferHook | None:
        """This task's own :meth:`transfer` where a subclass overrides it, else ``None`` (the
        engine runs): what :meth:`run` and ``manage.py queued_storage transfer --sync`` pass
        to ``run_transfer``."""
        return None if type(self).transfer is Transfer.transfer else self.transfer

    def transfer(self, name: str, local: Storage, remote: Storage, **kwargs: object) -> object:
        """django-queued-storage's hook: copy *name* from *local* to *remote* yourself.

        Return ``True`` when the remote holds the file (it is then checked: the remote object
        must exist with the local size), ``False`` to be retried with the usual backoff;
        anything else fails the file with a reason naming this class, and the task with
        :class:`~queued_storage.exceptions.BadHookResult` (a ``ValueError``, as the old app
        raised), so that ``result.get()`` raises it. Not overridden, the verified, resumable
        engine runs instead.
        """
        raise NotImplementedError


@worker_process_shutdown.connect
def _close_kept(**kwargs: object) -> None:
    """A pool process that exits closes the connection it kept."""
    kept_connection.close()


class TransferAndDelete(Transfer):
    """django-queued-storage's name: transfer, then delete the local copy."""

    name = "queued_storage.tasks.TransferAndDelete"
    delete_local = True


_share(Transfer)

#: The default transfer task of the current Celery app (``transfer.delay(alias, name)``).
transfer: Task = Proxy(lambda: celery_state.get_current_app().tasks[Transfer.name])


@shared_task(name="queued_storage.tasks.reconcile", ignore_result=True)
def reconcile(failed: bool = False, adopt: bool = False, all_hosts: bool = False) -> dict[str, int]:
    """One reconcile pass on the worker's host (schedule it with Celery beat:
    docs/quickstart.md).

    Returns the pass's counts. Data loss is logged as an error by the pass itself; the task
    does not fail for it, so that the schedule keeps running.
    """
    return run_pass(failed=failed, adopt=adopt, all_hosts=all_hosts).counts()


def watched_aliases(app: Celery, queues: Collection[str]) -> list[str]:
    """The queued storages whose transfers from this host go to one of *queues* (those a
    worker consumes)."""
    return [s.alias for s in queued_storages() if routed_queue(app, s) in queues]


class WatchStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A step of the worker's consumer: while the consumer runs (and again after each
    reconnection to the broker, which restarts it), :func:`~queued_storage.reconcile.watch_once`
    every ``QUEUED_STORAGE_WATCH_INTERVAL`` seconds on the consumer's timer, in the loop that
    also forks the pool processes, so never beside a fork."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Consumer, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self.entry: Any = None

    def start(self, parent: Consumer) -> None:
        if settings.WATCH_INTERVAL <= 0 or parent.timer is None:
            return
        app = parent.app
        aliases = watched_aliases(app, set(app.amqp.queues.consume_from or ()))
        self.entry = parent.timer.call_repeatedly(settings.WATCH_INTERVAL, watch_once, (aliases,))

    def stop(self, parent: Consumer) -> None:
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None

    shutdown = stop


@worker_init.connect
def _add_the_watch(sender: WorkController | None = None, **kwargs: object) -> None:
    """Give the worker's consumer its :class:`WatchStep` (``worker_init`` comes before the
    consumer is built)."""
    if sender is not None:
        sender.app.steps["consumer"].add(WatchStep)


@worker_ready.connect
def _reconcile_on_start(**kwargs: object) -> None:
    """A worker that starts re-queues what a dead one left (``reconcile.start_up_passes``), in
    a thread of its own: start-up waits for nothing (``QUEUED_STORAGE_RECONCILE_ON_START``)."""
    if settings.RECONCILE_ON_START > 0:
        threading.Thread(
            target=start_up_passes, name="queued-storage-reconcile-on-start", daemon=True
        ).start()
