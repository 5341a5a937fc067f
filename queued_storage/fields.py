"""Model fields whose files know their queued state: ``instance.field.transfer()``/``.state``."""

from __future__ import annotations

from typing import TYPE_CHECKING, overload

from django.core.files.storage import Storage
from django.db.models.fields.files import FieldFile, FileField, ImageField, ImageFieldFile

from queued_storage.state import FileState
from queued_storage.storage import QueuedStorage

if TYPE_CHECKING:
    from celery.result import AsyncResult
    from django.db.models import Model

__all__ = ["QueuedFieldFile", "QueuedFileField", "QueuedImageField", "QueuedImageFieldFile"]


class _QueuedFileMixin:
    name: str | None
    storage: Storage

    @property
    def queued_storage(self) -> QueuedStorage:
        """The field's storage, typed (it must be a QueuedStorage)."""
        return self._queued_storage()

    def _queued_storage(self) -> QueuedStorage:
        if not isinstance(self.storage, QueuedStorage):
            raise TypeError(
                f"{type(self).__name__} needs a QueuedStorage, but its storage is "
                f"{type(self.storage).__name__}; pass storage=QueuedStorage(...) to the field."
            )
        return self.storage

    def transfer(self) -> AsyncResult | None:
        """Queue the transfer of this file now; see :meth:`QueuedStorage.transfer`."""
        if not self.name:
            raise ValueError("This field has no file to transfer.")
        return self._queued_storage().transfer(self.name)

    @property
    def queued_state(self) -> FileState | None:
        """The file's state record (state, size, whether the local copy exists)."""
        if not self.name:
            return None
        return self._queued_storage().get_state(self.name)

    @property
    def state(self) -> str | None:
        """``"pending"``, ``"transferring"``, ``"remote"`` or ``"failed"``; ``None`` if unknown."""
        found = self.queued_state
        return None if found is None else found.state

    @property
    def is_remote(self) -> bool:
        """Whether reads of this file go to the remote storage now."""
        found = self.queued_state
        return found is not None and found.is_remote


class QueuedFieldFile(_QueuedFileMixin, FieldFile):
    pass


class QueuedImageFieldFile(_QueuedFileMixin, ImageFieldFile):
    pass


class QueuedFileField(FileField):
    """A ``FileField`` whose files offer ``.transfer()`` and ``.state``."""

    attr_class = QueuedFieldFile

    if TYPE_CHECKING:  # so that type checkers see ``instance.field`` as a QueuedFieldFile

        @overload  # type: ignore[override]
        def __get__(self, instance: None, owner: type[Model]) -> QueuedFileField: ...
        @overload
        def __get__(self, instance: Model, owner: type[Model]) -> QueuedFieldFile: ...
        def __get__(
            self, instance: Model | None, owner: type[Model]
        ) -> QueuedFileField | QueuedFieldFile: ...


class QueuedImageField(ImageField):
    """An ``ImageField`` whose files offer ``.transfer()`` and ``.state``."""

    attr_class = QueuedImageFieldFile

    if TYPE_CHECKING:

        @overload  # type: ignore[override]
        def __get__(self, instance: None, owner: type[Model]) -> QueuedImageField: ...
        @overload
        def __get__(self, instance: Model, owner: type[Model]) -> QueuedImageFieldFile: ...
        def __get__(
            self, instance: Model | None, owner: type[Model]
        ) -> QueuedImageField | QueuedImageFieldFile: ...
