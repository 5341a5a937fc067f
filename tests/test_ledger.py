"""The ledger's name reservation and single-flight lease, on SQLite and on PostgreSQL.

Each race runs in real threads with their own database connections, so the database (not the
Python process) has to arbitrate.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import caches
from django.db import close_old_connections, connections, transaction
from django.db.models import DurationField, Value
from django.db.models.functions import Now
from django.test import override_settings
from django.utils import timezone

from queued_storage.conf import settings as qs_settings
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.state import FileState, cache_key
from tests.harness.suite import need

pytestmark = pytest.mark.django_db(
    transaction=True, databases=[a for a in ("default", "postgres") if a in settings.DATABASES]
)


def race(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run *work(i)* in *n* threads released together; return their results."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_ledger_uses_the_configured_database(ledger_db: str) -> None:
    assert StoredFile.db() == ledger_db
    assert Ledger("s").reserve("a.txt", "h1")
    assert StoredFile.objects.using(ledger_db).filter(name="a.txt").exists()


def test_reservation_is_unique_under_a_race(ledger_db: str) -> None:
    results = race(8, lambda i: Ledger("s").reserve("photo.jpg", f"host{i}"))
    assert sorted(results) == [False] * 7 + [True]
    assert StoredFile.objects.using(ledger_db).filter(name="photo.jpg").count() == 1


def test_reservation_inside_a_transaction_keeps_it_usable(ledger_db: str) -> None:
    assert Ledger("s").reserve("x.txt", "h")
    with transaction.atomic(using=ledger_db):
        assert not Ledger("s").reserve("x.txt", "h")  # unique violation, in a savepoint
        assert Ledger("s").reserve("y.txt", "h")  # the transaction is still usable
    assert StoredFile.objects.using(ledger_db).count() == 2


def test_same_name_in_two_storages_is_two_rows(ledger_db: str) -> None:
    assert Ledger("one").reserve("a.txt", "h")
    assert Ledger("two").reserve("a.txt", "h")
    rows = StoredFile.objects.using(ledger_db).filter(name="a.txt")
    assert sorted(rows.values_list("alias", flat=True)) == ["one", "two"]


def test_lease_is_single_flight_under_a_race(ledger_db: str) -> None:
    Ledger("s").reserve("f.bin", "h")
    results = race(8, lambda i: Ledger("s").lease("f.bin", f"w{i}", 60).acquired)
    assert results.count(True) == 1
    row = StoredFile.get_row("s", "f.bin")
    assert row is not None
    # A lease counts no attempt: ``attempts`` counts errors about the file.
    assert (row.state, row.attempts, row.retrying_since) == (State.TRANSFERRING, 0, None)


def test_expired_lease_can_be_taken_over(ledger_db: str) -> None:
    Ledger("s").reserve("f.bin", "h")
    first = Ledger("s").lease("f.bin", "dead-worker", 60)
    assert first.acquired and not first.took_over
    assert not Ledger("s").lease("f.bin", "w2", 60).acquired
    # The dead worker's lease runs out: its expiry is set in the past (no sleep, which a
    # loaded machine could stretch past a short lease before the first takeover attempt).
    expired = timezone.now() - datetime.timedelta(seconds=1)
    rows = StoredFile.objects.using(ledger_db).filter(alias="s", name="f.bin")
    assert rows.update(lease_expires=expired) == 1
    taken = Ledger("s").lease("f.bin", "w2", 60)
    assert taken.acquired and taken.took_over
    assert taken.row is not None
    # The lost worker is a transient failure, not the file's: no attempt, a run begins.
    assert (taken.row.lease_owner, taken.row.attempts) == ("w2", 0)
    assert taken.row.retrying_since is not None
    assert taken.row.last_error == (
        "The lease of dead-worker expired (its worker was lost?); taken over by w2."
    )
    # The worker that lost its lease can neither renew nor record the outcome.
    assert not Ledger("s").renew("f.bin", "dead-worker", 60, 10)
    assert not Ledger("s").remote("f.bin", "dead-worker", size=1, checksum="x", algorithm="md5")
    assert Ledger("s").remote("f.bin", "w2", size=1, checksum="x", algorithm="md5")


def test_an_expired_lease_is_taken_over_once_under_a_race(ledger_db: str) -> None:
    Ledger("s").reserve("f.bin", "h")
    assert Ledger("s").lease("f.bin", "dead-worker", 0.05).acquired
    time.sleep(0.1)
    results = race(8, lambda i: Ledger("s").lease("f.bin", f"w{i}", 60))
    assert [r.took_over for r in results if r.acquired] == [True]
    row = StoredFile.get_row("s", "f.bin")
    assert row is not None and row.lease_owner.startswith("w")


def test_errors_count_only_when_they_are_about_the_file(ledger_db: str) -> None:
    ledger = Ledger("s")
    ledger.saved("f.bin", "h", 1)
    assert ledger.lease("f.bin", "w", 60).acquired
    assert ledger.retry_later("f.bin", "w", "S3 down", counted=False)
    began = row(ledger, "f.bin").retrying_since
    assert began is not None and row(ledger, "f.bin").attempts == 0
    assert ledger.lease("f.bin", "w", 60).acquired
    assert ledger.retry_later("f.bin", "w", "S3 still down", counted=False)
    assert row(ledger, "f.bin").retrying_since == began  # the same run goes on
    assert ledger.lease("f.bin", "w", 60).acquired
    assert ledger.retry_later("f.bin", "w", "checksum mismatch")  # about the file
    assert (row(ledger, "f.bin").attempts, row(ledger, "f.bin").retrying_since) == (1, None)
    assert ledger.lease("f.bin", "w", 60).acquired
    assert ledger.retry_later("f.bin", "w", "S3 down again", counted=False)
    assert ledger.lease("f.bin", "w", 60).acquired
    assert ledger.remote("f.bin", "w", size=1, checksum="x", algorithm="md5")
    assert (row(ledger, "f.bin").attempts, row(ledger, "f.bin").retrying_since) == (1, None)


def test_remote_and_failed_rows_are_not_leased(ledger_db: str) -> None:
    Ledger("s").reserve("done.bin", "h")
    assert Ledger("s").lease("done.bin", "w", 60).acquired
    assert Ledger("s").remote("done.bin", "w", size=1, checksum="x", algorithm="md5")
    assert not Ledger("s").lease("done.bin", "w2", 60).acquired

    Ledger("s").reserve("bad.bin", "h")
    assert Ledger("s").lease("bad.bin", "w", 60).acquired
    assert Ledger("s").fail("bad.bin", "w", "boom")
    assert not Ledger("s").lease("bad.bin", "w2", 60).acquired
    assert Ledger("s").retry("bad.bin")
    assert Ledger("s").lease("bad.bin", "w2", 60).acquired


def test_deleted_row_cannot_be_recorded(ledger_db: str) -> None:
    Ledger("s").reserve("f.bin", "h")
    assert Ledger("s").lease("f.bin", "w", 60).acquired
    Ledger("s").forget("f.bin")
    assert not Ledger("s").remote("f.bin", "w", size=1, checksum="x", algorithm="md5")
    assert StoredFile.get_row("s", "f.bin") is None


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_old_connections()


# --- every transition and its cache effect ---------------------------------------------------
@pytest.fixture
def ledger(ledger_db: str) -> Iterator[Ledger]:
    need("redis")
    caches["default"].clear()
    yield Ledger("cache-effects", "qs-test-prefix")
    caches["default"].clear()


def cached(ledger: Ledger, name: str) -> FileState | None:
    """What the cache itself holds for *name* (``None``: nothing), never the row."""
    value = caches["default"].get(cache_key(ledger.cache_prefix, ledger.alias, name))
    return None if value is None or value.get("s") is None else FileState.from_cache(value)


def row(ledger: Ledger, name: str) -> StoredFile:
    found = ledger.row(name)
    assert found is not None
    return found


def test_saved_inserts_one_final_row_and_publishes_it_at_the_commit(
    ledger: Ledger, ledger_db: str
) -> None:
    with transaction.atomic(using=ledger_db):
        assert ledger.saved("a.bin", "h1", 5)
        assert cached(ledger, "a.bin") is None  # not before the commit
        assert not ledger.saved("a.bin", "h2", 7)  # the name is taken
    assert cached(ledger, "a.bin") == FileState(State.PENDING, 5, True)
    found = row(ledger, "a.bin")
    assert (found.state, found.size, found.local_exists, found.host) == ("pending", 5, True, "h1")


def test_a_rolled_back_save_publishes_nothing(ledger: Ledger, ledger_db: str) -> None:
    def save_then_fail() -> None:
        with transaction.atomic(using=ledger_db):
            ledger.saved("gone.bin", "h", 5)
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        save_then_fail()
    assert ledger.row("gone.bin") is None
    assert cached(ledger, "gone.bin") is None


def test_lease_writes_no_cache_and_renew_publishes_transferring_and_progress(
    ledger: Ledger,
) -> None:
    ledger.saved("f.bin", "h", 10)
    before = cached(ledger, "f.bin")
    lease = ledger.lease("f.bin", "w", 60)
    assert lease.acquired and lease.row is not None and lease.row.state == State.TRANSFERRING
    assert cached(ledger, "f.bin") == before  # a short transfer never shows "transferring"
    leased = FileState.from_row(lease.row)
    assert ledger.renew("f.bin", "w", 60, 4, 10, leased)
    assert cached(ledger, "f.bin") == FileState(State.TRANSFERRING, 10, True)
    assert ledger.progress("f.bin") == (4, 10)
    assert row(ledger, "f.bin").bytes_done == 4
    assert not ledger.renew("f.bin", "someone-else", 60, 5, 10)


def test_remote_publishes_once_whether_the_local_copy_stays(ledger: Ledger) -> None:
    for name, keep in (("keep.bin", True), ("drop.bin", False)):
        ledger.saved(name, "h", 3)
        assert ledger.lease(name, "w", 60).acquired
        assert ledger.remote(name, "w", size=3, checksum="c", algorithm="md5", keep_local=keep)
        assert cached(ledger, name) == FileState(State.REMOTE, 3, keep)
        assert row(ledger, name).state == State.REMOTE


def test_drop_local_deletes_only_after_the_cache_says_remote(ledger: Ledger) -> None:
    ledger.saved("d.bin", "h", 3)
    assert ledger.lease("d.bin", "w", 60).acquired
    assert ledger.remote("d.bin", "w", size=3, checksum="c", algorithm="md5")
    seen: list[FileState | None] = []
    assert ledger.drop_local("d.bin", 3, lambda name: seen.append(cached(ledger, name)))
    assert seen == [FileState(State.REMOTE, 3, False)]
    assert row(ledger, "d.bin").local_exists is False


def test_retry_later_and_fail_end_the_lease_and_publish(ledger: Ledger) -> None:
    ledger.saved("t.bin", "h", 3)
    assert ledger.lease("t.bin", "w", 60).acquired
    assert ledger.retry_later("t.bin", "w", "throttled")
    assert cached(ledger, "t.bin") == FileState(State.PENDING, 3, True)
    assert (row(ledger, "t.bin").last_error, row(ledger, "t.bin").lease_owner) == ("throttled", "")
    assert ledger.lease("t.bin", "w", 60).acquired
    ledger.local_missing("t.bin")
    assert ledger.fail("t.bin", "w", "gone")
    assert cached(ledger, "t.bin") == FileState(State.FAILED, 3, False)
    assert ledger.retry("t.bin")
    assert cached(ledger, "t.bin") == FileState(State.PENDING, 3, False)
    assert row(ledger, "t.bin").attempts == 0


def test_forget_deletes_the_row_and_its_cached_state(ledger: Ledger) -> None:
    ledger.saved("x.bin", "h", 1)
    assert cached(ledger, "x.bin") is not None
    forgotten = ledger.forget("x.bin")
    assert forgotten is not None and forgotten.name == "x.bin"
    assert ledger.row("x.bin") is None and cached(ledger, "x.bin") is None


def test_reconcile_transitions_match_the_row_as_it_was_read(ledger: Ledger) -> None:
    now = timezone.now()
    ledger.saved("lease.bin", "h", 1)
    assert ledger.lease("lease.bin", "dead", 60).acquired
    read = row(ledger, "lease.bin")
    assert ledger.renew("lease.bin", "dead", 60, 1)  # the row moved on since it was read
    assert not ledger.take_back(read, now)
    assert ledger.take_back(row(ledger, "lease.bin"), now)
    assert cached(ledger, "lease.bin") == FileState(State.PENDING, 1, True)

    pending = row(ledger, "lease.bin")
    assert (pending.attempts, pending.retrying_since) == (0, now)  # a lost worker: a run began
    ledger.rows("lease.bin").update(retrying_since=None)
    pending = row(ledger, "lease.bin")
    later = now + datetime.timedelta(seconds=1)
    assert ledger.claim(pending, later)
    assert row(ledger, "lease.bin").retrying_since == later  # a lost message begins one too
    assert not ledger.claim(pending, now)  # another pass claimed it first
    ledger.unclaim(pending, later)
    assert (row(ledger, "lease.bin").updated, row(ledger, "lease.bin").retrying_since) == (
        pending.updated,
        None,
    )

    assert ledger.lost(pending, "Data loss: gone", now)
    lost = row(ledger, "lease.bin")
    assert (lost.state, lost.local_exists, lost.last_error) == ("failed", False, "Data loss: gone")
    assert cached(ledger, "lease.bin") == FileState(State.FAILED, 1, False)
    assert ledger.retry_failed(lost, now)
    assert cached(ledger, "lease.bin") == FileState(State.PENDING, 1, True)

    assert ledger.lease("lease.bin", "dead", 0.01).acquired
    expired = row(ledger, "lease.bin")
    assert ledger.give_up(expired, "Gave up: workers lost for a day", now)
    failed = row(ledger, "lease.bin")
    assert (failed.state, failed.lease_owner, failed.last_error) == (
        "failed",
        "",
        "Gave up: workers lost for a day",
    )
    assert cached(ledger, "lease.bin") == FileState(State.FAILED, 1, True)
    assert not ledger.give_up(expired, "again", now)


def test_reservations_are_finished_or_dropped(ledger: Ledger) -> None:
    now = timezone.now()
    assert ledger.reserve("half.bin", "h") and ledger.reserve("none.bin", "h")
    assert ledger.finish_save(row(ledger, "half.bin"), 9, now)
    assert cached(ledger, "half.bin") == FileState(State.PENDING, 9, True)
    assert not ledger.drop_reservation(row(ledger, "half.bin"))  # it has a file now
    assert ledger.drop_reservation(row(ledger, "none.bin"))
    assert ledger.row("none.bin") is None


def test_seed_remote_records_unknown_names_only(ledger: Ledger) -> None:
    ledger.saved("known.bin", "h", 1)
    assert ledger.seed_remote([("known.bin", 5, "e1"), ("new.bin", 6, "e2")]) == ["new.bin"]
    seeded = row(ledger, "new.bin")
    assert (seeded.state, seeded.size, seeded.local_exists, seeded.checksum) == (
        "remote",
        6,
        False,
        "e2",
    )
    assert row(ledger, "known.bin").state == State.PENDING


# --- one clock: the database's (invariant 13) --------------------------------------------------
#: How far off the host clocks of these tests are (libfaketime does it to a real worker in
#: tests/test_clock.py; here timezone.now() is shifted in this process).
SKEW = datetime.timedelta(minutes=10)


def database_now(seconds: float) -> Any:
    """The database's time plus *seconds* (an expression)."""
    return Now() + Value(datetime.timedelta(seconds=seconds), output_field=DurationField())


def host_clock_off_by(monkeypatch: pytest.MonkeyPatch, skew: datetime.timedelta) -> None:
    real = datetime.datetime.now
    monkeypatch.setattr(timezone, "now", lambda: real(datetime.timezone.utc) + skew)


@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_a_host_clock_ten_minutes_off_neither_takes_a_live_lease_nor_waits_for_an_expired_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL: the lease's times are the server's, whatever this host's clock says. (On
    SQLite the database's clock is this process's own: the clock every process of its one
    host shares.)"""
    need("postgres")
    with override_settings(QUEUED_STORAGE_DATABASE="postgres"):
        ledger = Ledger("s")
        ledger.reserve("live.bin", "h")
        assert ledger.lease("live.bin", "correct-clock", 60).acquired
        host_clock_off_by(monkeypatch, SKEW)
        refused = ledger.lease("live.bin", "ahead", 60)
        assert not refused.acquired
        assert refused.row is not None and refused.now is not None
        assert refused.row.lease_owner == "correct-clock"
        # ...and it comes back when the lease ends by the database's clock, not at once.
        assert 50 < (refused.row.lease_expires - refused.now).total_seconds() <= 60
        host_clock_off_by(monkeypatch, -SKEW)
        ledger.rows("live.bin").update(lease_expires=database_now(-1))  # expired a second ago
        taken = ledger.lease("live.bin", "behind", 60)
        assert taken.acquired and taken.took_over
        assert taken.row is not None and taken.row.lease_expires is not None
        assert taken.row.lease_expires - taken.row.updated == datetime.timedelta(seconds=60)
        real = datetime.datetime.now(datetime.timezone.utc)
        assert abs(taken.row.updated - real) < datetime.timedelta(seconds=5)


@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_a_row_saved_on_a_host_whose_clock_is_off_is_dated_by_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL: ``created`` and ``updated`` of a new row are the server's time, so that a
    file saved on a web host 10 minutes ahead is overdue when the others reckon it is."""
    need("postgres")
    with override_settings(QUEUED_STORAGE_DATABASE="postgres"):
        ledger = Ledger("s")
        for skew, name in ((SKEW, "ahead.bin"), (-SKEW, "behind.bin")):
            host_clock_off_by(monkeypatch, skew)
            assert ledger.saved(name, "h", 1)
            assert ledger.reserve(f"reserved-{name}", "h")
            real = datetime.datetime.now(datetime.timezone.utc)
            for found in (row(ledger, name), row(ledger, f"reserved-{name}")):
                assert abs(found.created - real) < datetime.timedelta(seconds=5), skew
                assert abs(found.updated - real) < datetime.timedelta(seconds=5), skew


def test_a_takeover_is_logged_at_warning_with_both_owners(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    ledger.saved("taken.bin", "h", 1)
    assert ledger.lease("taken.bin", "dead-worker", -1).acquired  # expired at once
    expired = row(ledger, "taken.bin").lease_expires
    assert expired is not None
    with caplog.at_level(logging.WARNING, logger="queued_storage.ledger"):
        assert ledger.lease("taken.bin", "w2", 60).took_over
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "lease takeover: the lease of dead-worker on cache-effects:taken.bin expired at "
            f"{expired.isoformat(' ', 'milliseconds')} (by the database's clock); "
            "taken over by w2",
        )
    ]
    caplog.clear()
    ledger.rows("taken.bin").update(lease_expires=database_now(-1))
    lost = row(ledger, "taken.bin")  # a time the database wrote, matched as read
    assert lost.lease_expires is not None
    with caplog.at_level(logging.WARNING, logger="queued_storage.ledger"):
        assert ledger.take_back(lost, timezone.now())
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "lease takeover: the lease of w2 on cache-effects:taken.bin expired at "
            f"{lost.lease_expires.isoformat(' ', 'milliseconds')} (by the database's clock); "
            f"taken back by the reconcile pass on host {qs_settings.HOST}",
        )
    ]
