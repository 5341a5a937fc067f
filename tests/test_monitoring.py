"""Monitoring: ``file_state_changed`` for every ledger transition (in this process and in a
real Celery worker's)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import close_old_connections, transaction
from django.test import override_settings
from django.utils import timezone

from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.signals import file_state_changed
from tests.harness.suite import need, wait_for
from tests.testapp.receivers import RECORDED, redis_url

pytestmark = pytest.mark.django_db(
    transaction=True, databases=[a for a in ("default", "postgres") if a in settings.DATABASES]
)

P, T, R, F = State.PENDING, State.TRANSFERRING, State.REMOTE, State.FAILED

#: ``(transition, name, old_state, new_state)`` of one signal.
Sent = tuple[str, str, "State | None", "State | None"]


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_old_connections()


@pytest.fixture(params=["default", "postgres"])
def ledger_db(request: Any) -> Iterator[str]:
    if request.param == "postgres":
        need("postgres")
    with override_settings(QUEUED_STORAGE_DATABASE=request.param):
        yield request.param


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
    expected = "Taken over by w2: the lease expired (worker lost?) of dead-worker"
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
