"""The tus 1.0.0 protocol's words: its version, extensions and headers, the reading of a
creation request's headers, and the frame of every answer (``Tus-Resumable`` on each).

Nothing here reads a row or a body: :mod:`queued_storage.tus` holds the request handlers.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from django.http import HttpResponse
from django.utils.http import http_date

from queued_storage.uploads import UploadRefused, byte_count, validate_upload_name

__all__ = [
    "EXTENSIONS",
    "NAME_HEADER",
    "NAME_KEYS",
    "OFFSET_CONTENT_TYPE",
    "STATUS_HEADER",
    "TUS_VERSION",
    "TYPE_KEYS",
    "Creation",
    "answer",
    "creation",
    "expires_header",
    "parse_metadata",
]

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
#: Response headers of a finished upload: the name it was stored under (percent-encoded
#: UTF-8) and its status URL.
NAME_HEADER = "X-Queued-Storage-Name"
STATUS_HEADER = "X-Queued-Storage-Status-Url"
#: ``Upload-Metadata`` keys that carry the file name and the content type (tus-js-client and
#: Uppy send ``filename``/``filetype``; ``name``/``type`` are accepted too).
NAME_KEYS = ("filename", "name")
TYPE_KEYS = ("filetype", "type", "content_type")


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (the value optional)."""
    found: dict[str, str] = {}
    for pair in (header or "").split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, encoded = pair.partition(" ")
        if not key or key in found:
            raise UploadRefused(400, f"Upload-Metadata has an empty or repeated key {key!r}.")
        try:
            found[key] = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise UploadRefused(
                400, f"Upload-Metadata {key!r} is not the base64 of UTF-8 text."
            ) from None
    return found


@dataclass(frozen=True)
class Creation:
    """What the headers of a creation (``POST``) ask for."""

    #: The whole file's size; ``None`` while it is deferred (``Upload-Defer-Length: 1``).
    length: int | None
    #: ``Upload-Metadata`` as it was sent (``HEAD`` answers it back).
    metadata: str
    #: The name to store the file under: the view's prefix plus the metadata's file name.
    name: str
    #: The metadata's media type, printable ASCII (empty when it names none).
    content_type: str


def creation(headers: Mapping[str, str], prefix: str) -> Creation:
    """The creation request of *headers*, its name under *prefix*; :class:`UploadRefused`
    (400) naming the header that is missing or wrong. Reads no body and asks no authorizer."""
    deferred = headers.get("Upload-Defer-Length")
    raw_length = headers.get("Upload-Length", "")
    length: int | None
    if deferred is not None:
        if deferred != "1" or raw_length:
            raise UploadRefused(
                400, "Send Upload-Length, or Upload-Defer-Length: 1 without Upload-Length."
            )
        length = None
    else:
        length = byte_count("Upload-Length", raw_length)
    if deferred is None and length is None:
        raise UploadRefused(400, "Send Upload-Length: the size of the whole file in bytes.")
    raw_metadata = headers.get("Upload-Metadata", "")
    metadata = parse_metadata(raw_metadata)
    raw_name = next((metadata[k] for k in NAME_KEYS if metadata.get(k)), "")
    if not raw_name:
        raise UploadRefused(400, "Name the file in Upload-Metadata (filename <base64>).")
    name = validate_upload_name(prefix + validate_upload_name(raw_name))
    content_type = next((metadata[k] for k in TYPE_KEYS if metadata.get(k)), "")
    if not all(" " <= char <= "~" for char in content_type):
        raise UploadRefused(
            400, "Upload-Metadata filetype must be a media type in printable ASCII."
        )
    return Creation(length, raw_metadata, name, content_type)


def answer(status: int, message: str = "", **headers: str) -> HttpResponse:
    """A tus answer: *message* as plain text, ``Tus-Resumable`` and *headers* (``_`` in a
    keyword stands for ``-``)."""
    reply = HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
    reply["Tus-Resumable"] = TUS_VERSION
    for key, value in headers.items():
        reply[key.replace("_", "-")] = value
    return reply


def expires_header(when: datetime.datetime) -> str:
    """``Upload-Expires``: *when* as an HTTP date."""
    return http_date(when.timestamp())
