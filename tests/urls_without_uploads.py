"""A project's URLconf before ``path("uploads/", include("queued_storage.urls"))`` is added
(``tests/test_checks.py``: W020)."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver

urlpatterns: list[URLPattern | URLResolver] = []
