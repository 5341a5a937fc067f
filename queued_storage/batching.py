"""Small files in batches: one lease statement and parallel PUTs for several small files.

A worker that takes a small file's transfer (at most ``QUEUED_STORAGE_BATCH_FILE_BYTES``, and
below the multipart threshold) also leases up to ``QUEUED_STORAGE_BATCH_FILES - 1`` other small
``pending`` files of the same storage and host in the same statement
(:meth:`Ledger.lease_batch <queued_storage.ledger.Ledger.lease_batch>`), and sends them all
over the process's one S3 client from a pool of ``MAX_CONCURRENCY`` threads
(:func:`in_parallel`). Each file keeps everything it has alone: its own lease (a conditional
write per row), its own verified engine run, its own outcome and retry budget, recorded as
soon as its PUT ends, by the task's own thread (the ledger's connection is the task's). A
batch never takes a big file, a file with a retry held, nor one of another host; a big file's
message leases only its file; a ``delayed`` storage's transfers never batch (its files wait
until they are asked for). The other files' own messages then find them ``remote`` (or
leased) and end.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TypeVar

from django.db import connections

from queued_storage.conf import settings
from queued_storage.models import StoredFile
from queued_storage.storage import QueuedStorage

__all__ = ["in_parallel", "lease_companions"]

J = TypeVar("J")
R = TypeVar("R")


#: A batch is leased only when the task's own file waited at least this long (seconds, by
#: the database's clock) between its save and its lease: the workers are behind, so other
#: files wait too. A worker that keeps up sends each file alone and pays nothing for batches
#: (their statement, threads and heartbeats cost more than they save on a handful of files).
BEHIND = 0.25


def lease_companions(storage: QueuedStorage, row: StoredFile, owner: str) -> list[StoredFile]:
    """The other small ``pending`` files leased for *owner* beside *row* (just leased by it:
    ``row.updated`` is the lease's time); none when *row* is not small, did not wait
    :data:`BEHIND` seconds, or batches are off (``BATCH_FILES`` 1)."""
    largest = min(settings.BATCH_FILE_BYTES, settings.MULTIPART_THRESHOLD - 1)
    count = settings.BATCH_FILES - 1
    if count <= 0 or row.size is None or row.size > largest:
        return []
    if (row.updated - row.created).total_seconds() < BEHIND:
        return []
    return storage.ledger.lease_batch(
        row.host,
        owner,
        settings.LEASE_TIMEOUT,
        exclude=row.name,
        largest=largest,
        count=count,
    )


class _Pool:
    """The process's threads for a batch's PUTs: made on first use, again after a fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._size = 0
        self._executor: ThreadPoolExecutor | None = None

    def get(self) -> ThreadPoolExecutor:
        size = max(1, settings.MAX_CONCURRENCY)
        with self._lock:
            if self._executor is None or self._pid != os.getpid() or self._size != size:
                self._pid, self._size = os.getpid(), size
                self._executor = ThreadPoolExecutor(size, thread_name_prefix="queued-storage-batch")
            return self._executor


_pool = _Pool()


def _in_thread(send: Callable[[J], R], job: J) -> R:
    try:
        return send(job)
    finally:
        connections.close_all()  # any this thread opened (a multipart checkpoint): not kept


def in_parallel(jobs: Sequence[J], send: Callable[[J], R], record: Callable[[J, R], None]) -> None:
    """``send(job)`` for every job on the process's batch threads; ``record(job, result)`` in
    the calling thread as each one ends, in the order they end. *send* returns its outcome
    (errors included) rather than raising; if it raises all the same, the error is raised
    here at once, and the files not recorded yet keep their leases until they expire and are
    taken back (the watch, the reconcile pass)."""
    executor = _pool.get()
    futures: dict[Future[R], J] = {executor.submit(_in_thread, send, job): job for job in jobs}
    for future in as_completed(futures):
        record(futures[future], future.result())
