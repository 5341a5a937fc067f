"""Status: what the ledger says, as plain JSON-ready data, for ``manage.py queued_storage
status`` (the schema is in docs/operations.md): counts and bytes by storage and state, the
oldest pending file, transfers in flight with their progress, failures with their reasons,
the staging budget, the resumable and the direct uploads, and this host's last reconcile pass.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from django.db.models import Count, Q, Sum
from django.utils import timezone

from queued_storage import clock, tally
from queued_storage import state as read_side
from queued_storage.conf import settings
from queued_storage.dispatch import redact
from queued_storage.models import State, StoredFile, StoredFileQuerySet, TusUpload
from queued_storage.reconcile import last_run

__all__ = ["status", "status_report"]


def _iso(when: datetime.datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _age(when: datetime.datetime | None, now: datetime.datetime) -> float | None:
    return None if when is None else round(max(0.0, (now - when).total_seconds()), 1)


def status(aliases: Sequence[str] | None = None, *, limit: int = 20) -> dict[str, Any]:
    """What the ledger says, as plain JSON-ready data (the schema is in docs/operations.md).

    A handful of aggregate queries whatever the ledger's size, plus at most *limit* rows of
    transfers in flight (their progress from the cache, where the lease keeper publishes it
    about once a second, else from the row) and of failures.
    """
    now = timezone.now()
    rows = StoredFile.all_rows().of(aliases or None)
    storages: dict[str, dict[str, Any]] = {}

    def entry(alias: str) -> dict[str, Any]:
        return storages.setdefault(
            alias,
            {
                "states": {str(s): {"files": 0, "bytes": 0} for s in State.values},
                "local_copies": {"files": 0, "bytes": 0},
                "oldest_pending": None,
                "oldest_pending_age": None,
            },
        )

    totals = {str(s): {"files": 0, "bytes": 0} for s in State.values}
    wanted = None if not aliases else set(aliases)
    oldest_all: datetime.datetime | None = None
    for alias, state, files, size, local_files, local_bytes in _by_state(wanted):
        counts = {"files": files, "bytes": size}
        entry(alias)["states"][state] = counts
        totals[state]["files"] += files
        totals[state]["bytes"] += size
        copies = entry(alias)["local_copies"]
        copies["files"] += local_files
        copies["bytes"] += local_bytes
        if state == State.PENDING:
            oldest = rows.oldest_created(alias, state)
            entry(alias)["oldest_pending"] = _iso(oldest)
            entry(alias)["oldest_pending_age"] = _age(oldest, now)
            if oldest is not None and (oldest_all is None or oldest < oldest_all):
                oldest_all = oldest
    in_flight = []
    flying = rows.transferring()
    for row in flying.order_by("lease_expires", "pk")[:limit]:
        done, total = read_side.get_progress(settings.CACHE_PREFIX, row.alias, row.name) or (
            row.bytes_done,
            row.size or 0,
        )
        total = total or row.size or 0
        in_flight.append(
            {
                "storage": row.alias,
                "name": row.name,
                "host": row.host,
                "bytes_done": int(done),
                "size": int(total),
                "percent": round(100.0 * done / total, 1) if total else None,
                "attempts": row.attempts,
                "lease_owner": row.lease_owner,
                "lease_expires": _iso(row.lease_expires),
            }
        )
    failures = []
    failed = rows.failed()
    for row in failed.order_by("-updated", "-pk")[:limit]:
        failures.append(
            {
                "storage": row.alias,
                "name": row.name,
                "host": row.host,
                "size": row.size,
                "attempts": row.attempts,
                "local_copy": row.local_exists,
                "updated": _iso(row.updated),
                "reason": redact(row.last_error),
            }
        )
    return {
        "schema": 1,
        "generated": _iso(now),
        "host": settings.HOST,
        "storages": storages,
        "totals": totals,
        "oldest_pending": _iso(oldest_all),
        "oldest_pending_age": _age(oldest_all, now),
        "in_flight": in_flight,
        "in_flight_total": totals[State.TRANSFERRING]["files"],
        "failures": failures,
        "failures_total": totals[State.FAILED]["files"],
        "staging": {
            "host": settings.HOST,
            "waiting_bytes": StoredFile.waiting_bytes(settings.HOST),
            "budget": settings.STAGING_BUDGET,
        },
        "tus": _tus_status(aliases, now),
        "direct": _direct_status(rows, totals[State.UPLOADING]),
    }


def _by_state(wanted: set[str] | None) -> list[tuple[str, str, int, int, int, int]]:
    """``(alias, state, files, bytes, files with a local copy, their bytes)`` by alias and
    state: from the kept tally (``tally.read()``)."""
    found: dict[tuple[str, str], list[int]] = {}
    for group in tally.read():
        if wanted is None or group.alias in wanted:
            sums = found.setdefault((group.alias, group.state), [0, 0, 0, 0])
            sums[0] += group.files
            sums[1] += group.bytes
            if group.local:
                sums[2] += group.files
                sums[3] += group.bytes
    return [(alias, state, *sums) for (alias, state), sums in sorted(found.items())]  # type: ignore[misc]


def _tus_status(aliases: Sequence[str] | None, now: datetime.datetime) -> dict[str, int]:
    """Unfinished resumable uploads (every host's): how many are receiving, how many expired
    (``cleanup`` removes those), and their bytes received of the lengths they reserve."""
    rows = TusUpload.all_rows().unfinished().of(aliases or None)
    found = rows.aggregate(
        receiving=Count("pk", filter=Q(expires__gt=now)),
        expired=Count("pk", filter=Q(expires__lte=now)),
        received=Sum("offset", filter=Q(expires__gt=now)),
        reserved=Sum("length", filter=Q(expires__gt=now)),
    )
    return {
        "receiving": int(found["receiving"] or 0),
        "received_bytes": int(found["received"] or 0),
        "reserved_bytes": int(found["reserved"] or 0),
        "expired": int(found["expired"] or 0),
    }


def _direct_status(rows: StoredFileQuerySet, uploading: dict[str, int]) -> dict[str, Any]:
    """Direct uploads under way (every storage's, from the tally): how many, the bytes they
    declared, and how many are untouched for ``QUEUED_STORAGE_DIRECT_EXPIRY`` (``cleanup``
    and the reconcile pass abort those): one range of the index ``(state, updated)``, asked
    only when there are uploads."""
    expired = 0
    if uploading["files"]:
        expired = rows.expired_direct(clock.read(StoredFile.db())).count()
    return {
        "uploading": uploading["files"],
        "declared_bytes": uploading["bytes"],
        "expired": expired,
        "expiry": settings.DIRECT_EXPIRY,
    }


def status_report(aliases: Sequence[str] | None = None, *, limit: int = 20) -> dict[str, Any]:
    """:func:`status`, with this host's last reconcile pass (``reconcile``: when, how long
    ago, whether it was ok): ``manage.py queued_storage status``."""
    data = status(aliases, limit=limit)
    record = last_run(settings.HOST)
    data["reconcile"] = {
        "host": settings.HOST,
        "last_run": None if record is None else record["at"].isoformat(),
        "age": None
        if record is None
        else round((timezone.now() - record["at"]).total_seconds(), 1),
        "ok": None if record is None else bool(record.get("ok")),
    }
    return data
