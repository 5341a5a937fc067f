"""``manage.py queued_storage_reconcile``: one reconcile pass, for cron or by hand.

Exit status 0 when nothing was lost; 1 (with the reason on stderr) when a file never reached
the remote storage and its local copy is gone, or when files of an unknown storage wait.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queued_storage.reconcile import reconcile


class Command(BaseCommand):
    help = (
        "Re-queue transfers that were lost (overdue pending files, expired leases), retry "
        "failed files (--failed), adopt local files the ledger does not know (--adopt), and "
        "report data loss (exit status 1)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--failed",
            action="store_true",
            help="Also give every failed file a fresh retry budget and queue it again.",
        )
        parser.add_argument(
            "--adopt",
            action="store_true",
            help="Also adopt local files no ledger row knows (saved before the app was "
            "installed, or by a crashed process) and queue their transfer.",
        )
        parser.add_argument(
            "--storage",
            action="append",
            dest="aliases",
            metavar="ALIAS",
            help="Only this queued storage (repeatable). Default: every one with work.",
        )
        parser.add_argument(
            "--all-hosts",
            action="store_true",
            help="Check the local copies of every host's files, not only this host's (a "
            "staging volume shared by hosts that record different QUEUED_STORAGE_HOST names).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = reconcile(
            aliases=options["aliases"],
            failed=options["failed"],
            adopt=options["adopt"],
            all_hosts=options["all_hosts"],
        )
        for line in report.lines(verbose=options["verbosity"] >= 2):
            self.stdout.write(line)
        if not report.ok:
            raise CommandError(report.problem(), returncode=1)
