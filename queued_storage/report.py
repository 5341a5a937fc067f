"""What one reconcile pass did and found: :class:`Report`, its counts, its human summary and the
one-sentence problem the command fails with. Plain data, no query, no I/O."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from queued_storage.models import StoredFile
    from queued_storage.verify import VerifyReport

__all__ = ["Report", "label"]


@dataclass
class Report:
    """What one pass did and found; items are ``"<alias>:<name>"``."""

    host: str
    requeued: list[str] = field(default_factory=list)
    #: Queued now because the broker had refused their message (``dispatch_refused``).
    requeued_refused: list[str] = field(default_factory=list)
    #: Queued because their retry was due (``retry_at``).
    requeued_due: list[str] = field(default_factory=list)
    taken_over: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)
    #: Direct uploads left alone too long: aborted, their names released.
    expired_direct: list[str] = field(default_factory=list)
    not_queued: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    newly_lost: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    lost_total: int = 0
    elsewhere: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    staging_bytes: int = 0
    staging_budget: int | None = None
    #: The sample of remote files verified (``None``: none was).
    verify: VerifyReport | None = None
    #: Whether the sample stopped early because the remote did not answer.
    verify_stopped: bool = False

    @property
    def ok(self) -> bool:
        """No data loss (of a local copy, or of a remote copy the sample found) and no
        storage the pass could not handle."""
        remote_lost = self.verify is not None and bool(self.verify.lost)
        return self.lost_total == 0 and not self.errors and not remote_lost

    def counts(self) -> dict[str, int]:
        return {
            "requeued": len(self.requeued),
            "requeued_refused": len(self.requeued_refused),
            "requeued_due": len(self.requeued_due),
            "taken_over": len(self.taken_over),
            "given_up": len(self.given_up),
            "retried": len(self.retried),
            "adopted": len(self.adopted),
            "stale": len(self.stale),
            "cleaned": len(self.cleaned),
            "aborted_uploads": len(self.aborted_uploads),
            "expired_direct": len(self.expired_direct),
            "not_queued": len(self.not_queued),
            "skipped": len(self.skipped),
            "newly_lost": len(self.newly_lost),
            "lost": self.lost_total,
            "errors": len(self.errors),
            "overdue_elsewhere": sum(self.elsewhere.values()),
            "staging_bytes": self.staging_bytes,
            "verified": len(self.verify.verified) if self.verify else 0,
            "verify_lost": len(self.verify.lost) if self.verify else 0,
            "verify_unchecked": len(self.verify.unchecked) if self.verify else 0,
        }

    def log(self, logger: logging.Logger) -> None:
        """Log what the pass did and found: an info line, warnings for what waits, an error
        for data loss (on the pass's logger)."""
        counts: dict[str, int] = self.counts()
        logger.info(
            "reconcile pass on %s: %s",
            self.host,
            ", ".join(f"{k}={v}" for k, v in counts.items()),
        )
        if self.not_queued:
            logger.warning(
                "reconcile could not queue %d transfer(s): the broker refused; "
                "they are tried again by the next pass",
                len(self.not_queued),
            )
        if self.staging_budget and self.staging_bytes >= 0.8 * self.staging_budget:
            logger.warning(
                "%d of the %d bytes of the staging budget of host %s wait for "
                "their transfer (QUEUED_STORAGE_STAGING_BUDGET); new saves fail beyond it",
                self.staging_bytes,
                self.staging_budget,
                self.host,
            )
        if self.lost_total:
            logger.error(
                "DATA LOSS: %d file(s) never reached the remote storage and their "
                "local copy is gone: %s",
                self.lost_total,
                "; ".join(self.lost),
            )
        if self.elsewhere:
            logger.warning(
                "overdue transfers of other hosts (%s): a host whose files wait "
                "runs no reconcile pass or no worker; run the pass there, or with --all-hosts "
                "where its staging directory is mounted",
                ", ".join(f"{h}: {n}" for h, n in sorted(self.elsewhere.items())),
            )
        for error in self.errors:
            logger.error("reconcile: %s", error)

    def lines(self, *, verbose: bool = False) -> list[str]:
        """A human summary; *verbose* lists every item."""
        budget = "no budget" if self.staging_budget is None else f"budget {self.staging_budget}"
        out = [
            f"host {self.host}: staging {self.staging_bytes} bytes waiting ({budget})",
        ]
        for label, items in (
            ("re-queued (overdue)", self.requeued),
            ("queued (the broker had refused them)", self.requeued_refused),
            ("queued (retry due)", self.requeued_due),
            ("re-queued (lease expired)", self.taken_over),
            ("failed (workers lost for longer than RETRY_FOR)", self.given_up),
            ("retried (were failed)", self.retried),
            ("adopted", self.adopted),
            ("stale reservations removed", self.stale),
            ("local copies of remote files removed", self.cleaned),
            ("orphaned multipart uploads aborted", self.aborted_uploads),
            ("direct uploads expired (untouched for DIRECT_EXPIRY)", self.expired_direct),
            ("not queued (broker refused; next pass)", self.not_queued),
            ("skipped", self.skipped),
        ):
            out.append(f"{label}: {len(items)}")
            if verbose or label == "skipped":
                out.extend(f"  {item}" for item in items)
        for other, count in sorted(self.elsewhere.items()):
            out.append(f"overdue on host {other} (its own pass handles them): {count}")
        out.append(f"LOST (not transferred, local copy gone): {self.lost_total}")
        out.extend(f"  {item}" for item in self.lost)
        if self.verify is not None:
            stopped = " (stopped: the remote did not answer)" if self.verify_stopped else ""
            out.append(f"verify sample: {self.verify.summary()}{stopped}")
            out.extend(f"  LOST {problem}" for problem in self.verify.lost)
            if verbose:
                out.extend(f"  UNCHECKED {problem}" for problem in self.verify.unchecked)
        out.extend(f"ERROR: {error}" for error in self.errors)
        return out

    def problem(self) -> str:
        """Why the pass is not ok, in one sentence (the command's error message)."""
        parts = []
        if self.lost_total:
            parts.append(
                f"{self.lost_total} file(s) never reached the remote storage and their local "
                "copy is gone (data loss): restore them and run queued_storage_reconcile "
                "--failed, or delete them through the storage"
            )
        if self.verify is not None and self.verify.lost:
            parts.append(
                f"{len(self.verify.lost)} remote copy(ies) missing or different (data loss "
                "found by the verify sample; the files are failed now: retry those with a local "
                "copy with queued_storage_reconcile --failed, restore the others)"
            )
        parts.extend(self.errors)
        return "; ".join(parts)


def label(row: StoredFile) -> str:
    """How a report names a row: ``"<alias>:<name>"``."""
    return f"{row.alias}:{row.name}"
