"""Sending a transfer: the one place a task message is built and routed, for the proxy, the
reconcile pass and the operator's commands. The message carries two plain strings, the storage
alias and the file name (invariant 5).

* :func:`dispatch`: send one message to a queue, never raise;
* :func:`send_transfer`: route it to the queue of the host that holds the local copy and send;
* :class:`Sender`: the broker's circuit breaker for an operation that sends many (a reconcile
  pass, a command, an admin action): once the broker refuses, the rest is not tried;
* :func:`send_saved`: a save's message, handed to this process's :class:`Publisher` thread;
  the request does not wait for the broker (a broker that refuses, is slow or hangs costs it
  nothing), and the thread records a refusal on the row.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

from django.db import connections

from queued_storage.conf import settings

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

    from queued_storage.construction import TransferTask
    from queued_storage.storage import QueuedStorage

__all__ = [
    "Publisher",
    "Sender",
    "dispatch",
    "flush",
    "forget_refused",
    "publishes_in_background",
    "redact",
    "routed_queue",
    "send_saved",
    "send_transfer",
]

logger = logging.getLogger(__name__)


class _SendOptions(TypedDict, total=False):
    """The ``apply_async`` options a transfer message may be sent with."""

    queue: str
    ignore_result: bool
    task_id: str


def dispatch(
    task: TransferTask,
    alias: str,
    name: str,
    *,
    queue: str | None = None,
    keep_result: bool = False,
    task_id: str | None = None,
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
    if task_id is not None:
        options["task_id"] = task_id
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


#: After a refused message, how long saves do not wait for the broker (seconds).
PAUSE_AFTER_REFUSAL = 5.0

#: Most messages refused in this process that it sends again once the broker takes one.
BACKLOG = 10_000


@dataclass
class _Job:
    task: TransferTask
    alias: str
    name: str
    queue: str | None
    refused: Callable[[], None]
    wanted: Callable[[], bool]
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    queued_at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    sent: bool = False


class Publisher:
    """The process's sender of the saves' messages: one thread, started on first use (again
    in a forked child), publishes them in order; the request that saved does not wait for it
    (issue 24: the publish was about a fifth of a small save's time).

    Celery's publish waits for the broker: about 0.6 s of retries when it refuses a
    connection, and as long as the kernel keeps a connection whose peer stopped answering (no
    socket timeout is set unless the broker's transport options set one). So:

    * a healthy broker takes the message a fraction of a millisecond after the commit;
    * a broker that refuses: the thread marks the row refused (``Ledger.refused``: a starting
      worker or the next reconcile pass queues it at once) and keeps it in a backlog, sent
      again as soon as the broker takes a message (the thread tries every
      :data:`PAUSE_AFTER_REFUSAL` seconds, saves or not); messages queued while an attempt
      failed are marked without another attempt (the thread's time stays bounded however
      many saves come);
    * a broker that does not answer: once an attempt has lasted longer than
      ``QUEUED_STORAGE_DISPATCH_WAIT``, saves mark their rows refused at once and leave their
      messages in the queue for when it answers.

    A process that ends waits at most :data:`FLUSH_AT_EXIT` for the thread to try the messages
    it was handed (``atexit``). One still in its queue when the process is killed is not sent;
    its row stays ``pending`` (refused, or found once it is overdue) for the reconcile pass
    (invariant 6).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._backlog: collections.deque[_Job] = collections.deque(maxlen=BACKLOG)
        self._busy_since: float | None = None
        self._refused_at: float | None = None
        self._last: _Job | None = None

    def _stuck(self, now: float) -> bool:
        busy = self._busy_since
        return busy is not None and now - busy > settings.DISPATCH_WAIT

    def send(
        self,
        task: TransferTask,
        alias: str,
        name: str,
        queue: str | None,
        refused: Callable[[], None],
        wanted: Callable[[], bool],
    ) -> AsyncResult | None:
        """Hand *name*'s transfer message to the thread; the request does not wait for the
        broker. ``None``: marked refused at once because the broker is stuck (an attempt has
        lasted longer than ``DISPATCH_WAIT``; *refused* was called); else the ``AsyncResult``
        of the message's id (to be sent; a refusal is recorded on the row by the thread).
        *wanted*: whether the row still waits for a message (asked before a refused message is
        sent again)."""
        self._start()
        job = _Job(task, alias, name, queue, refused, wanted)
        stuck = self._stuck(time.monotonic())
        self._last = job
        self._jobs.put(job)
        if stuck:
            refused()
            return None
        made: Callable[[str], AsyncResult] | None = getattr(task, "AsyncResult", None)
        return made(job.task_id) if made is not None else None

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._jobs = queue.SimpleQueue()
            self._backlog = collections.deque(maxlen=BACKLOG)
            self._busy_since = self._refused_at = None
            thread = threading.Thread(
                target=self._run, args=(self._jobs,), name="queued-storage-dispatch", daemon=True
            )
            thread.start()

    def _run(self, jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            try:  # with a backlog, try it again every PAUSE_AFTER_REFUSAL without a save
                job = jobs.get(timeout=PAUSE_AFTER_REFUSAL if self._backlog else None)
            except queue.Empty:
                job = None
            try:
                if job is None:
                    self._drain()
                else:
                    self._publish(job)
            except Exception:  # the thread goes on whatever one message does
                logger.exception("the dispatch thread failed")
            finally:
                if job is not None:
                    job.done.set()
                connections.close_all()  # this thread's, if it read or wrote a row

    def _publish(self, job: _Job) -> None:
        refused_at = self._refused_at
        if refused_at is not None and job.queued_at < refused_at:
            self._refuse(job)  # queued while the last attempt failed: not tried again
            return
        if not self._attempt(job):
            self._refuse(job)
            return
        job.sent = True
        self._drain()

    def _drain(self) -> None:
        """Send the refused messages again, oldest first, while the broker takes them; those
        whose row no longer waits (a pass or a starting worker queued it) are dropped."""
        while True:
            with self._lock:
                if not self._backlog:
                    return
                earlier = self._backlog[0]
            if earlier.wanted() and not self._attempt(earlier):
                return
            with self._lock:
                if self._backlog and self._backlog[0] is earlier:
                    self._backlog.popleft()

    def _attempt(self, job: _Job) -> bool:
        self._busy_since = time.monotonic()
        try:
            sent = dispatch(job.task, job.alias, job.name, queue=job.queue, task_id=job.task_id)
        finally:
            self._busy_since = None
        self._refused_at = None if sent is not None else time.monotonic()
        return sent is not None

    def _refuse(self, job: _Job) -> None:
        with self._lock:
            self._backlog.append(job)
        job.refused()

    def flush(self, timeout: float) -> bool:
        """Wait at most *timeout* seconds for the messages handed to the thread so far to be
        tried (sent, or marked refused); ``False`` if some were not. Run at the process's exit
        (``atexit``): a script that saves and ends still sends its messages."""
        last = self._last
        if last is None or self._pid != os.getpid() or self._stuck(time.monotonic()):
            return last is None or last.done.is_set()
        return last.done.wait(timeout)

    def forget_refused(self) -> int:
        """Drop the backlog (the reconcile pass sends those messages); how many it held."""
        with self._lock:
            held = len(self._backlog)
            self._backlog.clear()
            return held


_publisher = Publisher()

#: Longest a process that ends waits for its publisher thread to try the saves' messages.
FLUSH_AT_EXIT = 5.0


@atexit.register
def _flush_at_exit() -> None:
    if not _publisher.flush(FLUSH_AT_EXIT):
        logger.warning(
            "the process ends with transfer messages not yet sent (the broker did not take "
            "them in %g s); their files stay pending and are queued by the next reconcile pass",
            FLUSH_AT_EXIT,
        )


def flush(timeout: float = FLUSH_AT_EXIT) -> bool:
    """Wait at most *timeout* seconds until this process's publisher thread has tried every
    save's message handed to it so far (sent, or its row marked refused); ``False`` if some
    were not tried by then. A process does this at its exit by itself; tests and scripts that
    read the broker right after saving call it."""
    return _publisher.flush(timeout)


def forget_refused() -> int:
    """Drop this process's backlog of refused save messages, and say how many it held: the
    rows stay marked refused, for the next reconcile pass or starting worker."""
    return _publisher.forget_refused()


def publishes_in_background(storage: QueuedStorage) -> bool:
    """Whether a save's message for *storage* goes through the process's :class:`Publisher`:
    not where Celery runs tasks eagerly, nor for a task that is not a Celery task
    (``queued_storage.testing``'s stand-in); those are sent by the caller."""
    app = getattr(storage.task, "app", None)
    return app is not None and not getattr(app.conf, "task_always_eager", False)


def send_saved(
    storage: QueuedStorage, name: str, refused: Callable[[], None], wanted: Callable[[], bool]
) -> AsyncResult | None:
    """A save's transfer message (at its commit), through the process's :class:`Publisher`
    (:func:`publishes_in_background` says when)."""
    return _publisher.send(
        storage.task, storage.alias, name, storage.queue_for(None), refused, wanted
    )


def routed_queue(app: Celery, storage: QueuedStorage, host: str | None = None) -> str:
    """The Celery queue of *storage*'s transfers of *host*'s files (default: this host's):
    the storage's ``queue`` option, else the app's routing of its task (``task_routes``,
    then the default queue)."""
    queue = storage.queue_for(host)
    if queue:
        return queue
    try:
        routed = app.amqp.router.route({}, storage.task.name, args=(storage.alias, ""), kwargs={})
        return str(getattr(routed["queue"], "name", routed["queue"]))
    except Exception:
        return str(app.conf.task_default_queue)


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
