"""Serving a waiting file's bytes from the staging disk (streamed, or by nginx or Apache)."""

from __future__ import annotations

import logging
import mimetypes
import os
import re
from typing import IO
from urllib.parse import quote

from django.core.exceptions import SuspiciousFileOperation
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
)
from django.utils.http import content_disposition_header, http_date

from queued_storage.conf import settings
from queued_storage.file_status import unchecked_refusal
from queued_storage.storage import QueuedStorage
from queued_storage.uploads import (
    parse_byte_count,
)
from queued_storage.views.authorization import QueuedStorageView
from queued_storage.views.common import error, not_found

logger = logging.getLogger(__name__)


# -- serving waiting files ------------------------------------------------------------------------
#: Types a browser would run as a document of this site (scripts in HTML, SVG, XML): sent as
#: attachments, so that an uploaded page cannot act with the site's cookies.
ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
    }
)
#: Content types of compressed files, as :class:`~django.http.FileResponse` names them.
_ENCODED_TYPES = {
    "bzip2": "application/x-bzip",
    "gzip": "application/gzip",
    "xz": "application/x-xz",
}
#: A ``Range`` of one byte range; each position is checked by :func:`parse_byte_count`.
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
#: What :func:`_byte_range` answers for a range that starts past the end of the file.
_UNSATISFIABLE = (-1, -1)


class StagedFileView(QueuedStorageView):
    """``GET``/``HEAD``: a waiting file's bytes, from the staging disk, to whoever may read it.

    Mount it from ``queued_storage.urls`` (``files/<name>``, URL name ``file``) and set
    ``QUEUED_STORAGE_SERVE_STAGED = "queued_storage:file"``: ``url()`` of a file that waits for
    its transfer then points here, not at the staging storage's own URL (which would need the
    staging directory served publicly). Until that setting names this view's storage, it
    answers 404.

    In order, before a byte of the file is read: the name is validated as the upload views
    validate it (400: traversal, encoded twice, control characters, the spool); the authorizer
    decides (``action="read"``); a name the ledger does not know is 404 (:func:`not_found`), a
    file already on the remote is a 302 to its remote URL (old links keep working), a file
    without a local copy inside the staging root is 404. Then, by ``QUEUED_STORAGE_SENDFILE``:
    ``None`` streams it (:class:`~django.http.FileResponse`, single byte ranges answered 206),
    ``"x-accel-redirect"`` answers with an empty body and ``X-Accel-Redirect:
    <QUEUED_STORAGE_SENDFILE_PREFIX><path in the staging root>`` for nginx's ``internal``
    location (docs/nginx.conf), ``"x-sendfile"`` with ``X-Sendfile: <absolute path>``
    (percent-encoded, as mod_xsendfile's ``XSendFileUnescape`` expects).

    For a storage with processors, a file they have not passed is served by
    ``QUEUED_STORAGE_SERVE_UNPROCESSED`` and a rejected one never
    (:func:`~queued_storage.file_status.unchecked_refusal`), before anything else is read.

    Every answer carries the type guessed from the name, ``Content-Disposition`` with the file
    name (``attachment`` for :data:`ACTIVE_TYPES`, else ``inline``), ``X-Content-Type-Options:
    nosniff`` and ``Cache-Control: private``.
    """

    http_method_names = ["get", "head"]
    action = "read"

    def get(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponseBase:
        storage = self.get_storage()
        if settings.serve_staged_for(storage.alias) is None:
            return error(404, "Serving waiting files is off (QUEUED_STORAGE_SERVE_STAGED).")
        name = self.authorised_name(request)
        if not isinstance(name, str):
            return name
        return self.serve(request, storage, name)

    def serve(self, request: HttpRequest, storage: QueuedStorage, name: str) -> HttpResponseBase:
        """The answer for *name* once the request is authorised (see the class)."""
        refused = _unchecked(request, storage, name)
        if refused is not None:
            return refused
        found = storage.get_state(name)
        if found is not None and not found.is_remote:
            staged = _staged_path(storage, name)
            if staged is not None:
                try:
                    return _file_response(request, name, *staged)
                except FileNotFoundError:
                    pass  # its transfer just finished and deleted it
            found = storage.get_state(name, fresh=True)
        if found is None or not found.is_remote:
            return not_found(name)
        response = HttpResponseRedirect(storage.remote.url(name))
        response["Cache-Control"] = "private, no-store"  # signed URLs expire
        return response


def _unchecked(request: HttpRequest, storage: QueuedStorage, name: str) -> HttpResponse | None:
    """The answer refusing *name* while its storage's processors have not passed it
    (:func:`~queued_storage.file_status.unchecked_refusal`), else ``None``."""
    refusal = unchecked_refusal(storage, name, getattr(request, "user", None))
    if refusal is None:
        return None
    return not_found(name) if refusal.hidden else error(403, refusal.message)


def _staged_path(storage: QueuedStorage, name: str) -> tuple[str, str] | None:
    """The local storage's root and the real path of *name*'s local copy, if that is a
    regular file inside the root once symlinks are resolved; else ``None``."""
    try:
        root = os.path.realpath(storage.local.path(""))
        path = os.path.realpath(storage.local.path(name))
    except (NotImplementedError, SuspiciousFileOperation):
        return None
    if os.path.commonpath([root, path]) != root or path == root:
        logger.warning("refused to serve %r: its local copy is outside the staging root", name)
        return None
    return (root, path) if os.path.isfile(path) else None


def _file_headers(name: str, stat: os.stat_result) -> dict[str, str]:
    filename = name.rsplit("/", 1)[-1]
    guessed, encoding = mimetypes.guess_type(filename)
    content_type = _ENCODED_TYPES.get(encoding or "", guessed or "application/octet-stream")
    disposition = content_disposition_header(content_type in ACTIVE_TYPES, filename)
    return {
        "Content-Type": content_type,
        "Content-Disposition": disposition or "inline",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private",
        "Last-Modified": http_date(stat.st_mtime),
    }


def _file_response(request: HttpRequest, name: str, root: str, path: str) -> HttpResponseBase:
    """The file at *path* (inside *root*, the staging root), handed to the web server or
    streamed."""
    stat = os.stat(path)
    headers = _file_headers(name, stat)
    mode = settings.SENDFILE
    response: HttpResponseBase
    if mode == "x-accel-redirect":
        response = HttpResponse(headers=headers)
        relative = os.path.relpath(path, root)
        response["X-Accel-Redirect"] = settings.SENDFILE_PREFIX + quote(relative)
        return response
    if mode == "x-sendfile":
        response = HttpResponse(headers=headers)
        response["X-Sendfile"] = quote(path)
        return response
    size = stat.st_size
    span = _byte_range(request, size, headers["Last-Modified"])
    headers["Accept-Ranges"] = "bytes"
    if span == _UNSATISFIABLE:
        response = HttpResponse(status=416, headers=headers)
        response["Content-Range"] = f"bytes */{size}"
        return response
    start, end = span if span is not None else (0, size - 1)
    length = max(end - start + 1, 0)
    if request.method == "HEAD":
        response = HttpResponse(headers=headers)
    elif span is None:
        response = FileResponse(open(path, "rb"))  # noqa: SIM115 (closed by the response)
    else:
        response = FileResponse(_Slice(path, start, length), status=206)
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    # Ours win over what FileResponse guessed (it would show an HTML file inline).
    for header, value in headers.items():
        response[header] = value
    response["Content-Length"] = str(length)
    return response


def _byte_range(request: HttpRequest, size: int, modified: str) -> tuple[int, int] | None:
    """The one byte range the client asked for (first and last byte), :data:`_UNSATISFIABLE`,
    or ``None`` for the whole file (no ``Range``, several ranges, a malformed one, or an
    ``If-Range`` that is not the file's ``Last-Modified``).

    A position of more than 19 digits (past any int64, so past any file) is malformed, as in
    every other header that counts bytes (:func:`parse_byte_count`): the ``Range`` is ignored
    and the whole file is the answer, which RFC 9110 (section 14.2) allows for a ``Range`` a
    server does not take, and which is what a client asking for such a range gets from the
    other malformed ones.
    """
    match = _RANGE.fullmatch(request.headers.get("Range", "").strip())
    if match is None or request.headers.get("If-Range", modified) != modified:
        return None
    first, last = (parse_byte_count(group) if group else -1 for group in match.groups())
    if first is None or last is None or (first < 0 and last < 0):
        return None
    if first < 0:
        suffix = last
        return (max(size - suffix, 0), size - 1) if suffix and size else _UNSATISFIABLE
    start = first
    end = min(last, size - 1) if last >= 0 else size - 1
    if last >= 0 and last < start:
        return None
    return (start, end) if start < size else _UNSATISFIABLE


class _Slice:
    """*length* bytes of the file at *path* from *start*: what a 206 answer streams.

    It has no ``fileno``, so a server's ``sendfile()`` cannot send past the range.
    """

    def __init__(self, path: str, start: int, length: int) -> None:
        self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115 (closed by the response)
        self._file.seek(start)
        self._left = length

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._file.read(size) if size > 0 else b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()
