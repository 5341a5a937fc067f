"""The Celery tasks: thin glue around :func:`queued_storage.worker.run_transfer`.

Task messages carry two plain strings, the storage alias and the file name. The policy (lease,
engine, outcome, retries) is the worker's; a :class:`~queued_storage.worker.RetryLater` becomes
a Celery retry after its countdown.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from queued_storage.reconcile import reconcile as run_pass
from queued_storage.worker import RetryLater, run_transfer

__all__ = ["Transfer", "TransferAndDelete", "reconcile", "transfer"]


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


@shared_task(name="queued_storage.tasks.reconcile", ignore_result=True)
def reconcile(failed: bool = False, adopt: bool = False, all_hosts: bool = False) -> dict[str, int]:
    """One reconcile pass on the worker's host (schedule it with Celery beat; see the README).

    Returns the pass's counts. Data loss is logged as an error by the pass itself; the task
    does not fail for it, so that the schedule keeps running.
    """
    return run_pass(failed=failed, adopt=adopt, all_hosts=all_hosts).counts()
