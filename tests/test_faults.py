"""Fault tests with real faults: kill -9 of the worker, S3 down, Redis flushed, broker down,
concurrent saves of one name from several processes, a file changing under its transfer, a
delete racing the transfer, a worker killed while it held retries, and (``faults``) two
minutes of kills and S3 outages in turn.

Each test prints one ``[figures]`` line (files saved, transferred, verified, lost, ...) and
asserts that nothing was lost. The whole file is marked ``faults``: ``make test-faults`` runs
it (the short and the long variants), ``make test`` leaves it out to stay within its time.

The transfers go to this host's queue (storage option ``queue="host"``), consumed by the
``host_worker`` fixture (a 3 s lease, backoffs of 0.5 to 4 s, the suite's budget of 3 retries
for errors about a file, which outages and lost workers do not spend, and the start-up
reconcile pass on), except where the main worker is what the test needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import call_command
from django.db.models import Q
from django.test import override_settings
from django.utils import timezone

from queued_storage import dispatch
from queued_storage.models import State, StoredFile
from queued_storage.reconcile import overdue, reconcile
from tests.conftest import FAULT_WORKER_ENV, host_queue, make_worker
from tests.harness.services import ServiceStack
from tests.harness.suite import open_uploads, redis_client, remote_keys, s3_bytes, wait_for
from tests.harness.workers import PROJECT_ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True),
]

MiB = 1024 * 1024
BLOCK = os.urandom(MiB)


#: The environment variable that replays a fault test's random choices: the seed its
#: ``[seed]`` line printed (docs/development.md).
SEED_ENV = "QS_FAULT_SEED"


def fault_seed(capsys: Any, test: str) -> int:
    """The seed of *test*'s random choices: ``$QS_FAULT_SEED`` when set (to replay a run),
    else the clock. Printed at once, so a run that fails or hangs can be replayed."""
    given = os.environ.get(SEED_ENV, "").strip()
    try:
        seed = int(given) if given else int(time.time())
    except ValueError:
        pytest.fail(f"{SEED_ENV}={given!r} is not an integer; unset it or give a printed seed.")
    with capsys.disabled():
        sys.stdout.write(f"\n[seed] {test}: {seed} (replay with {SEED_ENV}={seed})\n")
    return seed


def figures(capsys: Any, test: str, **values: Any) -> None:
    """Print the figures a fault test measured, also when pytest captures output."""
    line = f"[figures] {test}: " + ", ".join(f"{k}={v}" for k, v in values.items())
    with capsys.disabled():
        sys.stdout.write(f"\n{line}\n")


def _intact_on_s3(client: Any, names: list[str], payloads: dict[str, bytes]) -> int:
    """How many of *names* (what ``save()`` returned for *payloads*, in order) hold exactly
    their payload's bytes on S3."""
    return sum(
        1
        for name, data in zip(names, payloads.values(), strict=True)
        if s3_bytes(client, name) == data
    )


class _Moved(File):  # type: ignore[type-arg]
    """A file the local storage moves into place (as Django does with temporary uploads)."""

    def temporary_file_path(self) -> str:
        return str(self.file.name)


def make_file(directory: Path, tag: str, size: int) -> tuple[Path, str]:
    """A file of *size* bytes, different from every other (tag, position); its SHA-256."""
    path = directory / f"src-{tag}"
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for offset in range(0, size, MiB):
            head = f"{tag}:{offset}:".encode()
            chunk = (head + BLOCK)[: min(MiB, size - offset)]
            fh.write(chunk)
            digest.update(chunk)
    return path, digest.hexdigest()


def save_file(storage: Any, name: str, path: Path) -> str:
    with path.open("rb") as fh:
        return str(storage.save(name, _Moved(fh, name)))


def s3_sha256(client: Any, key: str) -> str:
    body = client.get_object(Bucket=settings.BUCKET, Key=key)["Body"]
    digest = hashlib.sha256()
    try:
        for chunk in iter(lambda: body.read(MiB), b""):
            digest.update(chunk)
    finally:
        body.close()
    return digest.hexdigest()


def local_sha256(storage: Any, name: str) -> str:
    digest = hashlib.sha256()
    with storage.open(name) as fh:
        for chunk in iter(lambda: fh.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def states(alias: str, names: list[str]) -> dict[str, str | None]:
    found = dict(
        StoredFile.objects.filter(alias=alias, name__in=names).values_list("name", "state")
    )
    return {name: found.get(name) for name in names}


#: The host worker's timing (tests/conftest.py: FAULT_WORKER_ENV), for the passes this process
#: runs as Celery beat would: they judge what is overdue with the workers' numbers.
AS_THE_HOST_WORKER = override_settings(
    QUEUED_STORAGE_LEASE_TIMEOUT=3,
    QUEUED_STORAGE_RETRY_DELAY=0.5,
    QUEUED_STORAGE_RETRY_MAX_DELAY=4,
    QUEUED_STORAGE_RECONCILE_AFTER=None,
)


def lost_count(alias: str) -> int:
    """Files of *alias* not on the remote whose local copy is gone, by the reconcile pass."""
    return reconcile(aliases=[alias]).lost_total


@pytest.fixture
def big(clean: Any, stack: ServiceStack) -> Iterator[Any]:
    """``clean``, with moto's data dropped before and after (big tests keep hundreds of MiB in
    its memory) and the bucket recreated."""

    def reset_moto() -> None:
        assert stack.moto is not None
        stack.moto.reset()
        clean.create_bucket(Bucket=settings.BUCKET)

    reset_moto()
    yield clean
    reset_moto()


# --- 1. kill -9 ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("count", "kills", "low", "high"),
    [
        pytest.param(4, 2, 16, 32, id="short"),
        pytest.param(20, 6, 8, 64, id="long", marks=pytest.mark.faults),
    ],
)
def test_kill_9_of_the_worker_during_transfers_loses_nothing(
    host_worker: Any,
    big: Any,
    capsys: Any,
    tmp_path: Path,
    count: int,
    kills: int,
    low: int,
    high: int,
) -> None:
    storage = storages["queued_host"]
    seed = fault_seed(capsys, f"kill-9[{count} files]")
    rng = random.Random(seed)
    sizes = [rng.randint(low, high) * MiB for _ in range(count)]
    expected: dict[str, str] = {}
    for i, size in enumerate(sizes):
        path, digest = make_file(tmp_path, f"kill{i}", size)
        expected[save_file(storage, f"kill/{i:02d}.bin", path)] = digest
    names = sorted(expected)
    group_kills = child_kills = 0
    interrupted: list[str] = []
    taken_over = requeued = aborted = 0
    began = time.monotonic()
    deadline = began + 240
    with override_settings(QUEUED_STORAGE_RECONCILE_AFTER=30):
        while True:
            now = states("queued_host", names)
            if all(s == State.REMOTE for s in now.values()):
                break
            assert time.monotonic() < deadline, f"not all transferred: {now}"
            running = [n for n, s in now.items() if s == State.TRANSFERRING]
            if group_kills + child_kills < kills and running:
                time.sleep(rng.uniform(0.0, 0.3))  # a random point of the transfer
                interrupted.extend(
                    n for n, s in states("queued_host", names).items() if s == State.TRANSFERRING
                )
                if (group_kills + child_kills) % 2 == 1 and len(host_worker.pids()) > 1:
                    # Only a pool process dies: Celery redelivers at once
                    # (reject_on_worker_lost); the lease makes the redelivery wait for it.
                    os.kill(host_worker.pids()[1], 9)
                    child_kills += 1
                else:
                    host_worker.kill()  # the whole process group: the machine died
                    group_kills += 1
                    host_worker.start(timeout=60)
            # What Celery beat does in production: a reconcile pass now and then.
            report = reconcile(aliases=["queued_host"])
            taken_over += len(report.taken_over)
            requeued += len(report.requeued)
            aborted += len(report.aborted_uploads)
            time.sleep(0.3)
        # The pass after the last transfer: aborts an upload a killed worker opened but never
        # recorded (it could not be resumed, and nothing else would ever abort it).
        aborted += len(reconcile(aliases=["queued_host"]).aborted_uploads)
    elapsed = time.monotonic() - began
    keys = remote_keys(big)
    verified = sum(1 for n in names if s3_sha256(big, n) == local_sha256(storage, n) == expected[n])
    uploads = open_uploads(big)
    lost = lost_count("queued_host")
    figures(
        capsys,
        f"kill-9[{count} files]",
        seed=seed,
        saved=len(names),
        mib=sum(sizes) // MiB,
        transferred=sum(1 for s in states("queued_host", names).values() if s == State.REMOTE),
        verified=verified,
        lost=lost,
        group_kills=group_kills,
        child_kills=child_kills,
        interrupted=len(set(interrupted)),
        reconcile_takeovers=taken_over,
        reconcile_requeued=requeued,
        orphan_uploads_aborted=aborted,
        extra_objects=len(set(keys) - set(names)),
        open_uploads=len(uploads),
        seconds=round(elapsed, 1),
    )
    # Transfers run at ~100 MB/s: the last files may all be through before every planned kill.
    assert group_kills >= 1 and group_kills + child_kills >= kills // 2
    assert keys == names  # all arrived, none duplicated under another name
    assert verified == len(names)
    assert lost == 0
    assert uploads == []  # the engine resumes (and on failure aborts) its multipart uploads


# --- 2. S3 down -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "outage",
    [pytest.param(3, id="3s"), pytest.param(15, id="15s", marks=pytest.mark.faults)],
)
def test_s3_down_while_transfers_run_files_stay_readable_and_all_arrive(
    host_worker: Any, big: Any, capsys: Any, tmp_path: Path, outage: float, s3_proxy: Any
) -> None:
    storage = storages["queued_host"]
    expected: dict[str, str] = {}
    for i in range(8):
        path, digest = make_file(tmp_path, f"outage{i}", 8 * MiB)
        expected[save_file(storage, f"outage/{i}.bin", path)] = digest
    names = sorted(expected)
    wait_for(
        lambda: any(
            s in (State.TRANSFERRING, State.REMOTE) for s in states("queued_host", names).values()
        ),
        what="the first transfer to start",
    )
    remote_before = [n for n, s in states("queued_host", names).items() if s == State.REMOTE]
    reads = failures = 0
    s3_proxy.go_down()
    try:
        end = time.monotonic() + outage
        while time.monotonic() < end:
            for name, state in states("queued_host", names).items():
                if state == State.REMOTE:
                    continue  # verified before the outage: served by S3, which is down
                try:
                    ok = (
                        storage.exists(name)
                        and storage.size(name) == 8 * MiB
                        and local_sha256(storage, name) == expected[name]
                    )
                except Exception:
                    ok = False
                reads += 1
                failures += not ok
            time.sleep(0.2)
    finally:
        s3_proxy.come_up()
    wait_for(
        lambda: (
            all(s == State.REMOTE for s in states("queued_host", names).values())
            or any(s == State.FAILED for s in states("queued_host", names).values())
        ),
        timeout=120,
        what="every file to reach S3 after the outage",
    )
    rows = {r.name: r for r in StoredFile.objects.filter(alias="queued_host", name__in=names)}
    verified = sum(1 for n in names if s3_sha256(big, n) == expected[n])
    lost = lost_count("queued_host")
    figures(
        capsys,
        f"s3-down[{outage}s]",
        saved=len(names),
        remote_before_outage=len(remote_before),
        local_reads_during_outage=reads,
        read_failures=failures,
        transferred=sum(1 for r in rows.values() if r.state == State.REMOTE),
        failed=sum(1 for r in rows.values() if r.state == State.FAILED),
        verified=verified,
        lost=lost,
        max_file_errors=max(r.attempts for r in rows.values()),
    )
    assert reads > 0 and failures == 0
    assert all(r.state == State.REMOTE for r in rows.values())
    # The outage is not the files' fault: it spent none of their budget of 3 retries.
    counted = {
        n: r.last_error for n, r in rows.items() if (r.attempts, r.retrying_since) != (0, None)
    }
    assert counted == {}, counted
    assert verified == len(names)
    assert lost == 0
    assert open_uploads(big) == []


# --- 3. FLUSHALL ----------------------------------------------------------------------------
def test_flushall_mid_run_changes_no_read_asks_s3_nothing_and_loses_nothing(
    host_worker: Any, big: Any, capsys: Any, tmp_path: Path, s3_proxy: Any
) -> None:
    storage = storages["queued_host"]
    expected: dict[str, str] = {}
    for i in range(10):
        path, digest = make_file(tmp_path, f"flush{i}", (i % 4 + 2) * MiB)
        expected[save_file(storage, f"flush/{i}.bin", path)] = digest
    names = sorted(expected)
    wait_for(
        lambda: sum(s == State.REMOTE for s in states("queued_host", names).values()) >= 3,
        what="three files on S3",
    )
    # A failed file stays local: its reads must not change either.
    stuck = storage.save("flush/failed.txt", ContentFile(b"served locally"))
    StoredFile.rows("queued_host", stuck).update(state=State.FAILED)
    observed = [n for n, s in states("queued_host", names).items() if s == State.REMOTE]
    observed.append(stuck)

    def look() -> list[Any]:
        return [
            (
                n,
                storage.exists(n),
                storage.size(n),
                storage.url(n).split("?")[0],
                storage.using_remote(n),
            )
            for n in observed
        ]

    before = look()
    s3_proxy.clear_log()
    with redis_client() as client:
        client.flushall()  # broker and cache
    after = look()
    seen = s3_proxy.requests
    asked = [r for r in seen if r.path.split("/", 2)[-1] in observed or r.query.startswith("list")]
    # The worker kept transferring the other files meanwhile; none of that was about state.
    with override_settings(QUEUED_STORAGE_RECONCILE_AFTER=2):
        requeued = 0

        def all_remote() -> bool:
            nonlocal requeued
            requeued += len(reconcile(aliases=["queued_host"]).requeued)
            return all(s == State.REMOTE for s in states("queued_host", names).values())

        wait_for(all_remote, timeout=90, what="every file on S3 after the flush")
    verified = sum(1 for n in names if s3_sha256(big, n) == expected[n])
    lost = lost_count("queued_host")
    figures(
        capsys,
        "flushall",
        saved=len(names) + 1,
        remote_at_flush=len(observed) - 1,
        reads_compared=len(before),
        reads_changed=sum(1 for a, b in zip(before, after, strict=True) if a != b),
        s3_requests_to_learn_state=len(asked),
        requeued_by_reconcile=requeued,
        transferred=len(names),
        verified=verified,
        lost=lost,
    )
    assert after == before
    assert asked == []
    assert verified == len(names)
    assert lost == 0


# --- 4. broker down -------------------------------------------------------------------------
def test_broker_down_while_saving_then_reconcile_transfers_everything(
    host_worker: Any, clean: Any, capsys: Any, broker_proxy: Any
) -> None:
    storage = storages["queued_host"]
    payloads = {f"no-broker/{i}.txt": os.urandom(1000 + i) for i in range(5)}
    names: list[str] = []
    broker_proxy.go_down()
    try:
        began = time.monotonic()
        for name, data in payloads.items():
            names.append(storage.save(name, ContentFile(data)))
        save_seconds = time.monotonic() - began
        readable = 0
        for name, data in zip(names, payloads.values(), strict=True):
            with storage.open(name) as fh:
                readable += fh.read() == data
        pending = sum(s == State.PENDING for s in states("queued_host", names).values())
        rows = StoredFile.objects.filter(alias="queued_host", name__in=names)
        wait_for(
            lambda: rows.filter(dispatch_refused__isnull=False).count() == len(names),
            timeout=10,
            what="every save's refusal recorded",
        )
        dispatch.forget_refused()  # the pass is under test here, not the publisher's backlog
    finally:
        broker_proxy.come_up()
    time.sleep(1)  # no message was sent: nothing moves without the reconcile pass
    assert all(s == State.PENDING for s in states("queued_host", names).values())
    with override_settings(QUEUED_STORAGE_RECONCILE_AFTER=0.5):
        time.sleep(0.6)
        call_command("queued_storage_reconcile", "--storage", "queued_host", verbosity=0)
    wait_for(
        lambda: all(s == State.REMOTE for s in states("queued_host", names).values()),
        timeout=60,
        what="the reconcile pass to get every file transferred",
    )
    verified = _intact_on_s3(clean, names, payloads)
    lost = lost_count("queued_host")
    figures(
        capsys,
        "broker-down",
        saved=len(names),
        save_seconds=round(save_seconds, 1),
        readable_while_down=readable,
        pending_while_down=pending,
        transferred=len(names),
        verified=verified,
        lost=lost,
    )
    assert readable == pending == len(names)
    assert verified == len(names)
    assert lost == 0


_REFUSED_AT_START_UP = re.compile(
    r"INFO/MainProcess\] worker start-up on host \S+: [^\n]*queued (\d+) the broker had refused"
)


def test_files_saved_while_the_broker_was_down_go_as_soon_as_a_worker_starts(
    host_worker: Any, clean: Any, capsys: Any, broker_proxy: Any
) -> None:
    """No worker runs and the broker refuses: the saves record the refusal on their rows. The
    worker that starts next queues them itself, at once: its RECONCILE_AFTER is 120 s, so the
    overdue path (and a scheduled pass, 5 min) would have left them waiting.

    The suite's host worker is stopped meanwhile: its own second start-up pass (a few seconds
    after it started, in an earlier test) would otherwise queue the files first."""
    host_worker.stop()
    try:
        _refused_files_go_when_a_worker_starts(clean, capsys, broker_proxy)
    finally:
        host_worker.start(timeout=60)


def _refused_files_go_when_a_worker_starts(clean: Any, capsys: Any, broker_proxy: Any) -> None:
    storage = storages["queued_host"]
    payloads = {f"refused/{i}.txt": os.urandom(500 + i) for i in range(4)}
    broker_proxy.go_down()
    try:
        names = [storage.save(name, ContentFile(data)) for name, data in payloads.items()]
        rows = StoredFile.objects.filter(alias="queued_host", name__in=names)
        wait_for(  # the first save's refusal is recorded by the publisher thread
            lambda: (
                rows.filter(state=State.PENDING, dispatch_refused__isnull=False).count()
                == len(names)
            ),
            timeout=10,
            what="every save's refusal recorded",
        )
        dispatch.forget_refused()  # the starting worker is under test, not the publisher
    finally:
        broker_proxy.come_up()
    assert not rows.filter(overdue(timezone.now(), 120)).exists()
    env = {**FAULT_WORKER_ENV, "QS_FAULT_LEASE_TIMEOUT": "120"}  # RECONCILE_AFTER: 120 s
    worker = make_worker("refused", queues=[host_queue()], env=env)
    caches["default"].clear()  # no earlier start-up pass of this host holds its guard
    worker.start(timeout=60)
    try:
        wait_for(
            lambda: rows.filter(state=State.REMOTE).count() == len(names),
            timeout=60,
            what="every file on S3 after the worker started, without a reconcile pass",
        )
        log = worker.log_text()
    finally:
        worker.stop()
        caches["default"].clear()  # its guard (120 s) would hold back the next worker's pass
    queued = [int(n) for n in _REFUSED_AT_START_UP.findall(log)]
    verified = _intact_on_s3(clean, names, payloads)
    figures(
        capsys,
        "broker-refused-then-worker-start",
        saved=len(names),
        queued_at_start_up=sum(queued),
        verified=verified,
        lost=lost_count("queued_host"),
    )
    assert sum(queued) == len(names)
    assert verified == len(names)
    assert not rows.filter(dispatch_refused__isnull=False).exists()


# --- 5. concurrent saves of one name --------------------------------------------------------
_SAVER = """
import hashlib, json, os, sys, time
import django
django.setup()
import tests.celery_app  # the project's Celery app, as its __init__.py would load it
from django.core.files.base import ContentFile
from django.core.files.storage import storages
proc, count, start = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
storage = storages["queued_host_delete"]
while time.time() < start:
    time.sleep(0.001)
out = []
for i in range(count):
    data = f"process {proc} save {i} ".encode() + os.urandom(2000)
    name = storage.save("same.bin", ContentFile(data))
    out.append([name, hashlib.sha256(data).hexdigest()])
print(json.dumps(out))
"""


def test_50_concurrent_saves_of_one_name_from_4_processes_never_overwrite(
    host_worker: Any, clean: Any, capsys: Any
) -> None:
    start = time.time() + 3  # all four begin together, after Django's start-up
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    counts = [13, 13, 12, 12]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(p), str(n), str(start)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p, n in enumerate(counts)
    ]
    saved: list[tuple[str, str]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        saved.extend(tuple(item) for item in json.loads(out.strip().splitlines()[-1]))
    names = [name for name, _ in saved]
    wait_for(
        lambda: all(s == State.REMOTE for s in states("queued_host_delete", names).values()),
        timeout=120,
        what="all 50 files on S3",
    )
    wait_for(
        lambda: (
            not StoredFile.objects.filter(
                alias="queued_host_delete", name__in=names, local_exists=True
            ).exists()
        ),
        what="every local copy deleted (delete_local)",
    )
    keys = remote_keys(clean)
    verified = sum(1 for name, digest in saved if s3_sha256(clean, name) == digest)
    lost = lost_count("queued_host_delete")
    figures(
        capsys,
        "same-name x50",
        processes=len(procs),
        saved=len(saved),
        distinct_names=len(set(names)),
        remote_objects=len(keys),
        verified=verified,
        overwritten=len(saved) - verified,
        lost=lost,
    )
    assert len(saved) == 50
    assert len(set(names)) == 50
    assert keys == sorted(names)
    assert verified == 50
    assert lost == 0


# --- 6. a local file that changes under its transfer ----------------------------------------
def test_local_bytes_changing_between_upload_and_verify_are_never_recorded_remote(
    worker: Any, clean: Any, capsys: Any, tmp_path: Path
) -> None:
    storage = storages["default"]  # the main worker: 3 retries, 0.5-2 s apart
    path, _ = make_file(tmp_path, "changing", 6 * MiB)
    name = save_file(storage, "changing/log.bin", path)
    local = Path(storage.local.path(name))
    stop = threading.Event()
    writes = 0

    def keep_changing() -> None:
        nonlocal writes
        fd = os.open(local, os.O_WRONLY)
        try:
            while not stop.is_set():
                os.pwrite(fd, writes.to_bytes(8, "big"), 3 * MiB)
                writes += 1
                time.sleep(0.002)
        finally:
            os.close(fd)

    seen: set[str] = set()
    changer = threading.Thread(target=keep_changing)
    changer.start()
    try:

        def failed() -> bool:
            row = StoredFile.get_row("default", name)
            assert row is not None
            seen.add(row.state)
            return row.state == State.FAILED

        wait_for(failed, timeout=60, what="the changing file to fail")
    finally:
        stop.set()
        changer.join()
    row = StoredFile.get_row("default", name)
    assert row is not None
    kept = local.exists() and local.stat().st_size == 6 * MiB
    objects = remote_keys(clean)
    uploads = open_uploads(clean)
    # The file stopped changing: a retry on request ships it.
    storage.transfer(name)
    wait_for(
        lambda: StoredFile.get_row("default", name).state == State.REMOTE,  # type: ignore[union-attr]
        timeout=60,
        what="the retried file on S3",
    )
    verified = s3_sha256(clean, name) == local_sha256(storage, name)
    figures(
        capsys,
        "changing-file",
        saved=1,
        attempts=row.attempts,
        states_seen="/".join(sorted(seen)),
        recorded_remote_while_changing=int(State.REMOTE in seen),
        local_kept=int(kept),
        objects_left=len(objects),
        open_uploads=len(uploads),
        reason=repr(row.last_error[:70]),
        transferred_after_it_stopped=1,
        verified=int(verified),
        lost=lost_count("default"),
    )
    assert State.REMOTE not in seen and row.transferred is None
    assert row.state == State.FAILED and row.attempts == settings.QUEUED_STORAGE_RETRIES + 1
    assert name in row.last_error
    assert any(
        reason in row.last_error
        for reason in ("changed while it was transferred", "does not match", "the bytes sent have")
    )
    assert kept
    assert objects == [] and uploads == []
    assert verified


# --- 7. delete during the transfer ----------------------------------------------------------
@pytest.mark.parametrize("parts_done", [0, 2, 5])
def test_delete_during_the_s3_transfer_brings_nothing_back(
    worker: Any, clean: Any, capsys: Any, tmp_path: Path, parts_done: int
) -> None:
    """The delete lands when the worker has recorded *parts_done* of the file's ten parts:
    progress, not a clock, decides when, so the race is hit however fast the transfer is."""
    storage = storages["default"]
    path, _ = make_file(tmp_path, "deleted", 48 * MiB)
    log = worker.log_text
    gone_before, done_before = log().count(": 'gone'"), log().count(": 'transferred'")
    name = save_file(storage, f"deleted-{parts_done}.bin", path)
    deadline = time.monotonic() + 30
    while (
        (r := StoredFile.get_row("default", name)) is None
        or r.state != State.TRANSFERRING
        or len(r.parts) < parts_done
    ):
        assert time.monotonic() < deadline, "the transfer did not reach that point"
        time.sleep(0.002)
    storage.delete(name)
    try:
        wait_for(
            lambda: (
                log().count(": 'gone'") > gone_before
                or log().count(": 'transferred'") > done_before
            ),
            timeout=60,
            what="the worker to finish with the deleted file",
        )
    except BaseException:
        print("\n".join(log().splitlines()[-60:]))
        raise
    time.sleep(2)  # nothing may come back afterwards either
    objects = remote_keys(clean)
    uploads = open_uploads(clean)
    gone = log().count(": 'gone'") > gone_before
    figures(
        capsys,
        f"delete-during-transfer[after {parts_done} parts]",
        saved=1,
        deleted_mid_transfer=int(gone),
        row_left=int(StoredFile.get_row("default", name) is not None),
        local_left=int(Path(storage.local.path(name)).exists()),
        objects_left=len(objects),
        open_uploads=len(uploads),
        lost=0,
    )
    assert gone, "the delete did not race the transfer (the transfer had finished)"
    assert StoredFile.get_row("default", name) is None
    assert not Path(storage.local.path(name)).exists()
    assert objects == []
    assert uploads == []
    assert not storage.exists(name)


# --- 8. a whole worker killed while it held the retries -------------------------------------
#: The start-up pass's line as Celery logs it (the test settings log it to the console too).
def test_a_pool_process_killed_mid_transfer_its_file_goes_once_its_lease_expires(
    host_worker: Any, clean: Any, capsys: Any, s3_proxy: Any
) -> None:
    """The pick-up time after a kill (docs/reliability.md): the pool process holding a
    transfer is killed while its PUT is held at the S3 proxy. The message was acknowledged
    when the transfer started, so nothing is delivered again: the worker's watch takes the
    lease back when it expires (a 3 s lease) and queues the file, which a pool process of the
    same worker then sends once."""
    storage = storages["queued_host"]
    data = os.urandom(70_000)
    held = s3_proxy.interrupt_next("PUT")
    name = storage.save("killed/mid-transfer.bin", ContentFile(data))
    assert held.wait(30), "the worker's PUT never reached the S3 proxy"
    row = StoredFile.get_row("queued_host", name)
    assert row is not None and row.state == State.TRANSFERRING
    leased_by = int(row.lease_owner.split(":")[1])  # host:pid:token
    assert leased_by in host_worker.pids()[1:]
    os.kill(leased_by, 9)
    killed = time.monotonic()
    held.release()
    wait_for(
        lambda: StoredFile.get_row("queued_host", name).state == State.REMOTE,  # type: ignore[union-attr]
        timeout=60,
        what="the file of the killed pool process on S3",
    )
    seconds = time.monotonic() - killed
    log = host_worker.log_text()
    figures(
        capsys,
        "pool-process-killed-mid-transfer",
        lease_timeout=3,
        seconds_from_kill_to_remote=round(seconds, 1),
        taken_back_by_the_watch=bool(re.search(r"watch on host \S+: [^\n]*taken_over=1", log)),
    )
    assert s3_bytes(clean, name) == data
    assert open_uploads(clean) == []
    found = StoredFile.get_row("queued_host", name)
    assert found is not None and (found.attempts, found.retrying_since) == (0, None)
    assert re.search(r"watch on host \S+: [^\n]*taken_over=1", log), log


_START_UP = re.compile(
    r"INFO/MainProcess\] worker start-up on host \S+: "
    r"re-queued (\d+) overdue transfer\(s\) and (\d+) expired lease\(s\), "
    r"queued \d+ the broker had refused and (\d+) retries due"
)


def start_up_requeues(log: str) -> int:
    """Transfers the start-up passes in a worker's *log* re-queued (overdue, expired, due)."""
    return sum(int(a) + int(b) + int(c) for a, b, c in _START_UP.findall(log))


def test_a_restarted_worker_requeues_what_the_killed_one_held_without_a_reconcile_pass(
    host_worker: Any, clean: Any, capsys: Any, s3_proxy: Any
) -> None:
    """S3 is down, so every file waits for a retry (due in the ledger, ``retry_at``); the whole
    worker is killed with whatever it was sending or had prefetched (Redis would hand an
    unacknowledged message out again only after its visibility_timeout, an hour). The worker
    that starts next queues them itself."""
    storage = storages["queued_host"]
    payloads = {f"held/{i}.bin": os.urandom(3000 + i) for i in range(6)}
    s3_proxy.go_down()
    names = [storage.save(name, ContentFile(data)) for name, data in payloads.items()]
    rows = StoredFile.objects.filter(alias="queued_host", name__in=names)
    wait_for(
        lambda: rows.filter(retrying_since__isnull=False).count() == len(names),
        what="every file to fail once on the outage",
    )
    host_worker.kill()
    held = rows.filter(state=State.PENDING).count()
    with AS_THE_HOST_WORKER:

        def all_overdue() -> bool:
            now = timezone.now()
            lost = Q(state=State.PENDING) & overdue(now, 3) | Q(
                state=State.TRANSFERRING, lease_expires__lt=now
            )
            return rows.filter(lost).count() == len(names)

        wait_for(all_overdue, what="the held messages to be overdue by the worker's numbers")
    s3_proxy.come_up()
    host_worker.start(timeout=60)
    started = time.monotonic()
    wait_for(
        lambda: rows.filter(state=State.REMOTE).count() == len(names),
        timeout=60,
        what="every file on S3 without a reconcile pass",
    )
    requeued = start_up_requeues(host_worker.log_text())
    verified = _intact_on_s3(clean, names, payloads)
    figures(
        capsys,
        "worker-killed-holding-retries",
        saved=len(names),
        pending_at_kill=held,
        requeued_at_start_up=requeued,
        seconds_from_start_to_all_remote=round(time.monotonic() - started, 1),
        verified=verified,
        lost=lost_count("queued_host"),
    )
    assert requeued >= 1
    assert verified == len(names)
    assert all(r.attempts == 0 for r in rows)  # the outage and the kill spent no budget


# --- 9. two minutes of kills and outages ----------------------------------------------------
@pytest.mark.faults
def test_kills_and_s3_outages_in_turn_for_two_minutes_fail_no_file_and_lose_none(
    host_worker: Any, big: Any, capsys: Any, tmp_path: Path, s3_proxy: Any
) -> None:
    """Files are saved throughout a 120 s schedule that, every 4-10 s, kills the whole worker
    (restarted 0-4 s later), kills one of its pool processes, takes S3 down for 3-12 s, or has
    S3 answer 5xx. With the old policy (every fault one attempt of a budget of 3 retries) the
    files failed after a few faults; none may fail now, and all must arrive, byte-identical.
    The test runs a reconcile pass every 5 s, as Celery beat would."""
    storage = storages["queued_host"]
    seed = fault_seed(capsys, "kills-and-outages[120s]")
    rng = random.Random(seed)
    log_offset = host_worker.logfile.stat().st_size if host_worker.logfile.exists() else 0
    expected: dict[str, str] = {}
    mib = 0
    faults: Counter[str] = Counter()
    failed_seen: set[str] = set()
    outage_seconds = 0.0
    requeued = taken_over = 0
    began = time.monotonic()
    schedule_end = began + 120
    next_save, next_pass = began, began + 5
    next_fault = began + rng.uniform(3, 6)
    s3_back_at: float | None = None
    restart_at: float | None = None
    kinds: list[str] = []

    def beat() -> None:
        nonlocal requeued, taken_over
        report = reconcile(aliases=["queued_host"])
        requeued += len(report.requeued)
        taken_over += len(report.taken_over)

    with AS_THE_HOST_WORKER:
        while (now := time.monotonic()) < schedule_end:
            if now >= next_save and len(expected) < 40:
                size = rng.randint(1, 20) * MiB
                path, digest = make_file(tmp_path, f"chaos{len(expected)}", size)
                expected[save_file(storage, f"chaos/{len(expected):02d}.bin", path)] = digest
                mib += size // MiB
                next_save = now + rng.uniform(1.5, 3.5)
            if s3_back_at is not None and now >= s3_back_at:
                s3_proxy.come_up()
                s3_back_at = None
            if restart_at is not None and now >= restart_at:
                host_worker.start(timeout=60)
                restart_at = None
            if now >= next_fault and s3_back_at is None and restart_at is None:
                if not kinds:  # every kind once per round, in a random order
                    kinds = ["kill-worker", "kill-pool-process", "s3-down", "s3-5xx"]
                    rng.shuffle(kinds)
                kind = kinds.pop()
                if kind == "kill-worker":
                    host_worker.kill()  # the whole process group: the machine died
                    restart_at = now + rng.uniform(0, 4)
                elif kind == "kill-pool-process" and len(host_worker.pids()) > 1:
                    os.kill(rng.choice(host_worker.pids()[1:]), 9)
                elif kind == "s3-down":
                    down = rng.uniform(3, 12)
                    s3_proxy.go_down()
                    s3_back_at = now + down
                    outage_seconds += down
                elif kind == "s3-5xx":
                    s3_proxy.fail_next(rng.randint(5, 40), status=rng.choice([500, 503]))
                faults[kind] += 1
                next_fault = now + rng.uniform(4, 10)
            if now >= next_pass:
                beat()
                next_pass = now + 5
            failed_seen.update(
                StoredFile.objects.filter(alias="queued_host", state=State.FAILED).values_list(
                    "name", flat=True
                )
            )
            time.sleep(0.2)
        # The schedule is over: S3 answers, the worker runs, and everything must arrive.
        s3_proxy.come_up()
        s3_proxy.clear_faults()
        if restart_at is not None:
            host_worker.start(timeout=60)
        names = sorted(expected)

        def all_remote() -> bool:
            found = states("queued_host", names)
            failed_seen.update(n for n, s in found.items() if s == State.FAILED)
            if failed_seen:
                return True  # reported below
            if all(s == State.REMOTE for s in found.values()):
                return True
            beat()
            time.sleep(1)
            return False

        wait_for(all_remote, timeout=180, what="every file on S3 after the schedule")
        aborted = len(reconcile(aliases=["queued_host"]).aborted_uploads)
    rows = {r.name: r for r in StoredFile.objects.filter(alias="queued_host", name__in=names)}
    keys = remote_keys(big)
    verified = sum(1 for n in names if s3_sha256(big, n) == expected[n])
    uploads = open_uploads(big)
    log = host_worker.logfile.read_text(errors="replace")[log_offset:]
    figures(
        capsys,
        "kills-and-outages[120s]",
        seed=seed,
        saved=len(names),
        mib=mib,
        worker_kills=faults["kill-worker"],
        pool_process_kills=faults["kill-pool-process"],
        s3_outages=faults["s3-down"],
        s3_outage_seconds=round(outage_seconds, 1),
        s3_5xx_bursts=faults["s3-5xx"],
        failed=len(failed_seen),
        transferred=sum(1 for r in rows.values() if r.state == State.REMOTE),
        verified=verified,
        lost=lost_count("queued_host"),
        max_file_errors=max(r.attempts for r in rows.values()),
        requeued_by_passes=requeued,
        taken_over_by_passes=taken_over,
        requeued_at_start_up=start_up_requeues(log),
        orphan_uploads_aborted=aborted,
        extra_objects=len(set(keys) - set(names)),
        open_uploads=len(uploads),
        seconds=round(time.monotonic() - began, 1),
    )
    assert failed_seen == set(), {n: rows[n].last_error for n in failed_seen if n in rows}
    assert faults["kill-worker"] >= 2 and faults["s3-down"] >= 2
    assert keys == names
    assert verified == len(names)
    assert all(r.state == State.REMOTE for r in rows.values())
    assert uploads == []
