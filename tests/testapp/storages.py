"""Storages for tests that need something to happen in the middle of a transfer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.files.storage import FileSystemStorage

#: Called by DuringUploadStorage after it wrote a file and before the transfer records it.
during_upload: list[Callable[[str], None]] = []


class DuringUploadStorage(FileSystemStorage):
    """A remote that runs the registered hooks right after writing each file."""

    def _save(self, name: str, content: Any) -> str:
        stored = super()._save(name, content)
        for hook in during_upload:
            hook(stored)
        return stored
