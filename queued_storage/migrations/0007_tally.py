# Written by hand on 2026-12-07: the kept tally of the ledger (queued_storage/tally.py).

from __future__ import annotations

from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

from queued_storage import tally


def install(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    """The triggers, and the tally counted from the ledger as it is (a full scan, once)."""
    tally.install(schema_editor.connection)


def uninstall(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    tally.uninstall(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [
        ("queued_storage", "0006_dispatch_refused"),
    ]

    operations = [
        migrations.CreateModel(
            name="Tally",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("alias", models.CharField(max_length=100)),
                ("host", models.CharField(blank=True, default="", max_length=255)),
                ("state", models.CharField(max_length=16)),
                ("local", models.BooleanField()),
                ("written", models.BooleanField()),
                ("files", models.BigIntegerField()),
                ("bytes", models.BigIntegerField()),
            ],
            options={
                "verbose_name": "tally row",
                "default_permissions": (),
            },
        ),
        migrations.RunPython(install, uninstall, elidable=False),
    ]
