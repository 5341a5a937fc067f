"""Small files in batches (issue 24): one task leases several small ``pending`` files of its
storage and host in one statement and sends them in parallel; each keeps its own lease,
verification, outcome and retry budget. Against moto through the fault proxy, on the suite's
ledger (SQLite and PostgreSQL in the matrix)."""

from __future__ import annotations

import datetime
import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.db.models import F
from django.test import override_settings

from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage
from queued_storage.worker import Outcome, RetryLater, run_transfer
from tests.harness.suite import need, purge_queues

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def parked_queue() -> Iterator[None]:
    """The saves' messages go to a queue no worker of the suite consumes: these tests run the
    transfers themselves. Emptied before and after."""
    need("redis")
    purge_queues("parked")
    yield
    purge_queues("parked")


def parked(**options: Any) -> QueuedStorage:
    return QueuedStorage(local="staging", remote="s3", queue="parked", **options)


def rows(storage: QueuedStorage, names: list[str]) -> dict[str, StoredFile]:
    found = StoredFile.objects.filter(alias=storage.alias, name__in=names)
    return {row.name: row for row in found}


def s3_md5(client: Any, name: str) -> str:
    body = client.get_object(Bucket=settings.BUCKET, Key=name)["Body"].read()
    return hashlib.md5(body).hexdigest()


def saved(
    storage: QueuedStorage, count: int, prefix: str = "small", *, waited: float = 2.0
) -> dict[str, bytes]:
    """*count* small files saved through *storage*, their rows made *waited* seconds old (the
    workers are behind: a batch is leased only for a file that waited ``BEHIND``)."""
    out: dict[str, bytes] = {}
    for i in range(count):
        data = f"{prefix} {i} ".encode() * 50
        out[storage.save(f"{prefix}/{i}.txt", ContentFile(data))] = data
    if waited:
        StoredFile.objects.filter(alias=storage.alias, name__in=list(out)).update(
            created=F("created") - datetime.timedelta(seconds=waited)
        )
    return out


def test_one_task_sends_its_hosts_small_pending_files_in_one_batch(
    clean: Any, s3_proxy: Any
) -> None:
    storage = parked()
    files = saved(storage, 6)
    first, *others = files
    with override_settings(QUEUED_STORAGE_BATCH_FILES=16):
        assert run_transfer(storage.alias, first) is Outcome.TRANSFERRED
    found = rows(storage, list(files))
    assert {row.state for row in found.values()} == {State.REMOTE}
    for name, data in files.items():
        assert s3_md5(clean, name) == hashlib.md5(data).hexdigest()
        assert found[name].checksum  # each verified and recorded on its own row
        assert found[name].lease_owner == ""
    # One PUT per file, each conditional (never an overwrite).
    puts = [r for r in s3_proxy.requests if r.method == "PUT"]
    assert len(puts) == len(files)
    # The others' own messages find them remote and send nothing more.
    s3_proxy.clear_log()
    assert [run_transfer(storage.alias, name) for name in others] == [Outcome.ALREADY_REMOTE] * len(
        others
    )
    assert [r for r in s3_proxy.requests if r.method == "PUT"] == []


def test_a_batch_takes_at_most_batch_files_and_only_small_fresh_files_of_its_host(
    clean: Any,
) -> None:
    storage = parked()
    small = saved(storage, 5)
    big = storage.save("big.bin", ContentFile(b"b" * 4096))
    other_host = storage.save("elsewhere.txt", ContentFile(b"on another host"))
    StoredFile.rows(storage.alias, other_host).update(host="another-host")
    held = storage.save("held.txt", ContentFile(b"a retry is held for it"))
    ledger = Ledger(storage.alias)
    assert ledger.lease(held, "w", 60).acquired
    ledger.retry_later(held, "w", "an error about the file", delay=3600)
    first = next(iter(small))
    with override_settings(QUEUED_STORAGE_BATCH_FILES=3, QUEUED_STORAGE_BATCH_FILE_BYTES=2048):
        assert run_transfer(storage.alias, first) is Outcome.TRANSFERRED
    found = rows(storage, [*small, big, other_host, held])
    assert [name for name in small if found[name].state == State.REMOTE] == list(small)[:3]
    assert [found[name].state for name in (big, other_host, held)] == [State.PENDING] * 3
    assert found[held].retry_at is not None  # its retry is not brought forward


def test_a_big_files_task_sends_only_its_file(clean: Any) -> None:
    storage = parked()
    small = saved(storage, 3)
    big = storage.save("big.bin", ContentFile(b"b" * 4096))
    with override_settings(QUEUED_STORAGE_BATCH_FILE_BYTES=2048):
        assert run_transfer(storage.alias, big) is Outcome.TRANSFERRED
    assert {row.state for row in rows(storage, list(small)).values()} == {State.PENDING}


def test_a_delayed_storages_files_wait_until_each_is_asked_for(clean: Any) -> None:
    storage = QueuedStorage(local="staging", remote="s3", delayed=True, queue="parked")
    files = saved(storage, 3)
    assert run_transfer(storage.alias, next(iter(files))) is Outcome.TRANSFERRED
    states = [row.state for row in rows(storage, list(files)).values()]
    assert sorted(states) == sorted([State.REMOTE, State.PENDING, State.PENDING])


def test_a_worker_that_keeps_up_sends_each_file_alone(clean: Any) -> None:
    """Files whose task takes them at once (no backlog: they waited less than ``BEHIND``)
    are sent one per task; batches are for a worker that is behind."""
    storage = parked()
    files = saved(storage, 3, waited=0)
    assert run_transfer(storage.alias, next(iter(files))) is Outcome.TRANSFERRED
    states = [row.state for row in rows(storage, list(files)).values()]
    assert sorted(states) == sorted([State.REMOTE, State.PENDING, State.PENDING])


def test_batch_files_1_sends_each_file_alone(clean: Any) -> None:
    storage = parked()
    files = saved(storage, 3)
    with override_settings(QUEUED_STORAGE_BATCH_FILES=1):
        assert run_transfer(storage.alias, next(iter(files))) is Outcome.TRANSFERRED
    states = [row.state for row in rows(storage, list(files)).values()]
    assert sorted(states) == sorted([State.REMOTE, State.PENDING, State.PENDING])


def test_each_file_of_a_batch_keeps_its_own_outcome_and_retry_budget(
    clean: Any, s3_proxy: Any
) -> None:
    storage = parked()
    files = saved(storage, 5)
    first, cut, missing, *fine = files
    storage.local.delete(missing)  # an error about that file only
    # Every attempt botocore makes at that file's PUT answered 503: an outage, for it alone.
    s3_proxy.fail_next(20, 503, methods=["PUT"], when=lambda r: r.path.endswith(cut))
    assert run_transfer(storage.alias, first) is Outcome.TRANSFERRED
    s3_proxy.clear_faults()
    found = rows(storage, list(files))
    assert [found[name].state for name in (first, *fine)] == [State.REMOTE] * (1 + len(fine))
    # The cut answer: infrastructure, back to pending, no budget spent, a retry held.
    assert (found[cut].state, found[cut].attempts) == (State.PENDING, 0)
    assert found[cut].retrying_since is not None and found[cut].retry_at is not None
    # The missing local copy: recorded, failed (nothing to send), that file alone.
    assert (found[missing].state, found[missing].local_exists) == (State.FAILED, False)
    assert {found[name].attempts for name in (first, *fine)} == {0}


def test_the_tasks_own_retry_is_raised_after_the_batch_is_recorded(
    clean: Any, s3_proxy: Any
) -> None:
    storage = parked()
    files = saved(storage, 4)
    first, *others = files
    s3_proxy.fail_next(20, 503, methods=["PUT"], when=lambda r: r.path.endswith(first))
    with pytest.raises(RetryLater):
        run_transfer(storage.alias, first)
    s3_proxy.clear_faults()
    found = rows(storage, list(files))
    assert found[first].state == State.PENDING and found[first].retry_at is not None
    assert [found[name].state for name in others] == [State.REMOTE] * len(others)


def test_two_workers_leasing_batches_at_once_never_share_a_file(clean: Any) -> None:
    storage = parked()
    files = saved(storage, 40)
    ledger = Ledger(storage.alias)
    host = rows(storage, list(files))[next(iter(files))].host
    taken: dict[str, list[str]] = {}
    start = threading.Barrier(2)

    def lease(owner: str) -> None:
        from django.db import connections

        try:
            start.wait()
            found = ledger.lease_batch(
                host,
                owner,
                60,
                exclude="",
                largest=1 << 20,
                count=30,
            )
            taken[owner] = [row.name for row in found]
        finally:
            connections.close_all()

    threads = [threading.Thread(target=lease, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    first, second = taken["w0"], taken["w1"]
    assert not set(first) & set(second)
    assert len(first) + len(second) == len(files)  # 30 + 10: every file leased, once
    found = rows(storage, list(files))
    for owner, names in taken.items():
        assert {found[name].lease_owner for name in names} == {owner}
        assert {found[name].state for name in names} == {State.TRANSFERRING}
