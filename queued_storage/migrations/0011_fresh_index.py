# Written by hand on 2026-12-07: the index of a worker's batch of small files (issue 24).

from __future__ import annotations

from django.db import migrations, models

from queued_storage.online import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction

    dependencies = [
        ("queued_storage", "0010_uploading"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="storedfile",
            index=models.Index(
                condition=models.Q(("retry_at__isnull", True), ("state", "pending")),
                fields=["alias", "host", "created", "size"],
                name="queued_storage_fresh",
            ),
        ),
    ]
