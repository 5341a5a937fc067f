"""The ledger's name reservation and single-flight lease, on SQLite and on PostgreSQL.

Each race runs in real threads with their own database connections, so the database (not the
Python process) has to arbitrate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.test import override_settings

from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from tests.conftest import need

pytestmark = pytest.mark.django_db(
    transaction=True, databases=[a for a in ("default", "postgres") if a in settings.DATABASES]
)


@pytest.fixture(params=["default", "postgres"])
def ledger_db(request: Any) -> Iterator[str]:
    alias = request.param
    if alias == "postgres":
        need("postgres")
    with override_settings(QUEUED_STORAGE_DATABASE=alias):
        yield alias


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


def test_lease_is_single_flight_under_a_race(ledger_db: str) -> None:
    Ledger("s").reserve("f.bin", "h")
    results = race(8, lambda i: Ledger("s").lease("f.bin", f"w{i}", 60).acquired)
    assert results.count(True) == 1
    row = StoredFile.get_row("s", "f.bin")
    assert row is not None
    assert (row.state, row.attempts) == (State.TRANSFERRING, 1)


def test_expired_lease_can_be_taken_over(ledger_db: str) -> None:
    Ledger("s").reserve("f.bin", "h")
    assert Ledger("s").lease("f.bin", "dead-worker", 0.2).acquired
    assert not Ledger("s").lease("f.bin", "w2", 60).acquired
    time.sleep(0.3)
    assert Ledger("s").lease("f.bin", "w2", 60).acquired
    # The worker that lost its lease can neither renew nor record the outcome.
    assert not Ledger("s").renew("f.bin", "dead-worker", 60, 10)
    assert not Ledger("s").remote("f.bin", "dead-worker", size=1, checksum="x", algorithm="md5")
    assert Ledger("s").remote("f.bin", "w2", size=1, checksum="x", algorithm="md5")


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
