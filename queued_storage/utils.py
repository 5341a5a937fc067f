"""django-queued-storage's ``queued_storage.utils``, kept for code that imports from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.utils.module_loading import import_string

from queued_storage.exceptions import QueuedStorageConfigError

__all__ = ["import_attribute"]


def import_attribute(
    import_path: object = None, options: Mapping[str, object] | None = None
) -> Any:
    """The object at the dotted *import_path* (anything else is returned as it is); with
    *options*, the result of calling it with them (the old way to build a storage)."""
    if import_path is None:
        raise QueuedStorageConfigError("import_attribute() needs a dotted path to import.")
    if not isinstance(import_path, str):
        return import_path
    try:
        found = import_string(import_path)
    except ImportError as err:
        raise QueuedStorageConfigError(f"{import_path!r} cannot be imported ({err}).") from err
    if options is not None and callable(found):
        return found(**options)
    return found
