"""What the reconcile pass keeps between passes, in the cache: the record of each pass
(:func:`last_run`, read by ``manage.py queued_storage doctor`` and ``status``) and the verify
sample's position in its rotation over the ledger. Best effort: a cache that fails or was
flushed loses a record or a position, never a file.

In the cache, not a table: the record is read by ``doctor`` only, a cache shared by every host
and worker already holds the states, and a record lost to a flush only makes ``doctor`` say so
until the next pass; a table would cost a migration for one timestamp.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, TypedDict, cast

from django.core.cache import caches

from queued_storage import state as read_side
from queued_storage.conf import settings
from queued_storage.state import cache_key

if TYPE_CHECKING:
    from queued_storage.report import Report

__all__ = ["PassRecord", "last_run", "record_run", "remember_sample_position", "sample_position"]


class PassRecord(TypedDict):
    """One recorded pass: its host, when it ran (aware) and whether it was ok."""

    host: str
    at: datetime.datetime
    ok: bool


def _key(what: str, host: str = "") -> str:
    return cache_key(f"{settings.CACHE_PREFIX}:reconcile", what, host)


def record_run(report: Report, now: datetime.datetime) -> None:
    """Remember when this host's pass ran, and the latest pass of any host (best effort)."""
    record = {"host": report.host, "at": now.isoformat(), "ok": report.ok}
    try:
        cache = caches[settings.CACHE]
        cache.set(_key("last-pass", report.host), record, settings.CACHE_TIMEOUT)
        cache.set(_key("last-pass"), record, settings.CACHE_TIMEOUT)
    except Exception as err:
        read_side.cache_failed(
            "record the reconcile pass", err, "doctor's reconcile line will not see this pass"
        )


def last_run(host: str | None = None) -> PassRecord | None:
    """The last recorded pass of *host* (``""``: of any host), ``{"host", "at", "ok"}`` with
    ``at`` an aware :class:`~datetime.datetime`; ``None`` when none is recorded."""
    try:
        found = caches[settings.CACHE].get(
            _key("last-pass", settings.HOST if host is None else host)
        )
    except Exception:
        return None
    if not isinstance(found, dict) or "at" not in found:
        return None
    # Written by record_run() only; "at" travels as ISO text.
    return cast(PassRecord, {**found, "at": datetime.datetime.fromisoformat(str(found["at"]))})


def sample_position() -> int:
    """The primary key the verify sample's rotation stopped at (0: start from the beginning)."""
    cache = caches[settings.CACHE]
    try:
        return int(cache.get(_key("verify-cursor")) or 0)
    except Exception:
        return 0


def remember_sample_position(pk: int) -> None:
    """Where the next verify sample starts (after *pk*); a lost position starts it again from
    the beginning, which costs nothing but repeated HEADs."""
    try:
        caches[settings.CACHE].set(_key("verify-cursor"), pk, settings.CACHE_TIMEOUT)
    except Exception as err:
        read_side.cache_failed(
            "record the verify sample's position", err, "the next sample starts from the beginning"
        )
