"""A content-type check: what the bytes are against what the name and the uploader claim.

The first bytes of the file are matched against the signatures of the formats sites accept
most (images, PDF, archives, audio and video containers) and of what must never pass for one
of them (scripts, HTML, executables). A file is rejected when:

* its bytes are one of the recognised formats and its name's extension (``mimetypes``) or its
  declared content type names another one (a script named ``.jpg``, a PDF declared as
  ``image/png``);
* its name claims a recognised binary format whose signature its bytes lack (a ``.png`` that
  is not a PNG);
* its bytes are a script, HTML or an executable and the name claims anything else;
* an allow-list is given and the file's type (its bytes' where recognised, else its name's)
  is not in it (``"image/*"`` allows every image type).

Otherwise it passes, keeping the detected type (``content_type``) in the ledger's metadata.
"""

from __future__ import annotations

import fnmatch
import mimetypes
from collections.abc import Callable, Collection

from queued_storage.processors import Outcome, Passed, Rejected, Staged

__all__ = ["ContentTypeCheck", "sniff"]

#: How many leading bytes are read.
HEAD = 512


def _at(offset: int, magic: bytes) -> Callable[[bytes], bool]:
    return lambda head: head[offset : offset + len(magic)] == magic


#: Recognised formats: (content type, test of the leading bytes), in the order tried.
FORMATS: list[tuple[str, Callable[[bytes], bool]]] = [
    ("image/png", _at(0, b"\x89PNG\r\n\x1a\n")),
    ("image/jpeg", _at(0, b"\xff\xd8\xff")),
    ("image/gif", lambda h: h[:6] in (b"GIF87a", b"GIF89a")),
    ("image/webp", lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP"),
    ("image/bmp", _at(0, b"BM")),
    ("image/tiff", lambda h: h[:4] in (b"II*\x00", b"MM\x00*")),
    ("application/pdf", _at(0, b"%PDF-")),
    ("application/zip", _at(0, b"PK\x03\x04")),
    ("application/gzip", _at(0, b"\x1f\x8b")),
    ("audio/mpeg", lambda h: h[:3] == b"ID3" or h[:2] in (b"\xff\xfb", b"\xff\xf3")),
    ("video/mp4", lambda h: h[4:8] == b"ftyp"),
    ("application/x-executable", _at(0, b"\x7fELF")),
    ("application/x-msdownload", _at(0, b"MZ")),
]

#: Formats whose bytes must never pass under another type's name.
ACTIVE = {"text/x-script", "text/html", "application/x-executable", "application/x-msdownload"}

#: Containers whose members a name may claim (an ``.docx`` is a ZIP, an ``.m4a`` an MP4).
CONTAINERS = {
    "application/zip": (
        "application/vnd.openxmlformats",
        "application/vnd.oasis",
        "application/epub",
        "application/java-archive",
    ),
    "video/mp4": ("audio/mp4", "video/quicktime", "audio/x-m4a", "video/3gpp"),
}


def sniff(head: bytes) -> str | None:
    """The content type the leading bytes show, or ``None`` when none is recognised."""
    for content_type, matches in FORMATS:
        if matches(head):
            return content_type
    text = head.lstrip().lower()
    if text.startswith(b"#!") or text.startswith(b"<?php"):
        return "text/x-script"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "image/svg+xml"  # may carry scripts: leave it out of ``allowed`` to refuse it
    if text.startswith((b"<!doctype html", b"<html", b"<script")):
        return "text/html"
    return None


def _same(detected: str, claimed: str) -> bool:
    if detected == claimed:
        return True
    return claimed.startswith(CONTAINERS.get(detected, ()))


class ContentTypeCheck:
    """``ContentTypeCheck()``, or ``ContentTypeCheck(allowed=["image/*", "application/pdf"])``."""

    def __init__(self, allowed: Collection[str] | None = None) -> None:
        self.allowed = list(allowed) if allowed is not None else None

    def __call__(self, staged: Staged) -> Outcome:
        with staged.open() as source:
            head = source.read(HEAD)
        detected = sniff(head)
        by_name = mimetypes.guess_type(staged.name)[0]
        declared = staged.content_type.split(";")[0].strip().lower() or None
        recognised = {t for t, _ in FORMATS}
        for claim, what in ((by_name, "its name"), (declared, "its declared type")):
            if claim is None or claim == "application/octet-stream":
                continue
            if detected is not None and not _same(detected, claim):
                return Rejected(
                    f"{staged.name!r} is {detected} by its content, but {what} says {claim}: "
                    "rename it to what it is, or upload the file it should be."
                )
            if detected is None and claim in recognised:
                return Rejected(
                    f"{staged.name!r} is not {claim} as {what} says (its content does not "
                    "begin as such a file does): upload a valid file."
                )
        if detected in ACTIVE and by_name is None and declared is None:
            return Rejected(f"{staged.name!r} is {detected} by its content: not accepted.")
        kind = detected or by_name or declared or "application/octet-stream"
        if self.allowed is not None and not any(
            fnmatch.fnmatch(kind, pattern) for pattern in self.allowed
        ):
            return Rejected(
                f"{staged.name!r} is {kind}, which this site does not accept (allowed: "
                f"{', '.join(self.allowed)})."
            )
        return Passed({"content_type": kind})
