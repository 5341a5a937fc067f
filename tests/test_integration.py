"""End to end with real parts: a Celery worker process, Redis, the moto S3 server.

Every test here saves through the Storage API or a model in this process, lets the real worker
transfer the file, and looks at the result in the ledger, the cache, the local disk and S3.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import transaction
from django.test import override_settings

from queued_storage import dispatch
from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage
from queued_storage.transfer import remote_exists_within
from tests.harness.suite import (
    broker_messages,
    need,
    purge_queues,
    redis_client,
    s3_bytes,
    wait_for,
)
from tests.harness.workers import PROJECT_ROOT
from tests.testapp.models import Document, LegacyDocument

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def row_state(alias: str, name: str) -> str | None:
    row = StoredFile.get_row(alias, name)
    return None if row is None else row.state


def wait_remote(
    alias: str, name: str, timeout: float = 30, *, storage: QueuedStorage | None = None
) -> StoredFile:
    """The row once it is ``remote`` and the state cache says so too (the worker publishes
    to the cache just after the row commits: a read between the two still goes local)."""
    storage = storage or storages[alias]

    def done() -> StoredFile | None:
        row = StoredFile.get_row(alias, name)
        if row is not None and row.state == State.FAILED:
            pytest.fail(f"{name!r} failed: {row.last_error}")
        if row is None or row.state != State.REMOTE:
            return None
        return row if storage.using_remote(name) else None

    return wait_for(done, timeout=timeout, what=f"{name!r} to reach the remote")  # type: ignore[no-any-return]


def test_model_file_is_served_locally_then_transferred_then_from_s3(
    worker: Any, clean: Any
) -> None:
    with transaction.atomic():
        doc = Document.objects.create(title="t", file=ContentFile(b"first bytes", name="a.txt"))
        name = doc.file.name
        # Before commit nothing is dispatched: the file is served from the local copy.
        assert doc.file.storage.using_local(name)
        assert doc.file.url == f"/staging/{name}"
        with doc.file.open("rb") as fh:
            assert fh.read() == b"first bytes"
        assert doc.file.state == State.PENDING
    row = wait_remote("default", name)
    assert row.checksum == hashlib.md5(b"first bytes").hexdigest()
    assert row.size == len(b"first bytes")
    fresh = Document.objects.get(pk=doc.pk)
    assert fresh.file.is_remote
    url = fresh.file.url
    assert url.startswith(settings.S3_ENDPOINT)
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == b"first bytes"
    assert s3_bytes(clean, name) == b"first bytes"
    # The local copy is kept (delete_local is off by default).
    assert Path(fresh.file.storage.local.path(name)).exists()


def test_delete_local_leaves_only_remote_and_reads_never_fail(worker: Any, clean: Any) -> None:
    storage = storages["queued_delete"]
    payload = b"x" * 300_000
    with transaction.atomic():
        name = storage.save("keep-reading.bin", ContentFile(payload))
    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        try:
            while not stop.is_set():
                with storage.open(name) as fh:
                    if fh.read() != payload:
                        failures.append("wrong bytes")
                if storage.size(name) != len(payload) or not storage.exists(name):
                    failures.append("wrong size/exists")
                reads += 1
        except Exception as err:
            failures.append(repr(err))
        finally:
            from django.db import connections

            connections.close_all()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        row = wait_remote("queued_delete", name)
        wait_for(lambda: not Path(storage.local.path(name)).exists(), what="local copy deleted")
        for _ in range(20):  # keep reading a little after the local copy is gone
            with storage.open(name) as fh:
                assert fh.read() == payload
    finally:
        stop.set()
        thread.join()
    print(f"reads during the transfer: {reads}, failures: {len(failures)}")
    assert failures == []
    assert reads > 0
    assert not StoredFile.get_row("queued_delete", name).local_exists  # type: ignore[union-attr]
    assert row.size == len(payload)
    assert s3_bytes(clean, name) == payload


def test_same_name_twice_never_overwrites_even_after_local_delete(worker: Any, clean: Any) -> None:
    storage = storages["queued_delete"]
    with transaction.atomic():
        first = storage.save("photo.jpg", ContentFile(b"first photo"))
    wait_remote("queued_delete", first)
    wait_for(lambda: not Path(storage.local.path(first)).exists(), what="local copy deleted")
    with transaction.atomic():
        second = storage.save("photo.jpg", ContentFile(b"second photo"))
    wait_remote("queued_delete", second)
    assert first == "photo.jpg"
    assert second != first
    assert s3_bytes(clean, first) == b"first photo"
    assert s3_bytes(clean, second) == b"second photo"


def _parked_messages() -> list[dict[str, Any]]:
    return broker_messages("parked")


@pytest.fixture
def parked(clean: Any) -> Any:
    need("redis")
    purge_queues("parked")
    yield
    purge_queues("parked")


def test_task_message_carries_only_alias_and_name(parked: Any) -> None:
    storage = storages["queued_parked"]
    with transaction.atomic():
        name = storage.save("secret-free.txt", ContentFile(b"x"))
    messages = _parked_messages()
    assert len(messages) == 1
    raw = json.dumps(messages[0])
    body = json.loads(base64.b64decode(messages[0]["body"]))
    args, kwargs, _embed = body
    assert args == ["queued_parked", name]
    assert kwargs == {}
    assert messages[0]["headers"]["task"] == "queued_storage.tasks.transfer"
    for secret in (settings.S3_SECRET, settings.S3_OPTIONS["access_key"], "endpoint", "bucket"):
        assert secret not in raw
        assert secret not in base64.b64decode(messages[0]["body"]).decode()


def test_rolled_back_save_ships_nothing(parked: Any) -> None:
    storage = storages["queued_parked"]
    saved: list[str] = []

    def failing_view() -> None:
        with transaction.atomic():
            saved.append(storage.save("rolled-back.txt", ContentFile(b"x")))
            raise RuntimeError("the view failed after saving")

    with pytest.raises(RuntimeError):
        failing_view()
    name = saved[0]
    assert _parked_messages() == []
    assert StoredFile.get_row("queued_parked", name) is None
    with transaction.atomic():
        storage.save("committed.txt", ContentFile(b"x"))
    assert len(_parked_messages()) == 1


_SAVE_AND_EXIT = """
import sys
import django
django.setup()
import tests.celery_app  # the project's Celery app, as its __init__.py would load it
from django.core.files.base import ContentFile
from django.core.files.storage import storages
storage = storages["queued_parked"]
for i in range(int(sys.argv[1])):
    print(storage.save(f"script/{i}.txt", ContentFile(b"saved by a script")), flush=True)
"""


def test_a_script_that_saves_and_exits_at_once_still_sends_every_message(parked: Any) -> None:
    """A save does not wait for the broker (its message goes through the process's publisher
    thread); a process that ends right after its saves waits for the thread at exit, so no
    message is left behind in it."""
    count = 40
    done = subprocess.run(
        [sys.executable, "-c", _SAVE_AND_EXIT, str(count)],
        cwd=PROJECT_ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONPATH": str(PROJECT_ROOT),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names = done.stdout.split()
    assert len(names) == count
    sent = [json.loads(base64.b64decode(m["body"]))[0][1] for m in _parked_messages()]
    assert sorted(sent) == sorted(names)
    assert not StoredFile.objects.filter(
        alias="queued_parked", name__in=names, dispatch_refused__isnull=False
    ).exists()


def test_refused_broker_leaves_file_pending_and_readable(
    worker: Any, clean: Any, caplog: Any, broker_proxy: Any
) -> None:
    storage = storages["default"]
    broker_proxy.go_down()
    try:
        with caplog.at_level(logging.WARNING, logger="queued_storage"), transaction.atomic():
            name = storage.save("no-broker.txt", ContentFile(b"still here"))
        # The request did not wait for the broker; the publisher thread records the refusal.
        refused = wait_for(
            lambda: StoredFile.objects.filter(
                alias="default", name=name, dispatch_refused__isnull=False
            ).first(),
            timeout=10,
            what="the refusal recorded on the row, for the next pass",
        )
    finally:
        broker_proxy.come_up()
    assert f"could not queue the transfer of {name!r}" in caplog.text
    assert row_state("default", name) == State.PENDING
    with storage.open(name) as fh:
        assert fh.read() == b"still here"
    assert storage.using_local(name)
    assert refused.state == State.PENDING
    # Once the broker is back, a manual transfer (or the reconcile pass) ships it.
    assert storage.transfer(name) is not None
    wait_remote("default", name)
    assert s3_bytes(clean, name) == b"still here"
    sent = StoredFile.get_row("default", name)
    assert sent is not None and sent.dispatch_refused is None


@pytest.mark.faults  # waits for the publisher's next try (5 s): make test-faults
def test_saves_the_broker_refused_go_out_once_it_is_back_with_no_pass_or_new_save(
    worker: Any, clean: Any, broker_proxy: Any
) -> None:
    """The publisher thread keeps the refused messages and tries the broker again by itself
    (every PAUSE_AFTER_REFUSAL seconds): no reconcile pass, no worker start, no later save."""
    storage = storages["default"]
    broker_proxy.go_down()
    try:
        names = [storage.save(f"back/{i}.txt", ContentFile(b"back %d" % i)) for i in range(3)]
        rows = StoredFile.objects.filter(alias="default", name__in=names)
        wait_for(
            lambda: rows.filter(state=State.PENDING, dispatch_refused__isnull=False).count() == 3,
            timeout=10,
            what="the three refusals recorded",
        )
    finally:
        broker_proxy.come_up()
    for name in names:
        wait_remote("default", name)
    assert [s3_bytes(clean, name) for name in names] == [b"back %d" % i for i in range(3)]


def test_saves_while_the_broker_hangs_do_not_wait_on_it_and_go_out_once_it_answers(
    worker: Any, clean: Any, broker_proxy: Any
) -> None:
    """The broker stops answering on its open connection (a partition, a stalled server):
    the first save leaves its message with the publisher thread (the request does not wait),
    which is stuck on the broker; once that attempt has lasted DISPATCH_WAIT, the saves after
    it do not try and mark their rows refused. Once the broker answers, every file reaches S3
    with no pass and no person acting."""
    storage = storages["default"]
    # The publisher's connection is open and its last message went (no refusal of late).
    wait_remote("default", storage.save("hung/warm.txt", ContentFile(b"warm")))
    broker_proxy.freeze()
    try:
        first = storage.save("hung/first.txt", ContentFile(b"first"))
        stuck = storage.result
        wait_for(
            lambda: dispatch._publisher._stuck(time.monotonic()),
            timeout=10,
            what="the publisher's attempt to outlast DISPATCH_WAIT",
        )
        later = [storage.save(f"hung/{i}.txt", ContentFile(b"later %d" % i)) for i in range(3)]
        results = storage.result
        rows = StoredFile.objects.filter(alias="default", name__in=later)
        assert rows.filter(state=State.PENDING, dispatch_refused__isnull=False).count() == 3
        assert row_state("default", first) == State.PENDING
    finally:
        broker_proxy.thaw()
    assert stuck is not None  # handed to the thread, not known to be refused
    assert results is None  # not tried while the broker hung: marked refused
    for name in [first, *later]:
        wait_remote("default", name)
    assert s3_bytes(clean, first) == b"first"
    assert [s3_bytes(clean, name) for name in later] == [b"later %d" % i for i in range(3)]


def test_flushing_redis_changes_no_read_and_asks_s3_nothing(
    worker: Any, clean: Any, s3_proxy: Any
) -> None:
    storage = storages["default"]
    with transaction.atomic():
        remote_name = storage.save("flushed.txt", ContentFile(b"on s3"))
    wait_remote("default", remote_name)
    with transaction.atomic():
        local_name = storage.save("local-only.txt", ContentFile(b"here"))
        # Stays local: failed in the save's own transaction, so the worker, which gets the
        # message at the commit, never finds it pending (a worker quicker than this test
        # would otherwise send it first).
        StoredFile.rows("default", local_name).update(state=State.FAILED)

    def observe() -> list[Any]:
        return [
            (
                n,
                storage.exists(n),
                storage.size(n),
                storage.url(n).split("?")[0],
                storage.using_remote(n),
            )
            for n in (remote_name, local_name)
        ]

    before = observe()
    with redis_client() as client:
        client.flushall()
    s3_proxy.clear_log()
    after = observe()
    assert after == before
    assert s3_proxy.requests == []  # no HEAD, no GET: state came from the ledger
    # Reading the content does talk to S3, for that object only (django-storages' S3File may
    # HEAD it before the GET): that is the content, not the state.
    with storage.open(remote_name) as fh:
        assert fh.read() == b"on s3"
    assert "GET" in [r[0] for r in s3_proxy.requests]
    assert {r[1] for r in s3_proxy.requests} == {f"/{settings.BUCKET}/{remote_name}"}


def test_transient_s3_errors_are_retried_then_succeed(
    worker: Any, clean: Any, s3_proxy: Any
) -> None:
    storage = storages["default"]
    with transaction.atomic():
        name = storage.save("flaky.txt", ContentFile(b"eventually"))
        s3_proxy.fail_next(6, status=503)
    row = wait_remote("default", name, timeout=60)
    # 5xx are the infrastructure's failures, not the file's: they spend none of its budget,
    # and the success ends the run of transient failures.
    assert (row.attempts, row.retrying_since) == (0, None)
    assert s3_bytes(clean, name) == b"eventually"


def test_missing_local_file_fails_permanently_with_its_reason(worker: Any, clean: Any) -> None:
    storage = storages["queued_delayed"]
    name = storage.save("vanished.txt", ContentFile(b"x"))
    Path(storage.local.path(name)).unlink()
    storage.transfer(name)
    row = wait_for(
        lambda: (r := StoredFile.get_row("queued_delayed", name)) and r.state == State.FAILED and r,
        what="the row to fail",
    )
    assert row.attempts == 1  # permanent: not retried
    assert f"The local copy of {name!r} is missing" in row.last_error
    assert clean.list_objects_v2(Bucket=settings.BUCKET).get("KeyCount") == 0


def test_old_api_code_built_storage_transfers_and_deletes(worker: Any, clean: Any) -> None:
    with transaction.atomic():
        doc = LegacyDocument.objects.create(file=ContentFile(b"old style", name="legacy.txt"))
    storage = doc.file.storage
    name = doc.file.name
    assert storage.alias.startswith("qs-")
    wait_remote(storage.alias, name, storage=storage)
    wait_for(lambda: not Path(storage.local.path(name)).exists(), what="local copy deleted")
    assert storage.using_remote(name)
    assert storage.get_storage(name) is storage.remote
    assert s3_bytes(clean, name) == b"old style"
    with LegacyDocument.objects.get(pk=doc.pk).file.open("rb") as fh:
        assert fh.read() == b"old style"


def test_save_succeeds_while_s3_refuses_connections(
    worker: Any, clean: Any, caplog: Any, s3_proxy: Any
) -> None:
    storage = storages["default"]
    s3_proxy.go_down()
    try:
        with caplog.at_level(logging.WARNING, logger="queued_storage"), transaction.atomic():
            name = storage.save("s3-down.txt", ContentFile(b"saved anyway"))
        assert name == "s3-down.txt"
        with storage.open(name) as fh:
            assert fh.read() == b"saved anyway"
        assert "could not ask the remote storage" not in caplog.text  # it was never asked
    finally:
        s3_proxy.come_up()
    wait_remote("default", name, timeout=60)
    assert s3_bytes(clean, name) == b"saved anyway"


def _requests_for(proxy: Any, name: str) -> list[Any]:
    return [r for r in proxy.requests if name in r.path]


def test_save_makes_no_request_to_a_black_holed_s3(worker: Any, clean: Any, s3_proxy: Any) -> None:
    """An endpoint that accepts connections and never answers costs a save nothing: it is
    never asked (botocore's defaults would wait 60 s per read, three times)."""
    storage = storages["queued_delayed"]
    s3_proxy.clear_log()
    s3_proxy.black_hole()
    try:
        name = storage.save("black-hole/report.txt", ContentFile(b"saved anyway"))
        assert name == "black-hole/report.txt"
        # The request path: answered from the ledger, the cache and the local disk.
        assert storage.exists(name)
        assert storage.size(name) == 12
        assert storage.url(name) == "/staging/black-hole/report.txt"
        with storage.open(name) as fh:
            assert fh.read() == b"saved anyway"
        assert _requests_for(s3_proxy, name) == []
        # The black hole is real: a question to S3 about the name is logged and never answered.
        with pytest.raises(TimeoutError):
            remote_exists_within(storage.remote, name, 1.0)
        assert [r.method for r in _requests_for(s3_proxy, name)] == ["HEAD"]
    finally:
        s3_proxy.end_black_hole()
    storage.transfer(name)
    wait_remote("queued_delayed", name, timeout=60)
    assert s3_bytes(clean, name) == b"saved anyway"


def test_opt_in_remote_check_gives_up_after_its_own_timeout(
    clean: Any, caplog: Any, s3_proxy: Any
) -> None:
    storage = storages["queued_delayed"]
    s3_proxy.clear_log()
    s3_proxy.black_hole()
    try:
        with (
            override_settings(QUEUED_STORAGE_REMOTE_CHECK_TIMEOUT=0.5),
            caplog.at_level(logging.WARNING, logger="queued_storage"),
        ):
            name = storage.save("checked.txt", ContentFile(b"saved anyway"))
        assert name == "checked.txt"
        assert [r.method for r in _requests_for(s3_proxy, name)] == ["HEAD"]  # asked once
    finally:
        s3_proxy.end_black_hole()
    assert (
        "could not ask the remote storage whether 'checked.txt' exists (TimeoutError: the "
        "remote storage did not answer within 0.5 s); relying on the ledger" in caplog.text
    )
    assert StoredFile.get_row("queued_delayed", name).state == State.PENDING  # type: ignore[union-attr]
