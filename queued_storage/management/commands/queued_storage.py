"""``manage.py queued_storage <subcommand>``: the operator's command.

* ``status``: counts and bytes by storage and state, the oldest pending file, transfers in
  flight with their progress, failures with their reasons; ``--json`` for monitoring.
* ``transfer``: queue transfers (named files, ``--pending``, ``--failed``), or run them in this
  process with ``--sync``, through the worker's own code path (its lease, engine and outcome).
* ``upload``: stream a local file of any size into a storage, as a saved upload (``save()``).
* ``verify``: ask the remote again about ``remote`` files (a HEAD each); exit 1 on data loss.
* ``cleanup``: delete old local copies of verified files, spool files a killed web process
  left, expired tus uploads and tus part files no upload row owns, direct uploads left alone
  past ``QUEUED_STORAGE_DIRECT_EXPIRY``, multipart uploads no ledger row records.
* ``doctor``: one line per check of this host's set-up, each failing line with its fix.
* ``seed``: record the objects a remote storage already holds in the ledger, as ``remote``,
  when a site adopts the package with a bucket full of files. Their names are then reserved
  (``save()`` never takes them and never asks the remote) and reads route to the remote
  without a network call. Safe to run again, and while the site runs: names the ledger knows
  are left alone.
* ``reconcile``: one reconcile pass (``manage.py queued_storage_reconcile`` is the same).
* ``release``: let rejected files through (a processor's false positive): ``pending``, not
  scanned again, queued (the admin's "Release" action).

This module parses the arguments; each subcommand is one call into the operator layer
(:mod:`queued_storage.jobs`, on the row actions of :mod:`queued_storage.operations` that the
admin's actions use too; ``status``: :mod:`queued_storage.status`; ``doctor``:
:mod:`queued_storage.doctor`; ``reconcile``: :mod:`queued_storage.reconcile`), whose result
:mod:`queued_storage.management.render` turns into lines; every row change goes through the
ledger. Progress bars (tqdm) go to stderr, and only when it is a terminal: never with
``--no-progress``, ``-v 0`` or ``--json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, cast

from django.apps import apps
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import InvalidStorageError, Storage, storages
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections

from queued_storage import doctor
from queued_storage.conf import settings
from queued_storage.construction import queued_entries
from queued_storage.exceptions import QueuedStorageError
from queued_storage.jobs import (
    cleanup,
    queue_transfers,
    seed,
    transfer_files_here,
    upload,
    verify_files,
)
from queued_storage.management import render
from queued_storage.management.arguments import (
    CleanupOptions,
    DoctorOptions,
    Options,
    ReconcileOptions,
    ReleaseOptions,
    SeedOptions,
    StatusOptions,
    TransferOptions,
    UploadOptions,
    VerifyOptions,
    WithProgress,
    add_reconcile_arguments,
    common,
    named_storages,
    positive,
    since,
    storage_option,
)
from queued_storage.management.render import LISTED, Bar
from queued_storage.models import StoredFile
from queued_storage.operations import LocalCopies, release_rows
from queued_storage.reconcile import reconcile
from queued_storage.status import status_report
from queued_storage.verify import VerifyReport

__all__ = ["Command", "add_reconcile_arguments", "ledger_required", "run_reconcile"]

#: Rows verified per call of ``verify()`` (the progress bar moves this many at a time).
VERIFY_CHUNK = 100
#: Read size of ``upload`` (bounded memory, whatever the file's size).
UPLOAD_READ = 1024 * 1024
#: Seconds one remote request of ``verify`` and ``cleanup`` may take (no retries).
REMOTE_TIMEOUT = 10.0


def _missing_tables() -> list[str]:
    """The app's tables its database does not have (``migrate`` not run yet); empty when that
    cannot be told (the database does not answer: that error is the one to show)."""
    db = StoredFile.db()
    try:
        existing = set(connections[db].introspection.table_names())
    except DatabaseError:
        return []
    models = apps.get_app_config("queued_storage").get_models()
    return [m._meta.db_table for m in models if m._meta.db_table not in existing]


@contextmanager
def ledger_required() -> Iterator[None]:
    """A database error because the ledger's tables do not exist yet becomes a
    :class:`CommandError` naming ``migrate`` (one line, exit status 1), not a traceback."""
    try:
        yield
    except DatabaseError as err:
        missing = _missing_tables()
        if not missing:
            raise
        raise CommandError(
            f"The ledger's tables ({', '.join(missing)}) do not exist in database "
            f"{StoredFile.db()!r}: run 'python manage.py migrate' first."
        ) from err


def run_reconcile(command: BaseCommand, options: ReconcileOptions) -> None:
    report = reconcile(
        aliases=options["aliases"],
        failed=options["failed"],
        adopt=options["adopt"],
        all_hosts=options["all_hosts"],
    )
    if options["verbosity"] >= 1:
        for line in report.lines(verbose=options["verbosity"] >= 2):
            command.stdout.write(line)
    if not report.ok:
        raise CommandError(report.problem(), returncode=1)


def _verdict(report: VerifyReport) -> None:
    """``verify``'s exit status: 1 on data loss, 2 when some files could not be asked."""
    if report.lost:
        raise CommandError(
            f"{len(report.lost)} remote copy(ies) missing or different (data loss); the "
            "files are failed now: retry those with a local copy ('manage.py "
            "queued_storage transfer --failed'), restore the others from a backup.",
            returncode=1,
        )
    if report.unchecked:
        raise CommandError(
            f"{len(report.unchecked)} file(s) could not be verified: the remote storage "
            "did not answer; try again.",
            returncode=2,
        )


class Command(BaseCommand):
    help = (
        "Operate queued storages: status, transfer, upload, verify, cleanup, doctor, seed the "
        "ledger from a bucket, reconcile."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

        show = commands.add_parser(
            "status",
            help="Counts and bytes by storage and state, transfers in flight, failures.",
        )
        storage_option(show, "every one")
        show.add_argument("--json", action="store_true", help="One JSON document (README).")
        show.add_argument(
            "--limit",
            type=positive,
            default=LISTED,
            help=f"Most transfers in flight and failures listed (default {LISTED}).",
        )
        common(show)

        send = commands.add_parser(
            "transfer",
            help="Queue the transfer of files, or run it here with --sync (exit 1 if any failed).",
        )
        send.add_argument("names", nargs="*", metavar="NAME", help="Files to transfer.")
        send.add_argument("--pending", action="store_true", help="Every pending file.")
        send.add_argument(
            "--failed",
            action="store_true",
            help="Every failed file whose local copy is there (a fresh retry budget).",
        )
        storage_option(send, "every one")
        send.add_argument(
            "--sync",
            action="store_true",
            help="Transfer in this process (the worker's code path, with its lease), one "
            "file after the other, instead of queueing.",
        )
        common(send, progress=True)

        upload = commands.add_parser(
            "upload",
            help="Save a local file of any size into a storage, as a saved upload.",
        )
        upload.add_argument("path", metavar="PATH", help="The local file.")
        upload.add_argument("--name", help="Its name in the storage (default: its file name).")
        upload.add_argument(
            "--storage",
            dest="alias",
            metavar="ALIAS",
            help="Alias in STORAGES (default: QUEUED_STORAGE_UPLOAD_STORAGE).",
        )
        common(upload, progress=True)

        check = commands.add_parser(
            "verify",
            help="Ask the remote again about remote files (a HEAD each); exit 1 on data "
            "loss, 2 when some could not be asked.",
        )
        storage_option(check, "every one")
        amount = check.add_mutually_exclusive_group()
        amount.add_argument(
            "--sample", type=positive, metavar="N", help="A random sample of N files."
        )
        amount.add_argument("--all", action="store_true", help="Every file (the default).")
        check.add_argument(
            "--since",
            type=since,
            metavar="WHEN",
            help="Only files transferred since WHEN: an ISO date or date-time, or an age "
            "such as 12h or 7d.",
        )
        check.add_argument("--prefix", default="", help="Only names that begin with this.")
        check.add_argument(
            "--timeout",
            type=float,
            default=REMOTE_TIMEOUT,
            help=f"Seconds one request may take, no retries (default {REMOTE_TIMEOUT:g}).",
        )
        check.add_argument("--json", action="store_true", help="The report as JSON.")
        common(check, progress=True)

        clean = commands.add_parser(
            "cleanup",
            help="Delete old local copies of verified files, spool files of killed uploads, "
            "expired tus uploads, direct uploads left alone and multipart uploads no ledger "
            "row records.",
        )
        storage_option(clean, "every queued storage")
        clean.add_argument("--dry-run", action="store_true", help="Say what, change nothing.")
        common(clean)

        diagnose = commands.add_parser(
            "doctor",
            help="Check this host's set-up, one line per check (exit 1 if any fails).",
        )
        storage_option(diagnose, "every queued storage")
        diagnose.add_argument(
            "--timeout",
            type=float,
            default=5.0,
            help="Seconds each network check may take (default 5).",
        )
        diagnose.add_argument(
            "--reconcile-within",
            type=float,
            default=3600.0,
            metavar="SECONDS",
            help="The reconcile pass must have run this recently (default 3600).",
        )
        diagnose.add_argument("--json", action="store_true", help="The checks as JSON.")
        common(diagnose)

        seed = commands.add_parser(
            "seed",
            help="Record the objects the remote storage already holds as 'remote' in the "
            "ledger, so that no save takes their names.",
        )
        storage_option(seed, "every queued storage")
        seed.add_argument(
            "--prefix", default="", help="Only names that begin with this (e.g. 'photos/')."
        )
        seed.add_argument(
            "--dry-run",
            action="store_true",
            help="List and count, write nothing.",
        )
        common(seed)
        reconciling = commands.add_parser(
            "reconcile",
            help="Re-queue lost transfers, retry failed files (--failed), adopt unknown "
            "local files (--adopt), report data loss (exit status 1).",
        )
        add_reconcile_arguments(reconciling)
        common(reconciling)

        release = commands.add_parser(
            "release",
            help="Let rejected files through (a false positive): transferred, not scanned again.",
        )
        release.add_argument("names", nargs="+", metavar="NAME", help="Rejected files.")
        storage_option(release, "every one")
        common(release)

    def handle(self, *args: Any, **options: Any) -> None:
        # argparse's options are untyped: each subcommand's parser gives its TypedDict
        with ledger_required():
            match options["subcommand"]:
                case "status":
                    self._status(cast(StatusOptions, options))
                case "transfer":
                    self._transfer(cast(TransferOptions, options))
                case "upload":
                    self._upload(cast(UploadOptions, options))
                case "verify":
                    self._verify(cast(VerifyOptions, options))
                case "cleanup":
                    self._cleanup(cast(CleanupOptions, options))
                case "doctor":
                    self._doctor(cast(DoctorOptions, options))
                case "seed":
                    self._seed(cast(SeedOptions, options))
                case "reconcile":
                    run_reconcile(self, cast(ReconcileOptions, options))
                case "release":
                    self._release(cast(ReleaseOptions, options))

    def _say(self, options: Options, text: str) -> None:
        if options["verbosity"] >= 1:
            self.stdout.write(text)

    def _bar(
        self, options: WithProgress, *, total: int, desc: str, unit: str = "B", json: bool = False
    ) -> Bar:
        stream = cast(TextIO, getattr(self.stderr, "_out", self.stderr))
        show = not (options["no_progress"] or json or options["verbosity"] < 1)
        return Bar(stream, show=show, total=total, desc=desc, unit=unit)

    def _status(self, options: StatusOptions) -> None:
        if options["aliases"]:
            named_storages(options["aliases"])
        data = status_report(options["aliases"], limit=options["limit"])
        if options["json"]:
            self.stdout.write(render.status_json(data))
            return
        for line in render.status_lines(data, verbose=options["verbosity"] >= 2):
            self._say(options, line)

    def _release(self, options: ReleaseOptions) -> None:
        aliases = options["aliases"]
        if aliases:
            named_storages(aliases)
        else:  # by the unique key (alias, name): never a scan of the ledger
            aliases = [alias for alias, _options, _backend in queued_entries()]
        found = list(StoredFile.all_rows().filter(alias__in=aliases, name__in=options["names"]))
        done = release_rows(found)
        missing = sorted(set(options["names"]) - {row.name for row in found})
        for name in missing:
            self.stderr.write(f"{name!r}: no such file in the ledger.")
        self._say(options, f"Release: {done.message() or 'nothing to release'}.")
        if missing or done.no_local or done.refused or done.skipped or done.changed:
            raise CommandError("Not every file named was released.", returncode=1)

    def _transfer(self, options: TransferOptions) -> None:
        if not (options["names"] or options["pending"] or options["failed"]):
            raise CommandError("Name the files to transfer, or pass --pending and/or --failed.")
        aliases = options["aliases"]
        if aliases:
            named_storages(aliases)
        if options["sync"]:
            self._transfer_here(options)
            return
        done = queue_transfers(
            options["names"], aliases=aliases, pending=options["pending"], failed=options["failed"]
        )
        for problem in done.problems:
            self.stderr.write(problem)
        for line in render.transfers_lines(done):
            self._say(options, line)
        refused, problems = done.refused, done.problems
        if refused or problems:
            why = [f"{refused} not queued: the broker refused"] if refused else []
            why += [f"{len(problems)} name(s) not transferred"] if problems else []
            raise CommandError("; ".join(why) + ".", returncode=1)

    def _transfer_here(self, options: TransferOptions) -> None:
        def progress(row: StoredFile) -> tuple[Callable[[int, int], None], Callable[[], None]]:
            bar = self._bar(options, total=row.size or 0, desc=row.name)
            return bar.to, bar.close

        done = transfer_files_here(
            options["names"],
            aliases=options["aliases"],
            pending=options["pending"],
            failed=options["failed"],
            say=lambda text: self._say(options, text),
            warn=self.stderr.write,
            progress=progress,
        )
        self._say(options, render.transfers_here_line(done))
        failed = [r for r in done.results if not r.ok]
        if failed or done.problems:
            raise CommandError(
                f"{len(failed) + len(done.problems)} file(s) not transferred.", returncode=1
            )

    def _upload(self, options: UploadOptions) -> None:
        path = options["path"]
        if not os.path.isfile(path):
            raise CommandError(f"{path!r} is not a file.")
        alias = options["alias"] or settings.UPLOAD_STORAGE
        try:
            storage: Storage = storages[alias]
        except InvalidStorageError as err:
            raise CommandError(f"No storage {alias!r} in STORAGES.") from err
        name = options["name"] or os.path.basename(path)
        bars: list[Bar] = []

        def start(total: int) -> Callable[[int], None]:
            bars.append(self._bar(options, total=total, desc=name))
            return bars[-1].to

        try:
            done = upload(storage, path, name, chunk=UPLOAD_READ, start=start)
        except (SuspiciousFileOperation, QueuedStorageError) as err:
            raise CommandError(f"{path} was not uploaded: {err}") from err
        finally:
            for bar in bars:
                bar.close()
        self._say(options, render.upload_line(path, alias, name, done))

    def _verify(self, options: VerifyOptions) -> None:
        aliases = options["aliases"]
        if aliases:
            named_storages(aliases)
        bars: list[Bar] = []

        def start(total: int) -> Callable[[int], None]:
            bar = self._bar(options, total=total, desc="verify", unit="file", json=options["json"])
            bars.append(bar)
            return bar.add

        try:
            report = verify_files(
                aliases,
                since=options["since"],
                prefix=options["prefix"],
                sample=options["sample"],
                timeout=options["timeout"],
                chunk=VERIFY_CHUNK,
                start=start,
            )
        finally:
            for bar in bars:
                bar.close()
        if options["json"]:
            self.stdout.write(render.verify_json(report, verbose=options["verbosity"] >= 2))
        else:
            for line in report.lines(verbose=options["verbosity"] >= 2):
                self._say(options, line)
        _verdict(report)

    def _cleanup(self, options: CleanupOptions) -> None:
        dry = options["dry_run"]
        pages = render.CleanupPages(dry_run=dry, verbose=options["verbosity"] >= 2)

        def each_page(page: LocalCopies) -> None:
            out, err = pages.take(page)
            for line in out:
                self._say(options, line)
            for line in err:
                self.stderr.write(line)

        done = cleanup(
            named_storages(options["aliases"]),
            timeout=REMOTE_TIMEOUT,
            dry_run=dry,
            each_page=each_page,
        )
        for line in render.cleanup_lines(done, pages):
            self._say(options, line)
        for line in render.cleanup_warnings(done, pages):
            self.stderr.write(line)
        if failures := render.cleanup_failures(done, dry_run=dry):
            raise CommandError("; ".join(failures) + ".", returncode=1)

    def _doctor(self, options: DoctorOptions) -> None:
        chosen = named_storages(options["aliases"])
        checks = doctor.run(
            chosen, timeout=options["timeout"], reconcile_within=options["reconcile_within"]
        )
        if options["json"]:
            self.stdout.write(render.doctor_json(checks))
        else:
            for check in checks:
                self._say(options, check.line())
        if failing := [c for c in checks if c.status == doctor.FAIL]:
            kinds = ", ".join(dict.fromkeys(c.check for c in failing))
            raise CommandError(f"{len(failing)} check(s) failed: {kinds}.", returncode=1)

    def _seed(self, options: SeedOptions) -> None:
        dry = options["dry_run"]
        for storage in named_storages(options["aliases"]):
            done = seed(storage, options["prefix"], dry_run=dry)
            for warning in render.seed_warnings(storage.alias, done):
                self.stderr.write(warning)
            self._say(options, render.seed_line(storage.alias, done, dry_run=dry))
