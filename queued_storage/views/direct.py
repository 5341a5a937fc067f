"""The direct-upload endpoints: JSON in, JSON out; the bytes go from the client to S3.

See :mod:`queued_storage.direct` for what each step checks, and ``docs/direct.md`` for the
flow. Every request is authorised first (action ``"upload"``, the name the client gives or
the reserved one); then only the user who started an upload may act on it (anyone else gets
the 404 of a name that does not exist).

A request with a body must say ``Content-Type: application/json``: a cross-site form cannot
send that without a CORS preflight, which is why the views are exempt from CSRF (as the raw
upload view is).
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, QueryDict
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt

from queued_storage import direct
from queued_storage.conf import settings
from queued_storage.direct import DirectRefused
from queued_storage.uploads import UploadRefused
from queued_storage.views.authorization import QueuedStorageView, as_response, uploader
from queued_storage.views.common import created, error

__all__ = ["DirectCompleteView", "DirectPartsView", "DirectStartView", "DirectUploadView"]

#: The largest JSON body a direct-upload request may have (100 parts' checksums fit).
MAX_JSON_BYTES = 64 * 1024


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if (request.content_type or "") != "application/json":
        raise DirectRefused(415, "Send the request as JSON (Content-Type: application/json).")
    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > MAX_JSON_BYTES:
        raise DirectRefused(413, f"Send at most {MAX_JSON_BYTES} bytes of JSON.")
    try:
        body = json.loads(request.body or b"{}")
    except ValueError as err:
        raise DirectRefused(400, f"The body is not JSON ({err}).") from err
    if not isinstance(body, dict):
        raise DirectRefused(400, "Send a JSON object.")
    return body


class _DirectView(QueuedStorageView):
    """What the direct endpoints share: the name, the authorizer, the owner, the refusals."""

    action = "upload"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return super().dispatch(request, *args, **kwargs)
        except DirectRefused as refused:
            return error(refused.status, refused.message)
        except UploadRefused as refused:
            return error(refused.status, refused.message)
        except _Answer as answer:
            return answer.response

    def authorised(self, request: HttpRequest, raw_name: str | None) -> str:
        """The client's name validated and prefixed, once the authorizer allows it."""
        name = self.client_name(raw_name, QueryDict())
        refused = as_response(self.authorize(request, name))
        if refused is not None:
            raise _Answer(refused)
        return name

    def urls(self, request: HttpRequest, name: str) -> dict[str, str | None]:
        """The URLs of the upload's next steps, in the namespace these views were included
        under."""
        return {
            "parts_url": self.url_of(request, "direct-parts", name),
            "upload_url": self.url_of(request, "direct-upload", name),
            "complete_url": self.url_of(request, "direct-complete", name),
            "status_url": self.status_url(request, name),
        }


class _Answer(Exception):
    """An answer the authorizer gave instead of going on."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


@method_decorator(csrf_exempt, name="dispatch")
class DirectStartView(_DirectView):
    """``POST``: ``{"name", "size", "checksum_algorithm": "crc32", "content_type"}`` → 201
    with the reserved name, the S3 upload id, the part size and count, and the URLs of the
    next steps (the part URLs come from ``parts_url``, once the parts' checksums are
    declared: each URL signs its part's checksum)."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        body = _json_body(request)
        raw = body.get("name")
        if not isinstance(raw, str) or not raw:
            raise DirectRefused(400, 'Give the file name ("name").')
        name = self.authorised(request, raw)
        size = body.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            raise DirectRefused(400, f'Give the size of {name!r} in bytes ("size").')
        algorithm = body.get("checksum_algorithm", direct.CHECKSUM_ALGORITHM)
        if algorithm != direct.CHECKSUM_ALGORITHM:
            raise DirectRefused(
                400,
                f"Direct uploads check parts with {direct.CHECKSUM_ALGORITHM!r}; "
                f"{algorithm!r} is not supported.",
            )
        content_type = body.get("content_type") or ""
        if not isinstance(content_type, str) or len(content_type) > 255:
            raise DirectRefused(400, '"content_type" must be a MIME type.')
        storage = self.get_storage()
        started = direct.start(
            storage, name, size, owner=uploader(request), content_type=content_type
        )
        payload = {
            "name": started.name,
            "state": "uploading",
            "upload_id": started.upload_id,
            "size": started.size,
            "part_size": started.part_size,
            "parts": started.parts,
            "checksum_algorithm": direct.CHECKSUM_ALGORITHM,
            "expires": started.expires.isoformat(),
            **self.urls(request, started.name),
        }
        response = JsonResponse(payload, status=201)
        if payload["upload_url"]:
            response["Location"] = str(payload["upload_url"])
        return response


@method_decorator(csrf_exempt, name="dispatch")
class DirectPartsView(_DirectView):
    """``POST``: ``{"parts": [{"number", "checksum"}, ...]}`` (each part's CRC32, base64) →
    ``{"parts": [{"number", "url", "method", "headers"}], "expires_in"}``."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        name = self.authorised(request, self.kwargs.get("name"))
        body = _json_body(request)
        parts = body.get("parts")
        if not isinstance(parts, list):
            raise DirectRefused(400, 'Give the parts as a list ("parts").')
        signed = direct.sign_parts(self.get_storage(), name, uploader(request), parts)
        return JsonResponse({"parts": signed, "expires_in": settings.DIRECT_URL_EXPIRY})


@method_decorator(csrf_exempt, name="dispatch")
class DirectUploadView(_DirectView):
    """``GET``: the upload and the parts the remote holds (to resume); ``DELETE``: cancel."""

    http_method_names = ["get", "delete"]

    def get(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        name = self.authorised(request, self.kwargs.get("name"))
        found = direct.received(self.get_storage(), name, uploader(request))
        return JsonResponse({**found, **self.urls(request, name)})

    def delete(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        name = self.authorised(request, self.kwargs.get("name"))
        direct.cancel(self.get_storage(), name, uploader(request))
        return HttpResponse(status=204)


@method_decorator(csrf_exempt, name="dispatch")
class DirectCompleteView(_DirectView):
    """``POST`` ``{}``: verify and complete → 201 with the file's status (``remote``)."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        name = self.authorised(request, self.kwargs.get("name"))
        body = _json_body(request)
        if "parts" in body:
            raise DirectRefused(
                400, "The server reads the parts from the remote storage; send no part list."
            )
        storage = self.get_storage()
        done = direct.complete(storage, name, uploader(request))
        found = storage.status(name)
        payload: dict[str, object] = {"name": name} if found is None else dict(found)
        payload["checksum"] = done.checksum
        return created(payload, self.status_url(request, name))
