"""RabbitMQ closes the channel of a delivery left unacknowledged beyond its ``consumer_timeout``.
A transfer's delivery is acknowledged when it starts, so a long transfer holds none; a delivery
the worker prefetched while its pool was busy can still outlive the timeout, and then the
worker must reconnect and go on (``broker_channel_error_retry``, queued_storage.W012).

The tests start a RabbitMQ node of their own (Debian's ``rabbitmq-server``, a few seconds) with
a 3-second consumer timeout checked every half second, and a worker on it; a transfer held at
the S3 fault proxy outlives the timeout. Marked ``rabbitmq``: ``make test-rabbitmq`` runs them
(with the integration and fault tests on RabbitMQ), ``make test`` and ``make test-faults`` do
not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from celery import Celery
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from kombu.connection import Connection

from qs_dev.processes import LOOPBACK, wait_pids_gone
from queued_storage.doctor import OK, WARN, check_broker
from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage
from tests.conftest import FAULT_WORKER_ENV, make_worker
from tests.harness.faults import HttpFaultProxy
from tests.harness.services import ENV_BROKER_URL, RabbitMQServer
from tests.harness.suite import need, need_tool, s3_bytes, wait_for
from tests.harness.workers import CeleryWorker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.django_db(transaction=True)]

#: The node's consumer timeout (seconds); RabbitMQ's default is 30 minutes.
CONSUMER_TIMEOUT = 3.0

#: What RabbitMQ says when it closes the channel (in the worker's log).
TIMED_OUT = "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out"


@pytest.fixture
def short_timeout_node() -> Iterator[RabbitMQServer]:
    """A RabbitMQ node of the test's own with a 3-second consumer timeout."""
    need_tool(
        "rabbitmq-server",
        RabbitMQServer.available(),
        "apt-get install rabbitmq-server (.ci/run installs it)",
    )
    node = RabbitMQServer(
        Path(settings.WORKDIR) / "rabbitmq-short-timeout",
        consumer_timeout=CONSUMER_TIMEOUT,
        check_interval=0.5,
    )
    with node:
        yield node


@pytest.fixture
def rabbit_worker(short_timeout_node: RabbitMQServer) -> Iterator[CeleryWorker]:
    """The fault tests' worker (concurrency 1) consuming ``celery`` on that node."""
    need("redis")
    need("moto")
    worker = make_worker(
        "rabbit",
        queues=["celery"],
        env={**FAULT_WORKER_ENV, ENV_BROKER_URL: short_timeout_node.url()},
    )
    with worker:
        yield worker


def test_a_node_of_its_own_answers_on_loopback_ports_and_leaves_no_process_behind() -> None:
    need_tool(
        "rabbitmq-server",
        RabbitMQServer.available(),
        "apt-get install rabbitmq-server (.ci/run installs it)",
    )
    node = RabbitMQServer(Path(settings.WORKDIR) / "rabbitmq-harness", consumer_timeout=20)
    with node:
        script = psutil.Process(node.pid)
        members = [script, *script.children(recursive=True)]
        beam = next(p for p in members if p.name() == "beam.smp")
        epmd = psutil.Process(node.epmd.pid)
        listening = {c.laddr for c in beam.net_connections("tcp") if c.status == "LISTEN"}
        assert {(LOOPBACK, node.port), (LOOPBACK, node.dist_port)} <= listening
        assert all(address.ip == LOOPBACK for address in listening)
        assert (LOOPBACK, node.epmd_port) in {c.laddr for c in epmd.net_connections("tcp")}
        if os.geteuid() == 0:
            assert {beam.username(), epmd.username()} == {node.user}
            assert node.user != "root"
        assert "consumer_timeout = 20000\n" in (node.workdir / "rabbitmq.conf").read_text()
        with Connection(node.url(), connect_timeout=5) as connection:
            queue = connection.SimpleQueue("harness-probe")
            queue.put({"probe": 1})
            message = queue.get(timeout=5)
            assert message.payload == {"probe": 1}
            message.ack()
            queue.close()
        pids = [p.pid for p in [*members, epmd]]
    assert wait_pids_gone(pids, 10) == []
    assert not node.running


def send(node: RabbitMQServer, storage: QueuedStorage, name: str) -> None:
    """Send *name*'s transfer message to *node* (the suite's own broker is another one)."""
    with Connection(node.url(), connect_timeout=5) as connection:
        storage.task.apply_async(args=[storage.alias, name], connection=connection)


def state(storage: QueuedStorage, name: str) -> str | None:
    row = StoredFile.get_row(storage.alias, name)
    return row.state if row is not None else None


def test_a_transfer_held_past_consumer_timeout_keeps_its_channel_its_delivery_was_acked(
    short_timeout_node: RabbitMQServer,
    rabbit_worker: CeleryWorker,
    s3_proxy: HttpFaultProxy,
    clean: Any,
) -> None:
    storage = storages["queued_delayed"]  # saves send nothing: the test sends to its node
    assert isinstance(storage, QueuedStorage)
    held = s3_proxy.interrupt_next("PUT")
    name = storage.save("outlives-the-timeout.txt", ContentFile(b"held past the timeout"))
    send(short_timeout_node, storage, name)
    assert held.wait(30), "the worker's PUT never reached the S3 proxy"
    # Held for twice the consumer timeout (checked every half second): the delivery was
    # acknowledged when the transfer started, so RabbitMQ has nothing to time out.
    time.sleep(2 * CONSUMER_TIMEOUT)
    held.release()  # the held PUT fails; the retry is due in the ledger, the watch sends it
    wait_for(lambda: state(storage, name) == State.REMOTE, timeout=60, what=f"{name} remote")
    assert s3_bytes(clean, name) == b"held past the timeout"
    assert TIMED_OUT not in rabbit_worker.log_text()


def test_worker_survives_the_channel_rabbitmq_closes_after_consumer_timeout_and_goes_on(
    short_timeout_node: RabbitMQServer,
    rabbit_worker: CeleryWorker,
    s3_proxy: HttpFaultProxy,
    clean: Any,
) -> None:
    storage = storages["queued_delayed"]  # saves send nothing: the test sends to its node
    assert isinstance(storage, QueuedStorage)
    pid = rabbit_worker.pid
    held = s3_proxy.interrupt_next("PUT")
    first = storage.save("holds-the-pool.txt", ContentFile(b"held past the timeout"))
    send(short_timeout_node, storage, first)
    assert held.wait(30), "the worker's PUT never reached the S3 proxy"
    # The worker's one pool process is busy: it prefetches the next delivery and holds it
    # unacknowledged until the process is free, longer than the consumer timeout.
    waiting = storage.save("prefetched.txt", ContentFile(b"waited for the pool"))
    send(short_timeout_node, storage, waiting)
    rabbit_worker.wait_for_log(TIMED_OUT, timeout=30)
    held.release()
    for name, data in ((first, b"held past the timeout"), (waiting, b"waited for the pool")):
        wait_for(lambda n=name: state(storage, n) == State.REMOTE, timeout=60, what=f"{name}")
        assert s3_bytes(clean, name) == data

    second = storage.save("after-the-reconnect.txt", ContentFile(b"sent after the reconnect"))
    send(short_timeout_node, storage, second)
    wait_for(lambda: state(storage, second) == State.REMOTE, timeout=60, what=f"{second} remote")
    assert s3_bytes(clean, second) == b"sent after the reconnect"
    assert rabbit_worker.running
    assert rabbit_worker.pid == pid
    assert "Unrecoverable error" not in rabbit_worker.log_text()


@pytest.mark.parametrize(("multiplier", "status"), [(1, OK), (4, WARN)])
def test_doctor_on_rabbitmq_says_what_consumer_timeout_still_bounds_and_wants_a_prefetch_of_1(
    short_timeout_node: RabbitMQServer, multiplier: int, status: str
) -> None:
    app = Celery("doctor-probe", broker=short_timeout_node.url(), set_as_current=False)
    app.conf.worker_prefetch_multiplier = multiplier
    answers, prefetch = check_broker(app, timeout=5)
    assert (answers.status, answers.detail) == (OK, "answers")
    assert prefetch.status == status
    assert prefetch.detail == (
        f"prefetch multiplier {multiplier}: transfers are acknowledged when they start and "
        "retries wait in the ledger, so consumer_timeout bounds only deliveries prefetched "
        "while every pool process is busy"
    )
    wanted = "CELERY_WORKER_PREFETCH_MULTIPLIER = 1 for the workers of big files"
    assert prefetch.fix == ("" if multiplier == 1 else wanted)
