"""Sending a transfer: the one place a task message is built, for the proxy and the reconcile
pass. The message carries two plain strings, the storage alias and the file name (invariant 5).
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["dispatch", "redact"]

logger = logging.getLogger(__name__)


def dispatch(
    task: Any, alias: str, name: str, *, queue: str | None = None, keep_result: bool = False
) -> Any:
    """Send the transfer message; never raise: a refused message leaves the file ``pending``.

    *task* is the storage's Celery task. Returns the ``AsyncResult``, or ``None`` when the
    broker refused the message (the reason is logged, without credentials; the caller records
    the refusal with ``Ledger.refused``, so that a starting worker or the next reconcile pass
    queues the file at once). *keep_result*: the outcome is stored where a result backend is
    configured (``storage.transfer(name)``); a save's transfer does not ask for it, so that a
    request never pays the backend's subscription to the result.
    """
    options: dict[str, Any] = {"queue": queue} if queue else {}
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


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")


def redact(text: str) -> str:
    """Hide the password of any URL in *text* (broker errors may quote the broker URL)."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
