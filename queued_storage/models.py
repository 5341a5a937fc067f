"""The ledger's table: one durable row per stored file, the system of record for its state.

This module holds the table and its read queries only. Every change of a row goes through
``ledger.py`` (one conditional write and its cache publish per transition); the cache is a
read-through copy of these rows (``state.py``).
"""

from __future__ import annotations

import datetime
import random
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from django.db import connections, models, router
from django.db.models import (
    Count,
    DateTimeField,
    ExpressionWrapper,
    F,
    Max,
    Min,
    Q,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce

from queued_storage.conf import settings
from queued_storage.names import LEDGER_NAME_LENGTH

__all__ = [
    "UNFINISHED",
    "State",
    "StoredFile",
    "StoredFileQuerySet",
    "Tally",
    "TallyGroup",
    "TusUpload",
    "TusUploadQuerySet",
    "keyset_pages",
    "overdue",
    "waiting_in",
]


class State(models.TextChoices):
    PENDING = "pending"
    TRANSFERRING = "transferring"
    REMOTE = "remote"
    FAILED = "failed"


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
    def with_work(self) -> StoredFileQuerySet:
        """Rows that are not ``remote`` yet, or whose local copy is still there."""
        return self._where(Q(state__in=UNFINISHED) | Q(local_exists=True))

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
        """Those of *names* whose row is ``transferring`` under a lease alive at *now*."""
        rows = self._where(name__in=list(names), state=State.TRANSFERRING, lease_expires__gt=now)
        return set(rows.values_list("name", flat=True))

    # -- counting and paging -----------------------------------------------------------------
    def count_by_host(self) -> list[tuple[str, int]]:
        """``(host, rows)``, by host."""
        grouped = self.values_list("host").annotate(count=Count("*")).order_by("host")
        return [(str(host), int(count)) for host, count in grouped]

    def totals_by_state(self) -> list[dict[str, Any]]:
        """Per ``(alias, state)``: files, bytes, the oldest ``created`` and the lost files
        (:meth:`lost`), by alias and state: one aggregate query."""
        lost = LOST
        return list(
            self.values("alias", "state")
            .annotate(
                files=Count("pk"),
                bytes=Sum("size"),
                oldest=Min("created"),
                lost=Count("pk", filter=lost),
            )
            .order_by("alias", "state")
        )

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


class StoredFile(models.Model):
    """One file saved through a ``QueuedStorage``, keyed by the storage's alias and the name."""

    alias = models.CharField(max_length=100, help_text="Alias of the queued storage.")
    name = models.CharField(
        max_length=LEDGER_NAME_LENGTH, help_text="Name of the file in both storages."
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    size = models.BigIntegerField(null=True, blank=True)
    checksum = models.CharField(max_length=200, blank=True, default="")
    checksum_algorithm = models.CharField(max_length=32, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    host = models.CharField(
        max_length=255, blank=True, default="", help_text="Holds the local copy."
    )
    local_exists = models.BooleanField(default=False)
    bytes_done = models.BigIntegerField(default=0)
    upload_id = models.CharField(
        max_length=1024, blank=True, default="", help_text="Open S3 multipart upload, if any."
    )
    part_size = models.BigIntegerField(null=True, blank=True)
    source = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="Local file's size:mtime:inode when the upload began.",
    )
    parts = models.JSONField(
        default=list, blank=True, help_text="Finished parts: [number, etag, md5 hex, size]."
    )
    lease_owner = models.CharField(max_length=255, blank=True, default="")
    lease_expires = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    transferred = models.DateTimeField(null=True, blank=True)
    owner = models.CharField(
        max_length=255,
        blank=True,
        default="",
        help_text="Primary key of the user who uploaded it through the views, if any.",
    )
    retrying_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Start of the current run of transient (infrastructure) failures.",
    )
    dispatch_refused = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the broker refused the file's transfer message; empty once one is sent.",
    )

    objects = StoredFileQuerySet.as_manager()

    class Meta:
        verbose_name = "stored file"
        constraints = [
            models.UniqueConstraint(fields=["alias", "name"], name="queued_storage_alias_name"),
        ]
        indexes = [
            models.Index(fields=["state", "updated"], name="queued_storage_state_upd"),
            # The reconcile pass and a starting worker look for these on every run; a partial
            # index holds only the few rows whose message the broker refused.
            models.Index(
                fields=["alias", "host", "dispatch_refused"],
                condition=Q(dispatch_refused__isnull=False),
                name="queued_storage_refused",
            ),
            # A ledger of millions is almost all ``remote`` rows without a local copy: what
            # the reconcile pass, status, metrics and clean-up look for is in partial indexes
            # that hold only the rare rows (migration 0008 builds them without locking).
            models.Index(
                fields=["alias", "state", "created"],
                condition=Q(state__in=UNFINISHED),
                name="queued_storage_unfinished",
            ),
            models.Index(
                fields=["host", "id"], condition=Q(local_exists=True), name="queued_storage_local"
            ),
            models.Index(fields=["alias", "id"], condition=LOST, name="queued_storage_lost"),
            models.Index(
                fields=["lease_expires", "host"],
                include=["alias"],
                condition=Q(state=State.TRANSFERRING),
                name="queued_storage_leases",
            ),
            # What waits for its transfer, with what says whether it is overdue.
            models.Index(
                fields=["host", "updated"],
                include=["attempts", "retrying_since", "alias"],
                condition=Q(state=State.PENDING, local_exists=True),
                name="queued_storage_waiting",
            ),
            # The admin's filters and its search (names beginning with the text).
            models.Index(fields=["host", "id"], name="queued_storage_host"),
            models.Index(fields=["alias", "id"], name="queued_storage_alias"),
            models.Index(
                fields=["name"], opclasses=["varchar_pattern_ops"], name="queued_storage_name"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.alias}:{self.name} ({self.state})"

    # -- read queries --------------------------------------------------------------------
    @staticmethod
    def db() -> str:
        """The database alias of the ledger (``QUEUED_STORAGE_DATABASE`` or the router's)."""
        return settings.DATABASE or router.db_for_write(StoredFile)

    @classmethod
    def all_rows(cls) -> StoredFileQuerySet:
        """Every row, on the ledger's database: where each read query starts."""
        found: StoredFileQuerySet = cls.objects.using(cls.db())
        return found

    @classmethod
    def rows(cls, alias: str, name: str) -> StoredFileQuerySet:
        return cls.all_rows()._where(alias=alias, name=name)

    @classmethod
    def get_row(cls, alias: str, name: str) -> StoredFile | None:
        return cls.rows(alias, name).first()

    @classmethod
    def waiting_bytes(cls, host: str | None = None) -> int:
        """Bytes of local copies not yet verified remote (on *host*, or on every host), and of
        the tus uploads being received there: from the kept :class:`Tally`, not a scan."""
        if Tally.kept():
            waiting = waiting_in(Tally.groups(), host)
        else:
            rows = cls.all_rows()._where(state__in=UNFINISHED, local_exists=True)
            if host is not None:
                rows = rows.on_host(host)
            waiting = int(rows.aggregate(total=Sum("size"))["total"] or 0)
        return waiting + TusUpload.reserved_bytes(host)


def waiting_in(groups: Iterable[TallyGroup], host: str | None) -> int:
    """The bytes of the local copies not yet verified remote among *groups* (on *host*, or
    on every host)."""
    return sum(
        group.bytes
        for group in groups
        if group.local and group.state in UNFINISHED and host in (None, group.host)
    )


class TallyGroup(NamedTuple):
    """Files and bytes of the ledger's rows that agree on these five things."""

    alias: str
    host: str
    state: str
    #: ``local_exists``
    local: bool
    #: The row has a size (its local copy was written).
    written: bool
    files: int
    bytes: int

    @property
    def lost(self) -> bool:
        """The group's files are lost: not remote, written, and the local copy is gone."""
        return self.state in UNFINISHED and self.written and not self.local


class Tally(models.Model):
    """What the ledger holds, kept by the database itself as rows change (``tally.py``).

    Triggers on the ledger's table add one row here for each change of a row's alias, host,
    state, ``local_exists`` or size: ``-1`` file and its bytes for the row as it was, ``+1``
    as it is (an ``INSERT`` only the second, a ``DELETE`` only the first). The sum of the rows
    of a group is the group's files and bytes, exactly, in every transaction (a transaction
    sees its own changes); ``tally.fold()`` replaces the rows by their sums from time to time,
    so that reading costs the same at 10 files and 10 million. Adding rows takes no lock
    another writer waits for.
    """

    id = models.BigAutoField(primary_key=True)
    alias = models.CharField(max_length=100)
    host = models.CharField(max_length=255, blank=True, default="")
    state = models.CharField(max_length=16)
    local = models.BooleanField()
    written = models.BooleanField()
    files = models.BigIntegerField()
    bytes = models.BigIntegerField()

    class Meta:
        verbose_name = "tally row"
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.alias} {self.host} {self.state}: {self.files:+d} files, {self.bytes:+d} B"

    #: The database vendors whose triggers keep the tally (elsewhere the reads scan the ledger).
    VENDORS = ("postgresql", "sqlite")

    @classmethod
    def kept(cls) -> bool:
        """Whether the ledger's database keeps the tally (PostgreSQL, SQLite)."""
        return connections[StoredFile.db()].vendor in cls.VENDORS

    @classmethod
    def summed(cls) -> tuple[list[TallyGroup], int]:
        """The groups with their sums (groups that sum to nothing left out), and how many rows
        were summed: one aggregate query over this small table."""
        grouped = (
            cls.objects.using(StoredFile.db())
            .values_list("alias", "host", "state", "local", "written")
            .annotate(n=Sum("files"), b=Sum("bytes"), rows=Count("pk"))
            .order_by("alias", "host", "state", "local", "written")
        )
        groups: list[TallyGroup] = []
        rows = 0
        for alias, host, state, local, written, files, size, counted in grouped:
            rows += int(counted)
            if files or size:
                group = (alias, host, state, bool(local), bool(written), int(files), int(size))
                groups.append(TallyGroup(*group))
        return groups, rows

    @classmethod
    def groups(cls) -> list[TallyGroup]:
        """:meth:`summed`'s groups; while a group has fewer than no files (the tally is wrong
        until ``tally.read()`` counts it again), the ledger's own, counted by a scan."""
        groups = cls.summed()[0]
        if all(group.files >= 0 and group.bytes >= 0 for group in groups):
            return groups
        written = ExpressionWrapper(Q(size__isnull=False), output_field=models.BooleanField())
        counted = (
            StoredFile.all_rows()
            .annotate(written=written)
            .values_list("alias", "host", "state", "local_exists", "written")
            .annotate(n=Count("pk"), b=Coalesce(Sum("size"), 0))
            .order_by()
        )
        return [
            TallyGroup(alias, host, state, bool(local), bool(w), int(files), int(size))
            for alias, host, state, local, w, files, size in counted
        ]


class TusUploadQuerySet(models.QuerySet["TusUpload"]):
    """The read queries of the tus uploads; start from :meth:`TusUpload.all_rows`."""

    def unfinished(self) -> TusUploadQuerySet:
        """Uploads still being received (or abandoned): no file saved from them yet."""
        found: TusUploadQuerySet = self.filter(completed__isnull=True)
        return found

    def of(self, aliases: Iterable[str] | None) -> TusUploadQuerySet:
        if aliases is None:
            return self
        found: TusUploadQuerySet = self.filter(alias__in=list(aliases))
        return found


class TusUpload(models.Model):
    """One resumable (tus) upload being received: the truth about its offset, for every process.

    The bytes are in ``<staging root>/.queued_storage-tus/<id>``; ``offset`` counts those that
    are committed (a process killed mid-chunk may leave more on disk: the next append cuts them
    off). ``stored_name`` is set when the last byte arrived and ``QueuedStorage.save()`` took the
    file; the row then only answers ``HEAD`` until it expires. Rows change through ``ledger.py``.
    """

    id = models.UUIDField(primary_key=True)
    alias = models.CharField(max_length=100, help_text="Alias of the queued storage.")
    name = models.CharField(max_length=LEDGER_NAME_LENGTH, help_text="Name the client asked for.")
    content_type = models.CharField(max_length=255, blank=True, default="")
    metadata = models.TextField(blank=True, default="", help_text="Upload-Metadata as sent.")
    owner = models.CharField(max_length=255, blank=True, default="")
    host = models.CharField(max_length=255, blank=True, default="", help_text="Holds the bytes.")
    length = models.BigIntegerField(
        null=True, blank=True, help_text="Upload-Length; empty until a deferred one is sent."
    )
    offset = models.BigIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField()
    stored_name = models.CharField(max_length=LEDGER_NAME_LENGTH, blank=True, default="")
    completed = models.DateTimeField(null=True, blank=True)

    objects = TusUploadQuerySet.as_manager()

    class Meta:
        verbose_name = "tus upload"
        indexes = [
            models.Index(fields=["expires"], name="queued_storage_tus_expires"),
            # What the staging budget reserves for the uploads being received on a host.
            models.Index(
                fields=["host"],
                condition=Q(completed__isnull=True),
                name="queued_storage_tus_receiving",
            ),
        ]

    def __str__(self) -> str:
        length = "?" if self.length is None else self.length
        return f"tus {self.id} {self.alias}:{self.name} ({self.offset}/{length})"

    @classmethod
    def all_rows(cls) -> TusUploadQuerySet:
        """Every upload, on the ledger's database: where each read query starts."""
        found: TusUploadQuerySet = cls.objects.using(StoredFile.db())
        return found

    @classmethod
    def get(cls, upload_id: object) -> TusUpload | None:
        found: TusUpload | None = cls.objects.using(StoredFile.db()).filter(pk=upload_id).first()
        return found

    @classmethod
    def known(cls, upload_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Those of *upload_ids* that have a row (finished, expired or not)."""
        rows = cls.all_rows().filter(pk__in=list(upload_ids))
        return set(rows.values_list("id", flat=True))

    @classmethod
    def reserved_bytes(cls, host: str | None = None) -> int:
        """Bytes reserved by the tus uploads still being received: their ``Upload-Length``, or
        the bytes received so far while the length is deferred (each chunk of such an upload
        is checked against the budget as it comes)."""
        rows = cls.all_rows().unfinished()
        if host is not None:
            rows = rows.filter(host=host)
        return int(rows.aggregate(total=Sum(Coalesce("length", "offset")))["total"] or 0)
