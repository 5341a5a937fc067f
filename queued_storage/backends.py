"""django-queued-storage's import paths, kept as thin aliases of :mod:`queued_storage.storage`.

``QueuedFileSystemStorage`` stages on ``FileSystemStorage``; ``QueuedS3BotoStorage`` sends to
django-storages' ``S3Storage`` (the old ``s3boto`` backend no longer exists). The other old
subclasses targeted backends that django-storages has removed and are not kept.
"""

from __future__ import annotations

from typing import Any

from django.utils.deconstruct import deconstructible

from queued_storage.storage import QueuedStorage

__all__ = [
    "QueuedFileSystemStorage",
    "QueuedRemoteStorage",
    "QueuedS3BotoStorage",
    "QueuedStorage",
]

#: The name this project was first proposed under.
QueuedRemoteStorage = QueuedStorage


@deconstructible(path="queued_storage.backends.QueuedFileSystemStorage")
class QueuedFileSystemStorage(QueuedStorage):
    """A ``QueuedStorage`` whose local storage is ``FileSystemStorage`` by default."""

    def __init__(
        self,
        local: str | None = "django.core.files.storage.FileSystemStorage",
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(local, *args, **kwargs)


@deconstructible(path="queued_storage.backends.QueuedS3BotoStorage")
class QueuedS3BotoStorage(QueuedFileSystemStorage):
    """A ``QueuedFileSystemStorage`` sending to django-storages' ``S3Storage``.

    As in django-queued-storage, the first positional argument is the remote storage.
    """

    def __init__(
        self, remote: str | None = "storages.backends.s3.S3Storage", *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, remote=remote, **kwargs)
