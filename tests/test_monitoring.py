"""Monitoring: ``file_state_changed`` for every ledger transition (in this process and in a
real Celery worker's), and the Prometheus metrics (``queued_storage.metrics``) after real
transfers, a real failure and a real reconcile pass, read through the metrics view.

The suite runs with ``QUEUED_STORAGE_METRICS = True`` in prometheus-client's multiprocess mode
(``tests/settings.py``), so the view adds up the worker's values too; counters are compared
before and after, the ledger's gauges (rows are removed after each test) are exact.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.checks import run_checks
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import close_old_connections, connections, transaction
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from queued_storage import direct, metrics
from queued_storage.checks import check_metrics_settings
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.signals import file_state_changed
from queued_storage.storage import QueuedStorage
from queued_storage.tasks import reconcile as reconcile_task
from tests.harness.suite import need, wait_for
from tests.testapp.receivers import RECORDED, redis_url

pytestmark = pytest.mark.django_db(
    transaction=True, databases=[a for a in ("default", "postgres") if a in settings.DATABASES]
)

P, T, R, F = State.PENDING, State.TRANSFERRING, State.REMOTE, State.FAILED
TOKEN = "qs-test-metrics-token"
ALIAS, DELAYED = "monitored", "monitored_delayed"
FAILED = "queued_storage_transfers_failed_total"

#: ``(transition, name, old_state, new_state)`` of one signal.
Sent = tuple[str, str, "State | None", "State | None"]


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_old_connections()


@pytest.fixture
def sent() -> Iterator[list[Sent]]:
    """The ``file_state_changed`` signals this process sends for the ledger ``"sig"``."""
    found: list[Sent] = []

    def receiver(sender: Any, *, alias: str, name: str, **kwargs: Any) -> None:
        assert sender is Ledger
        for state in (kwargs["old_state"], kwargs["new_state"]):
            assert state is None or type(state) is State
        if alias == "sig":
            found.append((kwargs["transition"], name, kwargs["old_state"], kwargs["new_state"]))

    file_state_changed.connect(receiver, dispatch_uid="test-monitoring", weak=False)
    yield found
    file_state_changed.disconnect(dispatch_uid="test-monitoring")


def drain(found: list[Sent]) -> list[Sent]:
    taken = list(found)
    found.clear()
    return taken


# --- file_state_changed: each ledger transition, once, with the states it left and reached ---
def test_each_transfer_transition_sends_one_signal(ledger_db: str, sent: list[Sent]) -> None:
    ledger = Ledger("sig")
    assert ledger.saved("a.bin", "h", 3)
    assert drain(sent) == [("saved", "a.bin", None, P)]
    assert ledger.lease("a.bin", "w1", 60).acquired
    assert drain(sent) == [("lease", "a.bin", P, T)]
    assert ledger.renew("a.bin", "w1", 60, 1, 3)  # no state change, no signal
    assert ledger.retry_later("a.bin", "w1", "throttled")
    assert drain(sent) == [("retry_later", "a.bin", T, P)]
    assert ledger.lease("a.bin", "w2", 60).acquired
    assert ledger.fail("a.bin", "w2", "denied")
    assert drain(sent) == [("lease", "a.bin", P, T), ("fail", "a.bin", T, F)]
    assert ledger.retry("a.bin")
    assert ledger.retry("a.bin")  # a pending file: a new budget, the same state
    assert drain(sent) == [("retry", "a.bin", F, P), ("retry", "a.bin", P, P)]
    assert ledger.lease("a.bin", "w3", 60).acquired
    assert ledger.remote("a.bin", "w3", size=3, checksum="c", algorithm="md5")
    assert ledger.drop_local("a.bin", 3, lambda name: None)  # the local copy only
    assert drain(sent) == [("lease", "a.bin", P, T), ("remote", "a.bin", T, R)]
    assert ledger.forget("a.bin") is not None
    assert drain(sent) == [("forget", "a.bin", R, None)]


def test_refused_transitions_send_nothing(ledger_db: str, sent: list[Sent]) -> None:
    ledger = Ledger("sig")
    assert ledger.saved("b.bin", "h", 3)
    assert ledger.lease("b.bin", "w1", 60).acquired
    drain(sent)
    assert not ledger.lease("b.bin", "w2", 60).acquired  # held
    assert not ledger.remote("b.bin", "w2", size=3, checksum="c", algorithm="md5")
    assert not ledger.fail("b.bin", "w2", "not mine")
    assert not ledger.retry("b.bin")  # transferring
    assert not ledger.saved("b.bin", "h", 3)  # the name is taken
    assert ledger.forget("nothing.bin") is None
    assert sent == []


def test_a_lease_taken_over_from_a_dead_worker_says_it_left_transferring(
    ledger_db: str, sent: list[Sent]
) -> None:
    ledger = Ledger("sig")
    assert ledger.saved("c.bin", "h", 3)
    assert ledger.lease("c.bin", "dead-worker", 0.2).acquired
    time.sleep(0.3)
    drain(sent)
    lease = ledger.lease("c.bin", "w2", 60)
    assert lease.acquired and lease.row is not None
    assert drain(sent) == [("lease", "c.bin", T, T)]
    expected = "The lease of dead-worker expired (its worker was lost?); taken over by w2."
    assert lease.row.last_error == expected
    assert ledger.remote("c.bin", "w2", size=3, checksum="c", algorithm="md5")
    assert drain(sent) == [("remote", "c.bin", T, R)]
    found = ledger.row("c.bin")
    assert found is not None and found.last_error == ""


def test_reconcile_and_verify_transitions_send_their_signals(
    ledger_db: str, sent: list[Sent]
) -> None:
    ledger, now = Ledger("sig"), timezone.now()

    def row(name: str) -> StoredFile:
        found = ledger.row(name)
        assert found is not None
        return found

    assert ledger.saved("d.bin", "h", 1)
    assert ledger.lease("d.bin", "dead", 60).acquired
    assert ledger.take_back(row("d.bin"), now)
    assert ledger.claim(row("d.bin"), now + datetime.timedelta(seconds=1))  # same state
    assert ledger.lost(row("d.bin"), "Data loss: gone", now + datetime.timedelta(seconds=2))
    assert ledger.lost(row("d.bin"), "Data loss: still gone", now + datetime.timedelta(seconds=3))
    assert ledger.retry_failed(row("d.bin"), now + datetime.timedelta(seconds=4))
    assert drain(sent)[2:] == [
        ("take_back", "d.bin", T, P),
        ("lost", "d.bin", P, F),
        ("lost", "d.bin", F, F),
        ("retry_failed", "d.bin", F, P),
    ]
    assert ledger.lease("d.bin", "w", 60).acquired
    assert ledger.remote("d.bin", "w", size=1, checksum="c", algorithm="md5")
    drain(sent)
    assert ledger.remote_lost(row("d.bin"), "Data loss: remote gone", now, local_exists=True)
    assert drain(sent) == [("remote_lost", "d.bin", R, F)]

    assert ledger.reserve("half.bin", "h") and ledger.reserve("none.bin", "h")
    assert ledger.finish_save(row("half.bin"), 9, now)  # same state, no signal
    assert ledger.drop_reservation(row("none.bin"))
    assert drain(sent) == [
        ("reserve", "half.bin", None, P),
        ("reserve", "none.bin", None, P),
        ("drop_reservation", "none.bin", P, None),
    ]


def test_seed_remote_sends_one_signal_per_new_row(ledger_db: str, sent: list[Sent]) -> None:
    ledger = Ledger("sig")
    assert ledger.saved("known.bin", "h", 1)
    drain(sent)
    assert ledger.seed_remote([("known.bin", 5, "e1"), ("new.bin", 6, "e2"), ("n2.bin", 1, "")])
    assert sent == [("seed_remote", "new.bin", None, R), ("seed_remote", "n2.bin", None, R)]


def test_signals_wait_for_the_commit_and_a_rollback_sends_none(
    ledger_db: str, sent: list[Sent]
) -> None:
    ledger = Ledger("sig")
    with transaction.atomic(using=ledger_db):
        assert ledger.saved("e.bin", "h", 1)
        assert sent == []
    assert drain(sent) == [("saved", "e.bin", None, P)]
    with transaction.atomic(using=ledger_db):
        assert ledger.forget("e.bin") is not None
        assert sent == []
    assert drain(sent) == [("forget", "e.bin", P, None)]

    def save_then_fail() -> None:
        with transaction.atomic(using=ledger_db):
            assert ledger.saved("gone.bin", "h", 1)
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        save_then_fail()
    assert sent == []


def test_a_failing_receiver_is_logged_and_the_transition_stands(
    ledger_db: str, sent: list[Sent], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(sender: Any, **kwargs: Any) -> None:
        raise ValueError("receiver bug")

    file_state_changed.connect(broken, dispatch_uid="test-broken", weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="queued_storage.ledger"):
            assert Ledger("sig").saved("f.bin", "h", 1)
    finally:
        file_state_changed.disconnect(dispatch_uid="test-broken")
    assert sent == [("saved", "f.bin", None, P)]  # the other receivers still ran
    assert Ledger("sig").row("f.bin") is not None
    assert "a file_state_changed receiver" in caplog.text and "receiver bug" in caplog.text


# --- in a real worker process ------------------------------------------------------------------
@pytest.fixture
def recorded() -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """The signals ``tests/testapp/receivers.py`` recorded in Redis (any process), by name."""
    need("redis")
    url = redis_url()
    assert url is not None
    client = redis.Redis.from_url(url)
    client.delete(RECORDED)

    def of(name: str) -> list[dict[str, Any]]:
        items = [json.loads(item) for item in client.lrange(RECORDED, 0, -1)]
        return [item for item in items if item["name"] == name]

    yield of
    client.delete(RECORDED)
    client.close()


def _steps(events: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    return [(e["transition"], e["old_state"], e["new_state"]) for e in events]


def test_a_transfer_sends_its_signals_in_the_worker_process(
    worker: Any, clean: Any, recorded: Callable[[str], list[dict[str, Any]]]
) -> None:
    with transaction.atomic():
        name = storages["monitored"].save("signals.bin", ContentFile(b"s" * 1000))
    events = wait_for(
        lambda: (found := recorded(name)) and found[-1]["transition"] == "remote" and found,
        what="the remote signal from the worker",
    )
    assert _steps(events) == [
        ("saved", None, "pending"),
        ("lease", "pending", "transferring"),
        ("remote", "transferring", "remote"),
    ]
    assert {e["alias"] for e in events} == {"monitored"}
    assert events[0]["pid"] == os.getpid()
    assert events[1]["pid"] == events[2]["pid"] in worker.pids()[1:]  # a pool process


def test_a_worker_process_keeps_its_ledger_connection_from_one_transfer_to_the_next(
    worker: Any, clean: Any, recorded: Callable[[str], list[dict[str, Any]]]
) -> None:
    names = []
    for i in range(3):
        with transaction.atomic():
            names.append(storages["monitored"].save(f"kept-{i}.bin", ContentFile(b"k" * 100)))
        wait_for(
            lambda: (found := recorded(names[-1])) and found[-1]["transition"] == "remote",
            what="the remote signal from the worker",
        )
    events = [e for n in names for e in recorded(n) if e["transition"] in ("lease", "remote")]
    assert len(events) == 6 and len({e["pid"] for e in events}) == 1  # one pool process
    # Celery's Django fixup closes the task's connections after each task: the transfer's
    # own is kept out of its reach, so the process opens none for the second and third.
    assert [e["connections_opened"] for e in events] == [events[0]["connections_opened"]] * 6


def test_a_failed_transfer_sends_its_signals_in_the_worker_process(
    worker: Any, clean: Any, recorded: Callable[[str], list[dict[str, Any]]]
) -> None:
    storage = storages["monitored_delayed"]
    name = storage.save("vanishes.bin", ContentFile(b"v"))
    Path(storage.local.path(name)).unlink()
    storage.transfer(name)
    events = wait_for(
        lambda: (found := recorded(name)) and found[-1]["transition"] == "fail" and found,
        what="the fail signal from the worker",
    )
    assert _steps(events) == [
        ("saved", None, "pending"),
        ("retry", "pending", "pending"),  # storage.transfer(name): a new budget
        ("lease", "pending", "transferring"),
        ("fail", "transferring", "failed"),
    ]
    assert [e["pid"] == os.getpid() for e in events] == [True, True, False, False]


# --- the metrics, scraped from the view --------------------------------------------------------
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: Client) -> Samples:
    response = client.get("/metrics/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_real_transfers_and_a_real_failure_in_the_worker(
    worker: Any, clean: Any, client: Client
) -> None:
    before = scrape(client)
    payloads = [b"a" * 200_000, b"b" * 6 * 1024 * 1024]  # a single PUT and a multipart upload
    with transaction.atomic():
        names = [
            storages["monitored"].save(f"m{i}.bin", ContentFile(p)) for i, p in enumerate(payloads)
        ]
    delayed = storages["monitored_delayed"]
    broken = delayed.save("gone.bin", ContentFile(b"g" * 10))
    Path(delayed.local.path(broken)).unlink()
    delayed.transfer(broken)

    def delta_of(samples: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    def done() -> Samples | None:
        now = scrape(client)
        transferred = delta_of(now, "queued_storage_transfer_duration_seconds_count", alias=ALIAS)
        failed = delta_of(now, FAILED, alias=DELAYED, outcome="failed")
        return now if (transferred, failed) == (2, 1) else None

    after = wait_for(done, what="the worker's metrics")

    def delta(name: str, **labels: str) -> float:
        return delta_of(after, name, **labels)

    total = sum(len(p) for p in payloads)
    assert delta("queued_storage_transfers_started_total", alias="monitored") == 2
    assert delta("queued_storage_transfers_succeeded_total", alias="monitored") == 2
    assert delta("queued_storage_transferred_bytes_total", alias="monitored") == total
    throughput = "queued_storage_transfer_throughput_bytes_per_second_count"
    assert delta(throughput, alias=ALIAS) == 2
    assert 0 < delta("queued_storage_transfer_duration_seconds_sum", alias="monitored") < 60
    remote = {"alias": "monitored", "transition": "remote"}
    assert delta("queued_storage_state_changes_total", **remote, old_state=T, new_state=R) == 2
    assert delta("queued_storage_transfers_started_total", alias="monitored_delayed") == 1
    assert (
        delta("queued_storage_transfers_failed_total", alias="monitored_delayed", outcome="failed")
        == 1
    )
    assert delta("queued_storage_transfers_succeeded_total", alias="monitored_delayed") == 0
    # The ledger as it is now (exact: each test starts with an empty ledger).
    assert value(after, "queued_storage_files", alias="monitored", state="remote") == 2
    assert value(after, "queued_storage_bytes", alias="monitored", state="remote") == total
    assert value(after, "queued_storage_files", alias="monitored_delayed", state="failed") == 1
    assert value(after, "queued_storage_lost_files", alias="monitored_delayed") == 1
    assert value(after, "queued_storage_lost_files", alias="monitored") == 0
    row = StoredFile.get_row("monitored_delayed", broken)
    assert row is not None
    oldest = ("queued_storage_oldest_created_timestamp_seconds", "monitored_delayed", "failed")
    assert value(after, oldest[0], alias=oldest[1], state=oldest[2]) == pytest.approx(
        row.created.timestamp()
    )
    assert value(after, "queued_storage_ledger_up") == 1
    assert StoredFile.get_row("monitored", names[1]).state == State.REMOTE  # type: ignore[union-attr]


def test_direct_uploads_under_way_are_scraped_as_uploading_with_their_declared_bytes(
    clean: Any, client: Client
) -> None:
    storage = storages["default"]
    assert isinstance(storage, QueuedStorage)
    name = direct.start(storage, "direct/metered.bin", 12345, owner="7").name
    direct.start(storage, "direct/metered-too.bin", 100, owner="8")
    row = StoredFile.get_row("default", name)
    assert row is not None

    samples = scrape(client)

    assert value(samples, "queued_storage_files", alias="default", state="uploading") == 2
    assert value(samples, "queued_storage_bytes", alias="default", state="uploading") == 12445
    oldest = "queued_storage_oldest_created_timestamp_seconds"
    assert value(samples, oldest, alias="default", state="uploading") == pytest.approx(
        row.created.timestamp()
    )
    assert value(samples, "queued_storage_lost_files", alias="default") == 0
    assert (oldest, frozenset({("alias", "default"), ("state", "remote")})) not in samples


def test_a_reconcile_pass_in_the_worker_counts_its_findings(
    worker: Any, clean: Any, client: Client
) -> None:
    storage = storages["monitored_delayed"]
    name = storage.save("lost-before-transfer.bin", ContentFile(b"l" * 10))
    Path(storage.local.path(name)).unlink()
    long_ago = timezone.now() - datetime.timedelta(hours=2)
    StoredFile.objects.filter(name=name).update(updated=long_ago)  # overdue
    before = scrape(client)
    started = time.time()
    reconcile_task.delay()
    runs = "queued_storage_reconcile_runs_total"
    last_run = "queued_storage_reconcile_last_run_timestamp_seconds"

    def counted() -> Samples | None:
        # A scrape lists the worker's metric files before it reads them: one the worker
        # creates meanwhile (its first gauge of the pass) shows in the next scrape.
        now = scrape(client)
        return now if value(now, runs) > value(before, runs) and value(now, last_run) else None

    after = wait_for(counted, what="the reconcile pass in the worker")
    assert value(after, runs) - value(before, runs) == 1
    found = "queued_storage_reconcile_findings_total"
    assert value(after, found, kind="newly_lost") - value(before, found, kind="newly_lost") == 1
    assert value(after, "queued_storage_reconcile_lost_files") == 1
    assert value(after, last_run) >= started
    assert value(after, "queued_storage_lost_files", alias="monitored_delayed") == 1


def test_the_ledger_collector_makes_the_same_queries_whatever_the_number_of_files(
    ledger_db: str,
) -> None:
    """One read of the kept tally, and one seek (``LIMIT 1``) for the oldest file of each
    unfinished state: none of them reads the ledger's rows in bulk."""
    collector = metrics.LedgerCollector()
    StoredFile.objects.using(ledger_db).all().delete()
    list(collector.collect())  # a tally left by an earlier test is folded or counted again
    made = []
    for count in (1, 300):
        StoredFile.objects.using(ledger_db).all().delete()
        StoredFile.objects.using(ledger_db).bulk_create(
            StoredFile(alias="many", name=f"f{i}.bin", state=State.PENDING, size=2)
            for i in range(count)
        )
        with CaptureQueriesContext(connections[ledger_db]) as queries:
            families = {family.name: family for family in collector.collect()}
        made.append(len(queries))
        assert "queued_storage_tally" in queries[0]["sql"]
        assert "queued_storage_storedfile" not in queries[0]["sql"]
        assert all(q["sql"].rstrip().endswith("LIMIT 1") for q in queries[1:])
        [files] = families["queued_storage_files"].samples
        assert (files.labels, files.value) == ({"alias": "many", "state": "pending"}, count)
        [size] = families["queued_storage_bytes"].samples
        assert size.value == 2 * count
    assert made == [2, 2]


def test_start_http_server_serves_the_page_and_leaves_no_connection(ledger_db: str) -> None:
    assert Ledger("served").saved("x.bin", "h", 7)
    server, thread = metrics.start_http_server(0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            page = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert 'queued_storage_files{alias="served",state="pending"} 1.0' in page
    assert 'queued_storage_bytes{alias="served",state="pending"} 7.0' in page


# --- the view's guard -------------------------------------------------------------------------
def test_the_metrics_view_refuses_anonymous_access(client: Client) -> None:
    response = client.get("/metrics/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"queued_storage" not in response.content
    assert client.get("/metrics/", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics/", HTTP_AUTHORIZATION=TOKEN).status_code == 401  # no scheme


def test_the_metrics_view_refuses_a_user_who_is_not_staff(
    client: Client, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user("someone", password="pw")
    client.force_login(user)
    response = client.get("/metrics/")
    assert (response.status_code, response.content) == (403, b"Staff only.\n")


def test_the_metrics_view_answers_staff_and_the_token(client: Client, admin_client: Client) -> None:
    assert Ledger("viewed").saved("v.bin", "h", 4)
    for response in (
        admin_client.get("/metrics/"),
        client.get("/metrics/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"),
    ):
        assert response.status_code == 200
        assert b'queued_storage_files{alias="viewed",state="pending"} 1.0' in response.content
    assert client.post("/metrics/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405
    with override_settings(QUEUED_STORAGE_METRICS_TOKEN=None):
        assert client.get("/metrics/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 401


# --- E018 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["", "   ", 12345])
def test_e018_metrics_token_is_not_a_non_empty_string(token: Any) -> None:
    with override_settings(QUEUED_STORAGE_METRICS_TOKEN=token):
        messages = check_metrics_settings()
    assert [m.id for m in messages] == ["queued_storage.E018"]
    assert messages[0].msg == (
        f"QUEUED_STORAGE_METRICS_TOKEN must be None or a non-empty string, got {token!r}."
    )


@pytest.mark.parametrize("token", [None, "a-long-random-token"])
def test_e018_silent_for_none_or_a_token(token: Any) -> None:
    with override_settings(QUEUED_STORAGE_METRICS_TOKEN=token):
        assert check_metrics_settings() == []
        assert [m for m in run_checks() if m.id == "queued_storage.E018"] == []


def test_metrics_checks_are_bound() -> None:
    with (
        override_settings(QUEUED_STORAGE_METRICS_TOKEN=""),
        pytest.raises(SystemCheckError, match=r"queued_storage\.E018"),
    ):
        call_command("check")
