"""The media library: each item holds an image (thumbnail shown) or any other file.

Both fields store through the project's default storage, a ``QueuedStorage``: a file is served
from the local staging disk until a Celery worker has copied it to S3 and verified the copy.
Before that, the worker runs the storage's processors on it (``example/settings.py``), one of
which saves an image's thumbnail (``gallery/processors.py``).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from gallery.processors import thumbnail_name
from queued_storage.fields import QueuedFieldFile, QueuedFileField, QueuedImageField


class Upload(models.Model):
    title = models.CharField(max_length=200)
    image = QueuedImageField(upload_to="images", max_length=255, blank=True)
    file = QueuedFileField(upload_to="uploads", max_length=255, blank=True)
    created = models.DateTimeField(auto_now_add=True, null=True)

    objects: models.Manager[Upload] = models.Manager()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.title

    def clean(self) -> None:
        if not self.image and not self.file:
            raise ValidationError("Choose an image or a file.")

    @property
    def stored(self) -> QueuedFieldFile | None:
        """The item's file: the image if it has one, else the file (``None``: neither)."""
        if self.image:
            return self.image  # type: ignore[return-value]  (same mixin, an ImageFieldFile)
        return self.file if self.file else None

    @property
    def thumbnail_url(self) -> str | None:
        """The URL of the image's thumbnail (``gallery.processors.Thumbnail``, made by the
        worker before the image is sent), else of the image itself; ``None``: no image."""
        if not self.image:
            return None
        storage = self.image.storage
        derived = thumbnail_name(str(self.image.name))
        return storage.url(derived) if storage.exists(derived) else str(self.image.url)

    @property
    def transfer_state(self) -> str:
        """``pending``/``transferring``/``remote``/``failed``, or ``-`` when unknown."""
        stored = self.stored
        return (stored.state if stored is not None else None) or "-"

    @property
    def size(self) -> int | None:
        stored = self.stored
        found = stored.queued_state if stored is not None else None
        return found.size if found is not None else None

    @property
    def served_from(self) -> str:
        """Where reads of the file go now: ``local`` until the transfer is verified, then S3."""
        stored = self.stored
        if stored is None or not stored.name:
            return "-"
        return "S3" if stored.queued_storage.using_remote(stored.name) else "local"
