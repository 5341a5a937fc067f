"""Model fields whose files know their queued state: ``instance.field.transfer()``/``.state``."""

from __future__ import annotations

from typing import Any

from django.db.models.fields.files import FieldFile, FileField, ImageField, ImageFieldFile

from queued_storage.state import FileState
from queued_storage.storage import QueuedStorage

__all__ = ["QueuedFieldFile", "QueuedFileField", "QueuedImageField", "QueuedImageFieldFile"]


class _QueuedFileMixin:
    name: str | None
    storage: Any

    def _queued_storage(self) -> QueuedStorage:
        if not isinstance(self.storage, QueuedStorage):
            raise TypeError(
                f"{type(self).__name__} needs a QueuedStorage, but its storage is "
                f"{type(self.storage).__name__}; pass storage=QueuedStorage(...) to the field."
            )
        return self.storage

    def transfer(self) -> Any:
        """Queue the transfer of this file now; see :meth:`QueuedStorage.transfer`."""
        if not self.name:
            raise ValueError("This field has no file to transfer.")
        return self._queued_storage().transfer(self.name)

    @property
    def state(self) -> FileState | None:
        """The file's ledger state (``.state.state`` is ``pending``/.../``remote``)."""
        if not self.name:
            return None
        return self._queued_storage().get_state(self.name)

    @property
    def is_remote(self) -> bool:
        found = self.state
        return found is not None and found.is_remote


class QueuedFieldFile(_QueuedFileMixin, FieldFile):
    pass


class QueuedImageFieldFile(_QueuedFileMixin, ImageFieldFile):
    pass


class QueuedFileField(FileField):
    """A ``FileField`` whose files offer ``.transfer()`` and ``.state``."""

    attr_class = QueuedFieldFile


class QueuedImageField(ImageField):
    """An ``ImageField`` whose files offer ``.transfer()`` and ``.state``."""

    attr_class = QueuedImageFieldFile
