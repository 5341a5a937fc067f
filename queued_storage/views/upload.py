"""The upload view: a raw ``PUT``/``POST`` body or a multipart form onto the staging disk.

The client is authorised, and ``Content-Length`` checked against
``QUEUED_STORAGE_UPLOAD_MAX_BYTES`` and the staging budget, before a single byte of the body is
read; the body is then read in chunks of ``QUEUED_STORAGE_UPLOAD_CHUNK_SIZE``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.db import transaction
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
)
from django.http.multipartparser import MultiPartParserError
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt

from queued_storage.asgi import BODY_STREAM
from queued_storage.conf import settings
from queued_storage.exceptions import StagingFull
from queued_storage.ledger import (
    check_staging_budget,
    check_staging_budget_in_flight,
    ledger_database,
)
from queued_storage.names import LEDGER_NAME_LENGTH
from queued_storage.storage import QueuedStorage, owned_by
from queued_storage.uploads import (
    CLIENT_GONE,
    ExpectedChecksums,
    StagedFile,
    StagingUploadHandler,
    UploadRefused,
    body_idle_timeout,
    byte_count,
    idle_refusal,
    idle_timed_out,
    reservations_dir,
    reserve_in_flight,
    spool_dir,
    spool_stream,
    validate_upload_name,
)
from queued_storage.views.authorization import QueuedStorageView, as_response, uploader
from queued_storage.views.common import STAGING_FULL, created, error

logger = logging.getLogger(__name__)


@method_decorator(csrf_exempt, name="dispatch")
class UploadView(QueuedStorageView):
    """Take an upload into the staging storage: raw ``PUT``/``POST``, or a multipart form.

    The order of work is the point of this view: name validation, authorisation,
    ``Content-Length`` against the maximum, checksum headers — all before the body is read.

    Raw bodies: ``PUT`` with any content type, or ``POST`` with
    ``application/octet-stream`` (a content type a browser cannot send cross-site without a
    CORS preflight, which is why the view is exempt from CSRF). A body of unknown length
    (``Transfer-Encoding: chunked``, as ``curl -T -`` sends) is accepted when the server can
    frame it (ASGI, or a WSGI server setting ``wsgi.input_terminated`` such as gunicorn) and
    is limited to the maximum as it arrives; otherwise it is refused with 411.

    ``Content-MD5`` (base64) and ``X-Checksum-SHA256`` (hex) are verified against the bytes
    received; a mismatch is 400 and nothing is kept.

    A client that stops sending is answered 408 once a read of its body has waited
    ``idle_timeout`` seconds (``QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT``), and nothing is kept:
    under gunicorn and ``queued_storage.asgi`` only (see :func:`body_idle_timeout`).

    Answers 201 with ``{"name", "state", "size", "bytes_done", "local", "url",
    "status_url"}``; ``name`` is the name the file was stored under (a free variant of the
    requested one if that was taken).
    """

    http_method_names = ["put", "post"]
    #: Read by ``queued_storage.asgi``: this view reads the body itself, as a stream.
    streams_request_body = True
    #: Largest body in bytes; ``None`` uses ``QUEUED_STORAGE_UPLOAD_MAX_BYTES``.
    max_bytes: int | None = None
    #: Seconds a read of the body waits for the client; ``None`` uses
    #: ``QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT``.
    idle_timeout: float | None = None
    #: The form field of a multipart upload.
    form_field = "file"

    def put(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        return self._handle(request, form=False)

    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        content_type = request.content_type or ""
        if content_type == "multipart/form-data":
            return self._handle(request, form=True)
        if content_type != "application/octet-stream":
            return error(
                415,
                "POST a raw body with Content-Type: application/octet-stream, or a "
                "multipart/form-data form; or use PUT.",
            )
        return self._handle(request, form=False)

    def get_max_bytes(self) -> int:
        return self.max_bytes if self.max_bytes is not None else settings.UPLOAD_MAX_BYTES

    def check_length(self, length: int) -> None:
        """413 for an upload of *length* bytes over the limit, before its body is read."""
        if length > self.get_max_bytes():
            raise UploadRefused(
                413, f"The upload has {length} bytes; the limit is {self.get_max_bytes()}."
            )

    def get_idle_timeout(self) -> float | None:
        if self.idle_timeout is not None:
            return self.idle_timeout
        return settings.UPLOAD_IDLE_TIMEOUT

    def _handle(self, request: HttpRequest, *, form: bool) -> HttpResponse:
        name = ""
        try:
            name = self.requested_name(request, required=not form)
            refused = as_response(self.authorize(request, name))
            if refused is not None:
                return refused
            declared = self._declared_length(request, chunked_ok=not form)
            storage = self.get_storage()
            with budget_reserved(storage, name, declared):
                directory = spool_dir(storage.local)
                if form:
                    return self._save_form(request, storage, directory, name, declared)
                expected = ExpectedChecksums.from_headers(request.headers)
                idle_timeout = self.get_idle_timeout()
                with body_idle_timeout(request.META, idle_timeout):
                    staged = spool_stream(
                        self._body_reader(request, declared),
                        directory,
                        name=name,
                        declared=declared,
                        max_bytes=self.get_max_bytes(),
                        chunk_size=settings.UPLOAD_CHUNK_SIZE,
                        expected=expected,
                        idle_timeout=idle_timeout,
                    )
                return self._save(request, storage, name, staged)
        except UploadRefused as refusal:
            if refusal.status >= 500:
                logger.warning("upload of %r refused: %s", name, refusal.message)
            return _refusal(request, refusal)

    def _declared_length(self, request: HttpRequest, *, chunked_ok: bool) -> int | None:
        """The body's declared length, refusing what is too large before reading it."""
        declared = byte_count("Content-Length", request.META.get("CONTENT_LENGTH"))
        if declared is None:
            chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
            if chunked and chunked_ok and self._server_frames_body(request):
                return None
            raise UploadRefused(411, "Send a Content-Length header with the upload.")
        self.check_length(declared)
        return declared

    @staticmethod
    def _server_frames_body(request: HttpRequest) -> bool:
        """Whether a body without Content-Length can be read to its end (chunked framing)."""
        return "wsgi.input" not in request.META or bool(request.META.get("wsgi.input_terminated"))

    @staticmethod
    def _body_reader(request: HttpRequest, declared: int | None) -> Callable[[int], bytes]:
        if declared is None and "wsgi.input" in request.META:
            # Django bounds a WSGI body by CONTENT_LENGTH, i.e. to nothing for a chunked body;
            # a server that sets wsgi.input_terminated ends wsgi.input at the body's end.
            read: Callable[[int], bytes] = request.META["wsgi.input"].read
            return read
        return request.read

    def _save_form(
        self,
        request: HttpRequest,
        storage: QueuedStorage,
        directory: str,
        name: str,
        declared: int | None,
    ) -> HttpResponse:
        # Count what the multipart parser reads: Django's parser takes a body that ends early
        # (the client went away) as complete, with a truncated file. HttpRequest reads its
        # body from _stream; wrapping it is the one private attribute this view touches.
        counter = _CountingStream(request._stream)
        request._stream = counter  # type: ignore[assignment]
        handler = StagingUploadHandler(request, directory=directory)
        request.upload_handlers = [handler]
        idle_timeout = self.get_idle_timeout()
        try:
            with body_idle_timeout(request.META, idle_timeout):
                files = request.FILES
        except (MultiPartParserError, *CLIENT_GONE) as err:
            handler.upload_interrupted()
            if idle_timed_out(err):
                return _refusal(request, idle_refusal(idle_timeout))
            return error(400, f"The form upload could not be read ({err}); nothing was kept.")
        uploads = files.getlist(self.form_field)
        try:
            if declared is not None and counter.count < declared:
                return error(
                    400,
                    f"The form ended after {counter.count} of {declared} bytes (the client "
                    "disconnected?); nothing was kept.",
                )
            if len(uploads) != 1:
                return error(400, f"Send exactly one file in the form field {self.form_field!r}.")
            upload = uploads[0]
            if not hasattr(upload, "temporary_file_path"):
                return error(500, "The form upload was not written to the staging disk.")
            if not name:
                base = (upload.name or "").rsplit("/", 1)[-1]
                name = validate_upload_name(self.prefix + validate_upload_name(base))
                refused = as_response(self.authorize(request, name))
                if refused is not None:
                    return refused
            return self._save(request, storage, name, upload)
        finally:
            for upload in uploads:
                upload.close()

    def _save(
        self,
        request: HttpRequest,
        storage: QueuedStorage,
        name: str,
        content: File,  # type: ignore[type-arg]
    ) -> HttpResponse:
        """``storage.save()`` (a rename out of the spool), then the 201 answer.

        The answer is built before the save commits, so it describes the file as saved
        (``pending``, served locally) whatever a fast worker does once the commit dispatches it.
        """
        # Who uploads is read before the transaction (it may load the session and the user): on
        # SQLite a transaction that has read cannot wait for the write lock of the save's INSERT.
        owner = uploader(request)
        try:
            with transaction.atomic(using=ledger_database()), owned_by(owner):
                stored = storage.save(name, content, max_length=LEDGER_NAME_LENGTH)
                found = storage.status(stored)
                payload: dict[str, object] = (
                    {"name": stored, "state": None} if found is None else dict(found)
                )
        except SuspiciousFileOperation as err:
            return error(400, str(err))
        except StagingFull as err:
            logger.warning("upload of %r refused: %s", name, err)
            return error(507, STAGING_FULL)
        finally:
            if isinstance(content, StagedFile):
                content.discard()
        return created(payload, self.status_url(request, stored))


def _refusal(request: HttpRequest, refusal: UploadRefused) -> JsonResponse:
    """The answer to a refused upload; a 408 closes the connection.

    A WSGI application may not send ``Connection`` (a hop-by-hop header): under gunicorn the
    idle timeout shuts the socket's reading side (``body_idle_timeout``), so gunicorn closes
    the connection after the answer. Under ``queued_storage.asgi`` the header makes the server
    close it at once, instead of after its keep-alive timeout.
    """
    response = error(refusal.status, refusal.message)
    if refusal.status == 408 and BODY_STREAM in request.META:
        response["Connection"] = "close"
    return response


def _check_budget(name: str, declared: int | None) -> None:
    """507 before the body is read when it cannot fit in ``QUEUED_STORAGE_STAGING_BUDGET``.

    ``save()`` checks the budget again with the size received (and for bodies of unknown
    length); this only spares the client sending a body that would be refused.
    """
    if declared is None:
        return
    try:
        check_staging_budget(name, declared)
    except StagingFull as full:
        _refused_unread(name, declared, full)


def _refused_unread(name: str, declared: int, full: StagingFull) -> None:
    logger.warning(
        "upload of %r (%d bytes) refused unread: %d of the %d bytes of "
        "QUEUED_STORAGE_STAGING_BUDGET wait for their transfer or are being received",
        name,
        declared,
        full.waiting,
        full.budget,
    )
    raise UploadRefused(507, STAGING_FULL) from full


@contextmanager
def budget_reserved(storage: QueuedStorage, name: str, declared: int | None) -> Iterator[None]:
    """507 before the body is read when it cannot fit in ``QUEUED_STORAGE_STAGING_BUDGET``
    beside what waits and the bodies this host is receiving; else its *declared* length is
    held in the budget until the block ends (:func:`~queued_storage.uploads.reserve_in_flight`:
    every web process of the host sees it; it ends with the request, answered, failed or cut).

    Without a budget, or for a body of unknown length (chunked: ``save()`` checks the size
    received), nothing is reserved.
    """
    if declared is None or settings.STAGING_BUDGET is None:
        yield
        return

    def check(in_flight: int) -> None:
        try:
            check_staging_budget_in_flight(name, declared, in_flight)
        except StagingFull as full:
            _refused_unread(name, declared, full)

    with reserve_in_flight(reservations_dir(storage.local, settings.HOST), declared, check):
        yield


class _CountingStream:
    """Counts the bytes a parser reads (a multipart body that ends early is not complete)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def read(self, *args: int) -> bytes:
        data: bytes = self._stream.read(*args)
        self.count += len(data)
        return data

    def readline(self, *args: int) -> bytes:
        data: bytes = self._stream.readline(*args)
        self.count += len(data)
        return data

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()
