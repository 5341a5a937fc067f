"""``manage.py queued_storage <subcommand>``: the operator's command.

* ``seed``: record the objects a remote storage already holds in the ledger, as ``remote``,
  when a site adopts the package with a bucket full of files. Their names are then reserved
  (``save()`` never takes them and never asks the remote) and reads route to the remote
  without a network call. Safe to run again, and while the site runs: names the ledger knows
  are left alone.
* ``reconcile``: one reconcile pass (``manage.py queued_storage_reconcile`` is the same).
"""

from __future__ import annotations

import itertools
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queued_storage.models import StoredFile
from queued_storage.names import LEDGER_NAME_LENGTH
from queued_storage.reconcile import reconcile
from queued_storage.storage import QueuedStorage, queued_storages
from queued_storage.transfer import list_remote

#: Names looked up and inserted per ledger query (under SQLite's bound-variable limit).
SEED_BATCH = 500


def add_reconcile_arguments(parser: CommandParser) -> None:
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


def run_reconcile(command: BaseCommand, options: dict[str, Any]) -> None:
    report = reconcile(
        aliases=options["aliases"],
        failed=options["failed"],
        adopt=options["adopt"],
        all_hosts=options["all_hosts"],
    )
    for line in report.lines(verbose=options["verbosity"] >= 2):
        command.stdout.write(line)
    if not report.ok:
        raise CommandError(report.problem(), returncode=1)


class Command(BaseCommand):
    help = "Operate queued storages: seed the ledger from a bucket, reconcile."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        seed = commands.add_parser(
            "seed",
            help="Record the objects the remote storage already holds as 'remote' in the "
            "ledger, so that no save takes their names.",
        )
        seed.add_argument(
            "--storage",
            action="append",
            dest="aliases",
            metavar="ALIAS",
            help="Only this queued storage (repeatable). Default: every queued storage.",
        )
        seed.add_argument(
            "--prefix", default="", help="Only names that begin with this (e.g. 'photos/')."
        )
        seed.add_argument(
            "--dry-run",
            action="store_true",
            help="List and count, write nothing.",
        )
        add_reconcile_arguments(
            commands.add_parser(
                "reconcile",
                help="Re-queue lost transfers, retry failed files (--failed), adopt unknown "
                "local files (--adopt), report data loss (exit status 1).",
            )
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["subcommand"] == "reconcile":
            run_reconcile(self, options)
            return
        for storage in self._storages(options["aliases"]):
            self._seed(storage, options["prefix"], options["dry_run"])

    def _storages(self, aliases: list[str] | None) -> list[QueuedStorage]:
        found = {storage.alias: storage for storage in queued_storages()}
        if not aliases:
            return list(found.values())
        unknown = [alias for alias in aliases if alias not in found]
        if unknown:
            raise CommandError(
                f"No queued storage {', '.join(map(repr, unknown))}; the queued storages are: "
                f"{', '.join(map(repr, found)) or 'none'}."
            )
        return [found[alias] for alias in aliases]

    def _seed(self, storage: QueuedStorage, prefix: str, dry_run: bool) -> None:
        listed = seeded = 0
        objects = list_remote(storage.remote, prefix)
        while batch := list(itertools.islice(objects, SEED_BATCH)):
            listed += len(batch)
            if dry_run:
                names = [name for name, _, _ in batch]
                known = StoredFile.objects.using(StoredFile.db()).filter(
                    alias=storage.alias, name__in=names
                )
                seeded += len(batch) - known.count()
                continue
            too_long = [o for o in batch if len(o[0]) > LEDGER_NAME_LENGTH]
            for name, _, _ in too_long:
                self.stderr.write(
                    f"{storage.alias}: {name[:60]!r}... has more than "
                    f"{LEDGER_NAME_LENGTH} characters, which the ledger cannot hold; "
                    "not seeded. Rename the object."
                )
            batch = [o for o in batch if len(o[0]) <= LEDGER_NAME_LENGTH]
            seeded += len(storage.ledger.seed_remote(batch))
        verb = "would seed" if dry_run else "seeded"
        self.stdout.write(
            f"{storage.alias}: {listed} objects listed on the remote storage, {verb} {seeded} "
            f"names, {listed - seeded} already in the ledger or skipped."
        )
