"""What a file's ledger row says to show of it: its status (``QueuedStorage.status``, the
upload views' status answer) and, for a storage with processors, whether its bytes may be
served yet (the staged-file view)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from queued_storage.conf import settings
from queued_storage.models import State, StoredFile
from queued_storage.state import FileState

if TYPE_CHECKING:
    from queued_storage.storage import QueuedStorage

__all__ = ["FileStatus", "Refusal", "file_status", "unchecked_refusal"]


class FileStatus(TypedDict):
    """What :meth:`QueuedStorage.status` answers: the JSON of a status page."""

    name: str
    state: str
    size: int | None
    bytes_done: int | None
    local: bool
    url: str | None
    #: Why a processor rejected it (state ``rejected``); ``None`` otherwise.
    reason: str | None


def file_status(storage: QueuedStorage, name: str) -> FileStatus | None:
    """What a status page shows of *name*, read from the ledger row itself (the truth, not a
    cached state that may lag behind it for a moment); ``None`` if the ledger has none.

    ``url`` is the URL of the copy that serves the file now (``None`` for a storage without
    URLs, for a direct upload under way, and for a rejected file); ``reason`` is why a
    processor rejected it (``None`` unless ``rejected``: a failed transfer's error is the
    operator's, not the uploader's).
    """
    row = storage.ledger.row(name)
    if row is None:
        return None
    found = FileState.from_row(row)
    rejected = found.state == State.REJECTED
    url: str | None = None  # while a direct upload runs nothing is readable yet
    if found.state != State.UPLOADING and not rejected:
        try:
            if found.is_remote:
                url = str(storage.remote.url(name))
            else:
                url = str(storage.waiting_url(name))
        except Exception:  # a storage without URLs; the state is still worth answering
            url = None
    return {
        "name": name,
        "state": str(found.state),
        "size": row.size,
        "bytes_done": row.size if found.is_remote else row.bytes_done,
        "local": row.local_exists,
        "url": url,
        "reason": row.last_error if rejected else None,
    }


@dataclass(frozen=True)
class Refusal:
    """Why a waiting file is not served: *hidden*, as a name that does not exist (404); else
    refused with *message* (403), to its owner and staff."""

    hidden: bool
    message: str = ""


def _owner_or_staff(user: Any, row: StoredFile) -> bool:
    if user is None or not user.is_authenticated:
        return False
    if getattr(user, "is_staff", False) or getattr(user, "is_superuser", False):
        return True
    return bool(row.owner) and row.owner == str(user.pk)


def unchecked_refusal(storage: QueuedStorage, name: str, user: Any) -> Refusal | None:
    """Whether *user* may not read *name*'s waiting bytes because its storage's processors
    have not passed it; ``None``: go on (the authorizer has already decided). Only a storage
    with processors reads the row (by its key).

    A ``rejected`` file is never served: its owner and staff are told why, anyone else sees
    no such file. A file not processed yet is served by ``QUEUED_STORAGE_SERVE_UNPROCESSED``:
    ``"all"``, as any waiting file; ``"owner"`` (the default), to its owner and staff only,
    whatever the authorizer lets others read; ``"none"``, to no one (its owner and staff are
    told it waits for its checks). A file a person released is processed."""
    if not storage.processors:
        return None
    row = storage.ledger.row(name)
    if row is None or row.state == State.REMOTE:
        return None
    mine = _owner_or_staff(user, row)
    if row.state == State.REJECTED:
        reason = f"{name!r} was rejected before its transfer and is never served: {row.last_error}"
        return Refusal(hidden=not mine, message=reason)
    rule = settings.SERVE_UNPROCESSED
    if row.processed is not None or rule == "all" or (rule == "owner" and mine):
        return None
    return Refusal(
        hidden=not mine,
        message=f"{name!r} is served once its checks pass (QUEUED_STORAGE_SERVE_UNPROCESSED is "
        f"{rule!r}); ask its status and retry when it says so.",
    )
