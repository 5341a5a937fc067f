"""``manage.py queued_storage_reconcile``: one reconcile pass, for cron or by hand.

The same as ``manage.py queued_storage reconcile``. Exit status 0 when nothing was lost; 1
(with the reason on stderr) when a file never reached the remote storage and its local copy is
gone, or when files of an unknown storage wait.
"""

from __future__ import annotations

from typing import Any, cast

from django.core.management.base import BaseCommand, CommandParser

from queued_storage.management.arguments import ReconcileOptions
from queued_storage.management.commands.queued_storage import (
    add_reconcile_arguments,
    ledger_required,
    run_reconcile,
)


class Command(BaseCommand):
    help = (
        "Re-queue transfers that were lost (overdue pending files, expired leases), retry "
        "failed files (--failed), adopt local files the ledger does not know (--adopt), and "
        "report data loss (exit status 1)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_reconcile_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        with ledger_required():
            run_reconcile(self, cast(ReconcileOptions, options))
