# Written by hand on 2026-12-07: retries wait in the ledger (a due time), not in the broker.

from __future__ import annotations

from django.db import migrations, models

from queued_storage.online import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction

    dependencies = [
        ("queued_storage", "0008_ledger_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="storedfile",
            name="retry_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the retry of a file waiting after an error is due (the "
                "database's clock); empty once its message is sent.",
                null=True,
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="storedfile",
            index=models.Index(
                condition=models.Q(("retry_at__isnull", False)),
                fields=["host", "retry_at", "alias"],
                name="queued_storage_due",
            ),
        ),
    ]
