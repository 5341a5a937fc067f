"""The arguments of ``manage.py queued_storage``: the options every subcommand shares
(``--storage``, ``-v``, ``--no-progress``; the reconcile pass's, which
``queued_storage_reconcile`` takes too), the types of the others (``--since``, positive
numbers), the queued storages ``--storage`` names, and what each subcommand's parser gives
(a ``TypedDict`` per subcommand)."""

from __future__ import annotations

import argparse
import datetime
import re
from typing import TypedDict

from django.conf import settings as django_settings
from django.core.management.base import CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from queued_storage.storage import QueuedStorage, queued_storages

__all__ = [
    "CleanupOptions",
    "DoctorOptions",
    "Options",
    "ReconcileOptions",
    "ReleaseOptions",
    "SeedOptions",
    "StatusOptions",
    "TransferOptions",
    "UploadOptions",
    "VerifyOptions",
    "WithProgress",
    "add_reconcile_arguments",
    "common",
    "named_storages",
    "positive",
    "since",
    "storage_option",
]


# -- the options each subcommand's parser gives ----------------------------------------------
class Options(TypedDict):
    verbosity: int


class WithProgress(Options):
    no_progress: bool


class StatusOptions(Options):
    aliases: list[str] | None
    json: bool
    limit: int


class TransferOptions(WithProgress):
    names: list[str]
    pending: bool
    failed: bool
    aliases: list[str] | None
    sync: bool


class ReleaseOptions(Options):
    names: list[str]
    aliases: list[str] | None


class UploadOptions(WithProgress):
    path: str
    name: str | None
    alias: str | None


class VerifyOptions(WithProgress):
    aliases: list[str] | None
    sample: int | None
    since: datetime.datetime | None
    prefix: str
    timeout: float
    json: bool


class CleanupOptions(Options):
    aliases: list[str] | None
    dry_run: bool


class DoctorOptions(Options):
    aliases: list[str] | None
    timeout: float
    reconcile_within: float
    json: bool


class SeedOptions(Options):
    aliases: list[str] | None
    prefix: str
    dry_run: bool


class ReconcileOptions(Options):
    aliases: list[str] | None
    failed: bool
    adopt: bool
    all_hosts: bool


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


def storage_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--storage",
        action="append",
        dest="aliases",
        metavar="ALIAS",
        help=f"Only this queued storage (repeatable). Default: {what}.",
    )


def common(parser: argparse.ArgumentParser, *, progress: bool = False) -> None:
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


def since(value: str) -> datetime.datetime:
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


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def named_storages(aliases: list[str] | None) -> list[QueuedStorage]:
    """The queued storages ``--storage`` names (every one: none named); a name that is not
    one is a :class:`CommandError` listing them."""
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
