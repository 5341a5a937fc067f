"""Upload views: large files in, without holding them in memory.

Three ways in (``urls.py`` wires them; docs/uploads.md shows each):

* :class:`UploadView` — ``PUT`` (or ``POST`` with ``Content-Type: application/octet-stream``)
  of a raw body, for scripts and ``curl -T``; ``POST`` of a ``multipart/form-data`` form works
  too (its ``file`` field). The client is authorised, and ``Content-Length`` checked against
  ``QUEUED_STORAGE_UPLOAD_MAX_BYTES``, before a single byte of the body is read; the body is
  then read in chunks of ``QUEUED_STORAGE_UPLOAD_CHUNK_SIZE`` into the staging disk.
* :class:`NginxUploadView` and :class:`NginxAuthView` — nginx authorises the request with an
  ``auth_request`` to :class:`NginxAuthView` before it accepts the body, writes the body to
  ``QUEUED_STORAGE_NGINX_UPLOAD_DIR`` itself and passes its path in ``X-File-Path``; the view
  moves that file into the staging storage.
* :class:`StatusView` — JSON with a file's state, bytes transferred, size and the URL to use now.

Every file goes through ``QueuedStorage.save()``, so name reservation, the ledger and the
dispatch on commit apply as for any other save.

* :class:`StagedFileView` — ``GET`` a waiting file's bytes from the staging disk (Django
  streams them, or hands them to nginx or Apache with ``QUEUED_STORAGE_SENDFILE``); a file
  already on the remote is a redirect to its remote URL.

Authorisation is one hook, ``authorize(request, name, action) -> bool | HttpResponse``
(``action`` is ``"upload"``, ``"status"`` or ``"read"``): the setting
``QUEUED_STORAGE_UPLOAD_AUTHORIZER`` names it, or a subclass overrides
:meth:`QueuedStorageView.authorize`. The default asks Django's permission system
(``QUEUED_STORAGE_UPLOAD_PERMISSION``, ``QUEUED_STORAGE_STATUS_PERMISSION``): anonymous users
get 401, users without the permission 403; a file's status, and a waiting file's bytes, are
shown to its owner (:func:`owner_of`) and to staff only, anyone else gets the 404 of a name
that does not exist.

A file uploaded by a signed-in user records ``str(request.user.pk)`` as its owner, in the
ledger row's single INSERT (:func:`queued_storage.storage.owned_by`).
"""

from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import quote, unquote_to_bytes

from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.storage import storages
from django.db import transaction
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
    QueryDict,
)
from django.http.multipartparser import MultiPartParserError
from django.urls import NoReverseMatch, Resolver404, ResolverMatch, resolve, reverse
from django.utils.decorators import method_decorator
from django.utils.http import content_disposition_header, http_date
from django.utils.module_loading import import_string
from django.views import View
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
    claim_nginx_file,
    idle_refusal,
    idle_timed_out,
    parse_byte_count,
    reservations_dir,
    reserve_in_flight,
    spool_dir,
    spool_stream,
    validate_upload_name,
    validate_url_name,
)

__all__ = [
    "NginxAuthView",
    "NginxUploadView",
    "QueuedStorageView",
    "StagedFileView",
    "StatusView",
    "UploadView",
    "default_authorize",
    "get_authorizer",
    "not_found",
    "owner_of",
]

logger = logging.getLogger(__name__)


SECRET_HEADER = "X-Queued-Storage-Secret"

#: What a client is told when the staging budget is spent (the details go to the log).
STAGING_FULL = "The staging area is full; nothing was kept. Retry later."


#: What :func:`default_authorize` tells an anonymous client, by action.
SIGN_IN = {
    "upload": "Sign in to upload files.",
    "status": "Sign in to see this file's status.",
    "read": "Sign in to read this file.",
}


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def not_found(name: str) -> JsonResponse:
    """The status view's answer for a name the storage does not hold (404).

    An authorizer returns it to refuse a file's status without revealing that the file
    exists: the answer is the same, byte for byte.
    """
    return _error(404, f"No file {name!r} in this storage.")


# -- authorisation --------------------------------------------------------------------------------
def default_authorize(request: HttpRequest, name: str, action: str) -> bool | HttpResponse:
    """Django's permission system: 401 for anonymous users (the message names the action:
    :data:`SIGN_IN`), 403 without the permission; a file's status only for its owner and staff.

    The permission is ``QUEUED_STORAGE_UPLOAD_PERMISSION`` for ``action="upload"`` and
    ``QUEUED_STORAGE_STATUS_PERMISSION`` for ``action="status"``; ``None`` lets every
    signed-in user through. With the permission, ``"status"`` is allowed to staff
    (``is_staff`` or ``is_superuser``) and to the user who uploaded the file
    (:func:`owner_of`); anyone else gets :func:`not_found`, the answer for a name that does
    not exist, so that the status endpoint does not tell which names exist. Files saved
    without an owner (from code) are shown to staff only. Needs ``AuthenticationMiddleware``
    (``request.user``).

    ``action="read"`` (:class:`StagedFileView`, a waiting file's bytes): staff, users with
    ``QUEUED_STORAGE_READ_PERMISSION`` (``None`` by default: no one by permission) and the
    file's owner; anyone else signed in gets :func:`not_found`, anonymous users 401.
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return _error(401, SIGN_IN.get(action, "Sign in first."))
    staff = getattr(user, "is_staff", False) or getattr(user, "is_superuser", False)
    if action == "read":
        permission = settings.READ_PERMISSION
        if staff or (permission is not None and user.has_perm(permission)):
            return True
        owner = owner_of(request, name)
        return True if owner and owner == str(user.pk) else not_found(name)
    permission = settings.UPLOAD_PERMISSION if action == "upload" else settings.STATUS_PERMISSION
    if permission is not None and not user.has_perm(permission):
        return False
    if action != "status" or staff:
        return True
    owner = owner_of(request, name)
    return True if owner and owner == str(user.pk) else not_found(name)


def owner_of(where: HttpRequest | QueuedStorage, name: str) -> str | None:
    """Who uploaded *name*: the ``str(pk)`` of the user who uploaded it through the upload
    views, ``""`` when unknown (saved from code, or by a client that was not a signed-in
    user), ``None`` when the storage holds no file of that name.

    *where* is the ``QueuedStorage``, or the request an authorizer was given: then the storage
    is the one of the upload or status view the URLconf routed it to (not available for
    :class:`NginxAuthView`'s request, which is routed to the auth view: pass the storage).
    One query of the ledger row.
    """
    if isinstance(where, QueuedStorage):
        return where.get_owner(name)
    match = where.resolver_match
    view = _routed_view(where, match) if match is not None else None
    if view is None:
        raise ImproperlyConfigured(
            "owner_of(request, name) needs a request the URLconf routed to a queued_storage "
            f"upload or status view; this one was routed to {match!r}. Pass the storage: "
            "owner_of(storages[alias], name)."
        )
    return view.get_storage().get_owner(name)


def _uploader(request: HttpRequest) -> str:
    """The owner to record for what *request* uploads: the signed-in user's pk, else ``""``."""
    user = getattr(request, "user", None)
    return str(user.pk) if user is not None and user.is_authenticated else ""


def get_authorizer() -> Any:
    """The hook named by ``QUEUED_STORAGE_UPLOAD_AUTHORIZER``, or :func:`default_authorize`."""
    path = settings.UPLOAD_AUTHORIZER
    if path is None:
        return default_authorize
    try:
        return import_string(path)
    except ImportError as err:
        raise ImproperlyConfigured(
            f"QUEUED_STORAGE_UPLOAD_AUTHORIZER is {path!r}, which cannot be imported ({err})."
        ) from err


def _as_response(verdict: bool | HttpResponse) -> HttpResponse | None:
    """``None`` to go on, else the response that refuses the request."""
    if isinstance(verdict, HttpResponse):
        return None if 200 <= verdict.status_code < 300 else verdict
    if verdict is True:
        return None
    return _error(403, "You may not upload or read this file.")


# -- views ----------------------------------------------------------------------------------------
class QueuedStorageView(View):
    """What the upload and status views share: the storage, the name and the hook.

    Class attributes (also ``as_view(...)`` keyword arguments):

    ``storage_alias``
        ``STORAGES`` alias of the ``QueuedStorage``; ``None`` uses
        ``QUEUED_STORAGE_UPLOAD_STORAGE``. A URL keyword argument ``storage_alias`` (set by
        the project's ``urls.py``, never by the client) wins over both.
    ``prefix``
        prepended to every client-given name (for example ``"incoming/"``).
    """

    storage_alias: str | None = None
    prefix: str = ""
    action = "upload"

    def authorize(self, request: HttpRequest, name: str) -> bool | HttpResponse:
        """Whether *request* may act on *name*; override it, or set the authorizer setting.

        It runs before the request body is read, so it must not touch ``request.body``,
        ``request.POST`` or ``request.FILES``. ``name`` is the validated, prefixed name the
        client asked for (for a form upload without one, ``""``).
        """
        return get_authorizer()(request, name, self.action)  # type: ignore[no-any-return]

    def get_storage(self) -> QueuedStorage:
        alias = self.kwargs.get("storage_alias") or self.storage_alias or settings.UPLOAD_STORAGE
        storage = storages[alias]
        if not isinstance(storage, QueuedStorage):
            raise ImproperlyConfigured(
                f"The upload views need a QueuedStorage; STORAGES[{alias!r}] is a "
                f"{type(storage).__name__} (see check queued_storage.E008)."
            )
        return storage

    def requested_name(self, request: HttpRequest, *, required: bool = True) -> str:
        """The client's name (URL path, else ``?name=``), validated and prefixed."""
        return self.client_name(self.kwargs.get("name"), request.GET, required=required)

    def authorised_name(self, request: HttpRequest) -> str | HttpResponse:
        """The requested name once the authorizer allows it, else the answer that refuses it
        (400 for a name the rules refuse, the authorizer's own refusal otherwise)."""
        try:
            name = self.requested_name(request)
        except UploadRefused as refusal:
            return _error(refusal.status, refusal.message)
        refused = _as_response(self.authorize(request, name))
        return name if refused is None else refused

    def client_name(self, path_name: str | None, query: QueryDict, *, required: bool = True) -> str:
        """The name a client asks for, from the URL Django decoded: *path_name* (the URL's
        ``<name>``), else the ``name`` of *query*; validated and prefixed.

        The one rule for both steps of an nginx upload: :class:`NginxAuthView` calls it with
        the original request's path and query decoded as Django's handlers decode them, so the
        authorizer sees the same name before the body as the upload view after it. Refused
        (:class:`UploadRefused`, 400) is every name :func:`validate_url_name` refuses, and a
        query with ``name`` more than once (``QueryDict.get`` takes the last, others the
        first).
        """
        names = query.getlist("name")
        if len(names) > 1:
            raise UploadRefused(400, "Give the file name once (?name= appears more than once).")
        raw = path_name or (names[0] if names else "")
        if not raw and not required:
            return ""
        return validate_upload_name(self.prefix + validate_url_name(raw))

    def status_url(self, request: HttpRequest, name: str) -> str | None:
        """The status endpoint of *name* in the namespace these views were included under."""
        match = request.resolver_match
        namespace = match.namespace if match is not None and match.namespace else "queued_storage"
        name = name.removeprefix(self.prefix) if self.prefix else name
        try:
            return reverse(f"{namespace}:status", kwargs={"name": name})
        except NoReverseMatch:
            return None


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

    def put(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return self._handle(request, form=False)

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        content_type = request.content_type or ""
        if content_type == "multipart/form-data":
            return self._handle(request, form=True)
        if content_type != "application/octet-stream":
            return _error(
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
            refused = _as_response(self.authorize(request, name))
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
    def _body_reader(request: HttpRequest, declared: int | None) -> Any:
        if declared is None and "wsgi.input" in request.META:
            # Django bounds a WSGI body by CONTENT_LENGTH, i.e. to nothing for a chunked body;
            # a server that sets wsgi.input_terminated ends wsgi.input at the body's end.
            return request.META["wsgi.input"].read
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
            return _error(400, f"The form upload could not be read ({err}); nothing was kept.")
        uploads = files.getlist(self.form_field)
        try:
            if declared is not None and counter.count < declared:
                return _error(
                    400,
                    f"The form ended after {counter.count} of {declared} bytes (the client "
                    "disconnected?); nothing was kept.",
                )
            if len(uploads) != 1:
                return _error(400, f"Send exactly one file in the form field {self.form_field!r}.")
            upload = uploads[0]
            if not hasattr(upload, "temporary_file_path"):
                return _error(500, "The form upload was not written to the staging disk.")
            if not name:
                base = (upload.name or "").rsplit("/", 1)[-1]
                name = validate_upload_name(self.prefix + validate_upload_name(base))
                refused = _as_response(self.authorize(request, name))
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
        content: Any,
    ) -> HttpResponse:
        """``storage.save()`` (a rename out of the spool), then the 201 answer.

        The answer is built before the save commits, so it describes the file as saved
        (``pending``, served locally) whatever a fast worker does once the commit dispatches it.
        """
        try:
            with transaction.atomic(using=ledger_database()), owned_by(_uploader(request)):
                stored = storage.save(name, content, max_length=LEDGER_NAME_LENGTH)
                payload = storage.status(stored) or {"name": stored, "state": None}
        except SuspiciousFileOperation as err:
            return _error(400, str(err))
        except StagingFull as err:
            logger.warning("upload of %r refused: %s", name, err)
            return _error(507, STAGING_FULL)
        finally:
            if isinstance(content, StagedFile):
                content.discard()
        payload["status_url"] = self.status_url(request, stored)
        response = JsonResponse(payload, status=201)
        if payload["status_url"]:
            response["Location"] = payload["status_url"]
        return response


def _refusal(request: HttpRequest, refusal: UploadRefused) -> JsonResponse:
    """The answer to a refused upload; a 408 closes the connection.

    A WSGI application may not send ``Connection`` (a hop-by-hop header): under gunicorn the
    idle timeout shuts the socket's reading side (``body_idle_timeout``), so gunicorn closes
    the connection after the answer. Under ``queued_storage.asgi`` the header makes the server
    close it at once, instead of after its keep-alive timeout.
    """
    response = _error(refusal.status, refusal.message)
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

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self.count += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self.count += len(data)
        return data

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def _check_secret(request: HttpRequest) -> HttpResponse | None:
    secret = settings.NGINX_SECRET
    if secret is None:
        return None
    given = request.headers.get(SECRET_HEADER, "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        return _error(403, f"{SECRET_HEADER} is missing or wrong.")
    return None


@method_decorator(csrf_exempt, name="dispatch")
class NginxUploadView(UploadView):
    """The file nginx received (``X-File-Path``), moved into the staging storage.

    nginx writes the body to ``client_body_temp_path`` (``client_body_in_file_only clean``),
    does not pass it on (``proxy_pass_request_body off``), and sets ``X-File-Path`` to
    ``$request_body_file`` and ``X-Content-Length`` to ``$content_length``. The path is
    accepted only inside ``QUEUED_STORAGE_NGINX_UPLOAD_DIR`` after resolving symlinks, must be
    a regular file that is not a symlink and has no other hard links, and must have the
    declared size; anything else is 400 and nothing is moved. With ``QUEUED_STORAGE_NGINX_SECRET``
    set, requests without that secret in ``X-Queued-Storage-Secret`` are refused (403): only
    nginx may name a file on the server's disk. Answers 404 while the directory is not set.
    """

    streams_request_body = False

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if settings.NGINX_UPLOAD_DIR is None:
            return _error(404, "nginx uploads are off (QUEUED_STORAGE_NGINX_UPLOAD_DIR).")
        refused = _check_secret(request)
        if refused is not None:
            return refused
        return super().dispatch(request, *args, **kwargs)

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return self._handle(request, form=False)

    def _handle(self, request: HttpRequest, *, form: bool) -> HttpResponse:
        base_dir = settings.NGINX_UPLOAD_DIR
        assert base_dir is not None  # dispatch() answered 404 otherwise
        try:
            name = self.requested_name(request)
            refused = _as_response(self.authorize(request, name))
            if refused is not None:
                return refused
            declared = _int_header(request, "X-Content-Length")
            if declared is not None:
                self.check_length(declared)
            expected = ExpectedChecksums.from_headers(request.headers)
            storage = self.get_storage()
            staged = claim_nginx_file(
                request.headers.get("X-File-Path", ""),
                base_dir,
                spool_dir(storage.local),
                name=name,
                declared=declared,
                chunk_size=settings.UPLOAD_CHUNK_SIZE,
            )
            try:
                expected.verify_file(staged.temporary_file_path(), settings.UPLOAD_CHUNK_SIZE)
            except BaseException:
                staged.discard()
                raise
            return self._save(request, storage, name, staged)
        except UploadRefused as refusal:
            return _error(refusal.status, refusal.message)


def _int_header(request: HttpRequest, header: str) -> int | None:
    return byte_count(header, request.headers.get(header))


class NginxAuthView(View):
    """nginx's ``auth_request`` target: may the original request upload? 204, 401 or 403.

    nginx calls it before it accepts the body, with the client's headers and
    ``X-Original-URI`` (``$request_uri``) and ``X-Original-Content-Length``
    (``$content_length``). ``$request_uri`` is the request target as the client sent it, which
    is also what nginx passes to Django with the upload; so the target is decoded as Django's
    handlers will decode it (:func:`_as_django_decodes`), resolved with the URLconf, must
    reach a :class:`NginxUploadView`, and its name comes from
    :meth:`QueuedStorageView.client_name`, the upload view's own rule: the authorizer sees the
    name the file will be stored under. What the two could read differently is refused.
    ``auth_request`` understands only 2xx, 401 and 403, so every other refusal (bad name, too
    large) is a 403; nginx's own ``client_max_body_size`` gives the client its 413.
    """

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        refused = _check_secret(request)
        if refused is not None:
            return refused
        original = request.headers.get("X-Original-URI", "")
        try:
            path, query = _as_django_decodes(original)
        except UploadRefused as refusal:
            return _error(403, refusal.message)
        try:
            match = resolve(path, getattr(request, "urlconf", None))
        except Resolver404:
            match = None
        view = _routed_view(request, match) if match is not None else None
        if not isinstance(view, NginxUploadView):
            return _error(403, f"{original!r} is not an nginx upload URL.")
        try:
            name = view.client_name(view.kwargs.get("name"), query)
            declared = _int_header(request, "X-Original-Content-Length")
        except UploadRefused as refusal:
            return _error(403, refusal.message)
        if declared is not None and declared > view.get_max_bytes():
            return _error(403, f"The upload is larger than {view.get_max_bytes()} bytes.")
        refused = _as_response(view.authorize(request, name))
        if refused is not None:
            return refused if refused.status_code == 401 else _error(403, _message(refused))
        return HttpResponse(status=204)


def _as_django_decodes(target: str) -> tuple[str, QueryDict]:
    """The path and query a view gets for the raw request target *target* (``$request_uri``).

    WSGI servers percent-decode the path into ``PATH_INFO`` and Django decodes its bytes as
    UTF-8; ASGI servers percent-decode it into ``scope["path"]`` as UTF-8. Neither resolves
    ``.`` or ``..`` segments, merges slashes or decodes twice, and the query string reaches
    ``QueryDict`` undecoded. Refused (:class:`UploadRefused`), where servers disagree: a target
    that is not printable ASCII (HTTP requires the rest percent-encoded; gunicorn and uvicorn
    refuse such a request line), one with a fragment, and a path whose bytes are not UTF-8
    (``%FF`` reaches a WSGI view as ``%FF``, an ASGI view as U+FFFD).
    """
    if not target.startswith("/") or not all(" " < c < "\x7f" for c in target) or "#" in target:
        raise UploadRefused(
            400, f"The request target {target!r} is not an origin-form path of printable ASCII."
        )
    raw_path, _, raw_query = target.partition("?")
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise UploadRefused(
            400, f"The path {raw_path!r} is not UTF-8 once percent-decoded."
        ) from None
    return path, QueryDict(raw_query)


def _routed_view(request: HttpRequest, match: ResolverMatch) -> QueuedStorageView | None:
    """The upload or status view *match* routes to, set up for *request*; else ``None``."""
    view_class = getattr(match.func, "view_class", None)
    if view_class is None or not issubclass(view_class, QueuedStorageView):
        return None
    view: QueuedStorageView = view_class(**getattr(match.func, "view_initkwargs", {}))
    view.setup(request, *match.args, **match.kwargs)
    return view


def _message(response: HttpResponse) -> str:
    try:
        return str(json.loads(response.content)["error"])
    except Exception:
        return "You may not upload this file."


class StatusView(QueuedStorageView):
    """``GET``: the state of one stored file, as JSON.

    ``{"name", "state", "size", "bytes_done", "local", "url"}``: ``bytes_done`` is what the
    running transfer has sent (``size`` once ``remote``), ``local`` whether the staging copy
    still exists, and ``url`` the URL to use now (``storage.url(name)``: the staging URL until
    the transfer is verified, then the remote one). 404 for a name the ledger does not know,
    and (the default authorizer) for a file of another user: the same answer, so that a client
    cannot tell which names exist.
    """

    http_method_names = ["get", "head"]
    action = "status"

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        name = self.authorised_name(request)
        if not isinstance(name, str):
            return name
        storage = self.get_storage()
        payload = storage.status(name)
        if payload is None:
            return not_found(name)
        return JsonResponse(payload)


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

    Every answer carries the type guessed from the name, ``Content-Disposition`` with the file
    name (``attachment`` for :data:`ACTIVE_TYPES`, else ``inline``), ``X-Content-Type-Options:
    nosniff`` and ``Cache-Control: private``.
    """

    http_method_names = ["get", "head"]
    action = "read"

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        storage = self.get_storage()
        if settings.serve_staged_for(storage.alias) is None:
            return _error(404, "Serving waiting files is off (QUEUED_STORAGE_SERVE_STAGED).")
        name = self.authorised_name(request)
        if not isinstance(name, str):
            return name
        return self.serve(request, storage, name)

    def serve(self, request: HttpRequest, storage: QueuedStorage, name: str) -> HttpResponseBase:
        """The answer for *name* once the request is authorised (see the class)."""
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
