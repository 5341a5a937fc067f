"""The ledger: one durable row per stored file, the system of record for its state.

The cache is only a read-through copy of these rows (see ``state.py``). Every state change is a
single conditional ``UPDATE`` so that it is atomic on SQLite and PostgreSQL alike, without
``SELECT ... FOR UPDATE``:

* the unique constraint on ``(alias, name)`` reserves a name across processes and hosts;
* a worker takes the lease with ``UPDATE ... WHERE state = 'pending' OR lease expired``; only
  one ``UPDATE`` can match, so only one worker transfers a file at a time;
* ``remote`` is recorded with ``UPDATE ... WHERE lease_owner = me``: a worker whose lease was
  taken over, or whose row was deleted meanwhile, records nothing.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connections, models, router, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from queued_storage.conf import settings

__all__ = ["LeaseResult", "State", "StoredFile"]


class State(models.TextChoices):
    PENDING = "pending"
    TRANSFERRING = "transferring"
    REMOTE = "remote"
    FAILED = "failed"


class StoredFile(models.Model):
    """One file saved through a ``QueuedStorage``, keyed by the storage's alias and the name."""

    #: Longest name the ledger holds (S3's limit for a key, in bytes; here in characters).
    NAME_MAX_LENGTH = 1024

    alias = models.CharField(max_length=100, help_text="Alias of the queued storage.")
    name = models.CharField(
        max_length=NAME_MAX_LENGTH, help_text="Name of the file in both storages."
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

    class Meta:
        verbose_name = "stored file"
        constraints = [
            models.UniqueConstraint(fields=["alias", "name"], name="queued_storage_alias_name"),
        ]
        indexes = [models.Index(fields=["state", "updated"], name="queued_storage_state_upd")]

    def __str__(self) -> str:
        return f"{self.alias}:{self.name} ({self.state})"

    # -- ledger operations ----------------------------------------------------------------
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
    def reserve(cls, alias: str, name: str, host: str) -> bool:
        """Insert the ``pending`` row for *name*; ``False`` when another file holds the name.

        Inside a transaction it runs in a savepoint, so that a unique violation does not break
        the caller's transaction (PostgreSQL aborts the whole transaction otherwise); the
        reservation becomes visible to others at the commit, and a concurrent insert of the
        same key waits for that commit and then fails, which is what we want. In autocommit
        mode a plain INSERT does the same in one round trip.
        """
        return cls._insert(
            alias=alias, name=name, state=State.PENDING, host=host, local_exists=False
        )

    @classmethod
    def record_saved(cls, alias: str, name: str, host: str, size: int) -> bool:
        """Insert the final ``pending`` row of a file already written locally, in one INSERT.

        ``False`` when another file holds the name (the unique key decides, across processes
        and hosts); inside a transaction the INSERT runs in a savepoint, as :meth:`reserve`.
        """
        return cls._insert(
            alias=alias,
            name=name,
            state=State.PENDING,
            host=host,
            size=size,
            local_exists=True,
        )

    @classmethod
    def _insert(cls, **fields: Any) -> bool:
        db = cls.db()
        try:
            if transaction.get_connection(db).in_atomic_block:
                with transaction.atomic(using=db):
                    cls.objects.using(db).create(**fields)
            else:
                cls.objects.using(db).create(**fields)
        except IntegrityError:
            return False
        return True

    @classmethod
    def seed_remote(cls, alias: str, objects: list[tuple[str, int, str]]) -> list[str]:
        """Record objects the remote already holds ``(name, size, etag)`` as ``remote`` rows.

        For a site that adopts the package with a bucket full of files: their names become
        reserved (no save takes them) and reads route to the remote without asking it. Names
        the ledger knows are left as they are. Returns the names inserted (one query to find
        the known names, one INSERT for the rest; concurrent seeds or saves of the same name
        are skipped by the unique key).
        """
        db = cls.db()
        names = [name for name, _, _ in objects]
        known = set(
            cls.objects.using(db).filter(alias=alias, name__in=names).values_list("name", flat=True)
        )
        now = timezone.now()
        new = [
            cls(
                alias=alias,
                name=name,
                state=State.REMOTE,
                size=size,
                bytes_done=size,
                checksum=etag,
                checksum_algorithm="s3-etag" if etag else "",
                host="",
                local_exists=False,
                transferred=now,
            )
            for name, size, etag in objects
            if name not in known
        ]
        cls.objects.using(db).bulk_create(new, ignore_conflicts=True)
        return [row.name for row in new]

    @classmethod
    def mark_saved(cls, alias: str, name: str, size: int) -> None:
        cls.rows(alias, name).update(size=size, local_exists=True, updated=timezone.now())

    @classmethod
    def forget(cls, alias: str, name: str) -> int:
        """Delete the row: the name is free again and no transfer may record it."""
        deleted, _ = cls.rows(alias, name).delete()
        return deleted

    @classmethod
    def reset_for_retry(cls, alias: str, name: str) -> bool:
        """Make a ``failed`` (or stale ``pending``) row transferable again with a fresh budget."""
        return bool(
            cls.rows(alias, name)
            .filter(state__in=[State.FAILED, State.PENDING])
            .update(state=State.PENDING, attempts=0, updated=timezone.now())
        )

    @classmethod
    def acquire_lease(cls, alias: str, name: str, owner: str, seconds: float) -> LeaseResult:
        """Take the single-flight lease on a ``pending`` row or on one whose lease expired.

        One ``UPDATE ... RETURNING`` where the database has it (PostgreSQL, SQLite 3.35+): the
        row comes back with the lease, and only a refused lease costs a second query (to say
        why). Elsewhere, the ``UPDATE`` and then a ``SELECT``.
        """
        now = timezone.now()
        expires = now + datetime.timedelta(seconds=seconds)
        db = cls.db()
        connection = connections[db]
        if connection.vendor in ("postgresql", "sqlite") and (
            connection.features.can_return_rows_from_bulk_insert
        ):
            q = connection.ops.quote_name
            columns = ", ".join(q(str(f.column)) for f in cls._meta.concrete_fields)
            table = q(cls._meta.db_table)
            sql = (
                f"UPDATE {table} SET {q('state')} = %s, {q('lease_owner')} = %s, "
                f"{q('lease_expires')} = %s, {q('attempts')} = {q('attempts')} + 1, "
                f"{q('bytes_done')} = 0, {q('updated')} = %s "
                f"WHERE {q('alias')} = %s AND {q('name')} = %s AND ({q('state')} = %s OR "
                f"({q('state')} = %s AND {q('lease_expires')} < %s)) RETURNING {columns}"
            )
            params: list[Any] = [str(State.TRANSFERRING), owner, expires, now, alias, name]
            params += [str(State.PENDING), str(State.TRANSFERRING), now]
            leased = list(cls.objects.db_manager(db).raw(sql, params))
            if leased:
                return LeaseResult(acquired=True, row=leased[0])
            return LeaseResult(acquired=False, row=cls.get_row(alias, name))
        taken = (
            cls.rows(alias, name)
            .filter(Q(state=State.PENDING) | Q(state=State.TRANSFERRING, lease_expires__lt=now))
            .update(
                state=State.TRANSFERRING,
                lease_owner=owner,
                lease_expires=expires,
                attempts=F("attempts") + 1,
                bytes_done=0,
                updated=now,
            )
        )
        return LeaseResult(acquired=bool(taken), row=cls.get_row(alias, name))

    @classmethod
    def _leased(cls, alias: str, name: str, owner: str) -> models.QuerySet[StoredFile]:
        found: models.QuerySet[StoredFile] = cls.rows(alias, name).filter(
            state=State.TRANSFERRING, lease_owner=owner
        )
        return found

    @classmethod
    def renew_lease(cls, alias: str, name: str, owner: str, seconds: float, done: int) -> bool:
        now = timezone.now()
        return bool(
            cls._leased(alias, name, owner).update(
                lease_expires=now + datetime.timedelta(seconds=seconds),
                bytes_done=done,
                updated=now,
            )
        )

    @classmethod
    def mark_remote(
        cls, alias: str, name: str, owner: str, *, size: int, checksum: str, algorithm: str
    ) -> bool:
        """Record the verified remote copy; ``False`` if the lease or the row was lost."""
        now = timezone.now()
        return bool(
            cls._leased(alias, name, owner).update(
                state=State.REMOTE,
                size=size,
                bytes_done=size,
                checksum=checksum,
                checksum_algorithm=algorithm,
                last_error="",
                upload_id="",
                part_size=None,
                source="",
                parts=[],
                lease_owner="",
                lease_expires=None,
                transferred=now,
                updated=now,
            )
        )

    @classmethod
    def record_upload(
        cls, alias: str, name: str, owner: str, *, upload_id: str, part_size: int, source: str
    ) -> bool:
        """Remember the multipart upload a leased transfer opened (for a resume)."""
        return bool(
            cls._leased(alias, name, owner).update(
                upload_id=upload_id, part_size=part_size, source=source, parts=[]
            )
        )

    @classmethod
    def record_parts(cls, alias: str, name: str, owner: str, parts: list[list[Any]]) -> bool:
        """Remember the finished parts ``[number, etag, md5, size]`` of the open upload."""
        return bool(cls._leased(alias, name, owner).update(parts=parts))

    @classmethod
    def clear_upload(cls, alias: str, name: str) -> None:
        cls.rows(alias, name).update(upload_id="", part_size=None, source="", parts=[])

    @classmethod
    def waiting_bytes(cls, host: str | None = None) -> int:
        """Bytes of local copies not yet verified remote (on *host*, or on every host)."""
        rows = cls.objects.using(cls.db()).filter(local_exists=True).exclude(state=State.REMOTE)
        if host is not None:
            rows = rows.filter(host=host)
        return int(rows.aggregate(total=Sum("size"))["total"] or 0)

    @classmethod
    def mark_local_deleted(cls, alias: str, name: str) -> None:
        cls.rows(alias, name).update(local_exists=False, updated=timezone.now())

    @classmethod
    def release(cls, alias: str, name: str, owner: str, *, state: str, error: str) -> bool:
        """End a lease without success: back to ``pending`` (to retry) or to ``failed``."""
        return bool(
            cls._leased(alias, name, owner).update(
                state=state,
                last_error=error[:4000],
                lease_owner="",
                lease_expires=None,
                updated=timezone.now(),
            )
        )


@dataclass(frozen=True)
class LeaseResult:
    acquired: bool
    row: StoredFile | None
