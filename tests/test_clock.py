"""One clock (invariant 13): a real worker whose clock is 10 minutes off (libfaketime) on a
PostgreSQL ledger neither takes a live lease nor waits for an expired one.

Each test writes a ``transferring`` row with the database's clock, as a worker with a correct
clock would have left it, then starts a worker of its own host (so that its start-up reconcile
pass looks at the row too) 10 minutes ahead or behind. On SQLite the database's clock is the
clock of the process that queries it: one host's, so there is nothing to disagree with.
``doctor``'s clock line, run under the same shift, says so. Marked ``faults`` (make
test-faults): each starts a process.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import connections
from django.db.models import DurationField, Value
from django.db.models.functions import Now
from django.test import override_settings

from queued_storage.dispatch import Sender
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage
from tests.conftest import FAULT_WORKER_ENV, host_queue, make_worker
from tests.harness.suite import faketime_env, need, remote_keys, wait_for
from tests.harness.workers import PROJECT_ROOT, CeleryWorker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases=["default", "postgres"]),
]

ALIAS = "queued_host"  # routed to the queue of the host that holds the file


def database_now(seconds: float) -> Any:
    """The database's time plus *seconds* (an expression: what a correct worker writes)."""
    return Now() + Value(datetime.timedelta(seconds=seconds), output_field=DurationField())


@pytest.fixture
def ledger_on_postgres() -> Iterator[str]:
    need("postgres")
    with override_settings(QUEUED_STORAGE_DATABASE="postgres"):
        yield str(connections["postgres"].settings_dict["NAME"])
    connections.close_all()


def leased_file(host: str, owner: str, expires_in: float) -> str:
    """A saved file of *host* whose row is ``transferring`` under *owner*'s lease, which
    ends *expires_in* seconds from now by the database's clock."""
    storage = storages[ALIAS]
    assert isinstance(storage, QueuedStorage)
    name = storage.local.save(f"clock/{host}.bin", ContentFile(b"one clock" * 100))
    assert Ledger(ALIAS).saved(name, host, 900)
    leased = StoredFile.objects.using("postgres").filter(alias=ALIAS, name=name)
    assert leased.update(
        state=State.TRANSFERRING, lease_owner=owner, lease_expires=database_now(expires_in)
    )
    return name


def skewed_worker(offset: str, host: str, database: str) -> CeleryWorker:
    """A worker of *host* (its start-up pass on) whose wall clock is *offset* from the real."""
    env = {
        **FAULT_WORKER_ENV,
        **faketime_env(offset),
        "QS_FAULT_HOST": host,
        "QS_FAULT_DATABASE": "postgres",
        "QS_FAULT_PG_NAME": database,
    }
    return make_worker(f"clock{offset}", queues=[host_queue(host)], env=env)


def row_of(name: str) -> StoredFile:
    found = StoredFile.get_row(ALIAS, name)
    assert found is not None
    return found


def test_a_worker_10_minutes_ahead_takes_no_live_lease(ledger_on_postgres: str, clean: Any) -> None:
    host = f"ahead-{uuid.uuid4().hex[:8]}"
    name = leased_file(host, "correct-clock", 120)
    worker = skewed_worker("+10m", host, ledger_on_postgres)
    worker.start(timeout=60)
    try:
        worker.wait_for_log(rf"worker start-up on host {host}: re-queued \d+ overdue", 30)
        assert Sender().send(storages[ALIAS], name, host)  # type: ignore[arg-type]
        # The message is processed: the lease is another worker's, or (the bug) a transfer.
        worker.wait_for_log(r"queued_storage\.tasks\.transfer\[[^\]]+\] succeeded", 30)
        # Its watch looks at the row every half second (WATCH_INTERVAL), with its clock 10
        # minutes ahead: four looks must not take the lease back either (the lease ends in 2
        # minutes by the database's clock).
        time.sleep(4 * 0.5)
    finally:
        worker.stop()
    log = worker.log_text()
    assert re.search(
        rf"worker start-up on host {host}: re-queued 0 overdue transfer\(s\) and 0 expired", log
    ), log
    assert re.search(r"transfer\[[^\]]+\] succeeded in [\d.]+s: 'leased-elsewhere'", log), log
    row = row_of(name)
    assert (row.state, row.lease_owner) == (State.TRANSFERRING, "correct-clock")
    assert remote_keys(clean) == []
    assert "lease takeover" not in log


def test_a_worker_10_minutes_behind_takes_over_an_expired_lease_at_once(
    ledger_on_postgres: str, clean: Any
) -> None:
    host = f"behind-{uuid.uuid4().hex[:8]}"
    name = leased_file(host, "dead-worker", -1)  # its worker died; it expired a second ago
    worker = skewed_worker("-10m", host, ledger_on_postgres)
    worker.start(timeout=60)
    try:
        # The start-up pass takes it back and queues it (not 10 minutes later), the worker
        # sends it.
        wait_for(
            lambda: row_of(name).state == State.REMOTE,
            timeout=30,
            what="the expired lease taken over and the file sent",
        )
    finally:
        worker.stop()
    log = worker.log_text()
    assert re.search(
        rf"lease takeover: the lease of dead-worker on {ALIAS}:{re.escape(name)} expired at "
        rf"[^\n]* \(by the database's clock\); taken back by the reconcile pass on host {host}",
        log,
    ), log
    assert remote_keys(clean) == [name]


def test_a_worker_10_minutes_ahead_holds_an_outages_retry_by_the_databases_clock(
    ledger_on_postgres: str, s3_proxy: Any
) -> None:
    """The retry a worker schedules when S3 is down is due by the database's clock: a worker
    10 minutes ahead does not hold the file for 10 minutes more (the delay issue 22 saw)."""
    host = f"retry-{uuid.uuid4().hex[:8]}"
    storage = storages[ALIAS]
    assert isinstance(storage, QueuedStorage)
    name = storage.local.save(f"clock/{host}.bin", ContentFile(b"retried" * 100))
    assert Ledger(ALIAS).saved(name, host, 700)
    worker = skewed_worker("+10m", host, ledger_on_postgres)
    s3_proxy.go_down()
    worker.start(timeout=60)
    try:
        assert Sender().send(storage, name, host)
        wait_for(lambda: row_of(name).retry_at is not None, timeout=30, what="a retry held")
        with connections["postgres"].cursor() as cursor:
            cursor.execute("SELECT now()")
            (now,) = cursor.fetchone()
        due = row_of(name).retry_at
        assert due is not None
        # QUEUED_STORAGE_RETRY_MAX_DELAY is 4 s for this worker (FAULT_WORKER_ENV).
        assert due - now <= datetime.timedelta(seconds=5), (due, now)
        s3_proxy.come_up()
        wait_for(
            lambda: row_of(name).state == State.REMOTE, timeout=30, what="sent once S3 is back"
        )
    finally:
        s3_proxy.come_up()
        worker.stop()


DOCTOR_CLOCK = (
    "import django; django.setup(); "
    "from queued_storage.doctor import check_database_clock; "
    "print(check_database_clock().line())"
)


FIX = (
    "  -> fix: synchronise the clocks of this host and the database "
    "(NTP: chrony or systemd-timesyncd)"
)


@pytest.mark.parametrize(
    ("lease_timeout", "status", "verdict"),
    [
        ("2400", "OK  ", ""),
        ("1200", "WARN", ", more than 0.25 of QUEUED_STORAGE_LEASE_TIMEOUT (300 s)" + FIX),
        ("120", "FAIL", ", more than QUEUED_STORAGE_LEASE_TIMEOUT (120 s)" + FIX),
    ],
)
def test_doctor_compares_this_hosts_clock_with_the_databases_against_the_lease_timeout(
    ledger_on_postgres: str, lease_timeout: str, status: str, verdict: str
) -> None:
    """10 minutes ahead: fine with a 40-minute lease, a warning beyond a quarter of it, a
    failure beyond all of it."""
    env = {
        **os.environ,
        **faketime_env("+10m"),
        "DJANGO_SETTINGS_MODULE": "tests.settings_faults",
        "QS_FAULT_LEASE_TIMEOUT": lease_timeout,
        "QS_FAULT_DATABASE": "postgres",
        "QS_FAULT_PG_NAME": ledger_on_postgres,
    }
    done = subprocess.run(
        [sys.executable, "-c", DOCTOR_CLOCK],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert re.fullmatch(
        re.escape(f"{status}  clock      database 'postgres': this host's clock is ")
        + r"(59\d|60\d)\.\d s ahead of the database's, "
        + r"which measures leases \(to within 0\.\d{3} s\)"
        + re.escape(verdict),
        line,
    ), line
