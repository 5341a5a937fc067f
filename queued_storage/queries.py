"""The ledger's read queries: the states, and the QuerySet methods named for what they find.

``models.StoredFile.objects`` is a manager of :class:`StoredFileQuerySet`; every read query of
the package starts from ``StoredFile.all_rows()`` and chains these methods (invariant 12: each
recurring predicate has an index that matches it; the indexes are declared on the model).
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models import Count, DateTimeField, ExpressionWrapper, F, Max, Min, Q, Value

from queued_storage.conf import settings

if TYPE_CHECKING:
    from queued_storage.models import StoredFile

__all__ = ["LOST", "UNFINISHED", "State", "StoredFileQuerySet", "keyset_pages", "overdue"]


class State(models.TextChoices):
    PENDING = "pending"
    TRANSFERRING = "transferring"
    REMOTE = "remote"
    FAILED = "failed"
    #: A direct upload: the name is reserved, the bytes go from the client straight to the
    #: remote storage (``queued_storage.direct``); nothing is readable until it is finished.
    UPLOADING = "uploading"
    #: Refused by a processor (a virus, a file that is not what it claims): never sent, never
    #: served; its reason in ``last_error``, its local copy kept or deleted by setting.
    REJECTED = "rejected"


#: The states of a file not yet (or no longer) verified remote: rare in a ledger of millions,
#: so their rows have partial indexes of their own (listed, not ``NOT state = 'remote'``: a
#: positive list is what lets the planner use them).
UNFINISHED: tuple[str, ...] = (State.PENDING, State.TRANSFERRING, State.FAILED)

#: Rows whose written local copy is gone before the file was remote (data loss).
LOST = Q(state__in=UNFINISHED, local_exists=False, size__isnull=False)


def overdue(now: datetime.datetime, after: float) -> Q:
    """``pending`` rows whose transfer should have started by *now*: *after* seconds have passed
    since the latest moment their message was due.

    * In a run of transient failures (``retrying_since`` set: an outage, a lost worker, a lost
      message): the retry waits at most as long as the run had lasted when it was scheduled
      (``updated - retrying_since``), at least ``RETRY_DELAY`` and at most ``RETRY_MAX_DELAY``,
      the bound of ``worker.outage_backoff``; computed in the database, exactly.
    * After the file's *n*-th error about itself: ``min(RETRY_MAX_DELAY, RETRY_DELAY * 2**(n-1))``.
    * Neither failed nor re-queued: its message was due at the save.
    """
    cutoff = now - datetime.timedelta(seconds=after)
    base, cap = settings.RETRY_DELAY, settings.RETRY_MAX_DELAY

    def before(seconds: float) -> datetime.datetime:
        return cutoff - datetime.timedelta(seconds=seconds)

    # updated + min(cap, max(base, updated - retrying_since)) < cutoff
    waited_as_long = ExpressionWrapper(
        Value(cutoff) - (F("updated") - F("retrying_since")), output_field=DateTimeField()
    )
    running = Q(retrying_since__isnull=False) & (
        Q(updated__lt=before(cap)) | (Q(updated__lt=before(base)) & Q(updated__lt=waited_as_long))
    )
    counted = Q(attempts=0, updated__lt=cutoff)
    attempt = 1
    while attempt <= settings.RETRIES:
        wait = min(cap, base * 2 ** (attempt - 1))
        if wait >= cap:
            break
        counted |= Q(attempts=attempt, updated__lt=before(wait))
        attempt += 1
    # From here on every wait is the cap (or no retry waits at all: more errors than the
    # budget allows come from a budget that was lowered since).
    counted |= Q(attempts__gte=attempt, updated__lt=before(cap))
    return running | (Q(retrying_since__isnull=True) & counted)


class StoredFileQuerySet(models.QuerySet["StoredFile"]):
    """The ledger's read queries, named for what they find; each chains onto the others.

    Start from :meth:`StoredFile.all_rows` (the ledger's database). Each recurring predicate
    has an index (invariant 12): ``(alias, name)`` unique, ``(state, updated)``, and the partial
    index of refused rows."""

    def _where(self, *args: Q, **kwargs: Any) -> StoredFileQuerySet:
        found: StoredFileQuerySet = self.filter(*args, **kwargs)  # the stubs lose the subclass
        return found

    def _without(self, *args: Q, **kwargs: Any) -> StoredFileQuerySet:
        found: StoredFileQuerySet = self.exclude(*args, **kwargs)
        return found

    # -- by storage, host, name --------------------------------------------------------------
    def of(self, aliases: Iterable[str] | None) -> StoredFileQuerySet:
        """Rows of these storages (``None``: of every storage)."""
        return self if aliases is None else self._where(alias__in=list(aliases))

    def of_storage(self, alias: str) -> StoredFileQuerySet:
        return self._where(alias=alias)

    def on_hosts(self, hosts: Iterable[str] | None) -> StoredFileQuerySet:
        """Rows whose local copy these hosts hold (``None``: any host)."""
        return self if hosts is None else self._where(host__in=list(hosts))

    def on_host(self, host: str) -> StoredFileQuerySet:
        """Rows whose local copy *host* holds."""
        return self._where(host=host)

    def not_on_hosts(self, hosts: Iterable[str]) -> StoredFileQuerySet:
        return self._without(host__in=list(hosts))

    def other_than(self, rows: Iterable[StoredFile]) -> StoredFileQuerySet:
        """These rows but *rows*."""
        return self._without(pk__in=[row.pk for row in rows])

    def named(self, names: Iterable[str]) -> StoredFileQuerySet:
        return self._where(name__in=list(names))

    def starting_with(self, prefix: str) -> StoredFileQuerySet:
        """Rows whose name begins with *prefix*."""
        return self._where(name__startswith=prefix)

    def transferred_since(self, when: datetime.datetime) -> StoredFileQuerySet:
        """Rows verified ``remote`` at or after *when*."""
        return self._where(transferred__gte=when)

    def names(self) -> set[str]:
        """The names of these rows (one query)."""
        return set(self.values_list("name", flat=True))

    def aliases(self) -> list[str]:
        """The storages these rows belong to, sorted (one query)."""
        return sorted(set(self.values_list("alias", flat=True).distinct()))

    # -- by state ----------------------------------------------------------------------------
    def pending(self) -> StoredFileQuerySet:
        return self._where(state=State.PENDING)

    def transferring(self) -> StoredFileQuerySet:
        return self._where(state=State.TRANSFERRING)

    def remote(self) -> StoredFileQuerySet:
        return self._where(state=State.REMOTE)

    def not_remote(self) -> StoredFileQuerySet:
        return self._where(state__in=UNFINISHED)

    def failed(self) -> StoredFileQuerySet:
        return self._where(state=State.FAILED)

    def with_local_copy(self) -> StoredFileQuerySet:
        return self._where(local_exists=True)

    def pending_with_local_copy(self) -> StoredFileQuerySet:
        return self._where(state=State.PENDING, local_exists=True)

    def failed_with_local_copy(self) -> StoredFileQuerySet:
        return self._where(state=State.FAILED, local_exists=True)

    # -- what the reconcile pass and the commands look for -----------------------------------
    def in_progress_on(self, host: str) -> StoredFileQuerySet:
        """``pending`` and ``transferring`` rows whose local copy *host* holds."""
        return self._where(host=host, state__in=[State.PENDING, State.TRANSFERRING])

    def refused(self) -> StoredFileQuerySet:
        """``pending`` rows with a local copy whose transfer message the broker refused
        (``dispatch_refused``; the partial index holds only those)."""
        return self._where(
            dispatch_refused__isnull=False,
            state=State.PENDING,
            local_exists=True,
            size__isnull=False,
        )

    def due(self, now: datetime.datetime) -> StoredFileQuerySet:
        """:meth:`waiting` rows whose retry is due at *now* (``retry_at``; the partial index
        ``queued_storage_due`` holds only the rows waiting for a retry)."""
        return self.waiting()._where(retry_at__lte=now)

    def expired_leases(self, now: datetime.datetime) -> StoredFileQuerySet:
        """``transferring`` rows whose lease expired before *now* (their worker died)."""
        return self._where(state=State.TRANSFERRING, lease_expires__lt=now)

    def waiting(self) -> StoredFileQuerySet:
        """``pending`` rows whose local copy is written (a size) and there."""
        return self._where(state=State.PENDING, local_exists=True, size__isnull=False)

    def overdue(self, now: datetime.datetime, after: float) -> StoredFileQuerySet:
        """:meth:`waiting` rows whose transfer is :func:`overdue`."""
        return self.waiting()._where(overdue(now, after))

    def late_by_host(self, now: datetime.datetime, after: float) -> list[tuple[str, int]]:
        """``(host, rows)`` of the overdue ``pending`` rows with a local copy and the expired
        leases: what each host's own reconcile pass would re-queue. Two counts, each read from
        its partial index alone (``queued_storage_waiting``, ``queued_storage_leases``)."""
        found: dict[str, int] = {}
        overdue_rows = self._where(Q(state=State.PENDING, local_exists=True) & overdue(now, after))
        for rows in (overdue_rows, self.expired_leases(now)):
            for host, count in rows.count_by_host():
                found[host] = found.get(host, 0) + count
        return sorted(found.items())

    def stale_reservations(self, before: datetime.datetime) -> StoredFileQuerySet:
        """``pending`` rows of a save that never wrote its file, not changed since *before*."""
        return self._where(
            state=State.PENDING, local_exists=False, size__isnull=True, updated__lt=before
        )

    def local_copies_of_remote(self, before: datetime.datetime) -> StoredFileQuerySet:
        """``remote`` rows verified before *before* whose local copy is still there."""
        return self._where(state=State.REMOTE, local_exists=True, transferred__lt=before)

    def lost(self) -> StoredFileQuerySet:
        """Rows that are not ``remote`` and whose written local copy is gone (data loss)."""
        return self._where(LOST)

    def recording_uploads(self, upload_ids: Iterable[str]) -> set[str]:
        """Those of *upload_ids* a row records (the resume point of its transfer)."""
        rows = self._where(upload_id__in=list(upload_ids))
        return set(rows.values_list("upload_id", flat=True))

    def leased_names(self, names: Iterable[str], now: datetime.datetime) -> set[str]:
        """Those of *names* whose row is ``transferring`` under a lease alive at *now*, or
        ``uploading`` (a direct upload's multipart upload is its client's until it expires)."""
        leased = Q(state=State.TRANSFERRING, lease_expires__gt=now) | Q(state=State.UPLOADING)
        rows = self._where(leased, name__in=list(names))
        return set(rows.values_list("name", flat=True))

    def expired_direct(self, now: datetime.datetime) -> StoredFileQuerySet:
        """Direct uploads untouched for ``QUEUED_STORAGE_DIRECT_EXPIRY`` seconds at *now* (the
        database's time): past their expiry (index ``(state, updated)``: the few
        ``uploading`` rows)."""
        cutoff = now - datetime.timedelta(seconds=settings.DIRECT_EXPIRY)
        return self._where(state=State.UPLOADING, updated__lt=cutoff)

    # -- counting and paging -----------------------------------------------------------------
    def count_by_host(self) -> list[tuple[str, int]]:
        """``(host, rows)``, by host."""
        grouped = self.values_list("host").annotate(count=Count("*")).order_by("host")
        return [(str(host), int(count)) for host, count in grouped]

    def oldest_created(self, alias: str, state: str) -> datetime.datetime | None:
        """When the oldest file of *alias* in *state* was saved (an unfinished state: one seek
        of the partial index)."""
        found: datetime.datetime | None = (
            self._where(alias=alias, state=state)
            .order_by("created")
            .values_list("created", flat=True)
            .first()
        )
        return found

    def sample(self, size: int, *, tries: int = 20) -> list[StoredFile]:
        """A uniform random sample of *size* of these rows, without sorting the table.

        Random primary keys between the smallest and the largest of these rows are looked up,
        a batch at a time, and the rows among them kept: each row is as likely as any other
        (rejection sampling). Where these rows are too sparse among the keys to be found in
        *tries* batches, the rest is drawn by ``ORDER BY RANDOM()`` among them.
        """
        if size <= 0:
            return []
        bounds = self.aggregate(low=Min("pk"), high=Max("pk"))
        low, high = bounds["low"], bounds["high"]
        if low is None or high is None:
            return []
        found: dict[int, StoredFile] = {}
        tried: set[int] = set()
        span = high - low + 1
        for _ in range(tries):
            if len(found) >= size or len(tried) >= span:
                break
            wanted = min(span - len(tried), 4 * (size - len(found)) + 16)
            keys: set[int] = set()
            while len(keys) < wanted:
                key = random.randint(low, high)
                if key not in tried:
                    keys.add(key)
            tried |= keys
            for row in self._where(pk__in=sorted(keys)):
                found[row.pk] = row
        chosen = random.sample(list(found.values()), min(size, len(found)))
        if len(chosen) < size and len(tried) < span:
            rest = self._without(pk__in=[row.pk for row in chosen]).order_by("?")
            chosen += list(rest[: size - len(chosen)])
        return chosen

    def in_pages(self, batch: int = 500) -> Iterator[list[StoredFile]]:
        """:func:`keyset_pages` of these rows."""
        return keyset_pages(self, batch)


def keyset_pages(rows: models.QuerySet[StoredFile], batch: int = 500) -> Iterator[list[StoredFile]]:
    """*rows* in primary key order, *batch* at a time, one query per page whatever the offset
    (keyset pagination: no cursor stays open while the rows are changed)."""
    last: Any = None
    while True:
        page = list((rows if last is None else rows.filter(pk__gt=last)).order_by("pk")[:batch])
        if page:
            yield page
        if len(page) < batch:
            return
        last = page[-1].pk
