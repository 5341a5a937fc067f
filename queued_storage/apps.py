from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate

from queued_storage.conf import settings


class QueuedStorageConfig(AppConfig):
    name = "queued_storage"
    verbose_name = "Queued storage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from queued_storage import (
            checks,  # noqa: F401  (registers the system checks)
            tally,
        )

        # After ``flush`` (a TransactionTestCase's teardown) and ``migrate``: see tally.emptied.
        post_migrate.connect(tally.emptied, sender=self, dispatch_uid="queued_storage.tally")

        if settings.METRICS:
            from queued_storage import metrics

            metrics.register()
