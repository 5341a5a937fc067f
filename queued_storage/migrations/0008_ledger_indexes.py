# Written by hand on 2026-12-07: the indexes of a ledger of millions, built online.

from __future__ import annotations

from django.db import migrations, models

from queued_storage.online import AddIndexConcurrentlyOnPostgres

UNFINISHED = ("pending", "transferring", "failed")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction

    dependencies = [
        ("queued_storage", "0007_tally"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="storedfile",
            index=models.Index(
                condition=models.Q(("state__in", UNFINISHED)),
                fields=["alias", "state", "created"],
                name="queued_storage_unfinished",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="storedfile",
            index=models.Index(
                condition=models.Q(("local_exists", True)),
                fields=["host", "id"],
                name="queued_storage_local",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="storedfile",
            index=models.Index(
                condition=models.Q(
                    ("local_exists", False), ("size__isnull", False), ("state__in", UNFINISHED)
                ),
                fields=["alias", "id"],
                name="queued_storage_lost",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="storedfile",
            index=models.Index(
                condition=models.Q(("state", "transferring")),
                fields=["lease_expires", "id", "host", "alias"],
                name="queued_storage_leases",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="storedfile",
            index=models.Index(
                condition=models.Q(("local_exists", True), ("state", "pending")),
                fields=["host", "updated", "attempts", "retrying_since", "alias"],
                name="queued_storage_waiting",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="storedfile",
            index=models.Index(fields=["host", "id"], name="queued_storage_host"),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="storedfile",
            index=models.Index(fields=["alias", "id"], name="queued_storage_alias"),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="storedfile",
            index=models.Index(
                fields=["name"], name="queued_storage_name", opclasses=["varchar_pattern_ops"]
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="tusupload",
            index=models.Index(
                condition=models.Q(("completed__isnull", True)),
                fields=["host"],
                name="queued_storage_tus_receiving",
            ),
        ),
    ]
