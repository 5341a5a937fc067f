"""Sending a transfer: the one place a task message is built and routed, for the proxy, the
reconcile pass and the operator's commands. The message carries two plain strings, the storage
alias and the file name (invariant 5).

* :func:`dispatch`: send one message to a queue, never raise;
* :func:`send_transfer`: route it to the queue of the host that holds the local copy and send;
* :class:`Sender`: the broker's circuit breaker for an operation that sends many (a reconcile
  pass, a command, an admin action): once the broker refuses, the rest is not tried.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from celery.result import AsyncResult

    from queued_storage.construction import TransferTask
    from queued_storage.storage import QueuedStorage

__all__ = ["Sender", "dispatch", "redact", "send_transfer"]

logger = logging.getLogger(__name__)


class _SendOptions(TypedDict, total=False):
    """The ``apply_async`` options a transfer message may be sent with."""

    queue: str
    ignore_result: bool


def dispatch(
    task: TransferTask,
    alias: str,
    name: str,
    *,
    queue: str | None = None,
    keep_result: bool = False,
) -> AsyncResult | None:
    """Send the transfer message; never raise: a refused message leaves the file ``pending``.

    *task* is the storage's Celery task. Returns the ``AsyncResult``, or ``None`` when the
    broker refused the message (the reason is logged, without credentials; the caller records
    the refusal with ``Ledger.refused``, so that a starting worker or the next reconcile pass
    queues the file at once). *keep_result*: the outcome is stored where a result backend is
    configured (``storage.transfer(name)``); a save's transfer does not ask for it, so that a
    request never pays the backend's subscription to the result.
    """
    options: _SendOptions = {"queue": queue} if queue else {}
    if keep_result:
        options["ignore_result"] = False
    try:
        return task.apply_async(args=[alias, name], **options)
    except Exception as err:
        logger.warning(
            "could not queue the transfer of %r (%s: %s); it stays pending and is served "
            "locally until the next reconcile pass, a worker that starts, or "
            "storage.transfer(name) queues it",
            name,
            type(err).__name__,
            redact(str(err)),
        )
        return None


def send_transfer(
    storage: QueuedStorage, name: str, *, host: str | None = None, keep_result: bool = False
) -> AsyncResult | None:
    """:func:`dispatch` *name*'s transfer for *storage*, to the queue of *host* (the host that
    holds the local copy; ``None`` or ``""``: this one) as ``storage.queue_for`` routes it."""
    return dispatch(
        storage.task, storage.alias, name, queue=storage.queue_for(host), keep_result=keep_result
    )


class Sender:
    """Sends the transfer messages of one operation (a reconcile pass, a command, an admin
    action): once the broker refuses one, the others are not tried (each refusal costs the
    publish retry policy's time) and count as refused too. The caller records a refusal on
    the row (``Ledger.refused``, or ``Ledger.unclaim`` of a row it had claimed), so that a
    starting worker or the next reconcile pass queues it at once; :meth:`send_or_mark` does
    the former."""

    def __init__(self) -> None:
        self.broken = False

    def send(self, storage: QueuedStorage, name: str, host: str | None = None) -> bool:
        """Send *name*'s transfer (routed to *host*'s queue); ``False``: the broker refused,
        now or earlier in this operation."""
        if self.broken:
            return False
        if send_transfer(storage, name, host=host) is None:
            self.broken = True
            return False
        return True

    def send_or_mark(self, storage: QueuedStorage, name: str, host: str | None = None) -> bool:
        """:meth:`send`, and when it was refused, mark the ``pending`` row refused."""
        if self.send(storage, name, host):
            return True
        storage.ledger.refused(name)
        return False


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")


def redact(text: str) -> str:
    """Hide the password of any URL in *text* (broker errors may quote the broker URL)."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
