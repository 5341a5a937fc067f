"""Every file-name rule and limit, defined once.

Used by the storage (``save()``), the upload views (before a body is read), the reconcile
pass (adoption) and the ledger (its column's length).
"""

from __future__ import annotations

import os
import pathlib
import unicodedata

from django.core.exceptions import SuspiciousFileOperation
from django.core.files.utils import validate_file_name

__all__ = [
    "DOCTOR_DIRNAME",
    "LEDGER_NAME_LENGTH",
    "NAME_BYTES_MAX",
    "OWN_DIRECTORY_PREFIX",
    "OWN_DIRNAMES",
    "PART_BYTES_MAX",
    "SPOOL_DIRNAME",
    "TUS_DIRNAME",
    "UPLOAD_NAME_LENGTH",
    "check_length",
    "check_not_reserved",
    "checked_name",
    "control_characters",
    "reserved_directory",
    "stored_name",
    "valid_name",
]

#: Longest path component (bytes of UTF-8) local filesystems accept (``NAME_MAX``).
PART_BYTES_MAX = 255
#: Longest name (bytes of UTF-8): S3's limit for a key.
NAME_BYTES_MAX = 1024
#: Longest name the ledger's ``name`` column holds (characters).
LEDGER_NAME_LENGTH = 1024
#: Longest name a client of the upload views may ask for: an alternative name chosen on a
#: clash adds 8 characters, and the result must fit the ledger.
UPLOAD_NAME_LENGTH = 1000

#: Directories of this app's own inside a staging root (and a remote's location) start with
#: this: never adopted by the reconcile pass, and no file may be saved under a top-level
#: folder that starts with it (:func:`reserved_directory`), used today or not.
OWN_DIRECTORY_PREFIX = ".queued_storage-"
#: Directory inside the staging storage's root that holds upload bodies being received. It is
#: on the staging filesystem by construction, so the final move into place is a rename.
SPOOL_DIRNAME = OWN_DIRECTORY_PREFIX + "incoming"
#: Directory inside the staging storage's root that holds the bytes of unfinished tus uploads
#: (one file per upload, named by its id), moved into place by the save like the spool's.
TUS_DIRNAME = OWN_DIRECTORY_PREFIX + "tus"
#: Folder of the probe objects ``manage.py queued_storage doctor`` writes to each remote (and
#: of its probe files in a staging root, ``.queued_storage-doctor-*``).
DOCTOR_DIRNAME = OWN_DIRECTORY_PREFIX + "doctor"
#: Every top-level directory the app uses; each starts with :data:`OWN_DIRECTORY_PREFIX`.
OWN_DIRNAMES = (SPOOL_DIRNAME, TUS_DIRNAME, DOCTOR_DIRNAME)

#: Unicode categories refused in names: control characters and unpaired surrogates.
_REFUSED_CATEGORIES = ("Cc", "Cs")
#: Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): they make
#: a name display as another ("invoice\u202Etxt.exe" shows as "invoiceexe.txt").
_BIDI_CONTROLS = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


def control_characters(name: str) -> list[str]:
    """The control characters (category ``Cc``), unpaired surrogates (``Cs``) and
    bidirectional controls in *name*."""
    return sorted(
        {c for c in name if unicodedata.category(c) in _REFUSED_CATEGORIES or c in _BIDI_CONTROLS}
    )


def checked_name(name: str) -> str:
    """*name* in Unicode NFC; a name with control characters is refused.

    Control characters (category ``Cc``: NUL, tab, newline, DEL, C1) and unpaired surrogates
    (``Cs``) have no place in a file name: NUL cuts paths, newlines forge log lines and
    headers, and neither survives every filesystem or S3 tool. Bidirectional controls make a
    name display as another one. Names that differ only in
    Unicode normalisation (``é`` as one code point or as ``e`` plus a combining accent) are
    one name to a user and to macOS filesystems, so ``save()`` stores the NFC form and the
    ledger's unique key then keeps the two uploads apart.
    """
    bad = control_characters(name)
    if bad:
        shown = ", ".join(f"U+{ord(c):04X}" for c in bad)
        raise SuspiciousFileOperation(
            f"QueuedStorage refuses the file name {name!r}: it contains control characters "
            f"({shown}). Rename the file."
        )
    return unicodedata.normalize("NFC", name)


def stored_name(name: str, max_length: int | None) -> str:
    """The name ``QueuedStorage.save(name, ..., max_length)`` stores *name* under, or the
    ``SuspiciousFileOperation`` it refuses it with: every rule of this module, in the save's
    order (:func:`checked_name`, then :func:`valid_name`).

    The upload views call it too, before a byte of the body is read, so that no name they
    accept is refused by the save once the body has arrived.
    """
    return valid_name(checked_name(name), max_length)


def valid_name(name: str, max_length: int | None) -> str:
    """*name* with forward slashes, refused when it leaves the storage's root, lies under the
    app's own folders (:func:`check_not_reserved`) or is too long.

    A name longer than *max_length* is truncated by the save (as Django does), so its length
    is checked once it is.
    """
    given, name = name, name.replace("\\", "/")
    dir_name, file_name = os.path.split(name)
    if ".." in pathlib.PurePath(dir_name).parts:
        raise SuspiciousFileOperation(f"Detected path traversal attempt in '{given}'")
    validate_file_name(file_name)
    validate_file_name(name, allow_relative_path=True)
    check_not_reserved(name)
    if max_length is None or len(name) <= max_length:
        check_length(name)
    return name


def reserved_directory(name: str) -> str | None:
    """The top-level folder of *name* when it is the app's own (it starts with
    :data:`OWN_DIRECTORY_PREFIX`: the spool, tus uploads, doctor probes, and any the app adds
    later), else ``None``. A file there would be mixed with the app's working files: the
    cleanup command deletes old ones, the reconcile pass never adopts them."""
    first = name.replace("\\", "/").lstrip("/").split("/", 1)[0]
    return first if first.startswith(OWN_DIRECTORY_PREFIX) else None


def check_not_reserved(name: str) -> None:
    """Refuse a name under one of the app's own folders (:func:`reserved_directory`)."""
    if reserved_directory(name) is not None:
        raise SuspiciousFileOperation(
            f"QueuedStorage refuses the file name {name!r}: top-level names starting with "
            f"{OWN_DIRECTORY_PREFIX!r} are reserved for queued_storage's own files. Choose "
            "another folder or name."
        )


def check_length(name: str) -> None:
    """Refuse a name with a part over :data:`PART_BYTES_MAX` or over :data:`NAME_BYTES_MAX`."""
    longest = max((len(part.encode()) for part in name.split("/")), default=0)
    total = len(name.encode())
    if longest > PART_BYTES_MAX or total > NAME_BYTES_MAX:
        raise SuspiciousFileOperation(
            f"QueuedStorage refuses the file name {name[:60]!r}... ({total} bytes): a file name "
            f"may have at most {PART_BYTES_MAX} bytes between slashes (its longest part has "
            f"{longest}) and {NAME_BYTES_MAX} bytes in all. Shorten it, or save through a "
            "FileField, whose max_length truncates names."
        )
