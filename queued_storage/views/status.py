"""The status view: a file's state, bytes transferred, size and the URL to use now."""

from __future__ import annotations

from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
)

from queued_storage.views.authorization import QueuedStorageView
from queued_storage.views.common import not_found


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

    def get(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        name = self.authorised_name(request)
        if not isinstance(name, str):
            return name
        storage = self.get_storage()
        payload = storage.status(name)
        if payload is None:
            return not_found(name)
        return JsonResponse(payload)
