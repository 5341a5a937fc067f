"""Processing before the transfer, in the worker: a storage's
processors run on the leased local copy before anything reaches S3. Against a real clamd and
moto through the fault proxy; the transfers run in this process (``run_transfer``), no Celery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile

from queued_storage.models import State, StoredFile
from queued_storage.processors import Passed, Staged
from queued_storage.processors.clamav import ClamAV
from queued_storage.processors.content_type import ContentTypeCheck
from queued_storage.storage import QueuedStorage
from queued_storage.worker import Outcome, RetryLater, run_transfer
from tests.harness.services import EICAR, ClamdServer
from tests.harness.suite import need_tool

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    need_tool("clamd", ClamdServer.binary() is not None, "apt-get install clamav-daemon")
    server = ClamdServer(tmp_path_factory.mktemp("clamd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Counting:
    """A processor that passes and counts the files it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, staged: Staged) -> Passed:
        self.seen.append(staged.name)
        return Passed({"counted": len(self.seen)})


def scanned(clamd: ClamdServer, *more: Any) -> QueuedStorage:
    return QueuedStorage(
        local="staging", remote="s3", delayed=True, processors=[ClamAV(clamd.address), *more]
    )


def row(storage: QueuedStorage, name: str) -> StoredFile:
    found = StoredFile.get_row(storage.alias, name)
    assert found is not None
    return found


def on_s3(client: Any) -> list[str]:
    listed = client.list_objects_v2(Bucket=settings.BUCKET).get("Contents", [])
    return [item["Key"] for item in listed]


def test_a_virus_is_rejected_never_sent_and_its_reason_kept(clean: Any, clamd: ClamdServer) -> None:
    storage = scanned(clamd)
    name = storage.save("uploads/eicar.com", ContentFile(EICAR))
    assert run_transfer(storage.alias, name) is Outcome.REJECTED
    found = row(storage, name)
    assert found.state == State.REJECTED and found.lease_owner == ""
    assert "Test.EICAR" in found.last_error
    assert on_s3(clean) == []
    # Moved out of the staging storage into the suite's quarantine directory, for a person.
    assert not storage.local.exists(name)
    kept = Path(settings.QUEUED_STORAGE_QUARANTINE) / storage.alias / name
    assert kept.read_bytes() == EICAR


def test_a_clean_file_is_processed_then_sent_with_the_metadata_kept(
    clean: Any, clamd: ClamdServer
) -> None:
    counting = Counting()
    storage = scanned(clamd, ContentTypeCheck(), counting)
    name = storage.save("uploads/notes.txt", ContentFile(b"plain words\n"))
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    found = row(storage, name)
    assert found.state == State.REMOTE and found.processed is not None
    assert found.metadata["content_type"] == "text/plain"
    assert found.metadata["scan"]["engine"] == "clamav"
    assert counting.seen == [name]
    assert on_s3(clean) == [name]


def test_a_file_that_passed_is_not_scanned_again_on_its_retry(
    clean: Any, clamd: ClamdServer, s3_proxy: Any
) -> None:
    counting = Counting()
    storage = scanned(clamd, counting)
    name = storage.save("uploads/retried.txt", ContentFile(b"retried\n"))
    s3_proxy.go_down()
    with pytest.raises(RetryLater):
        run_transfer(storage.alias, name)
    s3_proxy.come_up()
    assert row(storage, name).processed is not None
    StoredFile.rows(storage.alias, name).update(retry_at=None)
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    assert counting.seen == [name]  # scanned once, before the outage


def test_with_clamd_down_files_wait_and_nothing_unscanned_is_sent(
    clean: Any, clamd: ClamdServer
) -> None:
    storage = scanned(clamd)
    name = storage.save("uploads/waits.txt", ContentFile(b"waits for the scanner\n"))
    clamd.stop()
    try:
        with pytest.raises(RetryLater):
            run_transfer(storage.alias, name)
        found = row(storage, name)
        assert (found.state, found.attempts, found.processed) == (State.PENDING, 0, None)
        assert found.retrying_since is not None and "could not scan" in found.last_error
        assert on_s3(clean) == []
    finally:
        clamd.start()
    StoredFile.rows(storage.alias, name).update(retry_at=None)
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    assert on_s3(clean) == [name]


def test_a_processor_that_raises_fails_the_file_with_its_reason(clean: Any) -> None:
    def broken(staged: Staged) -> Passed:
        raise RuntimeError("the model file is missing")

    storage = QueuedStorage(local="staging", remote="s3", delayed=True, processors=[broken])
    name = storage.save("uploads/any.txt", ContentFile(b"x"))
    assert run_transfer(storage.alias, name) is Outcome.FAILED
    found = row(storage, name)
    assert found.state == State.FAILED
    assert "broken failed on 'uploads/any.txt' (RuntimeError: the model file is missing)" in (
        found.last_error
    )
    assert on_s3(clean) == []


def test_a_script_named_jpg_is_rejected_by_the_type_check(clean: Any) -> None:
    storage = QueuedStorage(
        local="staging", remote="s3", delayed=True, processors=[ContentTypeCheck()]
    )
    name = storage.save("uploads/cat.jpg", ContentFile(b"#!/bin/sh\nrm -rf ~\n"))
    assert run_transfer(storage.alias, name) is Outcome.REJECTED
    assert "text/x-script by its content" in row(storage, name).last_error
    assert on_s3(clean) == []
