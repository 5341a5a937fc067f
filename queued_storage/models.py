"""The ledger's table: one durable row per stored file, the system of record for its state.

This module holds the tables; their read queries are QuerySet methods (``queries.py``).
Every change of a row goes through ``ledger.py`` (one conditional write and its cache publish
per transition); the cache is a read-through copy of these rows (``state.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import NamedTuple

from django.db import connections, models, router
from django.db.models import Count, ExpressionWrapper, Q, Sum
from django.db.models.functions import Coalesce

from queued_storage.clock import DatabaseTimeField
from queued_storage.conf import settings
from queued_storage.names import LEDGER_NAME_LENGTH
from queued_storage.queries import (
    LOST,
    UNFINISHED,
    State,
    StoredFileQuerySet,
    keyset_pages,
    overdue,
)

__all__ = [
    "LOST",
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
    # The database's time when a row is inserted (the clock of leases and overdue times).
    created = DatabaseTimeField(auto_now_add=True)
    updated = DatabaseTimeField(auto_now=True)
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
    retry_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the retry of a file waiting after an error is due (the database's "
        "clock); empty once its message is sent.",
    )

    processed = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the storage's processors passed the file (the database's clock); "
        "empty until then, or when the storage has none.",
    )
    # Nullable: a column added in place (SQLite would rebuild the table for a default, and
    # drop the tally's triggers with it).
    metadata = models.JSONField(
        null=True,
        blank=True,
        help_text="What the processors kept: a detected content type, dimensions, the "
        "scanner and its signatures' version; empty when none ran.",
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
            # Retries wait in the ledger, not in the broker: the workers' watch and the pass
            # send those that are due (``reconcile.watch``).
            models.Index(
                fields=["host", "retry_at", "alias"],
                condition=Q(retry_at__isnull=False),
                name="queued_storage_due",
            ),
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
                fields=["lease_expires", "id", "host", "alias"],
                condition=Q(state=State.TRANSFERRING),
                name="queued_storage_leases",
            ),
            # What waits for its transfer, with what says whether it is overdue.
            models.Index(
                fields=["host", "updated", "attempts", "retrying_since", "alias"],
                condition=Q(state=State.PENDING, local_exists=True),
                name="queued_storage_waiting",
            ),
            # A worker's batch of small files: its host's fresh ``pending`` rows, oldest first.
            models.Index(
                fields=["alias", "host", "created", "size"],
                condition=Q(state=State.PENDING, retry_at__isnull=True),
                name="queued_storage_fresh",
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
        the tus uploads being received there: from the kept tally (:meth:`Tally.groups`)."""
        return waiting_in(Tally.groups(), host) + TusUpload.reserved_bytes(host)


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
        """:meth:`summed`'s groups; where no tally is kept, or while a group has fewer than no
        files (the tally is wrong until ``tally.read()`` counts it again), :meth:`counted`."""
        if not cls.kept():
            return cls.counted()
        groups = cls.summed()[0]
        if all(group.files >= 0 and group.bytes >= 0 for group in groups):
            return groups
        return cls.counted()

    @classmethod
    def counted(cls) -> list[TallyGroup]:
        """The ledger's groups counted by a scan of the ledger (one ``GROUP BY``)."""
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
