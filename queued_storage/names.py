"""Every file-name rule and limit, defined once.

Used by the storage (``save()``), the upload views (before a body is read), the reconcile
pass (adoption) and the ledger (its column's length).

A rule answers with a reason (``str``, or ``None`` when the name passes): the ``*_problem``
functions. Each caller turns a reason into its own error: the upload views into a 400
(``queued_storage.uploads.UploadRefused``), the save into ``SuspiciousFileOperation`` (the
``check_*``, :func:`checked_name` and :func:`stored_name` wrappers here, which the storage,
the staging disk and the reconcile pass call).
"""

from __future__ import annotations

import os
import pathlib
import re
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
    "client_name_problem",
    "control_characters",
    "control_problem",
    "length_problem",
    "reserved_directory",
    "reserved_problem",
    "segment_bytes",
    "stored_name",
    "url_name_problem",
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


def _refuse(reason: str | None) -> None:
    """The save's error for a rule's *reason* (``None``: the name passes)."""
    if reason is not None:
        raise SuspiciousFileOperation(reason)


def control_problem(name: str) -> str | None:
    """Why the save refuses *name* for its control characters (:func:`control_characters`)."""
    bad = control_characters(name)
    if not bad:
        return None
    shown = ", ".join(f"U+{ord(c):04X}" for c in bad)
    return (
        f"QueuedStorage refuses the file name {name!r}: it contains control characters "
        f"({shown}). Rename the file."
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
    _refuse(control_problem(name))
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


def reserved_problem(name: str) -> str | None:
    """Why the save refuses a name under one of the app's own folders
    (:func:`reserved_directory`)."""
    if reserved_directory(name) is None:
        return None
    return (
        f"QueuedStorage refuses the file name {name!r}: top-level names starting with "
        f"{OWN_DIRECTORY_PREFIX!r} are reserved for queued_storage's own files. Choose "
        "another folder or name."
    )


def check_not_reserved(name: str) -> None:
    """Refuse a name under one of the app's own folders (:func:`reserved_directory`)."""
    _refuse(reserved_problem(name))


def segment_bytes(part: str) -> int:
    """The bytes of UTF-8 of *part* (an unpaired surrogate counts as the 3 bytes it takes)."""
    return len(part.encode("utf-8", "surrogatepass"))


def length_problem(name: str) -> str | None:
    """Why the save refuses *name* for a part over :data:`PART_BYTES_MAX` or a length over
    :data:`NAME_BYTES_MAX`."""
    longest = max((segment_bytes(part) for part in name.split("/")), default=0)
    total = segment_bytes(name)
    if longest <= PART_BYTES_MAX and total <= NAME_BYTES_MAX:
        return None
    return (
        f"QueuedStorage refuses the file name {name[:60]!r}... ({total} bytes): a file name "
        f"may have at most {PART_BYTES_MAX} bytes between slashes (its longest part has "
        f"{longest}) and {NAME_BYTES_MAX} bytes in all. Shorten it, or save through a "
        "FileField, whose max_length truncates names."
    )


def check_length(name: str) -> None:
    """Refuse a name with a part over :data:`PART_BYTES_MAX` or over :data:`NAME_BYTES_MAX`."""
    _refuse(length_problem(name))


# -- names a client asks for (the upload views, before a body is read) ----------------------------
def client_name_problem(name: str) -> str | None:
    """Why a client of the upload views may not store a file under *name*, else ``None``.

    Refused: empty names, names over :data:`UPLOAD_NAME_LENGTH` characters, control
    characters (:func:`control_characters`), backslashes, absolute paths, ``.`` and ``..``
    segments, empty segments (``a//b``, a trailing ``/``), segments over
    :data:`PART_BYTES_MAX` bytes, names over :data:`NAME_BYTES_MAX` bytes in NFC (the form
    the save stores), and names under the app's own folders (:func:`reserved_directory`).
    The reasons speak to the client; the save's rules (:func:`stored_name`) still apply after.
    """
    if not name:
        return "The upload needs a file name (in the URL or ?name=)."
    if len(name) > UPLOAD_NAME_LENGTH:
        return f"The file name is longer than {UPLOAD_NAME_LENGTH} characters."
    if control_characters(name):
        return "The file name contains a NUL, another control character or a bidirectional control."
    if "\\" in name:
        return "The file name contains a backslash; use '/' between folders."
    if name.startswith("/"):
        return "The file name is an absolute path; give a relative name."
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"The file name {name!r} has an empty, '.' or '..' segment."
        if segment_bytes(part) > PART_BYTES_MAX:
            return f"A segment of the file name is longer than {PART_BYTES_MAX} bytes."
    # QueuedStorage.save() stores names in Unicode NFC; ask the hook and the ledger the same.
    name = unicodedata.normalize("NFC", name)
    size = segment_bytes(name)
    if size > NAME_BYTES_MAX:
        return (
            f"The file name {name[:60]!r}... has {size} bytes in UTF-8; the limit is "
            f"{NAME_BYTES_MAX} bytes (S3's limit for a key). Shorten it."
        )
    if reserved_directory(name) is not None:
        return (
            f"The file name {name!r} starts with {OWN_DIRECTORY_PREFIX!r}: top-level names "
            "starting with it are reserved for queued_storage's own files. Choose another "
            "folder or name."
        )
    return None


#: A percent-escape. Django decodes a URL once; an escape left in the name was encoded twice.
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
#: What an ASGI server puts in the path for bytes that are not UTF-8 (a WSGI server leaves
#: them percent-encoded, which :data:`_ESCAPE` finds).
_REPLACEMENT = "\ufffd"


def url_name_problem(name: str) -> str | None:
    """Why *name*, taken from a URL's path or query string as Django decoded it, would mean
    something else to the next component that decodes it; else ``None``.

    Refused: a name still holding a percent-escape (the client encoded it twice:
    ``%252e%252e`` arrives as ``%2e%2e``, which one more decode makes ``..``), and a name
    with U+FFFD, which an ASGI server puts for bytes that are not UTF-8 (where a WSGI server
    leaves ``%FF``: the same URL would name two files). :func:`client_name_problem` applies
    on top.
    """
    escape = _ESCAPE.search(name)
    if escape is not None:
        return (
            f"The file name {name!r} holds the percent-escape {escape.group()!r} once "
            "decoded (encoded twice?); such names are refused, as a later decode would change "
            "them."
        )
    if _REPLACEMENT in name:
        return "The file name is not valid UTF-8 once percent-decoded; encode it as UTF-8."
    return None
