"""System check of the metrics view's token (E018)."""

from __future__ import annotations

from collections.abc import Sequence

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, Tags, register

from queued_storage.checks.common import setting

__all__ = ["check_metrics_settings"]


@register(Tags.compatibility)
def check_metrics_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[CheckMessage]:
    """E018: the token that opens the metrics view."""
    token = setting("METRICS_TOKEN")
    if token is None or (isinstance(token, str) and token.strip()):
        return []
    return [
        Error(
            f"QUEUED_STORAGE_METRICS_TOKEN must be None or a non-empty string, got {token!r}.",
            hint="Set the bearer token your Prometheus scraper sends (a long random string), "
            "or None to open queued_storage.metrics.metrics_view to staff users only.",
            id="queued_storage.E018",
        )
    ]
