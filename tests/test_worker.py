"""``queued_storage.worker``: the transfer policy (``run_transfer``) in-process: retries,
failures, signals, order.

These run the same function the Celery task runs, without Celery, against the real S3 server;
the end-to-end proofs with a worker process are in ``test_integration.py``.
"""

from __future__ import annotations

import datetime
import html
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.db import DatabaseError, connections, transaction
from django.dispatch import Signal
from django.test import Client, override_settings
from django.utils import timezone

from queued_storage import signals
from queued_storage.doctor import FAIL, check_remotes
from queued_storage.exceptions import InfrastructureError, TransientTransferError
from queued_storage.kept_connection import KeptConnection
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage
from queued_storage.worker import Outcome, RetryLater, backoff, outage_backoff, run_transfer
from tests.harness.suite import need, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def delayed(**options: Any) -> QueuedStorage:
    """A storage of this module's own: no worker of the suite watches it (its retries are due
    in the ledger; these tests run them themselves), and a message it sends goes to a queue no
    worker consumes."""
    return QueuedStorage(local="staging", remote="s3", delayed=True, queue="parked", **options)


def row_of(storage: QueuedStorage, name: str) -> StoredFile:
    found = StoredFile.get_row(storage.alias, name)
    assert found is not None
    return found


def not_yet(name: str, local: Storage, remote: Storage) -> bool:
    """A task's ``transfer()`` hook that asks to be retried: an error about the file."""
    return False


@pytest.fixture
def collect() -> Any:
    """``collect(signal)``: the keyword arguments of every send of *signal* during the test."""
    connected: list[tuple[Signal, Any]] = []

    def start(signal: Signal) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []

        def receiver(sender: Any, **kwargs: Any) -> None:
            received.append(kwargs)

        signal.connect(receiver, weak=False)
        connected.append((signal, receiver))
        return received

    yield start
    for signal, receiver in connected:
        signal.disconnect(receiver)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    with override_settings(QUEUED_STORAGE_RETRY_DELAY=10, QUEUED_STORAGE_RETRY_MAX_DELAY=100):
        for attempt, full in ((1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100)):
            samples = [backoff(attempt) for _ in range(200)]
            assert min(samples) >= full / 2
            assert max(samples) <= full
            assert len(set(samples)) > 1  # jitter


def test_outage_backoff_waits_as_long_as_the_outage_has_lasted_within_the_bounds() -> None:
    with override_settings(QUEUED_STORAGE_RETRY_DELAY=10, QUEUED_STORAGE_RETRY_MAX_DELAY=100):
        for elapsed, full in ((0, 10), (4, 10), (25, 25), (70, 70), (100, 100), (5000, 100)):
            samples = [outage_backoff(elapsed) for _ in range(200)]
            assert min(samples) >= full / 2
            assert max(samples) <= full
            assert len(set(samples)) > 1  # jitter


def test_transient_error_goes_back_to_pending_and_asks_for_retry(s3_proxy: Any) -> None:
    storage = delayed()
    name = storage.save("flaky.txt", ContentFile(b"x"))
    s3_proxy.go_down()
    with pytest.raises(RetryLater) as raised:
        run_transfer(storage.alias, name)
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None
    # An infrastructure error: no attempt counted, a run of transient failures begins.
    assert (row.state, row.attempts, row.lease_owner) == (State.PENDING, 0, "")
    assert row.retrying_since is not None
    assert "connection error" in row.last_error
    assert raised.value.countdown > 0
    # The retry waits in the ledger: due after the countdown, by the database's clock.
    assert row.retry_at is not None
    waits = (row.retry_at - row.updated).total_seconds()
    assert waits == pytest.approx(raised.value.countdown, abs=0.01)
    s3_proxy.come_up()
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    row.refresh_from_db()
    assert (row.state, row.attempts, row.last_error, row.retrying_since) == (
        State.REMOTE,
        0,
        "",
        None,
    )


def test_outages_and_server_errors_spend_no_retry_budget(s3_proxy: Any) -> None:
    storage = delayed()
    name = storage.save("patient.txt", ContentFile(b"x"))
    with override_settings(QUEUED_STORAGE_RETRIES=1):
        s3_proxy.go_down()
        for _ in range(4):  # connection refused, four times the budget
            with pytest.raises(RetryLater):
                run_transfer(storage.alias, name)
        s3_proxy.come_up()
        began = row_of(storage, name).retrying_since
        for status, code in ((503, "SlowDown"), (500, "InternalError"), (429, "InjectedError")):
            s3_proxy.fail_next(50, status=status)
            with pytest.raises(RetryLater, match=rf"failed: An error occurred \({code}\)"):
                run_transfer(storage.alias, name)
            s3_proxy.clear_faults()
        row = row_of(storage, name)
        assert (row.state, row.attempts, row.retrying_since) == (State.PENDING, 0, began)
        assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    assert row_of(storage, name).retrying_since is None


def test_outage_longer_than_retry_for_ends_in_failed_with_signal(
    s3_proxy: Any, collect: Any
) -> None:
    storage = delayed()
    name = storage.save("outlasted.txt", ContentFile(b"x"))
    received = collect(signals.transfer_failed)
    s3_proxy.go_down()
    with pytest.raises(RetryLater):
        run_transfer(storage.alias, name)
    # The run began a day and a second ago (QUEUED_STORAGE_RETRY_FOR is a day by default).
    began = timezone.now() - datetime.timedelta(days=1, seconds=1)
    StoredFile.rows(storage.alias, name).update(retrying_since=began)
    assert run_transfer(storage.alias, name) is Outcome.FAILED
    row = row_of(storage, name)
    assert (row.state, row.attempts, row.retrying_since) == (State.FAILED, 0, began)
    assert "connection error" in row.last_error
    assert "longer than QUEUED_STORAGE_RETRY_FOR (86400 s)" in row.last_error
    assert "retry it with storage.transfer(name)" in row.last_error
    assert [r["name"] for r in received] == [name]
    assert isinstance(received[0]["error"], InfrastructureError)
    # Still served locally; a retry on request starts afresh.
    assert storage.using_local(name)
    s3_proxy.come_up()
    storage.transfer(name)
    assert row_of(storage, name).retrying_since is None
    # This process transfers it, unless a worker of the suite took the message first.
    try:
        assert run_transfer(storage.alias, name) in (Outcome.TRANSFERRED, Outcome.ALREADY_REMOTE)
    except RetryLater:
        wait_for(lambda: row_of(storage, name).state == State.REMOTE, what="the retried transfer")
    assert row_of(storage, name).state == State.REMOTE


def test_file_errors_are_counted_and_end_in_failed_after_the_retries(
    clean: Any, collect: Any
) -> None:
    storage = delayed()
    name = storage.save("not-yet.txt", ContentFile(b"x"))
    received = collect(signals.transfer_failed)
    with override_settings(QUEUED_STORAGE_RETRIES=2):
        for errors in (1, 2):  # the first error and the first retry's ask for a retry
            with pytest.raises(RetryLater, match="returned False"):
                run_transfer(storage.alias, name, hook=not_yet)
            assert row_of(storage, name).attempts == errors
        assert run_transfer(storage.alias, name, hook=not_yet) is Outcome.FAILED
    row = row_of(storage, name)
    assert (row.state, row.attempts) == (State.FAILED, 3)  # 1 error + 2 retries
    assert [r["name"] for r in received] == [name]
    assert isinstance(received[0]["error"], TransientTransferError)
    assert not isinstance(received[0]["error"], InfrastructureError)
    # Still served locally, and a manual transfer gives it a new budget.
    assert storage.using_local(name)
    assert Ledger(storage.alias).retry(name)
    assert row_of(storage, name).attempts == 0
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED


def test_an_error_about_the_file_ends_the_run_of_transient_failures(s3_proxy: Any) -> None:
    storage = delayed()
    name = storage.save("mixed.txt", ContentFile(b"x"))
    s3_proxy.go_down()
    with pytest.raises(RetryLater):
        run_transfer(storage.alias, name)
    assert row_of(storage, name).retrying_since is not None
    with pytest.raises(RetryLater, match="returned False"):
        run_transfer(storage.alias, name, hook=not_yet)
    row = row_of(storage, name)
    assert (row.attempts, row.retrying_since) == (1, None)


def test_a_takeover_after_a_lost_worker_spends_no_retry_budget(s3_proxy: Any) -> None:
    storage = delayed()
    name = storage.save("orphaned.txt", ContentFile(b"x"))
    assert Ledger(storage.alias).lease(name, "dead-worker", 0.01).acquired
    time.sleep(0.05)
    s3_proxy.go_down()
    with pytest.raises(RetryLater):
        run_transfer(storage.alias, name)
    row = row_of(storage, name)
    assert (row.state, row.attempts) == (State.PENDING, 0)
    assert row.retrying_since is not None  # the lost worker began the run
    s3_proxy.come_up()
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    assert row_of(storage, name).attempts == 0


def test_a_file_whose_workers_keep_dying_fails_once_retry_for_has_passed(clean: Any) -> None:
    storage = delayed()
    name = storage.save("deadly.txt", ContentFile(b"x"))
    assert Ledger(storage.alias).lease(name, "dead-worker", 0.01).acquired
    began = timezone.now() - datetime.timedelta(days=1, seconds=1)
    StoredFile.rows(storage.alias, name).update(retrying_since=began)
    time.sleep(0.05)
    assert run_transfer(storage.alias, name) is Outcome.FAILED
    row = row_of(storage, name)
    assert (row.state, row.attempts, row.lease_owner) == (State.FAILED, 0, "")
    assert "The lease of dead-worker expired" in row.last_error
    assert "longer than QUEUED_STORAGE_RETRY_FOR" in row.last_error
    assert clean.list_objects_v2(Bucket=settings.BUCKET).get("KeyCount") == 0


def test_a_missing_bucket_keeps_the_file_pending_on_the_outage_budget_until_it_is_created(
    clean: Any, admin_client: Client
) -> None:
    """A missing bucket is the site's configuration, not the file's fault: the file waits
    (``pending``, no attempt counted, a run of infrastructure failures) with a reason naming
    the bucket and the fix, doctor says the same, and once the bucket exists the file goes."""
    storage = QueuedStorage(local="staging", remote="s3_nobucket", delayed=True)
    name = storage.save("waits-for-its-bucket.txt", ContentFile(b"x"))
    with override_settings(QUEUED_STORAGE_RETRIES=0):  # an error about the file: failed at once
        for _ in range(2):
            with pytest.raises(RetryLater):
                run_transfer(storage.alias, name)
    row = row_of(storage, name)
    assert (row.state, row.attempts, row.lease_owner) == (State.PENDING, 0, "")
    assert row.retrying_since is not None
    assert row.last_error == (
        "Transfer of 'waits-for-its-bucket.txt' to the remote storage failed: the bucket "
        "'no-such-bucket' does not exist (PutObject: NoSuchBucket). Create the bucket or fix "
        "the remote storage's bucket_name; until then the file waits (pending, served from its "
        "local copy) and is retried for up to QUEUED_STORAGE_RETRY_FOR."
    )
    assert settings.S3_SECRET not in row.last_error
    assert Path(storage.local.path(name)).read_bytes() == b"x"  # nothing lost
    page = admin_client.get(f"/admin/queued_storage/storedfile/{row.pk}/change/")
    assert html.escape(row.last_error) in page.content.decode()  # the admin says why
    (remote,) = [c for c in check_remotes([storage], timeout=2) if c.check == "remote"]
    assert (remote.status, remote.fix) == (
        FAIL,
        "create the bucket (the waiting files then go on their own), or fix "
        "STORAGES['s3_nobucket']['OPTIONS']['bucket_name']",
    )
    assert remote.detail.endswith(
        "bucket 'no-such-bucket': the bucket does not exist; the files sent to it wait (pending)"
    )
    clean.create_bucket(Bucket="no-such-bucket")
    try:
        assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
        row.refresh_from_db()
        assert (row.state, row.attempts, row.last_error, row.retrying_since) == (
            State.REMOTE,
            0,
            "",
            None,
        )
        stored = clean.get_object(Bucket="no-such-bucket", Key=name)["Body"].read()
        assert stored == b"x"
    finally:
        clean.delete_object(Bucket="no-such-bucket", Key=name)
        clean.delete_bucket(Bucket="no-such-bucket")


def test_file_transferred_is_sent_after_remote_and_before_local_delete(clean: Any) -> None:
    storage = delayed(delete_local=True)
    name = storage.save("order.txt", ContentFile(b"ordered"))
    seen: dict[str, Any] = {}

    def on_transferred(sender: Any, **kwargs: Any) -> None:
        row = StoredFile.get_row(storage.alias, kwargs["name"])
        seen.update(kwargs)
        seen["state_then"] = row.state if row else None
        seen["cached_then"] = storage.get_state(kwargs["name"])
        seen["local_then"] = Path(storage.local.path(kwargs["name"])).exists()

    signals.file_transferred.connect(on_transferred)
    try:
        assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    finally:
        signals.file_transferred.disconnect(on_transferred)
    assert seen["name"] == name
    assert seen["local"] is storage.local and seen["remote"] is storage.remote
    assert (seen["alias"], seen["size"]) == (storage.alias, 7)
    assert seen["checksum"]
    assert seen["state_then"] == State.REMOTE
    assert seen["cached_then"].is_remote
    assert seen["local_then"] is True
    assert not Path(storage.local.path(name)).exists()
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None and row.local_exists is False


def test_duplicate_delivery_while_leased_does_nothing(clean: Any) -> None:
    storage = delayed()
    name = storage.save("dup.txt", ContentFile(b"x"))
    assert Ledger(storage.alias).lease(name, "other-worker", 60).acquired
    with pytest.raises(RetryLater, match="being transferred by other-worker"):
        run_transfer(storage.alias, name)
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None and (row.state, row.lease_owner) == (State.TRANSFERRING, "other-worker")
    assert clean.list_objects_v2(Bucket=settings.BUCKET).get("KeyCount") == 0


def backend_pid(db: str) -> int:
    with connections[db].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return int(pid)


@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_a_kept_connection_serves_the_next_transfer_and_is_replaced_once_the_server_dropped_it(
    clean: Any,
) -> None:
    need("postgres")
    kept = KeptConnection()

    def terminate(pid: int) -> None:
        """The server drops *pid*'s connection (asked on another connection, then closed)."""
        with connections["postgres"].cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        connections.close_all()

    with override_settings(QUEUED_STORAGE_DATABASE="postgres"):
        storage = delayed()
        names = [storage.save(f"kept-{i}.txt", ContentFile(b"k")) for i in range(4)]
        connections.close_all()

        def transfer(name: str) -> tuple[Outcome, int]:
            return run_transfer(storage.alias, name), backend_pid("postgres")

        outcome, pid = kept.run(lambda: transfer(names[0]))
        assert outcome is Outcome.TRANSFERRED
        first = kept.wrapper
        assert first is not None and connections["postgres"] is not first  # out of reach
        connections.close_all()  # what Celery's fixup does after each task: not the kept one
        assert kept.run(lambda: transfer(names[1])) == (Outcome.TRANSFERRED, pid)
        assert kept.wrapper is first
        # Dropped within a burst (not idle long enough to be checked): the lease's statement
        # fails, and the transfer runs again on a new connection.
        terminate(pid)
        outcome, second = kept.run(lambda: transfer(names[2]))
        assert outcome is Outcome.TRANSFERRED and second != pid
        # Dropped while idle: checked before reuse, and replaced.
        terminate(second)
        kept.since -= KeptConnection.IDLE_CHECK
        assert kept.take() is False and kept.wrapper is None
        assert first.connection is None  # closed; the thread opens a new one
        assert run_transfer(storage.alias, names[3]) is Outcome.TRANSFERRED
        assert backend_pid("postgres") not in (pid, second)
        kept.close()
        assert [row_of(storage, n).state for n in names] == [State.REMOTE] * 4


def test_a_connection_is_not_kept_inside_a_transaction_or_after_a_database_error(
    clean: Any,
) -> None:
    kept = KeptConnection()
    db = StoredFile.db()
    with transaction.atomic(using=db):
        StoredFile.objects.using(db).exists()
        kept.keep()
    assert kept.wrapper is None
    with pytest.raises(DatabaseError), connections[db].cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")
    kept.keep()
    assert kept.wrapper is None and connections[db].errors_occurred
    connections.close_all()
    StoredFile.objects.using(db).exists()
    kept.keep()
    assert kept.wrapper is not None and connections[db] is not kept.wrapper
    kept.close()
