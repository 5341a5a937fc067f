"""The ledger admin's actions, and the same actions on a selection of many files queued in
batches for the workers instead of run in one long request.

Each action (:data:`ACTIONS`) takes ledger rows and returns a message level and the text the
admin shows; its work is :mod:`queued_storage.operations`' (and :func:`~queued_storage.verify.
verify`'s). :func:`queue_batches` sends the primary keys of the selected files the action can
act on (:data:`ELIGIBLE`), :data:`BATCH` at a time, to :func:`run_batch`: a message carries
the action's name and the keys, nothing else. A batch goes to the queue of the host that holds
its files' local copies (``storage.queue_for(host)``), as their transfers do: deleting a local
copy, or retrying a file whose local copy is needed, happens on that host.

The task is registered with Celery when this module is imported, which Django's admin does in
every process that runs ``django.setup()`` with ``django.contrib.admin`` installed (a worker
too: its ``autodiscover`` imports ``queued_storage.admin``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import shared_task
from django.contrib import messages
from django.db.models import Q, QuerySet

from queued_storage.dispatch import redact
from queued_storage.models import State, StoredFile
from queued_storage.operations import (
    Storages,
    abort_direct_rows,
    drop_verified_local_copies,
    release_rows,
    retry_failed_rows,
    transfer_rows,
)
from queued_storage.verify import VerifyReport, verify

__all__ = [
    "ACTIONS",
    "ADMIN_REMOTE_TIMEOUT",
    "BATCH",
    "ELIGIBLE",
    "LISTED",
    "Queued",
    "queue_batches",
    "run_batch",
]

logger = logging.getLogger(__name__)

#: Seconds an S3 request of an admin action may take (no retries): a request must not hang
#: on an unreachable remote; what could not be asked is reported unchecked.
ADMIN_REMOTE_TIMEOUT = 10.0
#: Problems listed by name in an action's message (the rest are counted).
LISTED = 10
#: Files per queued batch.
BATCH = 1_000
#: Primary keys read per query while the batches are made.
_PAGE = 10_000

Rows = QuerySet[StoredFile]


def _level(report: VerifyReport) -> int:
    if report.lost:
        return messages.ERROR
    return messages.SUCCESS if report.ok else messages.WARNING


def _problems(report: VerifyReport) -> str:
    listed = [str(problem) for problem in report.problems[:LISTED]]
    more = len(report.problems) - len(listed)
    if more > 0:
        listed.append(f"and {more} more")
    return (" " + "; ".join(listed)) if listed else ""


def transfer_now(rows: Rows) -> tuple[int, str]:
    done = transfer_rows(rows.iterator())
    level = messages.SUCCESS if done.queued else messages.INFO
    return level, f"Transfer now: {done.message() or 'nothing to transfer'}."


def retry_failed(rows: Rows) -> tuple[int, str]:
    done = retry_failed_rows(rows.iterator())
    level = messages.WARNING if done.no_local or done.refused else messages.SUCCESS
    return level, f"Retry failed: {done.message() or 'nothing to retry'}."


def verify_remote(rows: Rows) -> tuple[int, str]:
    report = verify(rows, timeout=ADMIN_REMOTE_TIMEOUT)
    return _level(report), f"Verify: {report.summary()}{_problems(report)}"


def delete_local_copy(rows: Rows) -> tuple[int, str]:
    done = drop_verified_local_copies(rows.iterator(), timeout=ADMIN_REMOTE_TIMEOUT)
    level = messages.SUCCESS if not done.kept else _level(done.report)
    text = f"Delete the local copy: {done.message() or 'nothing to delete'}."
    return level, text + (_problems(done.report) if done.kept else "")


def release_rejected(rows: Rows) -> tuple[int, str]:
    done = release_rows(rows.iterator())
    level = messages.WARNING if done.no_local or done.refused else messages.SUCCESS
    return level, f"Release: {done.message() or 'nothing to release'}."


def abort_direct(rows: Rows) -> tuple[int, str]:
    done = abort_direct_rows(rows.iterator())
    level = messages.WARNING if done.errors else messages.SUCCESS if done.aborted else messages.INFO
    problems = "; ".join(done.errors[:LISTED])
    text = f"Abort direct uploads: {done.message() or 'nothing to abort'}."
    return level, text + (f" {problems}" if problems else "")


#: The actions by name: rows in, ``(message level, text)`` out.
ACTIONS: dict[str, Callable[[Rows], tuple[int, str]]] = {
    "transfer_now": transfer_now,
    "retry_failed": retry_failed,
    "verify_remote": verify_remote,
    "delete_local_copy": delete_local_copy,
    "abort_direct": abort_direct,
    "release_rejected": release_rejected,
}
#: The files each action can act on (the others it only counts as skipped), and their words.
ELIGIBLE: dict[str, tuple[Q, str]] = {
    "transfer_now": (Q(state__in=(State.PENDING, State.FAILED)), "pending or failed"),
    "retry_failed": (Q(state=State.FAILED), "failed"),
    "verify_remote": (Q(state=State.REMOTE), "remote"),
    "delete_local_copy": (Q(state=State.REMOTE, local_exists=True), "remote"),
    "abort_direct": (Q(state=State.UPLOADING), "uploading"),
    "release_rejected": (Q(state=State.REJECTED), "rejected"),
}
_TITLES = {
    "transfer_now": "Transfer now",
    "retry_failed": "Retry failed",
    "verify_remote": "Verify",
    "delete_local_copy": "Delete the local copy",
    "abort_direct": "Abort direct uploads",
    "release_rejected": "Release",
}


@shared_task(name="queued_storage.batches.run_batch", ignore_result=True)  # type: ignore[untyped-decorator]
def run_batch(action: str, pks: list[int]) -> str:
    """Run the admin action *action* on the ledger rows *pks* (those still there); its
    message is logged and returned."""
    if action not in ACTIONS:
        raise ValueError(f"unknown admin action {action!r}: use one of {', '.join(ACTIONS)}")
    rows = StoredFile.all_rows().filter(pk__in=pks).order_by("pk")
    level, text = ACTIONS[action](rows)
    logged = logging.INFO if level in (messages.SUCCESS, messages.INFO) else logging.WARNING
    logger.log(logged, "admin action on a batch of %d file(s): %s", len(pks), text)
    return text


@dataclass
class Queued:
    """What :func:`queue_batches` sent."""

    action: str
    size: int
    batches: int = 0
    files: int = 0
    #: Why the broker refused a batch (the rest was not sent), or ``""``.
    refused: str = ""

    def message(self) -> tuple[int, str]:
        words = ELIGIBLE[self.action][1]
        text = (
            f"{_TITLES[self.action]}: {self.files:,} selected {words} file(s) queued for the "
            f"workers in {self.batches:,} batch(es) of up to {self.size:,}; each batch logs "
            "what it did."
        )
        if not self.refused:
            return messages.SUCCESS, text
        return messages.ERROR, (
            f"{text} The broker refused the next batch ({self.refused}): the other selected "
            "files were not queued; run the action again when the broker is back."
        )


def _queue_of(storages: Storages, alias: str, host: str) -> str | None:
    storage = storages.get(alias)
    return None if storage is None else storage.queue_for(host or None)


def queue_batches(action: str, rows: Rows, size: int = BATCH) -> Queued:
    """Send the primary keys of the *rows* that *action* can act on to :func:`run_batch`,
    *size* at a time, one batch per storage and host; once the broker refuses a batch, no
    other is sent."""
    done = Queued(action, size)
    storages = Storages()
    eligible = rows.filter(ELIGIBLE[action][0]).order_by("pk")
    keys = eligible.values_list("pk", "alias", "host")
    waiting: dict[tuple[str, str], list[int]] = {}

    def send(where: tuple[str, str]) -> bool:
        pks = waiting.pop(where)
        try:
            run_batch.apply_async(args=[action, pks], queue=_queue_of(storages, *where))
        except Exception as err:
            done.refused = f"{type(err).__name__}: {redact(str(err))}"
            logger.warning(
                "could not queue a batch of the admin action %s: %s", action, done.refused
            )
            return False
        done.batches += 1
        done.files += len(pks)
        return True

    last: Any = None
    while True:
        page = list((keys if last is None else keys.filter(pk__gt=last))[:_PAGE])
        for pk, alias, host in page:
            pks = waiting.setdefault((alias, host), [])
            pks.append(pk)
            if len(pks) >= size and not send((alias, host)):
                return done
        if len(page) < _PAGE:
            break
        last = page[-1][0]
    for where in list(waiting):
        if not send(where):
            return done
    return done
