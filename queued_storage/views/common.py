"""What the views of this package answer with: a JSON error, the 404 of an unknown name."""

from __future__ import annotations

from django.http import JsonResponse

__all__ = ["STAGING_FULL", "created", "error", "not_found"]

#: What a client is told when the staging budget is spent (the details go to the log).
STAGING_FULL = "The staging area is full; nothing was kept. Retry later."


def error(status: int, message: str) -> JsonResponse:
    """``{"error": message}`` with *status*: every refusal of the views, tus's aside."""
    return JsonResponse({"error": message}, status=status)


def not_found(name: str) -> JsonResponse:
    """The status view's answer for a name the storage does not hold (404).

    An authorizer returns it to refuse a file's status without revealing that the file
    exists: the answer is the same, byte for byte.
    """
    return error(404, f"No file {name!r} in this storage.")


def created(payload: dict[str, object], status_url: str | None) -> JsonResponse:
    """``201`` with *payload* and its ``status_url`` (also the ``Location``, where there is
    one): what an upload view answers for a file it stored."""
    payload["status_url"] = status_url
    response = JsonResponse(payload, status=201)
    if status_url:
        response["Location"] = status_url
    return response
