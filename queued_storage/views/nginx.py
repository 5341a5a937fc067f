"""nginx uploads: :class:`NginxAuthView` (``auth_request``, before nginx accepts the body) and
:class:`NginxUploadView` (moves the file nginx wrote to ``QUEUED_STORAGE_NGINX_UPLOAD_DIR``
into the staging storage).
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import unquote_to_bytes

from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    QueryDict,
)
from django.urls import Resolver404, resolve
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from queued_storage.conf import settings
from queued_storage.uploads import (
    ExpectedChecksums,
    UploadRefused,
    byte_count,
    claim_nginx_file,
    spool_dir,
)
from queued_storage.views.authorization import as_response, routed_view
from queued_storage.views.common import error
from queued_storage.views.upload import UploadView

SECRET_HEADER = "X-Queued-Storage-Secret"


def _check_secret(request: HttpRequest) -> HttpResponse | None:
    secret = settings.NGINX_SECRET
    if secret is None:
        return None
    given = request.headers.get(SECRET_HEADER, "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        return error(403, f"{SECRET_HEADER} is missing or wrong.")
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
            return error(404, "nginx uploads are off (QUEUED_STORAGE_NGINX_UPLOAD_DIR).")
        refused = _check_secret(request)
        if refused is not None:
            return refused
        return super().dispatch(request, *args, **kwargs)

    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        return self._handle(request, form=False)

    def _handle(self, request: HttpRequest, *, form: bool) -> HttpResponse:
        base_dir = settings.NGINX_UPLOAD_DIR
        assert base_dir is not None  # dispatch() answered 404 otherwise
        try:
            name = self.requested_name(request)
            refused = as_response(self.authorize(request, name))
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
            return error(refusal.status, refusal.message)


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

    def dispatch(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        refused = _check_secret(request)
        if refused is not None:
            return refused
        original = request.headers.get("X-Original-URI", "")
        try:
            path, query = _as_django_decodes(original)
        except UploadRefused as refusal:
            return error(403, refusal.message)
        try:
            match = resolve(path, getattr(request, "urlconf", None))
        except Resolver404:
            match = None
        view = routed_view(request, match) if match is not None else None
        if not isinstance(view, NginxUploadView):
            return error(403, f"{original!r} is not an nginx upload URL.")
        try:
            name = view.client_name(view.kwargs.get("name"), query)
            declared = _int_header(request, "X-Original-Content-Length")
        except UploadRefused as refusal:
            return error(403, refusal.message)
        if declared is not None and declared > view.get_max_bytes():
            return error(403, f"The upload is larger than {view.get_max_bytes()} bytes.")
        refused = as_response(view.authorize(request, name))
        if refused is not None:
            return refused if refused.status_code == 401 else error(403, _message(refused))
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


def _message(response: HttpResponse) -> str:
    try:
        return str(json.loads(response.content)["error"])
    except Exception:
        return "You may not upload this file."
