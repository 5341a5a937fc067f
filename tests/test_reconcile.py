"""The reconcile pass, the staging budget and per-host routing, in-process.

Re-queued transfers go to queues no worker consumes ("parked", "queued_storage.<host>"), so
the tests read the very messages from Redis. The end-to-end runs with real workers and real
faults are in ``test_faults.py``.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from queued_storage import clock, dispatch, signals
from queued_storage.exceptions import StagingFull
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.operations import transfer_rows
from queued_storage.reconcile import LOST, overdue, reconcile, reconcile_on_start, watch
from queued_storage.storage import QueuedStorage
from queued_storage.worker import Outcome, run_transfer
from tests.harness.suite import broker_messages, need, purge_queues, s3_bytes, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

AFTER = 60


@pytest.fixture
def broker(clean: Any) -> Any:
    """Redis db 0 (the broker) with the queues these tests read emptied before and after."""
    need("redis")
    queues = ["parked", "queued_storage.web-a", "queued_storage.web-b", "uploads.web-a"]
    purge_queues(*queues)
    with override_settings(QUEUED_STORAGE_RECONCILE_AFTER=AFTER):
        yield messages_in
    purge_queues(*queues)


def messages_in(queue: str) -> list[list[Any]]:
    """The ``args`` of every task message waiting in *queue*."""
    return [json.loads(base64.b64decode(m["body"]))[0] for m in broker_messages(queue)]


def drain(queue: str) -> None:
    purge_queues(queue)


def parked() -> QueuedStorage:
    found = storages["queued_parked"]
    assert isinstance(found, QueuedStorage)
    return found


def age(alias: str, name: str, seconds: float, **fields: Any) -> None:
    """Make the row look *seconds* old (and set *fields*)."""
    then = timezone.now() - datetime.timedelta(seconds=seconds)
    StoredFile.rows(alias, name).update(updated=then, **fields)


def row(alias: str, name: str) -> StoredFile:
    found = StoredFile.get_row(alias, name)
    assert found is not None
    return found


def saved(name: str, data: bytes = b"x", *, old: float = AFTER + 5) -> str:
    """Save through the parked storage, forget the save's own message, age the row."""
    stored = parked().save(name, ContentFile(data))
    drain("parked")
    age("queued_parked", stored, old)
    return stored


# --- (a) overdue pending rows and expired leases -------------------------------------------
def test_overdue_pending_file_is_requeued_once_with_only_alias_and_name(broker: Any) -> None:
    name = saved("refused.txt")
    report = reconcile()
    assert report.requeued == [f"queued_parked:{name}"]
    assert broker("parked") == [["queued_parked", name]]
    assert report.ok
    # The claim moved the row's clock: a second pass leaves it alone.
    assert reconcile().requeued == []
    assert len(broker("parked")) == 1


def test_recent_pending_file_is_left_to_its_message(broker: Any) -> None:
    saved("fresh.txt", old=AFTER - 10)
    assert reconcile().requeued == []
    assert broker("parked") == []


def test_overdue_waits_for_the_longest_backoff_of_the_last_attempt(broker: Any) -> None:
    now = timezone.now()
    name = saved("backing-off.txt")
    with override_settings(QUEUED_STORAGE_RETRY_DELAY=100, QUEUED_STORAGE_RETRY_MAX_DELAY=1000):
        # Attempt 3 failed 300 s ago: its retry may wait up to 400 s, so it is not overdue...
        age("queued_parked", name, 300, attempts=3)
        assert not StoredFile.objects.filter(overdue(now, AFTER), name=name).exists()
        # ...until 400 s + RECONCILE_AFTER have passed.
        age("queued_parked", name, 400 + AFTER + 1, attempts=3)
        assert StoredFile.objects.filter(overdue(now, AFTER), name=name).exists()
        # Past the cap every attempt waits at most RETRY_MAX_DELAY.
        age("queued_parked", name, 1000 + AFTER - 5, attempts=9)
        assert not StoredFile.objects.filter(overdue(now, AFTER), name=name).exists()
        age("queued_parked", name, 1000 + AFTER + 5, attempts=9)
        assert StoredFile.objects.filter(overdue(now, AFTER), name=name).exists()


@pytest.mark.django_db(
    transaction=True, databases=[a for a in ("default", "postgres") if a in settings.DATABASES]
)
@pytest.mark.parametrize("database", ["default", "postgres"])
def test_overdue_in_a_run_of_transient_failures_waits_as_long_as_the_retry_would(
    database: str,
) -> None:
    """A retry scheduled *e* seconds into a run of transient failures waits at most
    ``min(RETRY_MAX_DELAY, max(RETRY_DELAY, e))`` (``worker.outage_backoff``); the row is overdue
    ``AFTER`` seconds later, to the second, on both databases."""
    if database == "postgres":
        need("postgres")
    now = timezone.now()
    with override_settings(
        QUEUED_STORAGE_DATABASE=database,
        QUEUED_STORAGE_RETRY_DELAY=100,
        QUEUED_STORAGE_RETRY_MAX_DELAY=1000,
    ):
        assert Ledger("qs").saved("waiting.bin", "h", 1)
        rows = StoredFile.objects.using(database).filter(name="waiting.bin")

        def is_overdue(age: float, run: float) -> bool:
            """Last failure *age* seconds ago, *run* seconds into the run of failures."""
            last = now - datetime.timedelta(seconds=age)
            rows.update(updated=last, retrying_since=last - datetime.timedelta(seconds=run))
            return rows.filter(overdue(now, AFTER)).exists()

        for run, wait in ((50, 100), (300, 300), (5000, 1000)):
            assert not is_overdue(wait + AFTER - 5, run)
            assert is_overdue(wait + AFTER + 5, run)


def test_reconcile_after_defaults_to_the_lease_timeout(broker: Any) -> None:
    name = saved("quiet.bin", old=10)
    with override_settings(QUEUED_STORAGE_RECONCILE_AFTER=None):
        with override_settings(QUEUED_STORAGE_LEASE_TIMEOUT=20):
            assert qs_settings().RECONCILE_AFTER == 20
            assert reconcile().requeued == []
        with override_settings(QUEUED_STORAGE_LEASE_TIMEOUT=7):
            assert qs_settings().RECONCILE_AFTER == 7
            assert reconcile().requeued == [f"queued_parked:{name}"]
    assert broker("parked") == [["queued_parked", name]]


def test_requeues_of_a_file_that_keeps_waiting_are_spaced_out_like_retries(
    broker: Any,
) -> None:
    """A re-queue is a transient failure (a lost message, or a long queue): the next re-queue
    of the same file waits as a retry would, as long as the file has been waiting."""
    name = saved("behind-a-long-queue.bin")
    t0 = timezone.now()

    def requeued_at(seconds: float) -> bool:
        return bool(reconcile(now=t0 + datetime.timedelta(seconds=seconds)).requeued)

    with override_settings(QUEUED_STORAGE_RETRY_DELAY=100, QUEUED_STORAGE_RETRY_MAX_DELAY=1000):
        assert requeued_at(0)  # overdue since the save: the run of failures begins now
        assert row("queued_parked", name).retrying_since == t0
        assert not requeued_at(100 + AFTER - 5)  # waits at least RETRY_DELAY
        assert requeued_at(100 + AFTER + 5)  # 165 s into the run
        assert not requeued_at(165 + 165 + AFTER - 5)  # then as long as it has waited
        assert requeued_at(165 + 165 + AFTER + 5)
    assert len(broker("parked")) == 3


def test_a_workers_watch_queues_a_retry_when_it_is_due_and_not_before(broker: Any) -> None:
    name = saved("retry-due.bin", old=0)
    storage = parked()
    assert storage.ledger.lease(name, "w", 60).acquired
    assert storage.ledger.retry_later(name, "w", "S3 said 503", counted=False, delay=30)
    found = row("queued_parked", name)
    assert found.retry_at is not None
    # Due 30 s after the release, by the database's clock (the same statement wrote both).
    assert (found.retry_at - found.updated).total_seconds() == pytest.approx(30, abs=0.01)
    now = clock.read(StoredFile.db())
    assert watch(aliases=["queued_parked"], now=now).requeued_due == []
    assert broker("parked") == []
    due = found.retry_at + datetime.timedelta(seconds=1)
    assert watch(aliases=["default"], now=due).requeued_due == []  # not a storage it watches
    report = watch(aliases=["queued_parked"], now=due)
    assert report.requeued_due == [f"queued_parked:{name}"]
    assert broker("parked") == [["queued_parked", name]]
    found = row("queued_parked", name)
    assert (found.state, found.retry_at, found.last_error) == (State.PENDING, None, "S3 said 503")
    assert watch(aliases=["queued_parked"], now=due).requeued_due == []  # claimed once
    assert run_transfer("queued_parked", name) is Outcome.TRANSFERRED


def test_a_workers_watch_takes_back_an_expired_lease_and_leaves_a_live_one(broker: Any) -> None:
    dead, live = saved("watch-dead.bin", old=0), saved("watch-live.bin", old=0)
    assert Ledger("queued_parked").lease(dead, "dead-worker", 0.01).acquired
    assert Ledger("queued_parked").lease(live, "live-worker", 60).acquired
    time.sleep(0.05)
    report = watch(aliases=["queued_parked"])
    assert (report.taken_over, report.requeued, report.requeued_refused) == (
        [f"queued_parked:{dead}"],
        [],
        [],
    )
    assert broker("parked") == [["queued_parked", dead]]
    assert row("queued_parked", live).state == State.TRANSFERRING


def test_expired_lease_is_taken_back_and_requeued(broker: Any) -> None:
    name = saved("killed-worker.bin")
    assert Ledger("queued_parked").lease(name, "dead-worker", 0.01).acquired
    live = saved("live-worker.bin")
    assert Ledger("queued_parked").lease(live, "live-worker", 60).acquired
    time.sleep(0.05)
    report = reconcile()
    assert report.taken_over == [f"queued_parked:{name}"]
    found = row("queued_parked", name)
    assert (found.state, found.lease_owner) == (State.PENDING, "")
    assert "The lease of dead-worker expired" in found.last_error
    # A lost worker is not the file's error: no attempt counted, a run of failures begins.
    assert (found.attempts, found.retrying_since is not None) == (0, True)
    assert row("queued_parked", live).state == State.TRANSFERRING  # untouched
    assert broker("parked") == [["queued_parked", name]]
    # The re-queued transfer runs normally.
    assert run_transfer("queued_parked", name) is Outcome.TRANSFERRED


def test_a_file_whose_workers_keep_dying_is_failed_after_retry_for(broker: Any) -> None:
    name = saved("kills-its-workers.bin")
    assert Ledger("queued_parked").lease(name, "dead-worker", 0.01).acquired
    day_ago = timezone.now() - datetime.timedelta(days=1, seconds=1)
    StoredFile.rows("queued_parked", name).update(retrying_since=day_ago)
    received: list[dict[str, Any]] = []

    def on_failed(sender: Any, **kwargs: Any) -> None:
        received.append(kwargs)

    time.sleep(0.05)
    signals.transfer_failed.connect(on_failed)
    try:
        report = reconcile()
    finally:
        signals.transfer_failed.disconnect(on_failed)
    assert (report.given_up, report.taken_over) == ([f"queued_parked:{name}"], [])
    assert report.ok  # not data loss: the local copy is there
    found = row("queued_parked", name)
    assert (found.state, found.attempts, found.lease_owner) == (State.FAILED, 0, "")
    assert found.last_error.startswith(f"Gave up on {name!r}: the lease of dead-worker expired")
    assert "longer than QUEUED_STORAGE_RETRY_FOR (86400 s)" in found.last_error
    assert [r["name"] for r in received] == [name]
    assert broker("parked") == []


def test_work_per_pass_is_bounded_by_the_batch(broker: Any) -> None:
    names = [saved(f"batch-{i}.txt") for i in range(5)]
    with override_settings(QUEUED_STORAGE_RECONCILE_BATCH=2):
        assert len(reconcile().requeued) == 2
        assert len(reconcile().requeued) == 2
        assert len(reconcile().requeued) == 1
        assert reconcile().requeued == []
    assert sorted(args[1] for args in broker("parked")) == sorted(names)


def test_passes_on_several_hosts_at_once_requeue_each_file_once(broker: Any) -> None:
    names = [saved(f"race-{i}.txt") for i in range(12)]
    reports: list[Any] = []
    barrier = threading.Barrier(4)

    def one_pass() -> None:
        try:
            barrier.wait()
            reports.append(reconcile())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one_pass) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    requeued = [item for r in reports for item in r.requeued]
    assert sorted(requeued) == sorted(f"queued_parked:{n}" for n in names)
    assert sorted(args[1] for args in broker("parked")) == sorted(names)


def test_refused_broker_leaves_the_row_for_the_next_pass(
    broker: Any, caplog: Any, broker_proxy: Any
) -> None:
    first, second = saved("a-refused.txt"), saved("b-refused.txt")
    before = row("queued_parked", first).updated
    broker_proxy.go_down()
    try:
        with caplog.at_level(logging.WARNING, logger="queued_storage"):
            report = reconcile()
    finally:
        broker_proxy.come_up()
    # The first refusal stops the pass from trying again (each costs the publish timeout).
    assert sorted(report.not_queued) == [f"queued_parked:{first}", f"queued_parked:{second}"]
    assert "reconcile could not queue 2 transfer(s)" in caplog.text
    assert row("queued_parked", first).updated == before  # the claim was undone
    assert row("queued_parked", first).retrying_since is None
    # ... and the refusal recorded: the next pass queues both first, as refused, not overdue.
    assert row("queued_parked", second).dispatch_refused is not None
    assert len(reconcile().requeued_refused) == 2
    assert len(broker("parked")) == 2
    assert row("queued_parked", second).dispatch_refused is None


def refused_saves(broker_proxy: Any, count: int, storage: str = "queued_parked") -> list[str]:
    """Save *count* files through *storage* while the broker refuses connections, and wait
    until every refusal is recorded (the publisher thread records the first one's). This
    process's publisher then forgets them: the pass, not the publisher, is under test."""
    broker_proxy.go_down()
    try:
        found = storages[storage]
        names = [
            found.save(f"while-refused-{i}.txt", ContentFile(b"r%d" % i)) for i in range(count)
        ]
        marked = StoredFile.objects.filter(
            alias=storage, name__in=names, dispatch_refused__isnull=False
        )
        wait_for(lambda: marked.count() == count, timeout=10, what="the refusals recorded")
        assert dispatch.forget_refused() == count
        return names
    finally:
        broker_proxy.come_up()


def test_a_save_the_broker_refused_is_recorded_and_the_next_pass_queues_it_at_once(
    broker: Any, broker_proxy: Any
) -> None:
    (name,) = refused_saves(broker_proxy, 1)
    refused = row("queued_parked", name)
    assert (refused.state, refused.dispatch_refused is not None) == (State.PENDING, True)
    assert refused.retrying_since is None  # nothing was lost: no message had been sent
    assert broker("parked") == []
    not_yet_overdue = StoredFile.objects.filter(pk=refused.pk).filter(
        overdue(timezone.now(), AFTER)
    )
    assert not not_yet_overdue.exists()  # the overdue path would wait another AFTER (60 s)
    report = reconcile()
    assert (report.requeued_refused, report.requeued) == ([f"queued_parked:{name}"], [])
    assert report.counts()["requeued_refused"] == 1
    assert broker("parked") == [["queued_parked", name]]
    sent = row("queued_parked", name)
    assert (sent.dispatch_refused, sent.retrying_since, sent.attempts) == (None, None, 0)
    # Sent once: the next pass finds it neither refused nor overdue.
    assert reconcile().requeued_refused == []
    assert len(broker("parked")) == 1


def test_a_starting_worker_queues_this_hosts_refused_files_at_once(
    unguarded: Any, broker_proxy: Any
) -> None:
    names = refused_saves(broker_proxy, 2)
    elsewhere = row("queued_parked", names[1])
    StoredFile.rows("queued_parked", elsewhere.name).update(host="web-b")
    report = reconcile_on_start()
    assert report is not None
    assert (report.requeued_refused, report.requeued) == ([f"queued_parked:{names[0]}"], [])
    assert unguarded("parked") == [["queued_parked", names[0]]]
    assert row("queued_parked", names[0]).dispatch_refused is None
    assert row("queued_parked", names[1]).dispatch_refused is not None  # another host's


def test_files_the_transfer_command_could_not_queue_are_marked_refused(
    broker: Any, broker_proxy: Any
) -> None:
    names = [saved(f"queued-by-hand-{i}.txt", old=1) for i in range(2)]
    broker_proxy.go_down()
    try:
        done = transfer_rows(StoredFile.objects.filter(name__in=names).order_by("name"))
    finally:
        broker_proxy.come_up()
    # The first refusal stops the command from trying again; both rows are marked.
    assert (done.queued, done.refused) == (0, 2)
    assert all(row("queued_parked", n).dispatch_refused is not None for n in names)
    assert sorted(reconcile().requeued_refused) == [f"queued_parked:{n}" for n in names]
    assert sorted(args[1] for args in broker("parked")) == names


def test_a_lease_clears_the_refusal_a_message_got_through(broker: Any, broker_proxy: Any) -> None:
    (name,) = refused_saves(broker_proxy, 1)
    assert Ledger("queued_parked").lease(name, "a-worker", 20).acquired
    assert row("queued_parked", name).dispatch_refused is None


# --- (a') the pass a worker runs when it starts ------------------------------------------
@pytest.fixture
def unguarded(broker: Any) -> Any:
    """The state cache emptied, so no earlier start-up pass holds this host's guard."""
    caches["default"].clear()
    with override_settings(QUEUED_STORAGE_RECONCILE_ON_START=500):
        yield broker
    caches["default"].clear()


def test_reconcile_on_start_requeues_this_hosts_files_up_to_its_limit(unguarded: Any) -> None:
    expired = saved("held-by-the-dead-worker.bin")
    assert Ledger("queued_parked").lease(expired, "dead-worker", 0.01).acquired
    waiting = [saved(f"its-message-was-lost-{i}.txt") for i in range(3)]
    elsewhere = saved("on-web-b.txt")
    StoredFile.rows("queued_parked", elsewhere).update(host="web-b")
    time.sleep(0.05)
    with override_settings(QUEUED_STORAGE_RECONCILE_ON_START=3):
        report = reconcile_on_start()
    assert report is not None
    assert report.taken_over == [f"queued_parked:{expired}"]  # expired leases first
    assert report.requeued == [f"queued_parked:{n}" for n in waiting[:2]]  # oldest first
    sent = [args[1] for args in unguarded("parked")]
    assert sorted(sent) == sorted([expired, *waiting[:2]])
    assert row("queued_parked", elsewhere).retrying_since is None  # another host's: untouched


def test_reconcile_on_start_runs_once_while_a_hosts_workers_start_together(
    unguarded: Any,
) -> None:
    names = [saved(f"after-the-crash-{i}.txt") for i in range(6)]
    reports: list[Any] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait()
            reports.append(reconcile_on_start())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ran = [r for r in reports if r is not None]
    assert len(ran) == 1
    assert sorted(ran[0].requeued) == sorted(f"queued_parked:{n}" for n in names)
    assert reconcile_on_start() is None  # guarded for RECONCILE_AFTER
    caches["default"].clear()  # the guard gone (a cache flushed), nothing is sent twice:
    again = reconcile_on_start()  # claimed rows are not overdue again so soon
    assert again is not None and again.requeued == []
    assert sorted(args[1] for args in unguarded("parked")) == sorted(names)


def test_reconcile_on_start_is_off_at_zero(unguarded: Any) -> None:
    saved("left-alone.txt")
    with override_settings(QUEUED_STORAGE_RECONCILE_ON_START=0):
        assert reconcile_on_start() is None
    assert unguarded("parked") == []


# --- (b) failed rows, on request -----------------------------------------------------------
def test_failed_files_are_retried_only_on_request(broker: Any) -> None:
    name = saved("was-failed.txt")
    StoredFile.rows("queued_parked", name).update(state=State.FAILED, attempts=4, last_error="x")
    assert reconcile().retried == []
    report = reconcile(failed=True)
    assert report.retried == [f"queued_parked:{name}"]
    found = row("queued_parked", name)
    assert (found.state, found.attempts) == (State.PENDING, 0)
    assert broker("parked") == [["queued_parked", name]]


# --- (c) adoption --------------------------------------------------------------------------
def _put_local(name: str, data: bytes, *, old: float = AFTER + 5) -> Path:
    path = Path(settings.STAGING_ROOT) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - old
    os.utime(path, (then, then))
    return path


def test_adopt_gives_unknown_local_files_a_row_and_a_transfer(broker: Any) -> None:
    _put_local("before-install/old.pdf", b"saved before the app")
    _put_local("before-install/new.pdf", b"still being written", old=0)
    assert reconcile(aliases=["queued_parked"]).adopted == []  # only with adopt=True
    report = reconcile(aliases=["queued_parked"], adopt=True)
    assert report.adopted == ["queued_parked:before-install/old.pdf"]
    found = row("queued_parked", "before-install/old.pdf")
    assert (found.state, found.size, found.local_exists) == (State.PENDING, 20, True)
    assert found.host == _host()
    assert broker("parked") == [["queued_parked", "before-install/old.pdf"]]
    assert StoredFile.get_row("queued_parked", "before-install/new.pdf") is None
    assert reconcile(aliases=["queued_parked"], adopt=True).adopted == []  # known now
    assert run_transfer("queued_parked", "before-install/old.pdf") is Outcome.TRANSFERRED


def test_adopt_skips_the_upload_views_spool_of_bodies_in_flight(broker: Any) -> None:
    from queued_storage.uploads import SPOOL_DIRNAME

    _put_local(f"{SPOOL_DIRNAME}/half-received.part", b"the client is still sending")
    report = reconcile(aliases=["queued_parked"], adopt=True)
    assert report.adopted == []
    assert StoredFile.get_row("queued_parked", f"{SPOOL_DIRNAME}/half-received.part") is None


def test_adopt_never_takes_a_name_the_remote_or_another_storage_holds(
    broker: Any, clean: Any
) -> None:
    _put_local("taken.txt", b"local")
    clean.put_object(Bucket=settings.BUCKET, Key="taken.txt", Body=b"remote")
    _put_local("other-storage.txt", b"x")
    Ledger("queued_delayed").reserve("other-storage.txt", "h")
    outside = Path(settings.WORKDIR) / "outside-the-root.txt"
    outside.write_bytes(b"not ours")
    Path(settings.STAGING_ROOT, "link.txt").symlink_to(outside)
    report = reconcile(aliases=["queued_parked"], adopt=True)
    assert report.adopted == []
    assert any(
        "taken.txt: not adopted: the remote storage already holds" in s for s in report.skipped
    )
    assert clean.get_object(Bucket=settings.BUCKET, Key="taken.txt")["Body"].read() == b"remote"
    assert StoredFile.get_row("queued_parked", "other-storage.txt") is None
    assert StoredFile.get_row("queued_parked", "link.txt") is None


def test_adopt_needs_to_know_which_storage_owns_a_shared_directory(broker: Any) -> None:
    _put_local("whose.txt", b"x")
    with pytest.raises(CommandError, match=r"storages .* stage there; name the one"):
        call_command("queued_storage_reconcile", "--adopt", verbosity=0)
    assert StoredFile.get_row("queued_parked", "whose.txt") is None


# --- (d) data loss and stale reservations --------------------------------------------------
def test_lost_local_copy_is_reported_loudly_and_never_dropped(broker: Any, caplog: Any) -> None:
    name = saved("precious.bin", b"irreplaceable")
    Path(parked().local.path(name)).unlink()
    received: list[dict[str, Any]] = []

    def on_failed(sender: Any, **kwargs: Any) -> None:
        received.append(kwargs)

    signals.transfer_failed.connect(on_failed)
    try:
        with (
            caplog.at_level(logging.ERROR, logger="queued_storage"),
            pytest.raises(CommandError, match=r"1 file\(s\) never reached the remote") as raised,
        ):
            call_command("queued_storage_reconcile", verbosity=0)
    finally:
        signals.transfer_failed.disconnect(on_failed)
    assert raised.value.returncode == 1
    assert f"{LOST}: {name!r} of storage 'queued_parked' never reached the remote" in caplog.text
    assert "DATA LOSS: 1 file(s)" in caplog.text
    found = row("queued_parked", name)  # kept, with the reason
    assert (found.state, found.local_exists) == (State.FAILED, False)
    assert found.last_error.startswith(LOST)
    assert [r["name"] for r in received] == [name]
    assert broker("parked") == []
    # Every later pass reports it again, until it is restored or deleted.
    again = reconcile()
    assert (again.newly_lost, again.lost_total, again.ok) == ([], 1, False)
    Path(parked().local.path(name)).write_bytes(b"irreplaceable")
    assert reconcile(failed=True).retried == [f"queued_parked:{name}"]
    assert reconcile().ok


def test_file_the_worker_found_missing_is_reported_as_lost(broker: Any) -> None:
    name = saved("vanished-before-transfer.txt")
    Path(parked().local.path(name)).unlink()
    assert run_transfer("queued_parked", name) is Outcome.FAILED
    report = reconcile()
    assert report.lost_total == 1
    assert report.lost == [
        f"queued_parked:{name} (host {row('queued_parked', name).host}, 1 bytes)"
    ]
    parked().delete(name)  # deleting it through the storage resolves it
    assert reconcile().ok


def test_stale_reservation_is_cleaned_and_is_not_data_loss(broker: Any) -> None:
    assert Ledger("queued_parked").reserve("crashed-save.txt", _host())
    age("queued_parked", "crashed-save.txt", AFTER + 5)
    assert Ledger("queued_parked").reserve("saving-now.txt", _host())
    call_command("queued_storage_reconcile", verbosity=0)  # exit status 0
    assert StoredFile.get_row("queued_parked", "crashed-save.txt") is None
    assert StoredFile.get_row("queued_parked", "saving-now.txt") is not None
    assert broker("parked") == []


def test_interrupted_save_that_wrote_the_file_is_finished_by_adopt(broker: Any) -> None:
    assert Ledger("queued_parked").reserve("half-saved.txt", _host())
    _put_local("half-saved.txt", b"written, not recorded")
    age("queued_parked", "half-saved.txt", AFTER + 5)
    report = reconcile()
    assert report.adopted == []
    assert any("half-saved.txt: an interrupted save left the file" in s for s in report.skipped)
    assert reconcile(adopt=True, aliases=["queued_parked"]).adopted == [
        "queued_parked:half-saved.txt"
    ]
    found = row("queued_parked", "half-saved.txt")
    assert (found.state, found.size, found.local_exists) == (State.PENDING, 21, True)


def test_rows_of_other_hosts_are_not_judged_by_this_hosts_disk(broker: Any) -> None:
    name = saved("on-web-b.txt")
    StoredFile.rows("queued_parked", name).update(host="web-b")
    Path(parked().local.path(name)).unlink()  # not on this disk: it lives on web-b
    report = reconcile()
    assert (report.requeued, report.newly_lost, report.lost_total) == ([], [], 0)
    assert report.elsewhere == {"web-b": 1}  # but it says that web-b's files wait
    with override_settings(QUEUED_STORAGE_HOST="web-b"):
        assert reconcile().newly_lost == [f"queued_parked:{name}"]


def test_leftover_local_copy_of_a_remote_file_is_deleted(clean: Any) -> None:
    storage = QueuedStorage(local="staging", remote="s3", delayed=True, delete_local=True)
    name = storage.save("left-behind.txt", ContentFile(b"x"))
    assert run_transfer(storage.alias, name, delete_local=False) is Outcome.TRANSFERRED
    assert Path(storage.local.path(name)).exists()  # the worker died before deleting it
    StoredFile.rows(storage.alias, name).update(
        transferred=timezone.now() - datetime.timedelta(seconds=AFTER + 5)
    )
    with override_settings(QUEUED_STORAGE_RECONCILE_AFTER=AFTER):
        assert reconcile().cleaned == [f"{storage.alias}:{name}"]
    assert not Path(storage.local.path(name)).exists()
    assert row(storage.alias, name).local_exists is False
    with storage.open(name) as fh:
        assert fh.read() == b"x"


def test_multipart_uploads_no_row_can_resume_are_aborted(broker: Any, clean: Any) -> None:
    def open_upload(key: str) -> str:
        return str(clean.create_multipart_upload(Bucket=settings.BUCKET, Key=key)["UploadId"])

    done = saved("done.bin")
    assert run_transfer("queued_parked", done) is Outcome.TRANSFERRED
    orphan = open_upload(done)  # a killed worker opened it and never recorded it
    resumable = saved("resumable.bin")
    recorded = open_upload(resumable)
    StoredFile.rows("queued_parked", resumable).update(upload_id=recorded)
    busy = saved("busy.bin")
    assert Ledger("queued_parked").lease(busy, "live-worker", 60).acquired
    opening = open_upload(busy)  # its live worker may be about to record it
    foreign = open_upload("not-ours/video.mp4")  # the bucket is shared
    report = reconcile()
    assert report.aborted_uploads == [f"queued_parked:{done}"]
    left = {u["UploadId"] for u in clean.list_multipart_uploads(Bucket=settings.BUCKET)["Uploads"]}
    assert left == {recorded, opening, foreign}
    assert orphan not in left


def test_files_of_an_unknown_storage_are_an_error(broker: Any) -> None:
    Ledger("removed-storage").saved("orphan.txt", _host(), 1)
    with pytest.raises(CommandError, match=r"1 file\(s\) of the storage 'removed-storage'"):
        call_command("queued_storage_reconcile", verbosity=0)


def _host() -> str:
    return qs_settings().HOST


def qs_settings() -> Any:
    from queued_storage.conf import settings as found

    return found


# --- per-host routing ----------------------------------------------------------------------
def test_host_queue_routes_each_transfer_to_the_host_holding_the_file(broker: Any) -> None:
    storage = storages["queued_host"]
    with override_settings(QUEUED_STORAGE_HOST="web-a"):
        name = storage.save("routed.txt", ContentFile(b"x"))
    assert row("queued_host", name).host == "web-a"
    assert broker("queued_storage.web-a") == [["queued_host", name]]
    # Retried from another host (the admin on web-b): still web-a's queue.
    StoredFile.rows("queued_host", name).update(state=State.FAILED)
    with override_settings(QUEUED_STORAGE_HOST="web-b"):
        storage.transfer(name)
    assert broker("queued_storage.web-a") == [["queued_host", name]] * 2
    assert broker("queued_storage.web-b") == []


def test_reconcile_routes_the_same_way(broker: Any) -> None:
    storage = storages["queued_host"]
    with override_settings(QUEUED_STORAGE_HOST="web-a"):
        name = storage.save("routed-later.txt", ContentFile(b"x"))
        drain("queued_storage.web-a")
        age("queued_host", name, AFTER + 5)
        assert reconcile().requeued == [f"queued_host:{name}"]
    assert broker("queued_storage.web-a") == [["queued_host", name]]


def test_queue_template_names_the_host(broker: Any) -> None:
    storage = QueuedStorage(local="staging", remote="s3", queue="uploads.{host}")
    assert storage.queue_for("web-a") == "uploads.web-a"
    assert QueuedStorage(local="staging", remote="s3", queue="plain").queue_for("x") == "plain"
    assert QueuedStorage(local="staging", remote="s3").queue_for("x") is None


# --- staging budget ------------------------------------------------------------------------
def test_staging_budget_refuses_a_file_beyond_it_and_writes_nothing(broker: Any) -> None:
    storage = parked()
    with override_settings(QUEUED_STORAGE_STAGING_BUDGET=1000):
        first = storage.save("fits.bin", ContentFile(b"a" * 600))
        with pytest.raises(StagingFull) as raised:
            storage.save("too-much.bin", ContentFile(b"b" * 500))
        message = str(raised.value)
        assert "cannot stage 'too-much.bin' (500 bytes)" in message
        assert "600 of the 1000 bytes of QUEUED_STORAGE_STAGING_BUDGET" in message
        assert "Check that the transfer workers run" in message
        assert (raised.value.name, raised.value.budget, raised.value.waiting) == (
            "too-much.bin",
            1000,
            600,
        )
        assert StoredFile.get_row("queued_parked", "too-much.bin") is None
        assert not Path(storage.local.path("too-much.bin")).exists()
        # Bytes that reached the remote no longer count, even if kept locally.
        assert run_transfer("queued_parked", first) is Outcome.TRANSFERRED
        storage.save("fits-now.bin", ContentFile(b"b" * 500))
        # Other hosts' files wait on their own disks.
        with override_settings(QUEUED_STORAGE_HOST="web-b"):
            storage.save("on-web-b.bin", ContentFile(b"c" * 900))


def test_w010_warns_when_the_staging_budget_is_nearly_spent(broker: Any) -> None:
    from queued_storage.checks import check_staging_budget

    saved("waiting.bin", b"z" * 800)
    with override_settings(QUEUED_STORAGE_STAGING_BUDGET=1000):
        messages = check_staging_budget(databases=["default"])
        assert [m.id for m in messages] == ["queued_storage.W010"]
        assert "800 of the 1000 bytes of QUEUED_STORAGE_STAGING_BUDGET wait" in messages[0].msg
        assert check_staging_budget(databases=None) == []  # a database check
    with override_settings(QUEUED_STORAGE_STAGING_BUDGET=2000):
        assert check_staging_budget(databases=["default"]) == []


# --- the Celery task, in a real worker -----------------------------------------------------
def test_reconcile_task_in_the_worker_requeues_an_overdue_file(worker: Any, clean: Any) -> None:
    from queued_storage.tasks import reconcile as reconcile_task

    storage = storages["queued_delayed"]  # delayed: nothing is queued at save
    name = storage.save("reconciled-by-beat.txt", ContentFile(b"beat"))
    age("queued_delayed", name, 3600)  # overdue for the worker's default RECONCILE_AFTER
    reconcile_task.apply_async()
    wait_for(
        lambda: row("queued_delayed", name).state == State.REMOTE,
        timeout=30,
        what="the worker's reconcile pass to get the file transferred",
    )
    assert clean.get_object(Bucket=settings.BUCKET, Key=name)["Body"].read() == b"beat"


def test_reconcile_all_hosts_takes_care_of_other_hosts_files_on_a_shared_volume(
    broker: Any,
) -> None:
    name = saved("shared/on-web-b.txt")
    StoredFile.rows("queued_parked", name).update(host="web-b")  # its copy is on this disk too
    call_command("queued_storage", "reconcile", "--storage", "queued_parked", verbosity=0)
    assert broker("parked") == []  # web-b's file: left to web-b's pass
    call_command(
        "queued_storage", "reconcile", "--all-hosts", "--storage", "queued_parked", verbosity=0
    )
    assert broker("parked") == [["queued_parked", name]]


def test_files_saved_while_the_broker_was_down_arrive_after_one_pass_not_when_overdue(
    worker: Any, clean: Any, broker_proxy: Any
) -> None:
    """The worker transfers them after one pass, well before they are overdue: the pass sends
    the refused ones at once (a message for an overdue file would wait RECONCILE_AFTER)."""
    with override_settings(QUEUED_STORAGE_RECONCILE_AFTER=120):
        assert qs_settings().RECONCILE_AFTER == 120
        names = refused_saves(broker_proxy, 3, storage="default")
        rows = StoredFile.objects.filter(alias="default", name__in=names)
        assert rows.filter(state=State.PENDING, dispatch_refused__isnull=False).count() == 3
        assert not rows.filter(overdue(timezone.now(), 120)).exists()
        report = reconcile(aliases=["default"])
        assert sorted(report.requeued_refused) == sorted(f"default:{n}" for n in names)
        wait_for(
            lambda: rows.filter(state=State.REMOTE).count() == 3,
            timeout=30,
            what="the worker to transfer the files the pass queued",
        )
    assert [s3_bytes(clean, n) for n in names] == [b"r0", b"r1", b"r2"]
    assert not rows.filter(dispatch_refused__isnull=False).exists()


def test_the_pass_finds_the_refused_files_through_their_partial_index(broker: Any) -> None:
    """Invariant 12: a pass looks for refused files every time; a partial index holds only
    them, so the look costs the same however large the ledger is."""
    saved("a-file-of-the-ledger.txt")
    with CaptureQueriesContext(connections["default"]) as ran:
        reconcile(aliases=["queued_parked"])
    (sql,) = [
        q["sql"] for q in ran.captured_queries if '"dispatch_refused" IS NOT NULL' in q["sql"]
    ]
    with connections["default"].cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        plan = " ".join(str(step[-1]) for step in cursor.fetchall())
    assert "USING INDEX queued_storage_refused" in plan, plan
