"""One model: an uploaded file stored through the project's default (queued) storage."""

from __future__ import annotations

from django.db import models

from queued_storage.fields import QueuedFileField


class Upload(models.Model):
    title = models.CharField(max_length=200)
    file = QueuedFileField(upload_to="uploads", max_length=255)

    objects: models.Manager[Upload] = models.Manager()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.title

    @property
    def transfer_state(self) -> str:
        """``pending``/``transferring``/``remote``/``failed``, or ``-`` when unknown."""
        return self.file.state or "-"

    @property
    def size(self) -> int | None:
        found = self.file.queued_state
        return found.size if found is not None else None

    @property
    def served_from(self) -> str:
        """Where reads of the file go now: ``local`` until the transfer is verified, then S3."""
        name = self.file.name
        if not name:
            return "-"
        return "S3" if self.file.queued_storage.using_remote(name) else "local"
