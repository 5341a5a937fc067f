"""Several hosts for real: network and mount namespaces on this machine (``make test-hosts``).

The :class:`~tests.harness.hosts.HostLab` of this module runs PostgreSQL, Redis and moto in an
infra namespace and four hosts, each with its own network namespace and its own disk at the one
staging path, once with Redis as Celery's broker and once with RabbitMQ (a node in the infra
namespace; the cache and the result backend stay on Redis): ``[redis]``, ``[rabbitmq]``, a lab
each, one after the other (``-k rabbitmq`` runs one). ``h1`` and ``h2`` have private disks
(per-host queues, ``QUEUED_STORAGE_HOST`` = their names), ``s1`` and ``s2`` share one volume
(``QUEUED_STORAGE_HOST = "shared-volume"``, one queue). Files are sent over HTTP from this
process to a host's upload view (``/uploads/put/<name>``, storage ``queued_host``); which host
sent a file to S3 is read from moto's request log (the client address of each successful
``PUT``). Each test prints one ``[figures]`` line naming its broker; ``QS_LAB_KEEP=1`` keeps
the lab's logs. The module is marked ``hosts`` and needs root (namespaces), and Debian's
``rabbitmq-server`` for the RabbitMQ lab: it skips with the reason elsewhere, and fails under
``QUEUED_STORAGE_TEST_STRICT=1``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp
import amqp.exceptions
import psycopg
import pytest
import redis
from psycopg.rows import dict_row

from tests.harness.hosts import (
    AMQP_PORT,
    BROKERS,
    BUCKET,
    REDIS_PORT,
    S3_PORT,
    WEB_PORT,
    Host,
    HostLab,
    LabUnavailable,
    lab_missing,
)
from tests.harness.services import RabbitMQServer, ServiceUnavailable
from tests.harness.suite import need_tool

pytestmark = [pytest.mark.integration, pytest.mark.hosts]

KiB = 1024
MiB = 1024 * KiB
#: Files per host in each test.
N = 10
#: The storage the lab's upload view saves into (``tests/settings_hosts.py``).
ALIAS = "queued_host"
#: Files saved while a host is cut off from the broker and Redis (each save waits for the
#: cache: see docs/deployment.md, "Tested: several hosts").
CUT_N = 5
#: The longest any wait of this module may take.
WAIT = 90.0


def figures(capsys: Any, test: str, **values: Any) -> None:
    """Print the figures a test measured, also when pytest captures output."""
    line = f"[figures] {test}: " + ", ".join(f"{k}={v}" for k, v in values.items())
    with capsys.disabled():
        sys.stdout.write(f"\n{line}\n")


@pytest.fixture(scope="module", params=BROKERS)
def lab(request: pytest.FixtureRequest) -> Iterator[HostLab]:
    """The lab with Celery's broker on Redis, then on RabbitMQ (the cache and the result
    backend on Redis either way)."""
    missing = lab_missing()
    need_tool("a host lab (network and mount namespaces)", missing is None, missing or "")
    broker: str = request.param
    if broker == "rabbitmq":
        need_tool(
            "rabbitmq-server",
            RabbitMQServer.available(),
            "apt-get install rabbitmq-server (.ci/run installs it)",
        )
    workdir = Path(tempfile.mkdtemp(prefix=f"qs-lab-{broker}-"))
    hosts = {"h1": "h1", "h2": "h2", "s1": "shared", "s2": "shared"}
    lab = HostLab(
        workdir,
        hosts,
        shared={"shared": "shared-volume"},
        autostart=["h1", "h2"],
        broker=broker,
    )
    try:
        try:
            lab.start()
        except (LabUnavailable, ServiceUnavailable) as exc:  # a namespace, tc, a server
            need_tool("a host lab (network and mount namespaces)", False, str(exc))
        yield lab
    finally:
        lab.stop()
        if os.environ.get("QS_LAB_KEEP"):  # the logs, to read after a run
            sys.stderr.write(f"\nhost lab logs kept in {workdir}\n")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# -- helpers -----------------------------------------------------------------------------------


def put(host: Host, name: str, data: bytes) -> tuple[int, dict[str, Any], float]:
    """PUT *data* to the host's upload view: status, JSON answer, seconds taken."""
    conn = http.client.HTTPConnection(host.ip, WEB_PORT, timeout=30)
    began = time.monotonic()
    try:
        conn.request("PUT", f"/uploads/put/{name}", body=data)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return response.status, json.loads(body or b"{}"), time.monotonic() - began


def save_all(host: Host, payloads: dict[str, bytes]) -> list[float]:
    """Upload every file to *host*; each answer is 201 with the name asked for."""
    seconds = []
    for name, data in payloads.items():
        status, body, took = put(host, name, data)
        assert (status, body.get("name")) == (201, name), body
        seconds.append(took)
    return seconds


def ledger(lab: HostLab, names: list[str]) -> dict[str, dict[str, Any]]:
    """The ledger rows of *names* (the lab's PostgreSQL), by name."""
    query = (
        "SELECT name, state, host, attempts, lease_owner, lease_expires, updated, local_exists "
        "FROM queued_storage_storedfile WHERE alias = %s AND name = ANY(%s)"
    )
    with psycopg.connect(lab.pg_dsn(), row_factory=dict_row, connect_timeout=5) as conn:
        return {row["name"]: row for row in conn.execute(query, (ALIAS, names)).fetchall()}


def states(lab: HostLab, names: list[str]) -> Counter[str]:
    return Counter(row["state"] for row in ledger(lab, names).values())


def wait_until(predicate: Any, what: str, timeout: float = WAIT) -> float:
    """Poll *predicate* (0.1 s) until it holds; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.1)


def wait_remote(lab: HostLab, names: list[str], timeout: float = WAIT) -> float:
    deadline = time.monotonic() + timeout
    while True:
        counts = states(lab, names)
        if counts["remote"] == len(names):
            return time.monotonic()
        if time.monotonic() > deadline:
            pytest.fail(f"not all {len(names)} files remote within {timeout:.0f}s: {dict(counts)}")
        time.sleep(0.1)


def writers(lab: HostLab, names: list[str]) -> dict[str, list[str | None]]:
    """For each name, the host of every request that wrote it to S3 successfully."""
    return {name: [lab.host_of_address(a) for a in lab.uploads_of(name)] for name in names}


def put_requests(lab: HostLab, names: list[str]) -> int:
    """Every PUT of these names moto logged, whatever its status (an interrupted one too)."""
    paths = {f"/{BUCKET}/{name}" for name in names}
    return sum(
        1
        for _, method, target, _ in lab.s3_requests()
        if method == "PUT" and target.partition("?")[0] in paths
    )


def intact(lab: HostLab, payloads: dict[str, bytes]) -> int:
    """How many of *payloads* hold exactly their bytes on S3."""
    client = lab.s3_client()
    try:
        return sum(
            1
            for name, data in payloads.items()
            if client.get_object(Bucket=BUCKET, Key=name)["Body"].read() == data
        )
    finally:
        client.close()


def queue_length(lab: HostLab, queue: str) -> int:
    """The messages waiting in *queue* on the lab's broker (on RabbitMQ: ready, not those
    delivered to a worker; a delivered one shows as a file leaving ``pending``)."""
    if lab.broker == "redis":
        client = redis.Redis.from_url(lab.broker_url, socket_timeout=5)
        try:
            return int(client.llen(queue))
        finally:
            client.close()
    with amqp.Connection(
        f"{lab.infra_ip}:{AMQP_PORT}", userid="guest", password="guest", connect_timeout=5
    ) as connection:
        channel = connection.channel()
        try:
            _, count, _ = channel.queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:  # never declared: nothing was sent to it
            return 0
        return int(count)


def payloads_of(tag: str, size: int, count: int = N) -> dict[str, bytes]:
    return {f"{tag}-{i:02d}.bin": os.urandom(size) for i in range(count)}


# -- per-host queues ---------------------------------------------------------------------------


def test_each_host_sends_the_files_it_saved_through_its_own_queue_once_each(
    lab: HostLab, capsys: Any
) -> None:
    saved = {host: payloads_of(f"route-{host}", 64 * KiB) for host in ("h1", "h2")}
    for i in range(N):  # the hosts take uploads in turn
        for host, payloads in saved.items():
            name = list(payloads)[i]
            save_all(lab.hosts[host], {name: payloads[name]})
    names = [name for payloads in saved.values() for name in payloads]
    wait_remote(lab, names)

    expected = {name: host for host, payloads in saved.items() for name in payloads}
    rows = ledger(lab, names)
    assert {name: row["host"] for name, row in rows.items()} == expected
    sent_by = writers(lab, names)
    assert sent_by == {name: [host] for name, host in expected.items()}
    assert intact(lab, {n: d for p in saved.values() for n, d in p.items()}) == 2 * N
    figures(
        capsys,
        f"per-host queues [{lab.broker}]",
        saved_h1=N,
        saved_h2=N,
        sent_by_saving_host_pct=100
        * sum(s == [expected[n]] for n, s in sent_by.items())
        // (2 * N),
        lost=2 * N - sum(row["state"] == "remote" for row in rows.values()),
        sent_twice=sum(len(s) > 1 for s in sent_by.values()),
    )


# -- a host lost -------------------------------------------------------------------------------


def test_a_killed_hosts_files_wait_for_it_the_other_hosts_pass_names_it_and_touches_none(
    lab: HostLab, capsys: Any
) -> None:
    h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
    payloads = payloads_of("lost-h1", MiB)
    names = list(payloads)
    lab.throttle(h1, S3_PORT, "8mbit")  # about a second per file: the kill finds them moving
    try:
        save_all(h1, payloads)
        wait_until(lambda: states(lab, names)["transferring"] > 0, "a transfer under way on h1")
        lab.kill_host(h1)
        killed = time.monotonic()
    finally:
        lab.heal(h1)
    at_kill = ledger(lab, names)
    left = sorted(name for name, row in at_kill.items() if row["state"] != "remote")
    assert left, "every file went out before the kill"
    assert all((lab.disks / h1.volume / name).is_file() for name in left)
    assert all(row["host"] == "h1" and row["local_exists"] for row in at_kill.values())

    # The other host's pass, once the lost one's files are overdue: a warning, no change.
    warning = re.compile(r"overdue transfers of other hosts \(h1: (\d+)\)")
    passes = 0
    found: re.Match[str] | None = None
    deadline = time.monotonic() + 30
    while found is None or int(found[1]) < len(left):
        assert time.monotonic() < deadline, f"h2's pass never named h1's {len(left)} files"
        done = lab.manage(h2, "queued_storage", "reconcile")
        passes += 1
        assert done.returncode == 0, done.stderr
        found = warning.search(done.stderr + done.stdout)
    assert int(found[1]) == len(left)
    assert "re-queued (overdue): 0" in done.stdout
    assert "re-queued (lease expired): 0" in done.stdout
    fields = ("state", "host", "attempts", "lease_owner", "lease_expires", "updated")
    after = ledger(lab, names)
    assert {n: [after[n][f] for f in fields] for n in left} == {
        n: [at_kill[n][f] for f in fields] for n in left
    }

    restarted = time.monotonic()
    lab.start_host(h1)
    worker_ready = time.monotonic()
    last_remote = wait_remote(lab, names)

    sent_by = writers(lab, names)
    assert sent_by == {name: ["h1"] for name in names}
    kept = intact(lab, payloads)
    assert kept == N
    figures(
        capsys,
        f"host killed [{lab.broker}]",
        saved_h1=N,
        waiting_at_kill=len(left),
        h2_passes=passes,
        sent_by_saving_host_pct=100 * sum(s == ["h1"] for s in sent_by.values()) // N,
        lost=len(names) - kept,
        sent_twice=sum(len(s) > 1 for s in sent_by.values()),
        put_requests=put_requests(lab, names),
        kill_to_restart_s=f"{restarted - killed:.1f}",
        restart_to_last_remote_s=f"{last_remote - restarted:.1f}",
        worker_ready_to_last_remote_s=f"{last_remote - worker_ready:.1f}",
    )


# -- a host cut off from the broker and Redis --------------------------------------------------


def test_a_host_cut_off_from_broker_and_redis_keeps_taking_uploads_and_sends_them_after_the_heal(
    lab: HostLab, capsys: Any
) -> None:
    h1 = lab.hosts["h1"]
    payloads = payloads_of("cut-h1", 64 * KiB, count=CUT_N)
    names = list(payloads)
    assert queue_length(lab, h1.queue) == 0
    lab.cut(h1, *sorted({lab.broker_port, REDIS_PORT}))  # as a partition: Redis and broker
    try:
        seconds = save_all(h1, payloads)
        # Nothing left the host: no message on its queue, no file on S3.
        # Held longer than the publisher's 5 s between tries: a message through would show.
        time.sleep(6)
        assert queue_length(lab, h1.queue) == 0
        assert states(lab, names) == Counter(pending=CUT_N)
        assert writers(lab, names) == {name: [] for name in names}
    finally:
        healed = time.monotonic()
        lab.heal(h1)
    first_taken = wait_until(lambda: states(lab, names)["pending"] < CUT_N, "a file taken")
    last_remote = wait_remote(lab, names, timeout=120)

    sent_by = writers(lab, names)
    assert sent_by == {name: ["h1"] for name in names}
    kept = intact(lab, payloads)
    assert kept == CUT_N
    figures(
        capsys,
        f"cut from broker+redis [{lab.broker}]",
        saved_h1=CUT_N,
        save_s_max=f"{max(seconds):.2f}",
        save_s_median=f"{sorted(seconds)[CUT_N // 2]:.2f}",
        sent_by_saving_host_pct=100 * sum(s == ["h1"] for s in sent_by.values()) // CUT_N,
        lost=len(names) - kept,
        sent_twice=sum(len(s) > 1 for s in sent_by.values()),
        heal_to_first_taken_s=f"{first_taken - healed:.1f}",
        heal_to_all_remote_s=f"{last_remote - healed:.1f}",
    )


# -- a shared staging volume -------------------------------------------------------------------


def test_of_two_hosts_sharing_a_volume_the_survivor_takes_over_the_killed_ones_transfers(
    lab: HostLab, capsys: Any
) -> None:
    s1, s2 = lab.hosts["s1"], lab.hosts["s2"]
    assert s1.queue == s2.queue == "queued_storage.shared-volume"
    lab.start_host(s1)
    lab.start_host(s2, worker=False)
    payloads = payloads_of("shared", MiB, count=6)
    names = list(payloads)
    lab.throttle(s1, S3_PORT, "8mbit")
    try:
        save_all(s2, payloads)  # saved by s2, sent by s1's worker: one volume
        wait_until(lambda: states(lab, names)["transferring"] > 0, "a transfer under way on s1")
        lab.kill_host(s1)
        killed = time.monotonic()
    finally:
        lab.heal(s1)
    at_kill = ledger(lab, names)
    moving = sorted(name for name, row in at_kill.items() if row["state"] == "transferring")
    assert moving
    assert all(row["host"] == "shared-volume" for row in at_kill.values())

    # s2's worker starts once the dead worker's leases expired: its start-up pass takes them.
    wait_until(
        lambda: all(
            row["lease_expires"] is None or _db_now(lab) > row["lease_expires"]
            for row in ledger(lab, moving).values()
        ),
        "s1's leases expired",
    )
    lab.start_host(s2)
    last_remote = wait_remote(lab, names)

    sent_by = writers(lab, names)
    assert all(len(s) == 1 for s in sent_by.values()), sent_by
    assert {name: sent_by[name] for name in moving} == {name: ["s2"] for name in moving}
    kept = intact(lab, payloads)
    assert kept == len(names)
    figures(
        capsys,
        f"shared volume [{lab.broker}]",
        saved=len(names),
        moving_at_kill=len(moving),
        taken_over_by_s2=sum(sent_by[name] == ["s2"] for name in moving),
        lost=len(names) - kept,
        sent_twice=sum(len(s) > 1 for s in sent_by.values()),
        put_requests=put_requests(lab, names),
        kill_to_last_remote_s=f"{last_remote - killed:.1f}",
    )


def _db_now(lab: HostLab) -> Any:
    with psycopg.connect(lab.pg_dsn(), connect_timeout=5) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]
