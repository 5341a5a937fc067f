"""Where a rejected file's local copy goes when ``QUEUED_STORAGE_QUARANTINE`` is a directory:
``<directory>/<alias>/<name>``, outside the staging storage (which a web server may serve).
Moved there by the worker that rejected it, back by the worker that transfers it once a
person released it. The other fates (``"keep"``, ``"delete"``) have no directory: every
function here then does nothing."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

from django.core.files.storage import Storage
from django.utils._os import safe_join

from queued_storage.conf import QUARANTINE_MODES, settings

__all__ = ["discard", "move_in", "path", "restore"]

logger = logging.getLogger(__name__)


def path(alias: str, name: str) -> str | None:
    """Where *name* of the storage *alias* is kept when ``QUEUED_STORAGE_QUARANTINE`` is a
    directory (never outside it); ``None`` for the other fates."""
    if settings.QUARANTINE in QUARANTINE_MODES:
        return None
    return safe_join(settings.QUARANTINE, alias, name)


def _move(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)


def move_in(local: Storage, alias: str, name: str) -> bool:
    """Move *name*'s local copy into the quarantine directory; whether there is one."""
    target = path(alias, name)
    if target is None:
        return False
    _move(local.path(name), target)
    return True


def restore(local: Storage, alias: str, name: str) -> bool:
    """Bring *name*'s copy back from the quarantine directory when the staging storage has
    none (a released file, or a worker that died between the move and the rejection);
    whether it did."""
    source = path(alias, name)
    if source is None or local.exists(name) or not os.path.isfile(source):
        return False
    _move(source, local.path(name))
    logger.info("%r brought back from the quarantine directory", name)
    return True


def discard(alias: str, name: str) -> None:
    """Delete *name*'s quarantined copy, if there is one (the file was deleted)."""
    found = path(alias, name)
    if found is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(found)
