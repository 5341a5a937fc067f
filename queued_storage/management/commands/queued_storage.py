"""``manage.py queued_storage <subcommand>``: the operator's command.

* ``status``: counts and bytes by storage and state, the oldest pending file, transfers in
  flight with their progress, failures with their reasons; ``--json`` for monitoring.
* ``transfer``: queue transfers (named files, ``--pending``, ``--failed``), or run them in this
  process with ``--sync``, through the worker's own code path (its lease, engine and outcome).
* ``upload``: stream a local file of any size into a storage, as a saved upload (``save()``).
* ``verify``: ask the remote again about ``remote`` files (a HEAD each); exit 1 on data loss.
* ``cleanup``: delete old local copies of verified files, spool files a killed web process
  left, expired tus uploads and tus part files no upload row owns, multipart uploads no
  ledger row records.
* ``doctor``: one line per check of this host's set-up, each failing line with its fix.
* ``seed``: record the objects a remote storage already holds in the ledger, as ``remote``,
  when a site adopts the package with a bucket full of files. Their names are then reserved
  (``save()`` never takes them and never asks the remote) and reads route to the remote
  without a network call. Safe to run again, and while the site runs: names the ledger knows
  are left alone.
* ``reconcile``: one reconcile pass (``manage.py queued_storage_reconcile`` is the same).

Each subcommand is one call into the operator layer (:mod:`queued_storage.operations`, whose
functions the admin's actions use too; ``doctor``: :mod:`queued_storage.doctor`; ``reconcile``:
:mod:`queued_storage.reconcile`); every row change goes through the ledger. Progress bars
(tqdm) go to stderr, and only when it is a terminal: never with ``--no-progress``, ``-v 0``
or ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any, cast

from django.apps import apps
from django.conf import settings as django_settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import InvalidStorageError, Storage, storages
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from tqdm import tqdm

from queued_storage import doctor
from queued_storage.conf import settings
from queued_storage.exceptions import QueuedStorageError
from queued_storage.models import StoredFile
from queued_storage.names import LEDGER_NAME_LENGTH
from queued_storage.operations import (
    cleanup,
    human_age,
    human_bytes,
    queue_transfers,
    seed,
    transfer_files_here,
    verify_files,
)
from queued_storage.reconcile import reconcile
from queued_storage.status import status_report
from queued_storage.storage import QueuedStorage, queued_storages
from queued_storage.verify import VerifyReport

#: Rows verified per call of ``verify()`` (the progress bar moves this many at a time).
VERIFY_CHUNK = 100
#: Read size of ``upload`` (bounded memory, whatever the file's size).
UPLOAD_READ = 1024 * 1024
#: Seconds one remote request of ``verify`` and ``cleanup`` may take (no retries).
REMOTE_TIMEOUT = 10.0
#: Items listed per kind by ``status`` and ``cleanup`` unless ``-v 2``.
LISTED = 20


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


def run_reconcile(command: BaseCommand, options: dict[str, Any]) -> None:
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


def _storage_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--storage",
        action="append",
        dest="aliases",
        metavar="ALIAS",
        help=f"Only this queued storage (repeatable). Default: {what}.",
    )


def _common(parser: argparse.ArgumentParser, *, progress: bool = False) -> None:
    # Django puts -v on the command's parser, before the subcommand; accept it after too.
    parser.add_argument(
        "-v",
        "--verbosity",
        type=int,
        choices=[0, 1, 2, 3],
        default=argparse.SUPPRESS,
        help="Verbosity level; 0=minimal output, 1=normal output, 2=verbose output.",
    )
    if progress:
        parser.add_argument(
            "--no-progress",
            action="store_true",
            help="No progress bar (there is none either when stderr is not a terminal).",
        )


def _since(value: str) -> datetime.datetime:
    """``--since``: an ISO date or date-time, or an age such as ``90s``, ``30m``, ``12h``,
    ``7d`` (that long before now)."""
    age = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", value.strip())
    if age:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
        return timezone.now() - datetime.timedelta(seconds=float(age.group(1)) * unit)
    found: datetime.datetime | None = None
    try:
        found = parse_datetime(value)
        if found is None and (day := parse_date(value)) is not None:
            found = datetime.datetime.combine(day, datetime.time())
    except ValueError:
        found = None
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an ISO date or date-time nor an age such as 12h or 7d"
        )
    if timezone.is_naive(found) and django_settings.USE_TZ:
        found = timezone.make_aware(found)
    return found


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


class Bar:
    """A tqdm progress bar on the command's stderr, or nothing at all: not a terminal,
    ``--no-progress``, ``-v 0`` or ``--json``."""

    def __init__(
        self,
        command: BaseCommand,
        options: dict[str, Any],
        *,
        total: int,
        desc: str,
        unit: str = "B",
    ) -> None:
        stream: Any = getattr(command.stderr, "_out", command.stderr)
        quiet = (
            options.get("no_progress")
            or options.get("json")
            or options["verbosity"] < 1
            or not getattr(stream, "isatty", lambda: False)()
        )
        self.bar: tqdm[Any] | None = None
        if not quiet:
            self.bar = tqdm(
                total=total,
                desc=desc if len(desc) <= 40 else "…" + desc[-39:],
                unit=unit,
                unit_scale=True,
                unit_divisor=1024 if unit == "B" else 1000,
                file=stream,
                leave=True,
                mininterval=0.2,
            )

    def to(self, done: int, total: int | None = None) -> None:
        """Show *done* of *total* (the total may be learnt late)."""
        if self.bar is not None:
            if total and total != self.bar.total:
                self.bar.total = total
            self.bar.update(done - self.bar.n)

    def add(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Reading:
    """A file read by ``save()`` that moves a progress bar to the position read."""

    def __init__(self, fh: IO[bytes], size: int, bar: Bar) -> None:
        self._fh, self.size, self._bar = fh, size, bar

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._bar.to(self._fh.tell())
        return data

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._fh, attribute)


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
        _storage_option(show, "every one")
        show.add_argument("--json", action="store_true", help="One JSON document (README).")
        show.add_argument(
            "--limit",
            type=_positive,
            default=LISTED,
            help=f"Most transfers in flight and failures listed (default {LISTED}).",
        )
        _common(show)

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
        _storage_option(send, "every one")
        send.add_argument(
            "--sync",
            action="store_true",
            help="Transfer in this process (the worker's code path, with its lease), one "
            "file after the other, instead of queueing.",
        )
        _common(send, progress=True)

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
        _common(upload, progress=True)

        check = commands.add_parser(
            "verify",
            help="Ask the remote again about remote files (a HEAD each); exit 1 on data "
            "loss, 2 when some could not be asked.",
        )
        _storage_option(check, "every one")
        amount = check.add_mutually_exclusive_group()
        amount.add_argument(
            "--sample", type=_positive, metavar="N", help="A random sample of N files."
        )
        amount.add_argument("--all", action="store_true", help="Every file (the default).")
        check.add_argument(
            "--since",
            type=_since,
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
        _common(check, progress=True)

        clean = commands.add_parser(
            "cleanup",
            help="Delete old local copies of verified files, spool files of killed uploads, "
            "expired tus uploads and multipart uploads no ledger row records.",
        )
        _storage_option(clean, "every queued storage")
        clean.add_argument("--dry-run", action="store_true", help="Say what, change nothing.")
        _common(clean)

        diagnose = commands.add_parser(
            "doctor",
            help="Check this host's set-up, one line per check (exit 1 if any fails).",
        )
        _storage_option(diagnose, "every queued storage")
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
        _common(diagnose)

        seed = commands.add_parser(
            "seed",
            help="Record the objects the remote storage already holds as 'remote' in the "
            "ledger, so that no save takes their names.",
        )
        _storage_option(seed, "every queued storage")
        seed.add_argument(
            "--prefix", default="", help="Only names that begin with this (e.g. 'photos/')."
        )
        seed.add_argument(
            "--dry-run",
            action="store_true",
            help="List and count, write nothing.",
        )
        _common(seed)
        reconciling = commands.add_parser(
            "reconcile",
            help="Re-queue lost transfers, retry failed files (--failed), adopt unknown "
            "local files (--adopt), report data loss (exit status 1).",
        )
        add_reconcile_arguments(reconciling)
        _common(reconciling)

    def handle(self, *args: Any, **options: Any) -> None:
        handler: Callable[[dict[str, Any]], None] = {
            "status": self._status,
            "transfer": self._transfer,
            "upload": self._upload,
            "verify": self._verify,
            "cleanup": self._cleanup,
            "doctor": self._doctor,
            "seed": self._seed_all,
            "reconcile": self._reconcile,
        }[options["subcommand"]]
        with ledger_required():
            handler(options)

    def _reconcile(self, options: dict[str, Any]) -> None:
        run_reconcile(self, options)

    def _say(self, options: dict[str, Any], text: str, level: int = 1) -> None:
        if options["verbosity"] >= level:
            self.stdout.write(text)

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

    # -- status ----------------------------------------------------------------------------
    def _status(self, options: dict[str, Any]) -> None:
        aliases = options["aliases"]
        if aliases:
            self._storages(aliases)
        data = status_report(aliases, limit=options["limit"])
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
            return

        def say(text: str) -> None:
            self._say(options, text)

        verbose = options["verbosity"] >= 2
        say(f"host {data['host']}, {data['generated']}")
        if not data["storages"]:
            say("no file in the ledger")
        for alias, found in sorted(data["storages"].items()):
            states = ", ".join(
                f"{state} {n['files']}" + (f" ({human_bytes(n['bytes'])})" if n["files"] else "")
                for state, n in found["states"].items()
            )
            local = found["local_copies"]
            text = f"{alias}: {states}; local copies {local['files']}"
            if local["files"]:
                text += f" ({human_bytes(local['bytes'])})"
            if found["oldest_pending_age"] is not None:
                text += f"; oldest pending {human_age(found['oldest_pending_age'])} old"
            say(text)
        staging = data["staging"]
        budget = staging["budget"]
        limit = "no staging budget" if budget is None else f"budget {human_bytes(budget)}"
        say(f"waiting on host {staging['host']}: {human_bytes(staging['waiting_bytes'])} ({limit})")
        tus = data["tus"]
        if tus["receiving"] or tus["expired"]:
            say(
                f"resumable uploads: {tus['receiving']} receiving "
                f"({human_bytes(tus['received_bytes'])} of "
                f"{human_bytes(tus['reserved_bytes'])} received), {tus['expired']} expired"
            )
        say(f"in flight: {data['in_flight_total']}")
        for item in data["in_flight"]:
            percent = "" if item["percent"] is None else f" ({item['percent']}%)"
            say(
                f"  {item['storage']}:{item['name']}  {human_bytes(item['bytes_done'])} of "
                f"{human_bytes(item['size'])}{percent}, file errors {item['attempts']}, "
                f"lease {item['lease_owner']} until {item['lease_expires']}"
            )
        say(f"failed: {data['failures_total']}")
        for item in data["failures"]:
            reason = " ".join(str(item["reason"]).split())
            if not verbose and len(reason) > 160:
                reason = reason[:159] + "…"
            local = "local copy kept" if item["local_copy"] else "no local copy"
            say(
                f"  {item['storage']}:{item['name']} (file errors {item['attempts']}, {local}): "
                f"{reason}"
            )
        run = data["reconcile"]
        if run["last_run"] is None:
            say(f"reconcile: no pass recorded on host {settings.HOST}")
        else:
            verdict = "ok" if run["ok"] else "found data loss"
            age = human_age(run["age"])
            say(f"reconcile: last pass on host {settings.HOST} {age} ago ({verdict})")

    # -- transfer --------------------------------------------------------------------------
    def _transfer(self, options: dict[str, Any]) -> None:
        if not (options["names"] or options["pending"] or options["failed"]):
            raise CommandError("Name the files to transfer, or pass --pending and/or --failed.")
        aliases = options["aliases"]
        if aliases:
            self._storages(aliases)
        if options["sync"]:
            self._transfer_here(options)
            return
        done = queue_transfers(
            options["names"], aliases=aliases, pending=options["pending"], failed=options["failed"]
        )
        for problem in done.problems:
            self.stderr.write(problem)
        if done.queued is not None:
            self._say(options, f"transfer: {done.queued.message() or 'nothing to transfer'}.")
        if done.retried is not None:
            self._say(options, f"retry failed: {done.retried.message() or 'nothing to retry'}.")
        refused, problems = done.refused, done.problems
        if refused or problems:
            why = [f"{refused} not queued: the broker refused"] if refused else []
            why += [f"{len(problems)} name(s) not transferred"] if problems else []
            raise CommandError("; ".join(why) + ".", returncode=1)

    def _transfer_here(self, options: dict[str, Any]) -> None:
        def progress(row: StoredFile) -> tuple[Callable[[int, int], None], Callable[[], None]]:
            bar = Bar(self, options, total=row.size or 0, desc=row.name)
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
        results, seconds = done.results, done.seconds
        sent = [r for r in results if r.outcome == "transferred"]
        failed = [r for r in results if not r.ok]
        size = sum(r.size for r in sent)
        rate = f", {human_bytes(size / seconds)}/s" if sent and seconds > 0 else ""
        self._say(
            options,
            f"{len(sent)} transferred ({human_bytes(size)} in {seconds:.1f} s{rate}), "
            f"{len(failed)} failed, {len(results) - len(sent) - len(failed)} already done.",
        )
        if failed or done.problems:
            raise CommandError(
                f"{len(failed) + len(done.problems)} file(s) not transferred.", returncode=1
            )

    # -- upload ----------------------------------------------------------------------------
    def _upload(self, options: dict[str, Any]) -> None:
        path = options["path"]
        if not os.path.isfile(path):
            raise CommandError(f"{path!r} is not a file.")
        alias = options["alias"] or settings.UPLOAD_STORAGE
        try:
            storage: Storage = storages[alias]
        except InvalidStorageError as err:
            raise CommandError(f"No storage {alias!r} in STORAGES.") from err
        name = options["name"] or os.path.basename(path)
        size = os.path.getsize(path)
        bar = Bar(self, options, total=size, desc=name)
        began = time.monotonic()
        try:
            with open(path, "rb") as fh:
                content = File(cast(IO[Any], _Reading(fh, size, bar)), name=name)
                content.DEFAULT_CHUNK_SIZE = UPLOAD_READ
                stored = storage.save(name, content)
        except (SuspiciousFileOperation, QueuedStorageError) as err:
            raise CommandError(f"{path} was not uploaded: {err}") from err
        finally:
            bar.close()
        seconds = time.monotonic() - began
        text = f"uploaded {path} to {alias}:{stored} ({human_bytes(size)} in {seconds:.1f} s)"
        if stored != name:
            text += f"; {name!r} was taken"
        if isinstance(storage, QueuedStorage):
            found = storage.get_state(stored)
            text += f", {found.state if found else 'unknown'}"
            if storage.delayed:
                text += (
                    f"; a delayed storage: queue it with 'manage.py queued_storage transfer "
                    f"{stored} --storage {alias}'"
                )
            else:
                text += ", its transfer is queued"
        self._say(options, text)

    # -- verify ----------------------------------------------------------------------------
    def _verify(self, options: dict[str, Any]) -> None:
        aliases = options["aliases"]
        if aliases:
            self._storages(aliases)
        bars: list[Bar] = []

        def start(total: int) -> Callable[[int], None]:
            bars.append(Bar(self, options, total=total, desc="verify", unit="file"))
            return bars[-1].add

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
            self.stdout.write(json.dumps(report.as_dict(verified=options["verbosity"] >= 2)))
        else:
            for line in report.lines(verbose=options["verbosity"] >= 2):
                self._say(options, line)
        self._verdict(report)

    @staticmethod
    def _verdict(report: VerifyReport) -> None:
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

    # -- cleanup ---------------------------------------------------------------------------
    def _list(self, options: dict[str, Any], items: Sequence[str]) -> None:
        shown = items if options["verbosity"] >= 2 else items[:LISTED]
        for item in shown:
            self._say(options, f"  {item}")
        if len(items) > len(shown):
            self._say(options, f"  ... and {len(items) - len(shown)} more (-v 2 lists them)")

    def _cleanup(self, options: dict[str, Any]) -> None:
        chosen = self._storages(options["aliases"])
        dry = options["dry_run"]
        remove, abort = ("would remove", "would abort") if dry else ("removed", "aborted")
        failures: list[str] = []
        grace = settings.CLEANUP_LOCAL_AFTER
        done = cleanup(chosen, timeout=REMOTE_TIMEOUT, dry_run=dry)
        copies = done.local_copies
        if grace is None or copies is None:
            self._say(options, "local copies: kept (QUEUED_STORAGE_CLEANUP_LOCAL_AFTER = None)")
        else:
            old = f"remote for more than {human_age(grace)}"
            if dry:
                self._say(
                    options,
                    f"local copies of files {old}: would verify the remote copy of "
                    f"{len(copies.candidates)} and delete the local copies that verify",
                )
                self._list(options, copies.candidates)
            else:
                self._say(
                    options,
                    f"local copies of files {old}: deleted {len(copies.deleted)} whose remote "
                    f"copy verified, kept {len(copies.kept)}",
                )
                self._list(options, copies.deleted)
                for problem in copies.report.problems:
                    self.stderr.write(f"  kept {problem}")
                if copies.report.lost:
                    failures.append(f"{len(copies.report.lost)} remote copy(ies) lost")
        removed, in_use = done.spool, done.spool_in_use
        self._say(
            options,
            f"spool files unchanged for {human_age(settings.CLEANUP_SPOOL_AFTER)}: {remove} "
            f"{len(removed)} ({human_bytes(sum(c.size or 0 for c in removed))}), "
            f"{len(in_use)} still open",
        )
        self._list(
            options,
            [f"{c.what} ({human_bytes(c.size)}, {human_age(c.age)} old)" for c in removed],
        )
        expired, busy = done.tus, done.tus_receiving
        self._say(
            options,
            f"expired tus uploads: {remove} {len(expired)} "
            f"({human_bytes(sum(c.size or 0 for c in expired))}), {len(busy)} still receiving",
        )
        self._list(options, [f"{c.where}:{c.what} ({human_bytes(c.size)})" for c in expired])
        orphans = done.tus_orphans
        self._say(
            options,
            f"tus part files no upload owns, unchanged for {human_age(settings.TUS_EXPIRY)}: "
            f"{remove} {len(orphans)} ({human_bytes(sum(c.size or 0 for c in orphans))})",
        )
        self._list(
            options,
            [f"{c.what} ({human_bytes(c.size)}, {human_age(c.age)} old)" for c in orphans],
        )
        aborted, errors = done.uploads, done.upload_errors
        self._say(
            options,
            f"multipart uploads older than {human_age(settings.CLEANUP_UPLOADS_AFTER)} that no "
            f"ledger row records: {abort} {len(aborted)}",
        )
        self._list(options, [f"{c.where}:{c.what} ({human_age(c.age)} old)" for c in aborted])
        for error in errors:
            self.stderr.write(f"  {error}")
        failures += errors
        if failures:
            raise CommandError("; ".join(failures) + ".", returncode=1)

    # -- doctor ----------------------------------------------------------------------------
    def _doctor(self, options: dict[str, Any]) -> None:
        chosen = self._storages(options["aliases"])
        checks = doctor.run(
            chosen, timeout=options["timeout"], reconcile_within=options["reconcile_within"]
        )
        failing = [c for c in checks if c.status == doctor.FAIL]
        if options["json"]:
            document = {"ok": not failing, "checks": [c.as_dict() for c in checks]}
            self.stdout.write(json.dumps(document, indent=2))
        else:
            for check in checks:
                self._say(options, check.line())
        if failing:
            kinds = ", ".join(dict.fromkeys(c.check for c in failing))
            raise CommandError(f"{len(failing)} check(s) failed: {kinds}.", returncode=1)

    # -- seed ------------------------------------------------------------------------------
    def _seed_all(self, options: dict[str, Any]) -> None:
        for storage in self._storages(options["aliases"]):
            self._seed(storage, options["prefix"], options["dry_run"], options)

    def _seed(
        self, storage: QueuedStorage, prefix: str, dry_run: bool, options: dict[str, Any]
    ) -> None:
        done = seed(storage, prefix, dry_run=dry_run)
        for name in done.too_long:
            self.stderr.write(
                f"{storage.alias}: {name[:60]!r}... has more than "
                f"{LEDGER_NAME_LENGTH} characters, which the ledger cannot hold; "
                "not seeded. Rename the object."
            )
        listed, seeded = done.listed, done.seeded
        verb = "would seed" if dry_run else "seeded"
        self._say(
            options,
            f"{storage.alias}: {listed} objects listed on the remote storage, {verb} {seeded} "
            f"names, {listed - seeded} already in the ledger or skipped.",
        )
