"""The output of ``manage.py queued_storage``: its results rendered as text lines (and JSON
documents), and its progress bars (tqdm, on the command's stderr when it is a terminal).

The command decides what goes where (stdout, stderr, the exit status); this module only says
it. It lives with the command, not in the operator layer, because nothing else shows these
lines (the numbers' units, which the doctor shares, are :mod:`queued_storage.formatting`'s).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TextIO

from tqdm import tqdm

from queued_storage import doctor
from queued_storage.conf import settings
from queued_storage.formatting import human_age, human_bytes
from queued_storage.jobs import Cleanup, Seeded, Transfers, TransfersHere, Uploaded
from queued_storage.names import LEDGER_NAME_LENGTH
from queued_storage.operations import EXAMPLES, LocalCopies
from queued_storage.verify import Problem, VerifyReport

__all__ = [
    "LISTED",
    "AsTheyCome",
    "Bar",
    "CleanupPages",
    "cleanup_failures",
    "cleanup_lines",
    "cleanup_warnings",
    "doctor_json",
    "listed",
    "seed_line",
    "seed_warnings",
    "status_json",
    "status_lines",
    "transfers_here_line",
    "transfers_lines",
    "upload_line",
    "verify_json",
]

#: Items listed per kind by ``status`` and ``cleanup`` unless ``-v 2`` (as many as the
#: operator layer keeps by name in a total over many pages).
LISTED = EXAMPLES


class Bar:
    """A tqdm progress bar on *stream*, or nothing at all: not *show*, or *stream* is not a
    terminal."""

    def __init__(
        self, stream: TextIO, *, show: bool, total: int, desc: str, unit: str = "B"
    ) -> None:
        self.bar: tqdm[NoReturn] | None = None
        if show and getattr(stream, "isatty", lambda: False)():
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


def listed(items: Sequence[str], *, verbose: bool) -> list[str]:
    """*items*, indented: the first :data:`LISTED` unless *verbose*, then how many more."""
    shown = items if verbose else items[:LISTED]
    lines = [f"  {item}" for item in shown]
    if len(items) > len(shown):
        lines.append(f"  ... and {len(items) - len(shown)} more (-v 2 lists them)")
    return lines


# -- status ----------------------------------------------------------------------------------
#: A direct upload's bytes are the size its client declared (they are on S3 once finished).
_DECLARED = {"uploading": " declared"}


def status_lines(data: Mapping[str, Any], *, verbose: bool) -> list[str]:
    """``status``'s report (:func:`queued_storage.status.status_report`) as text."""
    lines = [f"host {data['host']}, {data['generated']}"]
    if not data["storages"]:
        lines.append("no file in the ledger")
    for alias, found in sorted(data["storages"].items()):
        states = ", ".join(
            f"{state} {n['files']}"
            + (f" ({human_bytes(n['bytes'])}{_DECLARED.get(state, '')})" if n["files"] else "")
            for state, n in found["states"].items()
        )
        local = found["local_copies"]
        text = f"{alias}: {states}; local copies {local['files']}"
        if local["files"]:
            text += f" ({human_bytes(local['bytes'])})"
        if found["oldest_pending_age"] is not None:
            text += f"; oldest pending {human_age(found['oldest_pending_age'])} old"
        lines.append(text)
    staging = data["staging"]
    budget = staging["budget"]
    limit = "no staging budget" if budget is None else f"budget {human_bytes(budget)}"
    lines.append(
        f"waiting on host {staging['host']}: {human_bytes(staging['waiting_bytes'])} ({limit})"
    )
    tus = data["tus"]
    if tus["receiving"] or tus["expired"]:
        lines.append(
            f"resumable uploads: {tus['receiving']} receiving "
            f"({human_bytes(tus['received_bytes'])} of "
            f"{human_bytes(tus['reserved_bytes'])} received), {tus['expired']} expired"
        )
    direct = data["direct"]
    if direct["uploading"]:
        lines.append(
            f"direct uploads: {direct['uploading']} uploading "
            f"({human_bytes(direct['declared_bytes'])} declared), {direct['expired']} "
            f"untouched for more than {human_age(direct['expiry'])} (cleanup or the reconcile "
            "pass aborts those)"
        )
    lines.append(f"in flight: {data['in_flight_total']}")
    for item in data["in_flight"]:
        percent = "" if item["percent"] is None else f" ({item['percent']}%)"
        lines.append(
            f"  {item['storage']}:{item['name']}  {human_bytes(item['bytes_done'])} of "
            f"{human_bytes(item['size'])}{percent}, file errors {item['attempts']}, "
            f"lease {item['lease_owner']} until {item['lease_expires']}"
        )
    lines.append(f"failed: {data['failures_total']}")
    for item in data["failures"]:
        reason = " ".join(str(item["reason"]).split())
        if not verbose and len(reason) > 160:
            reason = reason[:159] + "…"
        local = "local copy kept" if item["local_copy"] else "no local copy"
        lines.append(
            f"  {item['storage']}:{item['name']} (file errors {item['attempts']}, {local}): "
            f"{reason}"
        )
    run = data["reconcile"]
    if run["last_run"] is None:
        lines.append(f"reconcile: no pass recorded on host {settings.HOST}")
    else:
        verdict = "ok" if run["ok"] else "found data loss"
        age = human_age(run["age"])
        lines.append(f"reconcile: last pass on host {settings.HOST} {age} ago ({verdict})")
    return lines


def status_json(data: Mapping[str, object]) -> str:
    """``status --json`` (the schema is in docs/operations.md)."""
    return json.dumps(data, indent=2)


# -- transfer --------------------------------------------------------------------------------
def transfers_lines(done: Transfers) -> list[str]:
    """What ``transfer`` queued (or retried)."""
    lines = []
    if done.queued is not None:
        lines.append(f"transfer: {done.queued.message() or 'nothing to transfer'}.")
    if done.retried is not None:
        lines.append(f"retry failed: {done.retried.message() or 'nothing to retry'}.")
    return lines


def transfers_here_line(done: TransfersHere) -> str:
    """What ``transfer --sync`` did, in one line."""
    results, seconds = done.results, done.seconds
    sent = [r for r in results if r.outcome == "transferred"]
    failed = [r for r in results if not r.ok]
    size = sum(r.size for r in sent)
    rate = f", {human_bytes(size / seconds)}/s" if sent and seconds > 0 else ""
    return (
        f"{len(sent)} transferred ({human_bytes(size)} in {seconds:.1f} s{rate}), "
        f"{len(failed)} failed, {len(results) - len(sent) - len(failed)} already done."
    )


# -- upload ----------------------------------------------------------------------------------
def upload_line(path: str, alias: str, name: str, done: Uploaded) -> str:
    """What ``upload`` did: *path* saved into storage *alias*, asked to be *name*."""
    stored = done.stored
    text = f"uploaded {path} to {alias}:{stored} ({human_bytes(done.size)} in {done.seconds:.1f} s)"
    if stored != name:
        text += f"; {name!r} was taken"
    if done.queued:
        text += f", {done.state}"
        if done.delayed:
            text += (
                f"; a delayed storage: queue it with 'manage.py queued_storage transfer "
                f"{stored} --storage {alias}'"
            )
        else:
            text += ", its transfer is queued"
    return text


# -- verify ----------------------------------------------------------------------------------
def verify_json(report: VerifyReport, *, verbose: bool) -> str:
    """``verify --json``: the report, with the names of the files that verified if *verbose*."""
    return json.dumps(report.as_dict(verified=verbose))


# -- cleanup ---------------------------------------------------------------------------------
class AsTheyCome:
    """The items of one kind that come page by page, listed as :func:`listed` lists them
    with the total's count and first few (:class:`~queued_storage.operations.Examples`).

    *verbose* (``-v 2``) lists every one: the first :data:`LISTED` are held, so that a small
    run lists them under its summary line, as without ``-v 2``; once there are more, they are
    printed as they come (before the summary line, which needs the totals), and only those
    held are kept in memory.
    """

    def __init__(self, *, verbose: bool) -> None:
        self.verbose = verbose
        self.held: list[str] = []
        self.flowing = False

    def take(self, items: Sequence[str]) -> list[str]:
        """The lines to print now for *items*, the next page's."""
        if not self.verbose:
            return []
        if not self.flowing:
            self.held += items
            if len(self.held) <= LISTED:
                return []
            items, self.held, self.flowing = self.held, [], True
        return [f"  {item}" for item in items]

    def rest(self, first: Sequence[str], count: int) -> list[str]:
        """The lines to print under the summary line: of *count* items whose *first* are
        known, those not printed yet, or how many more there are."""
        if self.flowing:
            return []
        shown = self.held if self.verbose else first[:LISTED]
        lines = [f"  {item}" for item in shown]
        if count > len(shown):
            lines.append(f"  ... and {count - len(shown)} more (-v 2 lists them)")
        return lines


class CleanupPages:
    """``cleanup``'s local copies as their pages come (the ``each_page`` of
    :func:`~queued_storage.operations.cleanup_local_copies`): the names deleted (or, *dry_run*,
    to verify) for stdout, the local copies kept because their remote copy did not verify for
    stderr, each kind listed by :class:`AsTheyCome`."""

    def __init__(self, *, dry_run: bool, verbose: bool) -> None:
        self.dry_run, self.verbose = dry_run, verbose
        self.names = AsTheyCome(verbose=verbose)
        self.kept = AsTheyCome(verbose=verbose)

    def take(self, page: LocalCopies) -> tuple[list[str], list[str]]:
        """The lines to print now for *page*: ``(stdout, stderr)``."""
        names = page.candidates if self.dry_run else page.deleted
        return self.names.take(names), self.kept.take(_kept(page.report.problems))


def _kept(problems: Sequence[Problem]) -> list[str]:
    return [f"kept {problem}" for problem in problems]


def cleanup_lines(done: Cleanup, pages: CleanupPages) -> list[str]:
    """What ``cleanup`` removed (or, dry, would), by kind; the local copies' names that
    *pages* printed as they came are not repeated."""
    dry_run, verbose = pages.dry_run, pages.verbose
    remove, abort = ("would remove", "would abort") if dry_run else ("removed", "aborted")
    grace = settings.CLEANUP_LOCAL_AFTER
    copies = done.local_copies
    lines = []
    if grace is None or copies is None:
        lines.append("local copies: kept (QUEUED_STORAGE_CLEANUP_LOCAL_AFTER = None)")
    elif dry_run:
        lines.append(
            f"local copies of files remote for more than {human_age(grace)}: would verify "
            f"the remote copy of {copies.candidates.count} and delete the local copies that "
            "verify"
        )
        lines += pages.names.rest(copies.candidates.first, copies.candidates.count)
    else:
        lines.append(
            f"local copies of files remote for more than {human_age(grace)}: deleted "
            f"{copies.deleted.count} whose remote copy verified, kept {copies.kept.count}"
        )
        lines += pages.names.rest(copies.deleted.first, copies.deleted.count)
    removed, in_use = done.spool, done.spool_in_use
    lines.append(
        f"spool files unchanged for {human_age(settings.CLEANUP_SPOOL_AFTER)}: {remove} "
        f"{len(removed)} ({human_bytes(sum(c.size or 0 for c in removed))}), "
        f"{len(in_use)} still open"
    )
    lines += listed(
        [f"{c.what} ({human_bytes(c.size)}, {human_age(c.age)} old)" for c in removed],
        verbose=verbose,
    )
    expired, busy = done.tus, done.tus_receiving
    lines.append(
        f"expired tus uploads: {remove} {len(expired)} "
        f"({human_bytes(sum(c.size or 0 for c in expired))}), {len(busy)} still receiving"
    )
    lines += listed(
        [f"{c.where}:{c.what} ({human_bytes(c.size)})" for c in expired], verbose=verbose
    )
    orphans = done.tus_orphans
    lines.append(
        f"tus part files no upload owns, unchanged for {human_age(settings.TUS_EXPIRY)}: "
        f"{remove} {len(orphans)} ({human_bytes(sum(c.size or 0 for c in orphans))})"
    )
    lines += listed(
        [f"{c.what} ({human_bytes(c.size)}, {human_age(c.age)} old)" for c in orphans],
        verbose=verbose,
    )
    aborted = done.uploads
    lines.append(
        f"multipart uploads older than {human_age(settings.CLEANUP_UPLOADS_AFTER)} that no "
        f"ledger row records: {abort} {len(aborted)}"
    )
    lines += listed(
        [f"{c.where}:{c.what} ({human_age(c.age)} old)" for c in aborted], verbose=verbose
    )
    direct = done.direct
    lines.append(
        f"direct uploads untouched for {human_age(settings.DIRECT_EXPIRY)}: {abort} "
        f"{len(direct)} ({human_bytes(sum(c.size or 0 for c in direct))} declared), "
        f"{len(done.direct_busy)} busy"
    )
    lines += listed(
        [
            f"{c.where}:{c.what} ({human_bytes(c.size)}, owner {c.owner or 'unknown'}, "
            f"untouched for {human_age(c.age)})"
            for c in direct
        ],
        verbose=verbose,
    )
    return lines


def cleanup_warnings(done: Cleanup, pages: CleanupPages) -> list[str]:
    """For stderr: the local copies kept because their remote copy did not verify (those
    *pages* did not print as they came), the multipart uploads that could not be aborted and
    the direct uploads left for the next run."""
    copies = done.local_copies
    kept = []
    if copies is not None and not pages.dry_run:
        kept = pages.kept.rest(_kept(copies.problems.first), copies.problems.count)
    busy = [
        f"  {name}: direct upload not aborted (being completed, changed meanwhile, or the "
        "remote did not answer; logged): the next run or reconcile pass tries again"
        for name in done.direct_busy
    ]
    return kept + [f"  {error}" for error in done.upload_errors] + busy


def cleanup_failures(done: Cleanup, *, dry_run: bool) -> list[str]:
    """What makes ``cleanup`` exit 1: remote copies lost, multipart uploads not aborted."""
    copies = done.local_copies
    lost = 0 if copies is None or dry_run else copies.lost.count
    return ([f"{lost} remote copy(ies) lost"] if lost else []) + done.upload_errors


# -- doctor, seed ----------------------------------------------------------------------------
def doctor_json(checks: Sequence[doctor.Check]) -> str:
    """``doctor --json``: whether every check passed, and each check."""
    failing = [c for c in checks if c.status == doctor.FAIL]
    return json.dumps({"ok": not failing, "checks": [c.as_dict() for c in checks]}, indent=2)


def seed_warnings(alias: str, done: Seeded) -> list[str]:
    """For stderr: the names ``seed`` could not record."""
    return [
        f"{alias}: {name[:60]!r}... has more than {LEDGER_NAME_LENGTH} characters, which the "
        "ledger cannot hold; not seeded. Rename the object."
        for name in done.too_long
    ]


def seed_line(alias: str, done: Seeded, *, dry_run: bool) -> str:
    """What ``seed`` did (or, *dry_run*, would) in storage *alias*."""
    verb = "would seed" if dry_run else "seeded"
    return (
        f"{alias}: {done.listed} objects listed on the remote storage, {verb} {done.seeded} "
        f"names, {done.listed - done.seeded} already in the ledger or skipped."
    )
