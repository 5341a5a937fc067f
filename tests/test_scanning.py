"""Scanning before the transfer, as a site runs it: the storages ``queued_scanned`` and
``queued_scanned_delayed`` (tests/settings.py) run ClamAV and the type check, against a
private clamd on the port the run picked (``QS_TEST_CLAMD_PORT``), with the suite's real
Celery worker and moto; uploads, status and bytes through the views (tests/urls.py). What a
rejected file becomes (quarantine, release), who reads a file not scanned yet
(``QUEUED_STORAGE_SERVE_UNPROCESSED``), and the checks of those settings."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings
from django.utils import timezone

from queued_storage import metrics
from queued_storage.checks import check_serving_settings
from queued_storage.exceptions import FileRejected
from queued_storage.models import State, StoredFile
from queued_storage.operations import release_rows
from queued_storage.processors import Passed, Staged
from queued_storage.signals import file_rejected
from queued_storage.storage import QueuedStorage, owned_by
from queued_storage.worker import Outcome, run_transfer
from tests.harness.services import EICAR, ClamdServer
from tests.harness.suite import need_tool, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CLEAN = b"a clean report\n" * 100


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    need_tool("clamd", ClamdServer.binary() is not None, "apt-get install clamav-daemon")
    port = int(settings.CLAMD_ADDRESS.rpartition(":")[2])
    server = ClamdServer(tmp_path_factory.mktemp("clamd-scanning"), port=port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _storage(alias: str) -> QueuedStorage:
    storage = storages[alias]
    assert isinstance(storage, QueuedStorage)
    return storage


@pytest.fixture
def scanned(clean: Any) -> QueuedStorage:
    return _storage("queued_scanned")


@pytest.fixture
def parked(clean: Any) -> QueuedStorage:
    """Scanned, but never dispatched by a save: files wait until a test runs them."""
    return _storage("queued_scanned_delayed")


def _user(username: str, *codenames: str, **flags: bool) -> User:
    user = User.objects.create_user(username, **flags)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _row(storage: QueuedStorage, name: str) -> StoredFile:
    found = StoredFile.get_row(storage.alias, name)
    assert found is not None
    return found


def _on_s3(client: Any) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=settings.BUCKET).get("Contents", [])
    return {
        item["Key"]: client.get_object(Bucket=settings.BUCKET, Key=item["Key"])["Body"].read()
        for item in listed
    }


def _state(storage: QueuedStorage, name: str) -> str:
    return _row(storage, name).state


# -- through the views, with the real worker ------------------------------------------------
def test_an_uploaded_virus_is_rejected_never_sent_never_served_and_its_uploader_told_why(
    scanned: QueuedStorage, clean: Any, clamd: ClamdServer, worker: Any
) -> None:
    alice, bob = _user("alice", "add_storedfile", "view_storedfile"), _user("bob")
    uploads = _client(alice)
    for name, body in (("reports/virus.com", EICAR), ("reports/clean.txt", CLEAN)):
        answer = uploads.post(
            f"/scanned-put/{name}", data=body, content_type="application/octet-stream"
        )
        assert answer.status_code == 201, answer.content
    wait_for(lambda: _state(scanned, "reports/virus.com") == State.REJECTED, what="rejected")
    wait_for(lambda: _state(scanned, "reports/clean.txt") == State.REMOTE, what="clean sent")
    assert _on_s3(clean) == {"reports/clean.txt": CLEAN}

    status = uploads.get("/scanned-status/reports/virus.com").json()
    assert (status["state"], status["url"]) == ("rejected", None)
    assert "Test.EICAR" in status["reason"]
    assert uploads.get("/scanned-status/reports/clean.txt").json()["reason"] is None

    refused = uploads.get("/scanned-files/reports/virus.com")
    assert refused.status_code == 403 and "Test.EICAR" in refused.json()["error"]
    assert _client(bob).get("/scanned-files/reports/virus.com").status_code == 404
    with pytest.raises(FileRejected, match=r"Test\.EICAR"):
        scanned.open("reports/virus.com")
    assert _row(scanned, "reports/clean.txt").metadata["scan"]["engine"] == "clamav"  # type: ignore[index]


def test_with_clamd_stopped_files_wait_unsent_and_all_go_once_it_is_back(
    scanned: QueuedStorage, clean: Any, clamd: ClamdServer, worker: Any
) -> None:
    names = [f"waiting/{i}.txt" for i in range(3)]
    clamd.stop()
    try:
        for name in names:
            scanned.save(name, ContentFile(CLEAN))
        for name in names:
            wait_for(
                lambda name=name: "could not scan" in _row(scanned, name).last_error,
                what=f"{name} waiting for the scanner",
            )
        rows = [_row(scanned, name) for name in names]
        assert {row.state for row in rows} <= {State.PENDING, State.TRANSFERRING}
        assert all(row.processed is None and row.attempts == 0 for row in rows)
        assert _on_s3(clean) == {}
    finally:
        clamd.start()
    for name in names:
        wait_for(lambda name=name: _state(scanned, name) == State.REMOTE, what=f"{name} sent")
    assert sorted(_on_s3(clean)) == names
    assert all(_row(scanned, name).processed is not None for name in names)


def test_a_released_false_positive_comes_back_from_quarantine_and_is_sent_unscanned(
    parked: QueuedStorage, clean: Any, clamd: ClamdServer, worker: Any
) -> None:
    seen: list[dict[str, Any]] = []

    def record(sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs)

    file_rejected.connect(record)
    try:
        with owned_by("7"):
            name = parked.save("tests/eicar-sample.txt", ContentFile(EICAR))
        assert run_transfer(parked.alias, name) is Outcome.REJECTED
    finally:
        file_rejected.disconnect(record)
    # The suite's QUEUED_STORAGE_QUARANTINE is a directory (tests/settings.py), the workers' too.
    kept = Path(settings.QUEUED_STORAGE_QUARANTINE) / parked.alias / name
    assert kept.read_bytes() == EICAR and not parked.local.exists(name)
    assert not parked.exists(name)
    [sent] = seen
    assert (sent["name"], sent["owner"], sent["alias"]) == (name, "7", parked.alias)
    assert "Test.EICAR" in sent["reason"]
    assert sent["processor"] == "queued_storage.processors.clamav.ClamAV"
    call_command("queued_storage", "release", name, "--storage", parked.alias)
    # The worker brings it back and sends it without scanning it again (a scan would reject
    # it once more).
    wait_for(lambda: _state(parked, name) == State.REMOTE, what="released and sent")
    assert _on_s3(clean) == {name: EICAR}
    assert not kept.exists()


def test_a_worker_that_dies_mid_scan_sends_nothing_and_the_next_lease_scans_again(
    clean: Any,
) -> None:
    class Died(BaseException):
        """What a SIGKILL would leave: the scan never returned."""

    scans: list[str] = []

    def dies_once(staged: Staged) -> Passed:
        scans.append(staged.name)
        if len(scans) == 1:
            raise Died
        return Passed({"scanned": len(scans)})

    storage = QueuedStorage(local="staging", remote="s3", delayed=True, processors=[dies_once])
    name = storage.save("uploads/killed.txt", ContentFile(CLEAN))
    with pytest.raises(Died):
        run_transfer(storage.alias, name)
    left = _row(storage, name)
    assert (left.state, left.processed) == (State.TRANSFERRING, None)
    assert _on_s3(clean) == {}
    StoredFile.rows(storage.alias, name).update(
        lease_expires=timezone.now() - datetime.timedelta(seconds=1)
    )
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    assert scans == [name, name]
    assert _row(storage, name).metadata == {"scanned": 2}


# -- the fate of a rejected file --------------------------------------------------------------
def test_the_delete_fate_removes_the_local_copy_and_a_release_then_refuses(
    parked: QueuedStorage, clean: Any, clamd: ClamdServer
) -> None:
    with override_settings(QUEUED_STORAGE_QUARANTINE="delete"):
        name = parked.save("tests/deleted.com", ContentFile(EICAR))
        assert run_transfer(parked.alias, name) is Outcome.REJECTED
        found = _row(parked, name)
        assert (found.state, found.local_exists) == (State.REJECTED, False)
        assert not parked.local.exists(name)
        done = release_rows([found])
        assert (done.no_local, done.queued) == (1, 0)
        assert _state(parked, name) == State.REJECTED
        with pytest.raises(CommandError):
            call_command("queued_storage", "release", name, "--storage", parked.alias)


def test_the_keep_fate_leaves_the_copy_in_place_and_deleting_the_file_removes_it(
    parked: QueuedStorage, clean: Any, clamd: ClamdServer
) -> None:
    with override_settings(QUEUED_STORAGE_QUARANTINE="keep"):
        name = parked.save("tests/kept.com", ContentFile(EICAR))
        assert run_transfer(parked.alias, name) is Outcome.REJECTED
        assert parked.local.exists(name) and _row(parked, name).local_exists
        assert parked.url(name) == f"/scanned-delayed-files/{name}"  # the view refuses it
        with pytest.raises(FileRejected):
            parked.open(name)
        parked.delete(name)
    assert not parked.local.exists(name) and StoredFile.get_row(parked.alias, name) is None


def test_a_rejected_file_is_counted_by_status_and_the_metrics(
    parked: QueuedStorage, clean: Any, clamd: ClamdServer
) -> None:
    name = parked.save("tests/counted.com", ContentFile(EICAR))
    assert run_transfer(parked.alias, name) is Outcome.REJECTED
    families = {family.name: family for family in metrics.LedgerCollector().collect()}
    files = {
        (sample.labels["alias"], sample.labels["state"]): sample.value
        for sample in families["queued_storage_files"].samples
    }
    assert files[(parked.alias, "rejected")] == 1
    out = Path(settings.WORKDIR) / "status-rejected.txt"
    with out.open("w") as stream:
        call_command("queued_storage", "status", "--storage", parked.alias, stdout=stream)
    assert "rejected" in out.read_text()


# -- who reads a file its processors have not passed ----------------------------------------
@pytest.mark.parametrize(
    ("rule", "owner", "staff", "reader", "stranger"),
    [
        ("owner", 200, 200, 404, 404),
        ("all", 200, 200, 200, 404),
        ("none", 403, 403, 404, 404),
    ],
)
def test_a_file_not_scanned_yet_is_served_by_the_rule(
    parked: QueuedStorage, rule: str, owner: int, staff: int, reader: int, stranger: int
) -> None:
    alice, admin = _user("alice"), _user("admin", is_staff=True)
    reader_user, other = _user("reader", "view_storedfile"), _user("other")
    with owned_by(str(alice.pk)):
        name = parked.save("unscanned/photo.txt", ContentFile(CLEAN))
    url = f"/scanned-delayed-files/{name}"

    def read(user: User) -> int:
        response = _client(user).get(url)
        response.close()  # a streamed file
        return response.status_code

    with override_settings(
        QUEUED_STORAGE_SERVE_UNPROCESSED=rule,
        QUEUED_STORAGE_READ_PERMISSION="queued_storage.view_storedfile",
    ):
        got = [read(user) for user in (alice, admin, reader_user, other)]
        assert got == [owner, staff, reader, stranger]
        # Once it passed, the view serves it as any waiting file: the reader too.
        StoredFile.rows(parked.alias, name).update(processed=timezone.now())
        assert read(reader_user) == 200


# -- what the uploader declared ------------------------------------------------------------------
def test_the_declared_content_type_reaches_the_processors_and_stays_in_the_metadata(
    clean: Any,
) -> None:
    seen: list[str] = []

    def looks(staged: Staged) -> Passed:
        seen.append(staged.content_type)
        return Passed({"looked": True})

    storage = QueuedStorage(local="staging", remote="s3", delayed=True, processors=[looks])
    upload = SimpleUploadedFile("scan.pdf", b"%PDF-1.7\n", content_type="application/pdf")
    name = storage.save("declared/scan.pdf", upload)
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    assert seen == ["application/pdf"]
    assert _row(storage, name).metadata == {"declared_type": "application/pdf", "looked": True}


# -- the checks ---------------------------------------------------------------------------------
def test_serving_unprocessed_and_quarantine_values_are_checked() -> None:
    with override_settings(
        QUEUED_STORAGE_SERVE_UNPROCESSED="staff", QUEUED_STORAGE_QUARANTINE="quarantine/"
    ):
        found = [m for m in check_serving_settings() if m.id == "queued_storage.E025"]
    assert [m.msg.split(" must ")[0] for m in found] == [
        "QUEUED_STORAGE_SERVE_UNPROCESSED",
        "QUEUED_STORAGE_QUARANTINE",
    ]
    with override_settings(QUEUED_STORAGE_QUARANTINE=os.path.abspath("quarantine")):
        assert not [m for m in check_serving_settings() if m.id == "queued_storage.E025"]


def test_a_scanned_storage_served_at_the_staging_url_is_warned_of() -> None:
    assert not [m for m in check_serving_settings() if m.id == "queued_storage.W021"]
    with override_settings(QUEUED_STORAGE_SERVE_STAGED=None):
        found = [m for m in check_serving_settings() if m.id == "queued_storage.W021"]
    assert sorted(m.msg.split("'")[1] for m in found) == [
        "queued_scanned",
        "queued_scanned_delayed",
    ]
