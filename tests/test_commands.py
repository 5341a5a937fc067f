"""``manage.py queued_storage``: every subcommand through ``call_command`` (and a few as a
subprocess of ``tests/manage.py``), against moto behind the fault proxy, Redis as the broker and
the cache, and a real Celery worker where a test needs one: ``seed``, ``reconcile`` (also as
``queued_storage_reconcile``), ``status``, ``transfer``, ``upload``, ``verify``, ``cleanup`` and
``doctor``, their output, JSON documents and exit codes."""

from __future__ import annotations

import datetime
import fcntl
import io
import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from queued_storage import direct, tally
from queued_storage.conf import settings as qs_settings
from queued_storage.ledger import tus_create
from queued_storage.management.render import LISTED, CleanupPages
from queued_storage.models import State, StoredFile, TusUpload
from queued_storage.names import SPOOL_DIRNAME, TUS_DIRNAME
from queued_storage.operations import LocalCopies, cleanup_local_copies
from queued_storage.reconcile import last_run, reconcile
from queued_storage.storage import QueuedStorage
from queued_storage.verify import Problem, VerifyReport
from queued_storage.worker import Outcome, run_transfer
from tests.harness.suite import open_uploads, s3_bytes, wait_for
from tests.harness.workers import PROJECT_ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def seed(*args: str) -> str:
    out = io.StringIO()
    call_command("queued_storage", "seed", *args, stdout=out)
    return out.getvalue()


def rows(alias: str) -> dict[str, tuple[str, int | None, bool, str]]:
    return {
        r.name: (r.state, r.size, r.local_exists, r.checksum)
        for r in StoredFile.objects.filter(alias=alias)
    }


def put(client: Any, key: str, body: bytes) -> str:
    return str(client.put_object(Bucket=settings.BUCKET, Key=key, Body=body)["ETag"]).strip('"')


def test_seed_records_every_object_of_the_bucket_as_remote(clean: Any) -> None:
    tags = {key: put(clean, key, body) for key, body in [("a.txt", b"1"), ("d/e/b.bin", b"22")]}
    clean.put_object(Bucket=settings.BUCKET, Key="d/", Body=b"")  # a "folder" marker
    out = seed("--storage", "queued_delayed")
    assert "queued_delayed: 2 objects listed on the remote storage, seeded 2 names" in out
    assert rows("queued_delayed") == {
        "a.txt": (State.REMOTE, 1, False, tags["a.txt"]),
        "d/e/b.bin": (State.REMOTE, 2, False, tags["d/e/b.bin"]),
    }
    assert rows("default") == {}  # --storage: only that one


def test_seed_again_leaves_known_names_alone(clean: Any) -> None:
    put(clean, "a.txt", b"1")
    storage = storages["queued_delayed"]
    saved = storage.save("pending.txt", ContentFile(b"local"))
    put(clean, saved, b"someone else's")  # behind the app's back, while the file is pending
    seed("--storage", "queued_delayed")
    out = seed("--storage", "queued_delayed")
    assert "2 objects listed on the remote storage, seeded 0 names" in out
    assert rows("queued_delayed")["pending.txt"] == (State.PENDING, 5, True, "")


def test_seed_dry_run_writes_nothing(clean: Any) -> None:
    put(clean, "a.txt", b"1")
    out = seed("--storage", "queued_delayed", "--dry-run")
    assert "1 objects listed on the remote storage, would seed 1 names" in out
    assert rows("queued_delayed") == {}


def test_seed_prefix_limits_the_listing(clean: Any) -> None:
    put(clean, "photos/a.jpg", b"1")
    put(clean, "videos/b.mp4", b"2")
    seed("--storage", "queued_delayed", "--prefix", "photos/")
    assert list(rows("queued_delayed")) == ["photos/a.jpg"]


def test_seed_names_objects_as_a_storage_with_a_location_does(clean: Any) -> None:
    storage = QueuedStorage(
        local="staging",
        remote="storages.backends.s3.S3Storage",
        remote_options={**settings.S3_OPTIONS, "location": "media"},
        alias="seed_location",
    )
    put(clean, "media/inside.txt", b"in")
    put(clean, "outside.txt", b"out")
    seed("--storage", "seed_location")
    assert list(rows("seed_location")) == ["inside.txt"]
    assert storage.exists("inside.txt") and storage.using_remote("inside.txt")
    assert storage.size("inside.txt") == 2
    with storage.open("inside.txt") as fh:
        assert fh.read() == b"in"


def test_seeded_names_are_reserved_and_served_from_the_remote(clean: Any) -> None:
    put(clean, "report.pdf", b"old report")
    seed("--storage", "queued_delayed")
    storage = storages["queued_delayed"]
    assert storage.using_remote("report.pdf")
    assert storage.url("report.pdf").startswith(settings.S3_ENDPOINT)
    name = storage.save("report.pdf", ContentFile(b"new report"))
    assert name != "report.pdf"
    assert clean.get_object(Bucket=settings.BUCKET, Key="report.pdf")["Body"].read() == (
        b"old report"
    )


def test_seed_walks_a_filesystem_remote(clean: Any) -> None:
    root = Path(settings.WORKDIR) / "fs_remote"
    (root / "x" / "y").mkdir(parents=True)
    (root / "top.txt").write_bytes(b"t")
    (root / "x" / "y" / "deep.txt").write_bytes(b"dd")
    out = seed("--storage", "queued_fs")
    assert "2 objects listed on the remote storage, seeded 2 names" in out
    assert rows("queued_fs") == {
        "top.txt": (State.REMOTE, 1, False, ""),
        "x/y/deep.txt": (State.REMOTE, 2, False, ""),
    }


def test_seed_of_an_unknown_storage_names_the_known_ones(clean: Any) -> None:
    with pytest.raises(CommandError, match=r"No queued storage 'nope'; the queued storages are: "):
        seed("--storage", "nope")


def test_reconcile_subcommand_is_the_reconcile_command(clean: Any) -> None:
    storage = storages["queued_delayed"]
    name = storage.save("precious.bin", ContentFile(b"irreplaceable"))
    Path(storage.local.path(name)).unlink()
    lost = r"1 file\(s\) never reached the remote"
    for command in (["queued_storage", "reconcile"], ["queued_storage_reconcile"]):
        with (
            override_settings(QUEUED_STORAGE_RECONCILE_AFTER=0),
            pytest.raises(CommandError, match=lost) as raised,
        ):
            call_command(*command, "--storage", "queued_delayed", verbosity=0)
        assert raised.value.returncode == 1


# --- the operator's subcommands ---------------------------------------------------------------
MiB = 1024 * 1024

#: The keys of ``status --json`` (the schema in docs/operations.md).
STATUS_KEYS = {
    "schema",
    "generated",
    "host",
    "storages",
    "totals",
    "oldest_pending",
    "oldest_pending_age",
    "in_flight",
    "in_flight_total",
    "failures",
    "failures_total",
    "staging",
    "tus",
    "reconcile",
    "direct",
}
#: The doctor's lines, in order: ``clock`` twice, against the database and against S3.
DOCTOR_CHECKS = [
    "ledger",
    "clock",
    "local",
    "cache",
    "remote",
    "clock",
    "celery",
    "broker",
    "workers",
]


class Terminal(io.StringIO):
    """An output stream that says it is a terminal, as an operator's stderr is."""

    def isatty(self) -> bool:
        return True


def command(*args: str, tty: bool = False) -> tuple[str, str, int]:
    """``manage.py queued_storage *args``: its stdout, its stderr and its exit status."""
    out, err = io.StringIO(), Terminal() if tty else io.StringIO()
    try:
        call_command("queued_storage", *args, stdout=out, stderr=err)
    except CommandError as error:
        err.write(f"CommandError: {error}")
        return out.getvalue(), err.getvalue(), error.returncode
    return out.getvalue(), err.getvalue(), 0


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    """``python tests/manage.py queued_storage *args`` in a process of its own."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "tests" / "manage.py"), "queued_storage", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )


def delayed() -> QueuedStorage:
    found = storages["queued_delayed"]
    assert isinstance(found, QueuedStorage)
    return found


def transferred(name: str, payload: bytes) -> str:
    """Save *payload* in ``queued_delayed`` and transfer it with the real engine, here."""
    storage = delayed()
    stored = storage.save(name, ContentFile(payload))
    assert run_transfer(storage.alias, stored) is Outcome.TRANSFERRED
    return stored


def row(name: str, alias: str = "queued_delayed") -> StoredFile:
    found = StoredFile.get_row(alias, name)
    assert found is not None
    return found


def test_status_json_counts_files_and_bytes_with_progress_and_failures(clean: Any) -> None:
    storage = delayed()
    waiting = storage.save("status/waiting.txt", ContentFile(b"12345"))
    moving = storage.save("status/moving.bin", ContentFile(b"m" * 10))
    broken = storage.save("status/broken.bin", ContentFile(b"bbb"))
    transferred("status/done.txt", b"remote!")
    ledger = storage.ledger
    assert ledger.lease(moving, "worker-1", 60).acquired
    assert ledger.renew(moving, "worker-1", 60, 4, 10)
    assert ledger.lease(broken, "worker-2", 60).acquired
    assert ledger.fail(broken, "worker-2", "The remote storage refused it: AccessDenied.")

    out, err, code = command("status", "--json", "--storage", "queued_delayed")
    assert (err, code) == ("", 0)
    doc = json.loads(out)
    assert set(doc) == STATUS_KEYS
    assert doc["schema"] == 1
    mine = doc["storages"]["queued_delayed"]
    assert mine["states"] == {
        "pending": {"files": 1, "bytes": 5},
        "transferring": {"files": 1, "bytes": 10},
        "remote": {"files": 1, "bytes": 7},
        "failed": {"files": 1, "bytes": 3},
        "uploading": {"files": 0, "bytes": 0},
        "rejected": {"files": 0, "bytes": 0},
    }
    assert mine["local_copies"] == {"files": 4, "bytes": 25}
    assert 0 <= mine["oldest_pending_age"] < 60
    assert doc["oldest_pending_age"] == mine["oldest_pending_age"]
    assert doc["totals"] == mine["states"]
    (flying,) = doc["in_flight"]
    assert {k: flying[k] for k in ("storage", "name", "bytes_done", "size", "percent")} == {
        "storage": "queued_delayed",
        "name": moving,
        "bytes_done": 4,
        "size": 10,
        "percent": 40.0,
    }
    assert flying["lease_owner"] == "worker-1"
    (failure,) = doc["failures"]
    assert (failure["name"], failure["local_copy"], failure["attempts"]) == (broken, True, 1)
    assert failure["reason"] == "The remote storage refused it: AccessDenied."
    assert (doc["in_flight_total"], doc["failures_total"]) == (1, 1)
    assert doc["staging"]["waiting_bytes"] >= 18
    assert doc["reconcile"] == {
        "host": doc["host"],
        "last_run": None,
        "age": None,
        "ok": None,
    }

    assert doc["tus"] == {"receiving": 0, "received_bytes": 0, "reserved_bytes": 0, "expired": 0}
    assert doc["direct"] == {"uploading": 0, "declared_bytes": 0, "expired": 0, "expiry": 86400}

    out, _, code = command("status", "--storage", "queued_delayed")
    lines = out.splitlines()
    assert code == 0
    assert lines[1].startswith(
        "queued_delayed: pending 1 (5 B), transferring 1 (10 B), remote 1 (7 B), failed 1 (3 B)"
        ", uploading 0, rejected 0; local copies 4 (25 B); oldest pending "
    )
    assert "in flight: 1" in lines
    assert (
        f"  queued_delayed:{moving}  4 B of 10 B (40.0%), file errors 0, lease worker-1 until "
        in (out)
    )
    assert f"  queued_delayed:{broken} (file errors 1, local copy kept): The remote storage " in out
    assert lines[-1] == f"reconcile: no pass recorded on host {doc['host']}"
    assert command("status", "-v", "0") == ("", "", 0)
    assert waiting


def test_status_counts_unfinished_resumable_uploads_and_their_bytes(clean: Any) -> None:
    def upload(name: str, offset: int, length: int, expires_in: float) -> None:
        tus_create(
            id=str(uuid.uuid4()),
            alias="queued_delayed",
            name=name,
            length=length,
            offset=offset,
            host=qs_settings.HOST,
            expires=timezone.now() + datetime.timedelta(seconds=expires_in),
        )

    upload("tus/a.bin", 3 * 1024 * 1024, 8 * 1024 * 1024, 600)
    upload("tus/b.bin", 1024 * 1024, 2 * 1024 * 1024, 600)
    upload("tus/old.bin", 5, 50, -1)
    upload("tus/elsewhere.bin", 1, 2, 600)
    TusUpload.objects.filter(name="tus/elsewhere.bin").update(alias="queued_parked")

    out, _, code = command("status", "--json", "--storage", "queued_delayed")
    assert code == 0
    assert json.loads(out)["tus"] == {
        "receiving": 2,
        "received_bytes": 4 * 1024 * 1024,
        "reserved_bytes": 10 * 1024 * 1024,
        "expired": 1,
    }
    out, _, code = command("status", "--storage", "queued_delayed")
    assert "resumable uploads: 2 receiving (4.0 MiB of 10.0 MiB received), 1 expired" in out


def test_transfer_queues_named_files_for_the_workers(worker: Any, clean: Any) -> None:
    name = delayed().save("queue/by-hand.txt", ContentFile(b"queued by hand"))
    out, err, code = command("transfer", name, "--pending", "--storage", "queued_delayed")
    assert (out, err, code) == ("transfer: queued the transfer of 1 file(s).\n", "", 0)  # once
    wait_for(lambda: row(name).state == State.REMOTE, what="the worker's transfer")
    assert s3_bytes(clean, name) == b"queued by hand"

    out, err, code = command("transfer", "no/such.txt", name)
    assert code == 1
    assert "'no/such.txt': not in the ledger" in err
    assert out == "transfer: 1 skipped (transferring or remote already).\n"


def test_transfer_sync_runs_the_workers_code_path_with_a_progress_bar(clean: Any) -> None:
    payload = os.urandom(6 * MiB)  # a multipart upload (threshold 5 MiB)
    name = delayed().save("sync/scan.bin", ContentFile(payload))
    out, err, code = command(
        "transfer", "--pending", "--storage", "queued_delayed", "--sync", tty=True
    )
    assert code == 0, err
    assert f"queued_delayed:{name}: transferred and verified" in out
    assert out.splitlines()[-1].startswith("1 transferred (6.0 MiB in ")
    assert "scan.bin" in err and "100%" in err  # the bar, on the terminal
    found = row(name)
    assert (found.state, found.attempts, found.lease_owner) == (State.REMOTE, 0, "")
    assert s3_bytes(clean, name) == payload

    gone = delayed().save("sync/gone.txt", ContentFile(b"lost"))
    Path(delayed().local.path(gone)).unlink()
    out, err, code = command("transfer", gone, "--storage", "queued_delayed", "--sync")
    assert code == 1
    assert f"queued_delayed:{gone}: failed: The local copy of {gone!r} is missing" in err
    assert out.splitlines()[-1].startswith("0 transferred (0 B in ")
    assert "1 failed" in out
    assert row(gone).state == State.FAILED


def test_upload_streams_a_file_of_any_size_in_bounded_memory(clean: Any, tmp_path: Path) -> None:
    path = tmp_path / "scan.tif"
    with open(path, "wb") as fh:
        fh.truncate(24 * MiB)
    tracemalloc.start()
    try:
        out, err, code = command(
            "upload", str(path), "--storage", "queued_delayed", "--name", "scans/a.tif",
            "--no-progress", tty=True,
        )  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (err, code) == ("", 0)
    assert peak < 4 * MiB
    assert out.startswith(f"uploaded {path} to queued_delayed:scans/a.tif (24.0 MiB in ")
    assert out.endswith(
        "pending; a delayed storage: queue it with 'manage.py queued_storage transfer "
        "scans/a.tif --storage queued_delayed'\n"
    )
    found = row("scans/a.tif")
    assert (found.state, found.size, found.local_exists) == (State.PENDING, 24 * MiB, True)
    assert os.path.getsize(delayed().local.path("scans/a.tif")) == 24 * MiB

    small = tmp_path / "note.txt"
    small.write_bytes(b"plain storage")
    out, err, code = command("upload", str(small), "--storage", "fs_remote", tty=True)
    assert code == 0
    assert "note.txt" in err and "100%" in err  # the bar, on the terminal
    assert (Path(settings.WORKDIR) / "fs_remote" / "note.txt").read_bytes() == b"plain storage"
    out, err, code = command("upload", str(small), "--storage", "fs_remote")
    assert (err, code) == ("", 0)  # no terminal: no bar
    assert "; 'note.txt' was taken" in out


def test_verify_finds_an_object_deleted_behind_the_app_and_exits_1(clean: Any) -> None:
    kept = transferred("verify/kept.txt", b"still there")
    gone = transferred("verify/gone.txt", b"deleted behind the app's back")
    clean.delete_object(Bucket=settings.BUCKET, Key=gone)  # boto3, straight to moto
    out, err, code = command("verify", "--storage", "queued_delayed")
    assert code == 1
    assert out.splitlines() == [
        "2 remote file(s) checked: 1 verified (0 by size only), 1 lost, 0 unchecked.",
        f"LOST queued_delayed:{gone}: missing: is missing from the remote storage",
    ]
    assert "CommandError: 1 remote copy(ies) missing or different (data loss)" in err
    assert (row(gone).state, row(kept).state) == (State.FAILED, State.REMOTE)

    out, _, code = command("verify", "--json", "--storage", "queued_delayed")
    assert code == 0
    assert json.loads(out) == {
        "ok": True,
        "counts": {
            "checked": 1,
            "verified": 1,
            "size_only": 0,
            "lost": 0,
            "unchecked": 0,
            "skipped": 0,
            "not_remote": 1,
        },
        "lost": [],
        "unchecked": [],
        "skipped": [],
    }


def test_verify_sample_and_since_choose_the_files(clean: Any) -> None:
    names = [transferred(f"choose/{n}.txt", n.encode()) for n in ("a", "b", "c")]
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    StoredFile.objects.filter(name=names[0]).update(transferred=long_ago)
    checked = "remote file(s) checked: {n} verified"
    for args, n in [(["--sample", "2"], 2), (["--since", "1h"], 2), (["--since", "2019-12-31"], 3)]:
        out, _, code = command("verify", *args)
        assert (out.split(" ", 1)[1].startswith(checked.format(n=n)), code) == (True, 0), out
    _, err, code = command("verify", "--since", "last week")
    assert code == 1
    assert "'last week' is neither an ISO date or date-time nor an age such as 12h or 7d" in err


def test_reconcile_verifies_a_rotating_sample_and_reports_a_lost_remote_copy(clean: Any) -> None:
    names = [transferred(f"sample/{n}.txt", n.encode() * 3) for n in ("a", "b", "c")]
    delayed().ledger.drop_local(names[2], 3, delayed().local.delete)
    clean.delete_object(Bucket=settings.BUCKET, Key=names[2])
    with override_settings(QUEUED_STORAGE_RECONCILE_VERIFY_SAMPLE=2):
        first = reconcile(aliases=["queued_delayed"])
        assert first.verify is not None
        assert (first.verify.verified, first.ok) == (
            [f"queued_delayed:{n}" for n in names[:2]],
            True,
        )
        second = reconcile(aliases=["queued_delayed"])  # c, then round to a
    assert second.verify is not None
    assert [p.label for p in second.verify.lost] == [f"queued_delayed:{names[2]}"]
    assert second.verify.verified == [f"queued_delayed:{names[0]}"]
    assert not second.ok and second.counts()["verify_lost"] == 1
    assert (
        "verify sample: 2 remote file(s) checked: 1 verified (0 by size only), 1 lost, 0 unchecked."
        in second.lines()
    )
    assert "1 remote copy(ies) missing or different (data loss found by" in second.problem()
    recorded = last_run()
    assert recorded is not None and recorded["ok"] is False
    with override_settings(QUEUED_STORAGE_RECONCILE_VERIFY_SAMPLE=0):
        assert reconcile(aliases=["queued_delayed"]).verify is None


def test_cleanup_removes_only_what_is_safe_and_dry_run_changes_nothing(clean: Any) -> None:
    storage = delayed()
    old = transferred("clean/old.txt", b"verified a week ago")
    spool = Path(settings.STAGING_ROOT) / SPOOL_DIRNAME
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    days_ago = time.time() - 3 * 86400
    dead, busy, fresh = (spool / f"body-{n}.part" for n in ("dead", "busy", "fresh"))
    for path in (dead, busy, fresh):
        path.write_bytes(b"x" * 100)
    for path in (dead, busy):
        os.utime(path, (days_ago, days_ago))
    orphan = clean.create_multipart_upload(Bucket=settings.BUCKET, Key="clean/orphan.bin")
    owned_name = storage.save("clean/owned.bin", ContentFile(b"resumable"))
    owned = clean.create_multipart_upload(Bucket=settings.BUCKET, Key=owned_name)["UploadId"]
    ledger = storage.ledger
    assert ledger.lease(owned_name, "w1", 60).acquired
    assert ledger.record_upload(owned_name, "w1", upload_id=owned, part_size=5 * MiB, source="s")
    # pending, upload recorded; its retry due in an hour (no worker's watch sends it meanwhile)
    assert ledger.retry_later(owned_name, "w1", "S3 timed out", delay=3600)
    uploads = {orphan["UploadId"], owned}

    with (
        open(busy, "rb"),  # an upload still being received keeps its spool file open
        override_settings(
            QUEUED_STORAGE_CLEANUP_LOCAL_AFTER=0, QUEUED_STORAGE_CLEANUP_UPLOADS_AFTER=0
        ),
    ):
        out, err, code = command("cleanup", "--dry-run", "--storage", "queued_delayed")
        assert (err, code) == ("", 0)
        assert out.splitlines() == [
            "local copies of files remote for more than 0 s: would verify the remote copy of 1 "
            "and delete the local copies that verify",
            f"  queued_delayed:{old}",
            "spool files unchanged for 1 d: would remove 1 (100 B), 1 still open",
            f"  {dead} (100 B, 3 d old)",
            "expired tus uploads: would remove 0 (0 B), 0 still receiving",
            "tus part files no upload owns, unchanged for 1 d: would remove 0 (0 B)",
            "multipart uploads older than 0 s that no ledger row records: would abort 1",
            # moto dates every upload 2010-11-10
            "  queued_delayed:clean/orphan.bin (" + out.splitlines()[7].rsplit("(", 1)[-1],
            "direct uploads untouched for 1 d: would abort 0 (0 B declared), 0 busy",
        ]
        assert storage.local.exists(old) and dead.exists()
        assert {u["UploadId"] for u in open_uploads(clean)} == uploads

        out, err, code = command("cleanup", "--storage", "queued_delayed")
        assert (err, code) == ("", 0)
        assert out.splitlines()[0] == (
            "local copies of files remote for more than 0 s: deleted 1 whose remote copy "
            "verified, kept 0"
        )
    assert not storage.local.exists(old)
    assert (row(old).state, row(old).local_exists) == (State.REMOTE, False)
    with storage.open(old) as fh:
        assert fh.read() == b"verified a week ago"  # from the remote now
    assert (dead.exists(), busy.exists(), fresh.exists()) == (False, True, True)
    assert [u["UploadId"] for u in open_uploads(clean)] == [owned]


# --- direct uploads ----------------------------------------------------------------------------
def direct_upload(name: str, size: int, owner: str, *, untouched: float = 0.0) -> str:
    """A direct upload started for real in ``default`` (its name reserved, its S3 multipart
    upload open), no part sent, untouched for *untouched* seconds."""
    storage = storages["default"]
    assert isinstance(storage, QueuedStorage)
    name = direct.start(storage, name, size, owner=owner).name
    if untouched:
        when = timezone.now() - datetime.timedelta(seconds=untouched)
        StoredFile.objects.filter(alias="default", name=name).update(updated=when)
    return name


def test_status_counts_direct_uploads_their_declared_bytes_and_those_past_the_expiry(
    clean: Any,
) -> None:
    direct_upload("direct/live.bin", 3000, "7")
    direct_upload("direct/left.bin", 5000, "8", untouched=qs_settings.DIRECT_EXPIRY + 60)
    out, err, code = command("status", "--json", "--storage", "default")
    assert (err, code) == ("", 0)
    doc = json.loads(out)
    mine = doc["storages"]["default"]
    assert mine["states"]["uploading"] == {"files": 2, "bytes": 8000}
    assert doc["totals"]["uploading"] == {"files": 2, "bytes": 8000}
    assert mine["local_copies"] == {"files": 0, "bytes": 0}  # nothing on the staging disk
    assert doc["direct"] == {"uploading": 2, "declared_bytes": 8000, "expired": 1, "expiry": 86400}
    out, _, code = command("status", "--storage", "default")
    lines = out.splitlines()
    assert lines[1] == (
        "default: pending 0, transferring 0, remote 0, failed 0, uploading 2 (7.8 KiB declared)"
        ", rejected 0; local copies 0"
    )
    assert (
        "direct uploads: 2 uploading (7.8 KiB declared), 1 untouched for more than 1 d (cleanup "
        "or the reconcile pass aborts those)"
    ) in lines


def test_cleanup_aborts_direct_uploads_past_the_expiry_naming_owner_and_age_dry_run_changes_nothing(
    clean: Any,
) -> None:
    left = direct_upload("direct/left.bin", 5000, "8", untouched=2 * 86400 + 60)
    live = direct_upload("direct/live.bin", 3000, "7")
    listed = f"  default:{left} (4.9 KiB, owner 8, untouched for 2 d)"

    out, err, code = command("cleanup", "--dry-run", "--storage", "default")
    assert (err, code) == ("", 0)
    assert out.splitlines()[-3:] == [
        "multipart uploads older than 1 d that no ledger row records: would abort 0",
        "direct uploads untouched for 1 d: would abort 1 (4.9 KiB declared), 0 busy",
        listed,
    ]
    assert sorted(u["Key"] for u in open_uploads(clean)) == sorted([left, live])
    assert StoredFile.get_row("default", left).state == State.UPLOADING  # type: ignore[union-attr]

    out, err, code = command("cleanup", "--storage", "default")
    assert (err, code) == ("", 0)
    assert out.splitlines()[-3:] == [
        "multipart uploads older than 1 d that no ledger row records: aborted 0",
        "direct uploads untouched for 1 d: aborted 1 (4.9 KiB declared), 0 busy",
        listed,
    ]
    assert StoredFile.get_row("default", left) is None  # the name is free again
    assert [u["Key"] for u in open_uploads(clean)] == [live]
    assert StoredFile.get_row("default", live).state == State.UPLOADING  # type: ignore[union-attr]


def test_a_reconcile_pass_over_every_storage_expires_the_direct_uploads_of_one_without_other_work(
    clean: Any,
) -> None:
    left = direct_upload("direct/alone.bin", 1000, "8", untouched=qs_settings.DIRECT_EXPIRY + 60)
    out, err, code = command("reconcile")  # no --storage: the storages the tally has work for
    assert (err, code) == ("", 0)
    assert "direct uploads expired (untouched for DIRECT_EXPIRY): 1" in out.splitlines()
    assert StoredFile.get_row("default", left) is None
    assert open_uploads(clean) == []


def test_cleanup_of_local_copies_keeps_counts_and_a_few_names_and_gives_each_page_to_a_callback(
    clean: Any,
) -> None:
    names = [transferred(f"paged/{n:02}.txt", b"page %d" % n) for n in range(10)]
    clean.delete_object(Bucket=settings.BUCKET, Key=names[7])  # lost: its local copy is kept
    labels = [f"queued_delayed:{name}" for name in names]
    seen: list[LocalCopies] = []

    dry = cleanup_local_copies(
        ["queued_delayed"], older_than=0, timeout=5, dry_run=True, batch=3, examples=4
    )
    assert (dry.candidates.count, dry.candidates.first, dry.deleted.count) == (10, labels[:4], 0)
    done = cleanup_local_copies(
        ["queued_delayed"], older_than=0, timeout=5, batch=3, examples=4, each_page=seen.append
    )

    kept = labels[7]
    assert (done.deleted.count, done.kept.count, done.skipped) == (9, 1, 0)
    assert (done.lost.count, done.problems.count) == (1, 1)
    assert done.deleted.first == labels[:4]  # capped: the first 4 of 9
    assert (done.kept.first, [p.label for p in done.lost.first]) == ([kept], [kept])
    assert [len(page.candidates) for page in seen] == [3, 3, 3, 1]
    assert [n for page in seen for n in page.deleted] == labels[:7] + labels[8:]  # each once
    assert [n for page in seen for n in page.kept] == [kept]
    assert [str(p) for page in seen for p in page.report.lost] == [str(done.lost.first[0])]
    assert [
        r.name for r in StoredFile.objects.filter(alias="queued_delayed", local_exists=True)
    ] == [names[7]]


def test_cleanup_at_v2_prints_the_names_of_a_long_run_as_they_come_and_each_once(
    clean: Any,
) -> None:
    names = [transferred(f"many/{n:02}.txt", b"copy %d" % n) for n in range(LISTED + 2)]
    gone = names[5]
    clean.delete_object(Bucket=settings.BUCKET, Key=gone)
    labels = [f"  queued_delayed:{name}" for name in names]
    summary = "local copies of files remote for more than 0 s: "
    with override_settings(QUEUED_STORAGE_CLEANUP_LOCAL_AFTER=0):
        out, err, code = command("cleanup", "--dry-run", "--storage", "queued_delayed")
        assert (err, code) == ("", 0)
        assert out.splitlines()[: LISTED + 2] == [
            f"{summary}would verify the remote copy of {LISTED + 2} and delete the local "
            "copies that verify",
            *labels[:LISTED],
            "  ... and 2 more (-v 2 lists them)",
        ]

        out, err, code = command("cleanup", "-v", "2", "--storage", "queued_delayed")
    assert code == 1
    lines = out.splitlines()
    assert (
        lines[: LISTED + 2]
        == [  # printed as they came, then the totals
            *labels[:5],
            *labels[6:],
            f"{summary}deleted {LISTED + 1} whose remote copy verified, kept 1",
        ]
    )
    assert lines[LISTED + 2].startswith("spool files unchanged for 1 d: removed ")
    assert err.splitlines() == [
        f"  kept queued_delayed:{gone}: missing: is missing from the remote storage",
        "CommandError: 1 remote copy(ies) lost.",
    ]


def test_cleanup_at_v2_lists_few_names_under_the_summary_and_many_as_they_come() -> None:
    lost = Problem("queued_delayed", "gone.txt", "missing", "not on the remote")

    def page(*names: str, lost: list[Problem] | None = None) -> LocalCopies:
        return LocalCopies(deleted=list(names), report=VerifyReport(lost=lost or []))

    few = CleanupPages(dry_run=False, verbose=True)
    assert few.take(page("a", "b", lost=[lost])) == ([], [])
    assert few.names.rest(["a", "b"], 2) == ["  a", "  b"]  # under the summary, as without -v 2
    assert few.kept.rest([], 1) == [f"  kept {lost}"]

    many = CleanupPages(dry_run=False, verbose=True)
    first = [f"f{n}" for n in range(LISTED)]
    assert many.take(page(*first)) == ([], [])
    assert many.take(page("x", "y")) == ([f"  {n}" for n in [*first, "x", "y"]], [])
    assert many.take(page("z")) == (["  z"], [])
    assert many.names.rest(first, LISTED + 3) == []  # printed already, not again

    quiet = CleanupPages(dry_run=False, verbose=False)
    assert quiet.take(page(*first, "x", lost=[lost])) == ([], [])
    assert quiet.names.rest(first, LISTED + 1)[-2:] == [
        f"  f{LISTED - 1}",
        "  ... and 1 more (-v 2 lists them)",
    ]


def test_cleanup_removes_tus_part_files_no_upload_owns_once_older_than_the_expiry(
    clean: Any,
) -> None:
    staging = Path(settings.STAGING_ROOT)
    directory = staging / TUS_DIRNAME
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    days_ago = time.time() - 2 * 86400

    def part(name: str, *, old: bool = True, where: Path = directory) -> Path:
        path = where / name
        path.write_bytes(b"t" * 100)
        if old:
            os.utime(path, (days_ago, days_ago))
        return path

    def upload_row(upload_id: str, host: str, expires_in: float) -> None:
        tus_create(
            id=upload_id,
            alias="queued_delayed",
            name=f"tus/{upload_id}.bin",
            host=host,
            length=1000,
            offset=100,
            expires=timezone.now() + datetime.timedelta(seconds=expires_in),
        )

    orphan = part(str(uuid.uuid4()))  # its creation died before the row was written
    young = part(str(uuid.uuid4()), old=False)
    live = part(str(uuid.uuid4()))  # idle for two days, its row still there
    upload_row(live.name, qs_settings.HOST, 3600)
    elsewhere = part(str(uuid.uuid4()))  # expired, of another host sharing the volume
    upload_row(elsewhere.name, "other-host", -3600)
    locked = part(str(uuid.uuid4()))  # a request holds it (a DELETE of its upload)
    stray = part("notes.txt")
    outside = part(str(uuid.uuid4()), where=staging)  # a staged file, not a part file
    target = part("target.bin", where=staging)
    link = directory / str(uuid.uuid4())
    link.symlink_to(target)
    os.utime(link, (days_ago, days_ago), follow_symlinks=False)
    kept = [young, live, elsewhere, locked, stray, outside, target]

    with open(locked, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out, err, code = command("cleanup", "--dry-run", "--storage", "queued_delayed")
        assert (err, code) == ("", 0)
        lines = out.splitlines()
        at = lines.index("tus part files no upload owns, unchanged for 1 d: would remove 1 (100 B)")
        assert lines[at + 1] == f"  {orphan} (100 B, 2 d old)"
        assert orphan.exists()

        out, err, code = command("cleanup", "--storage", "queued_delayed")
        assert (err, code) == ("", 0)
        assert "tus part files no upload owns, unchanged for 1 d: removed 1 (100 B)" in out
    assert not orphan.exists()
    assert [path for path in kept if not path.exists()] == []
    assert link.is_symlink()
    assert TusUpload.known([uuid.UUID(live.name), uuid.UUID(elsewhere.name)]) == {
        uuid.UUID(live.name),
        uuid.UUID(elsewhere.name),
    }

    os.utime(locked, (days_ago, days_ago))  # no longer held: the next run takes it
    out, _, _ = command("cleanup", "--storage", "queued_delayed")
    assert "tus part files no upload owns, unchanged for 1 d: removed 1 (100 B)" in out
    assert not locked.exists()


def lines_of(out: str) -> dict[str, list[str]]:
    """Doctor lines by check kind."""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        found.setdefault(line.split()[1], []).append(line)
    return found


def test_doctor_passes_when_every_part_answers(worker: Any, clean: Any) -> None:
    reconcile(aliases=["default"])  # records this host's pass
    out, err, code = command("doctor", "--storage", "default", "--timeout", "2")
    assert (err, code) == ("", 0), out
    found = lines_of(out)
    assert list(found) == [*dict.fromkeys(DOCTOR_CHECKS), "reconcile"]
    assert all(line.startswith("OK ") for line in out.splitlines())
    database, s3 = found["clock"]
    assert re.fullmatch(
        r"OK    clock      database 'default': this host's clock is 0\.0 s (ahead of|behind) "
        r"the database's, which measures leases \(to within 0\.\d{3} s\)",
        database,
    ), database
    assert s3.startswith("OK    clock      s3 (default): this host's clock is ")
    assert found["local"][0].endswith(" free")
    assert "CACHES['default']: RedisCache, shared" in found["cache"][0]
    assert (
        f"bucket '{settings.BUCKET}': reachable, a probe object written, read back"
        in (found["remote"][0])
    )
    assert found["workers"][0].startswith(
        "OK    workers    queue 'celery' (default): consumed by main@"
    )
    assert found["reconcile"][0].endswith(", ok")


def test_doctor_names_the_fix_when_s3_and_the_broker_are_down(
    worker: Any, clean: Any, s3_proxy: Any, broker_proxy: Any
) -> None:
    s3_proxy.go_down()
    broker_proxy.go_down()
    began = time.monotonic()
    out, err, code = command("doctor", "--storage", "default", "--timeout", "1")
    assert time.monotonic() - began < 15
    assert code == 1
    assert err == "CommandError: 4 check(s) failed: remote, broker, workers, reconcile."
    found = lines_of(out)
    (remote,) = found["remote"]
    assert remote.startswith("FAIL  remote     s3 (default): cannot reach http://127.0.0.1:")
    assert remote.endswith(
        "-> fix: check the network path to the endpoint, or "
        "STORAGES['s3']['OPTIONS']['endpoint_url']"
    )
    assert [line.split(":")[0] for line in found["clock"]] == [
        "OK    clock      database 'default'"  # and none for S3: no answer, no Date
    ]
    (broker,) = found["broker"]
    assert broker.startswith("FAIL  broker     redis://127.0.0.1:")
    assert ": does not answer within 1 s (" in broker
    assert broker.endswith(
        "-> fix: start the broker, or fix CELERY_BROKER_URL (the app's broker_url)"
    )
    assert found["workers"] == [
        "FAIL  workers    : not asked: the broker does not answer  -> fix: start the broker first"
    ]
    assert (
        found["reconcile"][0].startswith("FAIL  reconcile  host ")
        and "no pass recorded on this host" in found["reconcile"][0]
    )
    assert settings.S3_SECRET not in out + err


def test_doctor_fails_a_queue_no_worker_consumes(worker: Any, clean: Any) -> None:
    out, _, code = command("doctor", "--storage", "queued_parked", "--timeout", "1")
    assert code == 1
    (workers,) = lines_of(out)["workers"]
    assert workers.startswith("FAIL  workers    queue 'parked' (queued_parked): no worker consumes")
    assert workers.endswith("-> fix: start one: celery -A <your project> worker -Q parked")


def test_doctor_warns_of_another_hosts_queue_that_holds_waiting_files_and_no_worker(
    worker: Any, clean: Any
) -> None:
    """Per-host queues: a file of host web-b waits and no worker consumes web-b's queue."""
    with transaction.atomic():
        StoredFile.objects.create(
            alias="queued_host", name="web-b/waiting.txt", state=State.PENDING, host="web-b"
        )
    tally.read()
    out, _, _ = command("doctor", "--storage", "queued_host", "--timeout", "1")
    found = lines_of(out)["workers"]
    other = [line for line in found if "web-b" in line]
    assert other == [
        "WARN  workers    queue 'queued_storage.web-b' (host web-b): no worker consumes it; 1 "
        "file(s) of host web-b wait for it  -> fix: start the worker on host web-b: celery -A "
        "<your project> worker -Q queued_storage.web-b"
    ]


#: Commands as a newcomer runs them before ``migrate``: every subcommand runs inside the same
#: ``ledger_required()``; these three are a read, a save (the local copy first) and the other
#: command (each process costs seconds of the suite).
BEFORE_MIGRATE = [
    ["queued_storage", "status"],
    ["queued_storage", "upload", "manage.py", "--name", "unmigrated/manage.py"],
    ["queued_storage_reconcile"],
]


@pytest.mark.parametrize("argv", BEFORE_MIGRATE, ids=" ".join)
def test_a_command_before_migrate_names_migrate_without_a_traceback(
    argv: list[str], tmp_path: Path
) -> None:
    """A fresh SQLite database (no table): one line naming the fix, exit status 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QS_TEST_")}
    env |= {
        "QS_TEST_WORKDIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "tests" / "manage.py"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT / "tests",
        env=env,
    )
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == (
        "CommandError: The ledger's tables (queued_storage_storedfile, queued_storage_tally, "
        "queued_storage_tusupload) do not exist in database 'default': run 'python manage.py "
        "migrate' first.\n"
    )


#: A remote as the README's first quick start had it: a bucket name and an endpoint, no keys.
NO_KEYS_STORAGES = {
    "keyless_s3": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {"bucket_name": "qs-test", "endpoint_url": "http://127.0.0.1:9"},
    },
    "keyless": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "keyless_s3"},
    },
}


def test_doctor_names_missing_credentials_as_such(
    clean: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No keys in the options, the settings or the environment, no AWS config or credentials
    file: botocore's NoCredentialsError is named as missing credentials with how to give
    them, not as a network problem."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role either
    with override_settings(
        STORAGES={**settings.STORAGES, **NO_KEYS_STORAGES},
        AWS_S3_ACCESS_KEY_ID=None,
        AWS_S3_SECRET_ACCESS_KEY=None,
    ):
        out, err, code = command("doctor", "--storage", "keyless", "--timeout", "1")
    assert code == 1
    assert lines_of(out)["remote"] == [
        "FAIL  remote     keyless_s3 (keyless): http://127.0.0.1:9 bucket 'qs-test': the "
        "credentials are missing (NoCredentialsError: Unable to locate credentials)  -> fix: "
        "set STORAGES['keyless_s3']['OPTIONS']['access_key'] and 'secret_key' (from the "
        "environment, e.g. os.environ['AWS_ACCESS_KEY_ID'] and "
        "os.environ['AWS_SECRET_ACCESS_KEY']), or export AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY to every process, or give the host an IAM role or an AWS "
        "profile (AWS_PROFILE)"
    ]
    assert err.startswith("CommandError: ") and "remote" in err


def test_verify_and_doctor_as_processes_with_json_and_exit_codes(worker: Any, clean: Any) -> None:
    gone = transferred("process/gone.txt", b"deleted by hand")
    clean.delete_object(Bucket=settings.BUCKET, Key=gone)
    reconcile(aliases=["default"])
    checked = manage("verify", "--storage", "queued_delayed")
    assert checked.returncode == 1
    assert f"LOST queued_delayed:{gone}: missing" in checked.stdout
    assert "CommandError: 1 remote copy(ies) missing or different (data loss)" in checked.stderr
    diagnosed = manage("doctor", "--storage", "default", "--json", "--timeout", "1")
    assert diagnosed.returncode == 0, diagnosed.stdout + diagnosed.stderr
    doc = json.loads(diagnosed.stdout)
    assert doc["ok"] is True
    assert [c["check"] for c in doc["checks"]] == [*DOCTOR_CHECKS, "reconcile"]
    assert set(doc["checks"][0]) == {"check", "subject", "status", "detail", "fix"}


# --- each option does what its help says ---------------------------------------------------------
def test_status_limit_is_the_most_failures_and_transfers_in_flight_listed(clean: Any) -> None:
    storage = delayed()
    failed = [storage.save(f"limit/failed-{i}.txt", ContentFile(b"f")) for i in range(3)]
    for i, name in enumerate(failed):
        assert storage.ledger.lease(name, f"w{i}", 60).acquired
        assert storage.ledger.fail(name, f"w{i}", f"reason {i}")
    flying = [storage.save(f"limit/flying-{i}.txt", ContentFile(b"m")) for i in range(2)]
    for i, name in enumerate(flying):
        assert storage.ledger.lease(name, f"m{i}", 60).acquired
    out, err, code = command("status", "--json", "--storage", "queued_delayed", "--limit", "1")
    assert (err, code) == ("", 0)
    doc = json.loads(out)
    assert [f["name"] for f in doc["failures"]] == [failed[2]]  # the latest
    assert doc["failures_total"] == 3
    assert len(doc["in_flight"]) == 1
    assert doc["in_flight_total"] == 2
    doc = json.loads(command("status", "--json", "--storage", "queued_delayed")[0])
    assert (len(doc["failures"]), len(doc["in_flight"])) == (3, 2)  # the default lists 20


def test_transfer_failed_gives_failed_files_a_fresh_budget_and_queues_them(
    worker: Any, clean: Any
) -> None:
    storage = delayed()
    failed = storage.save("again/failed.txt", ContentFile(b"failed once"))
    waiting = storage.save("again/waiting.txt", ContentFile(b"not failed"))
    assert storage.ledger.lease(failed, "w", 60).acquired
    assert storage.ledger.fail(failed, "w", "The remote storage refused it: AccessDenied.")
    out, err, code = command("transfer", "--failed", "--storage", "queued_delayed")
    assert (err, code) == ("", 0)
    assert out == "retry failed: 1 failed file(s) queued again with a new retry budget.\n"
    wait_for(lambda: row(failed).state == State.REMOTE, what="the failed file's new transfer")
    assert s3_bytes(clean, failed) == b"failed once"
    assert row(waiting).state == State.PENDING  # --failed queues failed files only


def test_verify_all_checks_every_remote_file_and_excludes_a_sample(clean: Any) -> None:
    for n in ("a", "b", "c"):
        transferred(f"every/{n}.txt", n.encode())
    out, err, code = command("verify", "--all", "--storage", "queued_delayed")
    assert (err, code) == ("", 0)
    assert out.splitlines() == [
        "3 remote file(s) checked: 3 verified (0 by size only), 0 lost, 0 unchecked."
    ]
    _, err, code = command("verify", "--all", "--sample", "1")
    assert code == 1
    assert "argument --sample: not allowed with argument --all" in err


def test_doctor_reconcile_within_is_how_recent_the_last_pass_must_be(
    worker: Any, clean: Any
) -> None:
    two_hours_ago = timezone.now() - datetime.timedelta(hours=2)
    reconcile(aliases=["default"], now=two_hours_ago)  # records a pass two hours old
    # Only the reconcile line is looked at: the other checks do not depend on the option.
    base = ("doctor", "--storage", "default", "--timeout", "1")
    out, _, code = command(*base, "--reconcile-within", "3600")
    assert code == 1
    (line,) = lines_of(out)["reconcile"]
    assert line.startswith("FAIL  reconcile  ")
    assert "last pass 2 h ago, more than 1 h" in line
    out, _, _ = command(*base, "--reconcile-within", str(3 * 3600))
    (line,) = lines_of(out)["reconcile"]
    assert line.startswith("OK    reconcile  ")
    assert line.endswith("last pass 2 h ago, ok")
