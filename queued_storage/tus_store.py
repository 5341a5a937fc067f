"""The rows of tus uploads (``models.TusUpload``): each change one conditional statement.

``queued_storage.tus`` keeps the truth about an upload in these rows, never in a process's
memory, so that any process (and, with a shared staging volume, any host) can take the next
request. An append moves ``offset`` only from the value it started at, so two appends cannot
both record theirs; a deferred length is set once; an upload is completed once. The rows live in
the ledger's database (``QUEUED_STORAGE_DATABASE``), beside the files they become.

``queued_storage.ledger`` re-exports these as ``tus_upload``, ``tus_create``, ... for the
callers that import them from there.
"""

from __future__ import annotations

import datetime

from queued_storage.models import StoredFile, TusUpload

__all__ = ["TusStore"]


class TusStore:
    """The reads and conditional writes of the tus uploads' rows (no state of its own)."""

    @staticmethod
    def get(upload_id: object) -> TusUpload | None:
        """The row of a tus upload, read from the database (never a process's memory)."""
        return TusUpload.get(upload_id)

    @classmethod
    def create(cls, **fields: object) -> TusUpload:
        """Insert the row of a new tus upload (an unguessable random id is the caller's)."""
        row: TusUpload = TusUpload.objects.using(StoredFile.db()).create(**fields)
        return row

    @classmethod
    def advance(cls, upload_id: object, old: int, new: int, expires: datetime.datetime) -> bool:
        """Record *new* as the offset of an upload whose offset is still *old*; ``False`` if
        not (another append recorded its own, or the upload is completed)."""
        rows = TusUpload.objects.using(StoredFile.db()).filter(
            pk=upload_id, offset=old, completed__isnull=True
        )
        return bool(rows.update(offset=new, expires=expires))

    @classmethod
    def set_length(cls, upload_id: object, length: int) -> bool:
        """Record the ``Upload-Length`` of an upload created with ``Upload-Defer-Length``, once:
        ``False`` if its length is already known (another request set it)."""
        rows = TusUpload.objects.using(StoredFile.db()).filter(
            pk=upload_id, length__isnull=True, completed__isnull=True, offset__lte=length
        )
        return bool(rows.update(length=length))

    @classmethod
    def complete(cls, upload_id: object, now: datetime.datetime) -> bool:
        """Mark an upload whose last byte arrived as handed to ``QueuedStorage.save()``.

        Run in the save's transaction before the save: the upload's reservation in the staging
        budget then ends as the saved file's row begins (the budget is not counted twice).
        """
        rows = TusUpload.objects.using(StoredFile.db()).filter(pk=upload_id, completed__isnull=True)
        return bool(rows.update(completed=now))

    @classmethod
    def named(cls, upload_id: object, stored_name: str) -> bool:
        """Record the name ``QueuedStorage.save()`` stored a finished upload under."""
        return bool(
            TusUpload.objects.using(StoredFile.db())
            .filter(pk=upload_id)
            .update(stored_name=stored_name)
        )

    @classmethod
    def forget(cls, upload_id: object) -> bool:
        """Delete an upload's row (terminated, or expired and cleaned up)."""
        deleted, _ = TusUpload.objects.using(StoredFile.db()).filter(pk=upload_id).delete()
        return bool(deleted)

    @classmethod
    def expired(cls, now: datetime.datetime, host: str | None = None) -> list[TusUpload]:
        """Uploads whose ``expires`` has passed (finished ones too: their row only answers
        HEAD), oldest first; those of *host* only, if given."""
        rows = TusUpload.objects.using(StoredFile.db()).filter(expires__lt=now).order_by("expires")
        if host is not None:
            rows = rows.filter(host=host)
        return list(rows)
