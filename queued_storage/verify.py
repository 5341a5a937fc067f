"""Verify: are the files the ledger records ``remote`` still on the remote, as they were verified?

``remote`` is recorded only after the remote copy's size and checksum matched the local file
(invariant 3), and from then on every read goes to the remote. A bucket can still lose an
object afterwards (a lifecycle rule, a hand-made ``aws s3 rm``, a bucket replaced by a backup)
or get a different one under the same key. :func:`verify` asks the remote again, without
downloading anything:

* **S3**: one ``HEAD`` per object, with S3's stored checksum (``ChecksumMode=ENABLED``). The
  size is always compared; the checksum where the ledger recorded one the remote keeps: the
  ETag for ``md5`` (a plain ``PutObject``), ``s3-multipart-etag`` and ``s3-etag`` (``seed``),
  S3's CRC32 for ``s3-composite-crc32``. A ``sha256`` (read back under encryption, or the
  generic copy) or a task's own ``hook`` can be checked by size only.
  Why a HEAD per object and not a ``ListObjectsV2`` page per prefix: a listing returns the
  ETag but never the CRC32 checksum the default multipart transfers are recorded with, and it
  reads every key under a prefix, selected or not (the admin verifies a handful of rows spread
  over the bucket). HEADs run ``concurrency`` at a time, so a large verify still goes at
  several hundred objects a second; each costs one request.
* **Any other storage**: ``exists()`` and ``size()``.

Rows are read from the ledger ``batch`` at a time (keyset pagination on the primary key), so
memory stays bounded however many files are verified.

What it concludes, per row:

* the object is there with the recorded size and (where comparable) checksum: **verified**;
* the remote answers that the object is not there (S3: a 404), or it is there with another
  size or checksum: **data loss**. The row goes ``failed`` with the reason, through
  :meth:`~queued_storage.ledger.Ledger.remote_lost` (a conditional write: a row deleted or
  changed meanwhile is left alone and reported skipped); reads fall back to the local copy if
  one is still there, and a retry (admin action, ``queued_storage_reconcile --failed``) sends
  it again; ``transfer_failed`` is sent and an error is logged;
* the remote could not answer (network error, timeout, access denied, a storage this process
  does not know): **unchecked**. Nothing changes: a failure to ask is no proof of loss.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from queued_storage.conf import settings
from queued_storage.dispatch import redact
from queued_storage.exceptions import RemoteCopyLost, StorageNotFound
from queued_storage.models import State, StoredFile, keyset_pages
from queued_storage.signals import transfer_failed
from queued_storage.storage import QueuedStorage, get_queued_storage
from queued_storage.transfer import RemoteObject, remote_checksum_matches, remote_object

__all__ = [
    "CHECKSUM",
    "DEFAULT_BATCH",
    "DEFAULT_CONCURRENCY",
    "MISSING",
    "SIZE",
    "UNCHECKED",
    "Problem",
    "VerifyReport",
    "label",
    "merge_reports",
    "verify",
    "verify_in_chunks",
]

logger = logging.getLogger(__name__)

#: Rows read from the ledger per query.
DEFAULT_BATCH = 500
#: Remote questions (HEADs) in flight at once; the engine's S3 client pools 10 connections.
DEFAULT_CONCURRENCY = 8

#: The kinds of :class:`Problem`: the first three are data loss.
MISSING = "missing"
SIZE = "size"
CHECKSUM = "checksum"
UNCHECKED = "unchecked"


def label(row: StoredFile) -> str:
    """How reports name a row: ``"<alias>:<name>"``."""
    return f"{row.alias}:{row.name}"


@dataclass(frozen=True)
class Problem:
    """One file that did not verify: *kind* is ``missing``, ``size`` or ``checksum`` (data
    loss; the row is ``failed`` now) or ``unchecked`` (the remote could not be asked)."""

    alias: str
    name: str
    kind: str
    detail: str
    #: For data loss: whether a local copy is left to serve reads and to send again.
    local_copy: bool | None = None

    @property
    def label(self) -> str:
        return f"{self.alias}:{self.name}"

    @property
    def is_loss(self) -> bool:
        return self.kind != UNCHECKED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.label}: {self.kind}: {self.detail}"


@dataclass
class VerifyReport:
    """What one :func:`verify` found. Every part is plain data: :meth:`as_dict` is JSON-ready,
    :meth:`lines` is the human version."""

    #: Labels (``"<alias>:<name>"``) of the files whose remote copy matched.
    verified: list[str] = field(default_factory=list)
    #: How many of those were compared by size only (no checksum the remote keeps).
    size_only: int = 0
    #: Missing or different remote copies: data loss, the rows are ``failed`` now.
    lost: list[Problem] = field(default_factory=list)
    #: Files the remote could not be asked about; nothing changed for them.
    unchecked: list[Problem] = field(default_factory=list)
    #: Labels of rows deleted or changed while they were verified: left alone.
    skipped: list[str] = field(default_factory=list)
    #: Rows of the selection that are not ``remote`` (nothing to verify yet).
    not_remote: int = 0

    @property
    def checked(self) -> int:
        """Remote rows asked about."""
        return len(self.verified) + len(self.lost) + len(self.unchecked) + len(self.skipped)

    @property
    def ok(self) -> bool:
        """Every remote copy asked about is there as verified: no loss, nothing unchecked."""
        return not self.lost and not self.unchecked

    @property
    def problems(self) -> list[Problem]:
        return [*self.lost, *self.unchecked]

    def counts(self) -> dict[str, int]:
        return {
            "checked": self.checked,
            "verified": len(self.verified),
            "size_only": self.size_only,
            "lost": len(self.lost),
            "unchecked": len(self.unchecked),
            "skipped": len(self.skipped),
            "not_remote": self.not_remote,
        }

    def as_dict(self, *, verified: bool = False) -> dict[str, Any]:
        """JSON-ready; *verified* also lists every verified label (long for a whole bucket)."""
        found: dict[str, Any] = {
            "ok": self.ok,
            "counts": self.counts(),
            "lost": [p.as_dict() for p in self.lost],
            "unchecked": [p.as_dict() for p in self.unchecked],
            "skipped": list(self.skipped),
        }
        if verified:
            found["verified"] = list(self.verified)
        return found

    def summary(self) -> str:
        """One sentence with the counts (an admin message, a command's last line)."""
        text = (
            f"{self.checked} remote file(s) checked: {len(self.verified)} verified"
            f" ({self.size_only} by size only), {len(self.lost)} lost, "
            f"{len(self.unchecked)} unchecked"
        )
        if self.skipped:
            text += f", {len(self.skipped)} changed meanwhile (skipped)"
        if self.not_remote:
            text += f"; {self.not_remote} not remote yet (not checked)"
        return text + "."

    def lines(self, *, verbose: bool = False) -> list[str]:
        """A human report: the summary, then every problem; *verbose* lists verified files."""
        out = [self.summary()]
        out.extend(f"LOST {problem}" for problem in self.lost)
        out.extend(f"UNCHECKED {problem}" for problem in self.unchecked)
        out.extend(f"skipped {item} (deleted or changed meanwhile)" for item in self.skipped)
        if verbose:
            out.extend(f"verified {item}" for item in self.verified)
        return out


def verify(
    rows: QuerySet[StoredFile] | Iterable[StoredFile] | None = None,
    *,
    aliases: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    prefix: str = "",
    batch: int = DEFAULT_BATCH,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float | None = None,
) -> VerifyReport:
    """Check that the remote still holds each selected ``remote`` file as it was verified.

    The selection is *rows* (a queryset of ``StoredFile``, or rows), else the whole ledger;
    *aliases*, *names* and *prefix* (of the name) narrow it. Rows that are not ``remote`` are
    only counted. *batch*: rows per ledger query; *concurrency*: remote questions in flight;
    *timeout*: seconds an S3 request may take, without retries (an admin request should not
    wait for botocore's 60 s read timeout, three times), ``None`` for botocore's defaults.
    See the module docstring for what is concluded and changed.
    """
    if batch < 1 or concurrency < 1:
        raise ValueError("verify() needs batch >= 1 and concurrency >= 1")
    report = VerifyReport()
    storages: dict[str, QueuedStorage | StorageNotFound] = {}

    def ask(row: StoredFile) -> RemoteObject | Exception | None:
        storage = storages[row.alias]
        assert isinstance(storage, QueuedStorage)
        try:
            return remote_object(storage.remote, row.name, timeout=timeout)
        except Exception as err:  # reported unchecked: no proof of loss
            return err

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="qs-verify") as pool:
        for chunk in _select(rows, report, aliases, names, prefix, batch):
            askable = []
            for row in chunk:
                storage = _storage(storages, row.alias)
                if isinstance(storage, StorageNotFound):
                    report.unchecked.append(_problem(row, UNCHECKED, str(storage)))
                else:
                    askable.append(row)
            for row, answer in zip(askable, pool.map(ask, askable), strict=True):
                storage = storages[row.alias]
                assert isinstance(storage, QueuedStorage)
                _conclude(storage, row, answer, report)
    logger.info("verify: %s", report.summary())
    return report


# -- a chunk at a time (the command's progress bar, the reconcile pass's sample) ----------------
def merge_reports(into: VerifyReport, part: VerifyReport) -> VerifyReport:
    """Add *part*'s findings to *into* (``not_remote`` aside: each caller counts its own)."""
    into.verified.extend(part.verified)
    into.size_only += part.size_only
    into.lost.extend(part.lost)
    into.unchecked.extend(part.unchecked)
    into.skipped.extend(part.skipped)
    return into


def _chunks(rows: Iterable[StoredFile], size: int) -> Iterator[list[StoredFile]]:
    chunk: list[StoredFile] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def verify_in_chunks(
    rows: Iterable[StoredFile],
    *,
    chunk: int = 500,
    timeout: float | None = None,
    progress: Callable[[int], None] | None = None,
    stop_when_unanswered: bool = False,
) -> tuple[VerifyReport, bool]:
    """:func:`~queued_storage.verify.verify` *rows*, *chunk* at a time; ``(report, stopped)``.

    *progress* is called with the number of rows each chunk checked. *stop_when_unanswered*:
    stop after a chunk of which the remote answered no question (down, or black-holed: every
    further chunk would wait *timeout* too); *stopped* says so.
    """
    report = VerifyReport()
    concurrency = min(DEFAULT_CONCURRENCY, chunk)
    for part in _chunks(rows, chunk):
        found = verify(part, batch=chunk, concurrency=concurrency, timeout=timeout)
        merge_reports(report, found)
        if progress is not None:
            progress(len(part))
        unanswered = all(p.kind == UNCHECKED for p in found.problems) and not found.verified
        if stop_when_unanswered and found.unchecked and unanswered and not found.lost:
            return report, True
    return report, False


# -- selection ---------------------------------------------------------------------------------
def _select(
    rows: QuerySet[StoredFile] | Iterable[StoredFile] | None,
    report: VerifyReport,
    aliases: Sequence[str] | None,
    names: Sequence[str] | None,
    prefix: str,
    batch: int,
) -> Iterator[list[StoredFile]]:
    """The selected ``remote`` rows, *batch* at a time; the others are counted in *report*."""
    if rows is None:
        rows = StoredFile.all_rows()
    if isinstance(rows, QuerySet) and not rows.query.is_sliced:
        selected: QuerySet[StoredFile] = rows
        if aliases is not None:
            selected = selected.filter(alias__in=list(aliases))
        if names is not None:
            selected = selected.filter(name__in=list(names))
        if prefix:
            selected = selected.filter(name__startswith=prefix)
        report.not_remote = selected.exclude(state=State.REMOTE).count()
        yield from keyset_pages(selected.filter(state=State.REMOTE), batch)
        return
    listed = rows

    def remote_rows() -> Iterator[StoredFile]:
        for row in listed:
            if aliases is not None and row.alias not in aliases:
                continue
            if (names is not None and row.name not in names) or not row.name.startswith(prefix):
                continue
            if row.state != State.REMOTE:
                report.not_remote += 1
                continue
            yield row

    yield from _chunks(remote_rows(), batch)


def _storage(
    found: dict[str, QueuedStorage | StorageNotFound], alias: str
) -> QueuedStorage | StorageNotFound:
    if alias not in found:
        try:
            found[alias] = get_queued_storage(alias)
        except StorageNotFound as err:
            found[alias] = err
    return found[alias]


# -- conclusions -------------------------------------------------------------------------------
def _problem(row: StoredFile, kind: str, detail: str, local: bool | None = None) -> Problem:
    return Problem(alias=row.alias, name=row.name, kind=kind, detail=detail, local_copy=local)


def _conclude(
    storage: QueuedStorage,
    row: StoredFile,
    answer: RemoteObject | Exception | None,
    report: VerifyReport,
) -> None:
    if isinstance(answer, Exception):
        detail = f"the remote storage could not be asked ({type(answer).__name__}: {answer})"
        report.unchecked.append(_problem(row, UNCHECKED, redact(detail)))
        return
    if answer is None:
        _lost(storage, row, MISSING, "is missing from the remote storage", report)
        return
    if row.size is not None and answer.size != row.size:
        what = f"has {answer.size} bytes on the remote storage, {row.size} were verified"
        _lost(storage, row, SIZE, what, report)
        return
    matches = remote_checksum_matches(row.checksum_algorithm, row.checksum, answer)
    if matches is False:
        kept = answer.crc32 if answer.crc32 and "crc32" in row.checksum_algorithm else answer.etag
        what = (
            f"differs on the remote storage: its {row.checksum_algorithm} checksum is {kept}, "
            f"{row.checksum} was verified"
        )
        _lost(storage, row, CHECKSUM, what, report)
        return
    report.verified.append(label(row))
    if matches is None:
        report.size_only += 1


def _local_copy(storage: QueuedStorage, row: StoredFile) -> bool:
    """Whether a local copy is left: asked of the disk for this host's files (and those of no
    host); another host's disk cannot be seen from here, so its row is believed."""
    if row.host and row.host != settings.HOST:
        return row.local_exists
    try:
        return bool(storage.local.exists(row.name))
    except Exception:
        return row.local_exists


def _lost(
    storage: QueuedStorage, row: StoredFile, kind: str, what: str, report: VerifyReport
) -> None:
    """Record the loss of *row*'s remote copy: ``failed`` with the reason, the signal, a log."""
    now: datetime.datetime = timezone.now()
    local = _local_copy(storage, row)
    reason = f"Data loss: the remote copy of {row.name!r} (storage {row.alias!r}) {what}."
    if local:
        reason += (
            f" Reads are served from the local copy on host {row.host or settings.HOST!r} "
            "again; retry the file (the admin's 'Retry failed' action or `manage.py "
            "queued_storage_reconcile --failed`) to send it again."
        )
    else:
        reason += (
            " No local copy is left, so reads of it fail: restore the object from a backup "
            "(then retry), or delete the file through the storage."
        )
    if kind != MISSING:
        reason += " The remote object is never overwritten: delete it before a retry."
    if not storage.ledger.remote_lost(row, reason, now, local_exists=local):
        report.skipped.append(label(row))
        return
    report.lost.append(_problem(row, kind, what, local))
    logger.error("%s", reason)
    transfer_failed.send(
        sender=type(storage),
        name=row.name,
        alias=row.alias,
        local=storage.local,
        remote=storage.remote,
        error=RemoteCopyLost(reason, name=row.name),
        reason=reason,
    )
