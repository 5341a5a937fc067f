"""The ledger's table: one durable row per stored file, the system of record for its state.

This module holds the table and its read queries only. Every change of a row goes through
``ledger.py`` (one conditional write and its cache publish per transition); the cache is a
read-through copy of these rows (``state.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from django.db import models, router
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce

from queued_storage.conf import settings
from queued_storage.names import LEDGER_NAME_LENGTH

__all__ = ["State", "StoredFile", "TusUpload"]


class State(models.TextChoices):
    PENDING = "pending"
    TRANSFERRING = "transferring"
    REMOTE = "remote"
    FAILED = "failed"


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
        ]

    def __str__(self) -> str:
        return f"{self.alias}:{self.name} ({self.state})"

    # -- read queries --------------------------------------------------------------------
    @staticmethod
    def db() -> str:
        """The database alias of the ledger (``QUEUED_STORAGE_DATABASE`` or the router's)."""
        return settings.DATABASE or router.db_for_write(StoredFile)

    @classmethod
    def rows(cls, alias: str, name: str) -> models.QuerySet[StoredFile]:
        found: models.QuerySet[StoredFile] = StoredFile.objects.using(cls.db()).filter(
            alias=alias, name=name
        )
        return found

    @classmethod
    def get_row(cls, alias: str, name: str) -> StoredFile | None:
        return cls.rows(alias, name).first()

    @classmethod
    def waiting_bytes(cls, host: str | None = None) -> int:
        """Bytes of local copies not yet verified remote (on *host*, or on every host)."""
        rows = cls.objects.using(cls.db()).filter(local_exists=True).exclude(state=State.REMOTE)
        if host is not None:
            rows = rows.filter(host=host)
        return int(rows.aggregate(total=Sum("size"))["total"] or 0) + TusUpload.reserved_bytes(host)


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

    class Meta:
        verbose_name = "tus upload"
        indexes = [models.Index(fields=["expires"], name="queued_storage_tus_expires")]

    def __str__(self) -> str:
        length = "?" if self.length is None else self.length
        return f"tus {self.id} {self.alias}:{self.name} ({self.offset}/{length})"

    @classmethod
    def get(cls, upload_id: object) -> TusUpload | None:
        found: TusUpload | None = cls.objects.using(StoredFile.db()).filter(pk=upload_id).first()
        return found

    @classmethod
    def known(cls, upload_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Those of *upload_ids* that have a row (finished, expired or not)."""
        rows = cls.objects.using(StoredFile.db()).filter(pk__in=list(upload_ids))
        return set(rows.values_list("id", flat=True))

    @classmethod
    def reserved_bytes(cls, host: str | None = None) -> int:
        """Bytes reserved by the tus uploads still being received: their ``Upload-Length``, or
        the bytes received so far while the length is deferred (each chunk of such an upload
        is checked against the budget as it comes)."""
        rows = cls.objects.using(StoredFile.db()).filter(completed__isnull=True)
        if host is not None:
            rows = rows.filter(host=host)
        return int(rows.aggregate(total=Sum(Coalesce("length", "offset")))["total"] or 0)
