from __future__ import annotations

from django.apps import AppConfig

from queued_storage.conf import settings


class QueuedStorageConfig(AppConfig):
    name = "queued_storage"
    verbose_name = "Queued storage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from queued_storage import checks  # noqa: F401  (registers the system checks)

        if settings.METRICS:
            from queued_storage import metrics

            metrics.register()
