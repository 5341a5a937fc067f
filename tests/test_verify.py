"""``queued_storage.verify``: the remote copies of ``remote`` files asked about again, in-process,
against the moto S3 server (through the fault proxy) and a filesystem remote.

Files reach the remote through the real engine (``run_transfer`` of a ``delayed`` storage, so
no message is sent); then the bucket is changed behind the ledger's back with a direct client.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import connection
from django.test.utils import CaptureQueriesContext

from queued_storage.exceptions import RemoteCopyLost
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.signals import transfer_failed
from queued_storage.storage import QueuedStorage
from queued_storage.verify import CHECKSUM, MISSING, SIZE, UNCHECKED, verify
from queued_storage.worker import Outcome, run_transfer

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024

#: A remote without network API (a directory): verified by size only.
fs_storage = QueuedStorage(local="staging", remote="fs_remote", delayed=True, alias="verify-fs")


def delayed() -> QueuedStorage:
    found = storages["queued_delayed"]
    assert isinstance(found, QueuedStorage)
    return found


def transferred(
    name: str, payload: bytes, storage: QueuedStorage | None = None, **options: Any
) -> str:
    """Save *payload* and transfer it with the real engine, in this process."""
    storage = storage or delayed()
    stored = storage.save(name, ContentFile(payload))
    assert run_transfer(storage.alias, stored, **options) is Outcome.TRANSFERRED
    return stored


def row(alias: str, name: str) -> StoredFile:
    found = StoredFile.get_row(alias, name)
    assert found is not None
    return found


@pytest.fixture
def failures() -> Any:
    """The ``transfer_failed`` signals sent during the test."""
    sent: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        sent.append(kwargs)

    transfer_failed.connect(receiver, weak=False)
    yield sent
    transfer_failed.disconnect(receiver)


def test_files_the_remote_holds_as_verified_pass_by_checksum_or_size(clean: Any) -> None:
    small = transferred("v/small.txt", b"small bytes")
    big = transferred("v/big.bin", os.urandom(6 * MiB))  # multipart, S3's composite CRC32
    plain = transferred("v/plain.txt", b"on a directory remote", fs_storage)
    assert row("queued_delayed", small).checksum_algorithm == "md5"
    assert row("queued_delayed", big).checksum_algorithm == "s3-composite-crc32"

    report = verify(names=[small, big, plain])

    assert report.ok
    assert sorted(report.verified) == sorted(
        [f"queued_delayed:{small}", f"queued_delayed:{big}", f"verify-fs:{plain}"]
    )
    assert report.size_only == 1  # the directory keeps no checksum
    assert report.counts() == {
        "checked": 3,
        "verified": 3,
        "size_only": 1,
        "lost": 0,
        "unchecked": 0,
        "skipped": 0,
        "not_remote": 0,
    }
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True
    assert report.lines() == [
        "3 remote file(s) checked: 3 verified (1 by size only), 0 lost, 0 unchecked."
    ]


def test_a_missing_object_is_data_loss_and_reads_fall_back_to_the_local_copy(
    clean: Any, failures: list[dict[str, Any]]
) -> None:
    storage = delayed()
    name = transferred("v/gone.txt", b"precious")
    assert storage.using_remote(name)
    clean.delete_object(Bucket=settings.BUCKET, Key=name)

    report = verify(names=[name])

    assert not report.ok
    [problem] = report.lost
    assert (problem.label, problem.kind, problem.local_copy) == (
        f"queued_delayed:{name}",
        MISSING,
        True,
    )
    found = row("queued_delayed", name)
    assert found.state == State.FAILED
    assert found.local_exists
    assert found.last_error.startswith(
        f"Data loss: the remote copy of {name!r} (storage 'queued_delayed') is missing from the "
        "remote storage. Reads are served from the local copy on host"
    )
    [sent] = failures
    assert (sent["name"], sent["alias"]) == (name, "queued_delayed")
    assert sent["reason"] == found.last_error
    assert isinstance(sent["error"], RemoteCopyLost)
    # The cache says so too: reads go to the local copy again.
    assert storage.get_state(name).state == State.FAILED  # type: ignore[union-attr]
    assert storage.using_local(name)
    with storage.open(name) as fh:
        assert fh.read() == b"precious"
    # The repair: a retry sends the local copy again, and the next verify passes.
    assert storage.ledger.retry_failed(found, found.updated)
    assert run_transfer("queued_delayed", name) is Outcome.TRANSFERRED
    assert verify(names=[name]).ok


@pytest.mark.parametrize(
    ("size", "replacement", "kind"),
    [
        (11, b"other bytes", CHECKSUM),  # same size, another ETag (the MD5 of a plain object)
        (11, b"shorter", SIZE),
        (6 * MiB, b"y" * (6 * MiB), CHECKSUM),  # same size, another CRC32 than the composite
    ],
)
def test_an_object_that_differs_from_the_verified_one_is_data_loss(
    clean: Any, failures: list[dict[str, Any]], size: int, replacement: bytes, kind: str
) -> None:
    name = transferred("v/changed.bin", b"x" * size)
    clean.put_object(Bucket=settings.BUCKET, Key=name, Body=replacement, ChecksumAlgorithm="CRC32")

    report = verify(names=[name])

    [problem] = report.lost
    assert problem.kind == kind
    found = row("queued_delayed", name)
    assert found.state == State.FAILED
    assert "The remote object is never overwritten: delete it before a retry." in found.last_error
    assert len(failures) == 1


@pytest.mark.parametrize("fault", ["down", "503", "403"])
def test_a_remote_that_cannot_answer_is_unchecked_and_nothing_changes(
    s3_proxy: Any, failures: list[dict[str, Any]], fault: str
) -> None:
    name = transferred("v/still-there.txt", b"fine")
    before = row("queued_delayed", name)
    if fault == "down":
        s3_proxy.go_down()
    else:
        s3_proxy.fail_next(5, int(fault), methods=["HEAD"])

    report = verify(names=[name], timeout=2)

    assert not report.ok
    assert report.lost == []
    [problem] = report.unchecked
    assert problem.kind == UNCHECKED
    assert problem.detail.startswith("the remote storage could not be asked (")
    after = row("queued_delayed", name)
    assert (after.state, after.updated, after.last_error) == (State.REMOTE, before.updated, "")
    assert failures == []


def test_without_a_local_copy_the_loss_is_reported_and_reads_fail(
    clean: Any, failures: list[dict[str, Any]]
) -> None:
    storage = delayed()
    name = transferred("v/only-remote.txt", b"only there", delete_local=True)
    assert not Path(storage.local.path(name)).exists()
    clean.delete_object(Bucket=settings.BUCKET, Key=name)

    [problem] = verify(names=[name]).lost

    assert problem.local_copy is False
    found = row("queued_delayed", name)
    assert (found.state, found.local_exists) == (State.FAILED, False)
    assert "No local copy is left, so reads of it fail" in found.last_error
    assert not storage.exists(name)
    with pytest.raises(FileNotFoundError):
        storage.open(name)


def test_rows_are_read_in_batches_and_selected_by_alias_name_and_prefix(clean: Any) -> None:
    ledger = Ledger("queued_delayed")
    objects = []
    for i in range(7):
        key = f"batch/{i}.txt"
        etag = clean.put_object(Bucket=settings.BUCKET, Key=key, Body=b"%d" % i)["ETag"]
        objects.append((key, 1, etag.strip('"')))
    ledger.seed_remote(objects)
    delayed().save("batch/pending.txt", ContentFile(b"not yet"))  # not remote: only counted
    transferred("elsewhere/x.txt", b"outside the prefix")

    with CaptureQueriesContext(connection) as queries:
        report = verify(aliases=["queued_delayed"], prefix="batch/", batch=3)

    assert report.ok
    assert sorted(report.verified) == [f"queued_delayed:batch/{i}.txt" for i in range(7)]
    assert report.not_remote == 1
    # One count of the rows that are not remote, then pages of 3 by primary key: 3 + 3 + 1.
    ledger_reads = [q["sql"] for q in queries.captured_queries if "storedfile" in q["sql"]]
    assert len(ledger_reads) == 4
    assert verify(names=["batch/3.txt"]).verified == ["queued_delayed:batch/3.txt"]


def test_a_row_changed_while_it_is_verified_is_left_alone(clean: Any) -> None:
    storage = delayed()
    name = transferred("v/racing.txt", b"racing")
    stale = row("queued_delayed", name)
    storage.ledger.drop_local(name, stale.size, storage.local.delete)  # the row changes
    clean.delete_object(Bucket=settings.BUCKET, Key=name)

    report = verify([stale])

    assert report.skipped == [f"queued_delayed:{name}"]
    assert report.lost == []
    assert row("queued_delayed", name).state == State.REMOTE  # the next verify decides


def test_a_storage_this_process_does_not_know_is_unchecked(clean: Any) -> None:
    Ledger("no-such-storage").seed_remote([("x.txt", 1, "")])

    report = verify(aliases=["no-such-storage"])

    [problem] = report.unchecked
    assert problem.label == "no-such-storage:x.txt"
    assert "does not know the queued storage 'no-such-storage'" in problem.detail
    assert row("no-such-storage", "x.txt").state == State.REMOTE
