"""``queued_storage.worker``: the transfer policy (``run_transfer``) in-process: retries,
failures, signals, order.

These run the same function the Celery task runs, without Celery, against the real S3 server;
the end-to-end proofs with a worker process are in ``test_integration.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.test import override_settings

from queued_storage import signals
from queued_storage.exceptions import TransientTransferError
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage
from queued_storage.worker import Outcome, RetryLater, backoff, run_transfer

pytestmark = pytest.mark.django_db(transaction=True)


def delayed(**options: Any) -> QueuedStorage:
    return QueuedStorage(local="staging", remote="s3", delayed=True, **options)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    with override_settings(QUEUED_STORAGE_RETRY_DELAY=10, QUEUED_STORAGE_RETRY_MAX_DELAY=100):
        for attempt, full in ((1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100)):
            samples = [backoff(attempt) for _ in range(200)]
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
    assert (row.state, row.attempts, row.lease_owner) == (State.PENDING, 1, "")
    assert "connection error" in row.last_error
    assert raised.value.countdown > 0
    s3_proxy.come_up()
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    row.refresh_from_db()
    assert (row.state, row.attempts, row.last_error) == (State.REMOTE, 2, "")


def test_spent_retry_budget_ends_in_failed_with_signal(s3_proxy: Any) -> None:
    storage = delayed()
    name = storage.save("never.txt", ContentFile(b"x"))
    received: list[dict[str, Any]] = []

    def on_failed(sender: Any, **kwargs: Any) -> None:
        received.append(kwargs)

    signals.transfer_failed.connect(on_failed)
    s3_proxy.go_down()
    try:
        with override_settings(QUEUED_STORAGE_RETRIES=2):
            for _ in range(2):  # the first attempt and the first retry ask for a retry
                with pytest.raises(RetryLater):
                    run_transfer(storage.alias, name)
            assert run_transfer(storage.alias, name) is Outcome.FAILED
    finally:
        signals.transfer_failed.disconnect(on_failed)
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None
    assert (row.state, row.attempts) == (State.FAILED, 3)  # 1 attempt + 2 retries
    assert len(received) == 1
    assert received[0]["name"] == name
    assert isinstance(received[0]["error"], TransientTransferError)
    # Still served locally, and a manual transfer gives it a new budget.
    assert storage.using_local(name)
    s3_proxy.come_up()
    assert Ledger(storage.alias).retry(name)
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED


def test_missing_bucket_is_permanent_and_names_the_fix(clean: Any) -> None:
    storage = QueuedStorage(local="staging", remote="s3_nobucket", delayed=True)
    name = storage.save("lost.txt", ContentFile(b"x"))
    assert run_transfer(storage.alias, name) is Outcome.FAILED
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None
    assert (row.state, row.attempts) == (State.FAILED, 1)
    assert "NoSuchBucket" in row.last_error
    assert "Create the bucket or fix the remote storage's bucket_name" in row.last_error
    assert settings.S3_SECRET not in row.last_error
    assert Path(storage.local.path(name)).read_bytes() == b"x"  # nothing lost


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
