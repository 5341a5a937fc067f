"""Authorisation hooks the upload tests run inside the web servers they start.

A server started with ``QS_TEST_UPLOAD_AUTHORIZER=tests.hooks.name_hook`` in its environment
uses :func:`name_hook` (``tests/settings.py`` reads the variable); the test process reads what
the hook saw from :data:`HOOK_LOG`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from queued_storage.views import NginxAuthView, default_authorize, owner_of

__all__ = ["HOOK_LOG", "hook_calls", "lab_hook", "name_hook"]

#: One JSON object per call of :func:`name_hook`: ``{"step", "action", "name"}`` (and ``"owner"``).
HOOK_LOG = Path(settings.WORKDIR) / "hook-calls.jsonl"


def name_hook(request: HttpRequest, name: str, action: str) -> bool | HttpResponse:
    """A name-based hook: refuses every name under ``private/``, else asks the default.

    Each call is appended to :data:`HOOK_LOG`, with ``step`` ``"auth"`` for nginx's
    ``auth_request`` and ``"view"`` for the upload or status view itself; a ``"status"`` call
    also records the file's ``owner``, as a hook reads it (:func:`owner_of`).
    """
    view_class = getattr(getattr(request.resolver_match, "func", None), "view_class", None)
    step = "auth" if view_class is not None and issubclass(view_class, NginxAuthView) else "view"
    call: dict[str, Any] = {"step": step, "action": action, "name": name}
    if action == "status":
        call["owner"] = owner_of(request, name)
    line = json.dumps(call) + "\n"
    fd = os.open(HOOK_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    if name.startswith("private/"):
        return False
    return default_authorize(request, name, action)


def hook_calls() -> list[dict[str, Any]]:
    """What :func:`name_hook` saw since the log was last removed, in order."""
    if not HOOK_LOG.exists():
        return []
    return [json.loads(line) for line in HOOK_LOG.read_text().splitlines()]


def lab_hook(request: HttpRequest, name: str, action: str) -> bool:
    """The host lab's web servers (``tests/settings_hosts.py``): anyone may upload or ask; the
    lab's tests send files over plain HTTP from the test process, without a session."""
    return True
