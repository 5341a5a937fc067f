"""QueuedStorage on its own: options, routing, naming, pickling; the engine runs in-process."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.management import call_command
from django.db import DatabaseError, transaction
from django.test import override_settings

from qs_dev.processes import LOOPBACK, free_port
from queued_storage import state as read_side
from queued_storage.conf import settings as qs_settings
from queued_storage.exceptions import QueuedStorageConfigError, StorageNotFound
from queued_storage.ledger import Ledger, ledger_database
from queued_storage.models import State, StoredFile
from queued_storage.state import FileState, cache_key
from queued_storage.storage import QueuedStorage, get_queued_storage
from queued_storage.worker import Outcome, run_transfer
from tests.testapp.models import Document

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def storage(clean: Any) -> QueuedStorage:
    found = storages["queued_delayed"]
    assert isinstance(found, QueuedStorage)
    return found


# --- options -------------------------------------------------------------------------------
def test_unknown_option_is_named() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"Invalid option 'dleayed' for QueuedStorage"):
        QueuedStorage(local="staging", remote="s3", dleayed=True)


def test_option_of_wrong_type_is_named() -> None:
    with pytest.raises(
        QueuedStorageConfigError, match=r"option 'delayed' must be a bool, got str 'yes'"
    ):
        QueuedStorage(local="staging", remote="s3", delayed="yes")  # type: ignore[arg-type]


def test_missing_alias_is_named() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"the remote storage 's4' is not an alias"):
        QueuedStorage(local="staging", remote="s4")


def test_storages_entry_knows_its_alias() -> None:
    assert storages["queued_delete"].alias == "queued_delete"  # type: ignore[attr-defined]
    assert storages["queued_delete"].delete_local is True  # type: ignore[attr-defined]
    assert get_queued_storage("queued_delete") is storages["queued_delete"]


def test_code_built_storage_is_registered_by_digest() -> None:
    a = QueuedStorage(local="staging", remote="fs_remote", delete_local=True)
    b = QueuedStorage(local="staging", remote="fs_remote", delete_local=True)
    assert a.alias == b.alias
    assert a.alias.startswith("qs-")
    assert get_queued_storage(a.alias).remote_path == "fs_remote"


def test_unknown_storage_alias_in_worker_is_a_clear_error() -> None:
    with pytest.raises(StorageNotFound, match=r"does not know the queued storage 'qs-nope'"):
        run_transfer("qs-nope", "a.txt")


def test_pickle_and_deconstruct_keep_configuration_only() -> None:
    original = QueuedStorage(local="staging", remote="s3", queue="uploads", delete_local=True)
    _ = original.remote.bucket_name  # build the lazy S3 storage and its session
    copy = pickle.loads(pickle.dumps(original))
    assert (copy.alias, copy.queue, copy.delete_local) == (original.alias, "uploads", True)
    path, _args, kwargs = original.deconstruct()
    assert path == "queued_storage.storage.QueuedStorage"
    assert kwargs == {"local": "staging", "remote": "s3", "queue": "uploads", "delete_local": True}
    assert b"qs-test-secret" not in pickle.dumps(original)


def test_cache_keys_are_length_safe() -> None:
    long_name = "d/" + "é" * 900 + " x.txt"
    key = cache_key("queued_storage", "default", long_name)
    assert len(key) < 100
    assert key.isascii() and " " not in key
    assert key != cache_key("queued_storage", "default", long_name + "2")


# --- saving and naming ---------------------------------------------------------------------
def test_save_writes_locally_and_records_pending(storage: QueuedStorage) -> None:
    name = storage.save("a/report.txt", ContentFile(b"hello"))
    assert name == "a/report.txt"
    assert Path(storage.local.path(name)).read_bytes() == b"hello"
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None
    assert (row.state, row.size, row.local_exists) == (State.PENDING, 5, True)
    assert storage.using_local(name)
    assert storage.url(name) == "/staging/a/report.txt"
    assert storage.path(name) == storage.local.path(name)


def test_save_never_reuses_a_name_seeded_from_the_remote(
    storage: QueuedStorage, clean: Any
) -> None:
    clean.put_object(Bucket="qs-test", Key="photo.jpg", Body=b"old")
    call_command("queued_storage", "seed", "--storage", storage.alias, stdout=io.StringIO())
    name = storage.save("photo.jpg", ContentFile(b"new"))
    assert name != "photo.jpg"
    assert name.startswith("photo_") and name.endswith(".jpg")
    assert clean.get_object(Bucket="qs-test", Key="photo.jpg")["Body"].read() == b"old"


def test_save_with_the_remote_check_never_reuses_a_name_the_remote_holds(
    storage: QueuedStorage, clean: Any
) -> None:
    clean.put_object(Bucket="qs-test", Key="photo.jpg", Body=b"old")
    with override_settings(QUEUED_STORAGE_REMOTE_CHECK_TIMEOUT=10):
        name = storage.save("photo.jpg", ContentFile(b"new"))
    assert name.startswith("photo_") and name.endswith(".jpg")
    assert not Path(storage.local.path("photo.jpg")).exists()


def test_an_unseeded_remote_object_is_never_overwritten_by_a_save_of_its_name(
    storage: QueuedStorage, clean: Any
) -> None:
    """The trade-off of a save that never asks the remote: the ledger does not know an object
    put in the bucket behind its back, so the save takes the name; the transfer's
    ``If-None-Match: *`` then refuses to overwrite it, and the file stays served locally."""
    clean.put_object(Bucket="qs-test", Key="photo.jpg", Body=b"old")
    name = storage.save("photo.jpg", ContentFile(b"new"))
    assert name == "photo.jpg"
    assert run_transfer(storage.alias, name) == Outcome.FAILED
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None and row.state == State.FAILED
    assert "already holds a different object named 'photo.jpg'; nothing was overwritten" in (
        row.last_error
    )
    assert clean.get_object(Bucket="qs-test", Key="photo.jpg")["Body"].read() == b"old"
    with storage.open(name) as fh:
        assert fh.read() == b"new"


def test_save_moves_the_local_file_off_a_name_the_ledger_holds(storage: QueuedStorage) -> None:
    Ledger(storage.alias).reserve("photo.jpg", "elsewhere")
    name = storage.save("photo.jpg", ContentFile(b"new"))
    assert name.startswith("photo_") and name.endswith(".jpg")
    assert not Path(storage.local.path("photo.jpg")).exists()
    assert Path(storage.local.path(name)).read_bytes() == b"new"
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None and (row.state, row.size, row.local_exists) == (State.PENDING, 3, True)


def test_save_takes_another_name_when_the_ledger_holds_the_name_and_its_alternative(
    storage: QueuedStorage, monkeypatch: Any
) -> None:
    Ledger(storage.alias).reserve("photo.jpg", "elsewhere")
    Ledger(storage.alias).reserve("photo_first.jpg", "elsewhere")
    suffixes = iter(["first", "second"])
    monkeypatch.setattr(
        storage, "get_alternative_name", lambda root, ext: f"{root}_{next(suffixes)}{ext}"
    )
    assert storage.save("photo.jpg", ContentFile(b"new")) == "photo_second.jpg"
    assert sorted(p.name for p in Path(storage.local.path("")).iterdir()) == ["photo_second.jpg"]


def test_save_flushes_the_file_and_its_folders_before_its_row(
    storage: QueuedStorage, monkeypatch: Any
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_saved = os.fsync, Ledger.saved

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def saved(self: Ledger, name: str, host: str, size: int, **kwargs: Any) -> bool:
        events.append(("row", name))
        return real_saved(self, name, host, size, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Ledger, "saved", saved)
    name = storage.save("deep/er/file.txt", ContentFile(b"durable"))
    root = Path(storage.local.path(""))
    assert events == [
        ("fsync", str(root / "deep" / "er" / "file.txt")),
        ("fsync", str(root / "deep" / "er")),
        ("fsync", str(root / "deep")),
        ("fsync", str(root)),
        ("row", name),
    ]


def test_fsync_can_be_turned_off_for_disposable_staging(
    storage: QueuedStorage, monkeypatch: Any
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    with override_settings(QUEUED_STORAGE_FSYNC=False):
        storage.save("quick.txt", ContentFile(b"x"))
    assert calls == []


def test_a_failed_ledger_write_leaves_no_local_file(
    storage: QueuedStorage, monkeypatch: Any
) -> None:
    def broken(*args: Any, **kwargs: Any) -> bool:
        raise DatabaseError("the ledger is down")

    monkeypatch.setattr(Ledger, "saved", broken)
    with pytest.raises(DatabaseError, match="the ledger is down"):
        storage.save("lost.txt", ContentFile(b"x"))
    assert list(Path(storage.local.path("")).iterdir()) == []


def test_save_respects_max_length(storage: QueuedStorage) -> None:
    first = storage.save("x" * 20 + ".txt", ContentFile(b"1"), max_length=24)
    second = storage.save("x" * 20 + ".txt", ContentFile(b"2"), max_length=24)
    assert first != second
    assert len(second) <= 24


@pytest.mark.parametrize("bad", ["../escape.txt", "/etc/passwd", "a/../../b.txt"])
def test_save_refuses_names_outside_the_root(storage: QueuedStorage, bad: str) -> None:
    with pytest.raises(SuspiciousFileOperation):
        storage.save(bad, ContentFile(b"x"))
    assert not StoredFile.objects.exists()


def test_temporary_upload_is_moved_not_copied(storage: QueuedStorage, settings: Any) -> None:
    upload = TemporaryUploadedFile("big.bin", "application/octet-stream", 0, None)
    upload.write(b"z" * 100_000)
    upload.flush()
    temp_path = upload.temporary_file_path()
    inode = os.stat(temp_path).st_ino
    name = storage.save("big.bin", upload)
    assert os.stat(storage.local.path(name)).st_ino == inode
    assert not os.path.exists(temp_path)
    upload.close()


# --- transfer in-process (no Celery): routing before and after ------------------------------
def test_transfer_routes_reads_to_remote_after_verification(
    storage: QueuedStorage, clean: Any
) -> None:
    name = storage.save("doc.txt", ContentFile(b"payload"))
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None and row.state == State.REMOTE
    assert row.checksum == hashlib.md5(b"payload").hexdigest()
    assert storage.using_remote(name)
    assert storage.url(name).startswith(f"{settings.S3_ENDPOINT}/qs-test/doc.txt?")
    assert "Signature=" in storage.url(name)
    with storage.open(name) as fh:
        assert fh.read() == b"payload"
    assert clean.get_object(Bucket="qs-test", Key=name)["Body"].read() == b"payload"
    # Kept locally (delete_local is off), so path() still works.
    assert Path(storage.path(name)).read_bytes() == b"payload"
    assert run_transfer(storage.alias, name) is Outcome.ALREADY_REMOTE


def test_multipart_transfer_records_the_servers_checksum(
    storage: QueuedStorage, clean: Any
) -> None:
    data = os.urandom(12 * 1024 * 1024 + 7)  # three parts of 5 MiB
    name = storage.save("big.bin", ContentFile(data))
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None
    assert row.checksum_algorithm == "s3-composite-crc32"  # the default QUEUED_STORAGE_CHECKSUM
    head = clean.head_object(Bucket="qs-test", Key=name, ChecksumMode="ENABLED")
    assert row.checksum == f"{head['ChecksumCRC32']}-3"


def test_multipart_transfer_verified_by_etag_in_md5_mode(
    storage: QueuedStorage, clean: Any
) -> None:
    data = os.urandom(12 * 1024 * 1024 + 7)
    name = storage.save("big-md5.bin", ContentFile(data))
    with override_settings(QUEUED_STORAGE_CHECKSUM="md5"):
        assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None
    assert (row.checksum_algorithm, row.checksum[-2:]) == ("s3-multipart-etag", "-3")
    assert clean.head_object(Bucket="qs-test", Key=name)["ETag"].strip('"') == row.checksum


def test_path_raises_once_only_remote(clean: Any) -> None:
    storage = QueuedStorage(local="staging", remote="s3", delayed=True, delete_local=True)
    name = storage.save("gone-local.txt", ContentFile(b"abc"))
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    assert not os.path.exists(storage.local.path(name))
    with pytest.raises(NotImplementedError, match="only on the remote storage"):
        storage.path(name)
    assert storage.size(name) == 3
    assert storage.exists(name)


def test_listdir_merges_both_sides(storage: QueuedStorage, clean: Any) -> None:
    moved = storage.save("dir/one.txt", ContentFile(b"1"))
    run_transfer(storage.alias, moved)
    storage.local.delete(moved)
    storage.save("dir/two.txt", ContentFile(b"2"))
    dirs, files = storage.listdir("dir")
    assert (dirs, files) == ([], ["one.txt", "two.txt"])


def test_delete_removes_every_copy_and_the_row(storage: QueuedStorage, clean: Any) -> None:
    name = storage.save("bye.txt", ContentFile(b"x"))
    run_transfer(storage.alias, name)
    storage.delete(name)
    assert StoredFile.get_row(storage.alias, name) is None
    assert not os.path.exists(storage.local.path(name))
    assert clean.list_objects_v2(Bucket="qs-test").get("KeyCount") == 0
    assert not storage.exists(name)


def test_transfer_after_delete_brings_nothing_back(storage: QueuedStorage, clean: Any) -> None:
    name = storage.save("ghost.txt", ContentFile(b"x"))
    storage.delete(name)
    assert run_transfer(storage.alias, name) is Outcome.GONE
    assert clean.list_objects_v2(Bucket="qs-test").get("KeyCount") == 0


def test_generic_remote_is_copied_and_verified(clean: Any) -> None:
    storage = QueuedStorage(local="staging", remote="fs_remote", delayed=True)
    name = storage.save("plain.txt", ContentFile(b"slow path"))
    assert run_transfer(storage.alias, name) is Outcome.TRANSFERRED
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None and row.checksum_algorithm == "sha256"
    with storage.remote.open(name) as fh:
        assert fh.read() == b"slow path"


def test_delete_during_the_upload_brings_nothing_back(clean: Any, tmp_path: Path) -> None:
    from tests.testapp import storages as hooks

    storage = QueuedStorage(
        local="staging",
        remote="tests.testapp.storages.DuringUploadStorage",
        remote_options={"location": str(tmp_path / "remote")},
        delayed=True,
    )
    name = storage.save("racing.txt", ContentFile(b"short-lived"))
    hooks.during_upload.append(storage.delete)  # the user deletes while the bytes are in flight
    try:
        assert run_transfer(storage.alias, name) is Outcome.GONE
    finally:
        hooks.during_upload.clear()
    assert StoredFile.get_row(storage.alias, name) is None
    assert not (tmp_path / "remote" / name).exists()
    assert not os.path.exists(storage.local.path(name))
    assert not storage.exists(name)


# --- a save inside a transaction and the cached "unknown" ------------------------------------
WAITING = {"queued_delayed": "/waiting/", "default": "/waiting/"}


def _cached(storage: QueuedStorage, name: str) -> Any:
    key = cache_key(storage.ledger.cache_prefix, storage.alias, name)
    return caches[qs_settings.CACHE].get(key)


@override_settings(QUEUED_STORAGE_SERVE_STAGED=WAITING)
def test_a_save_in_a_transaction_after_exists_is_read_as_pending_not_as_the_cached_unknown(
    storage: QueuedStorage,
) -> None:
    # django-imagekit's order: exists() (caches "unknown"), save(), then the URL in the page.
    with transaction.atomic(using=ledger_database()):
        assert storage.exists("thumbs/a.jpg") is False
        assert _cached(storage, "thumbs/a.jpg") == {"s": None}
        name = storage.save("thumbs/a.jpg", ContentFile(b"thumbnail"))
        assert storage.url(name) == "/waiting/thumbs/a.jpg"
        assert storage.get_state(name) == FileState(State.PENDING, 9, True)
        assert storage.exists(name) is True
        # Other processes do not see the row before the commit: the cache keeps their answer.
        assert _cached(storage, name) == {"s": None}
    assert _cached(storage, name) == {"s": "pending", "z": 9, "l": True}
    assert storage.url(name) == "/waiting/thumbs/a.jpg"


@override_settings(QUEUED_STORAGE_SERVE_STAGED=WAITING)
def test_a_field_file_saved_in_an_atomic_block_knows_its_state_and_url(clean: Any) -> None:
    with transaction.atomic(using=ledger_database()):
        item = Document(title="scan")
        assert item.file.storage.exists("docs/scan.txt") is False
        item.file.save("scan.txt", ContentFile(b"page"), save=True)
        assert item.file.name == "docs/scan.txt"
        assert item.file.state == State.PENDING
        assert item.file.url == "/waiting/docs/scan.txt"


@override_settings(QUEUED_STORAGE_SERVE_STAGED=WAITING)
def test_a_save_rolled_back_leaves_no_cached_state_and_the_name_unknown(
    storage: QueuedStorage,
) -> None:
    name = "thumbs/b.jpg"

    def view() -> None:
        with transaction.atomic(using=ledger_database()):
            assert storage.exists(name) is False
            assert storage.save(name, ContentFile(b"thumbnail")) == name
            assert storage.get_state(name) == FileState(State.PENDING, 9, True)
            raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError, match="the view failed"):
        view()
    assert storage.get_state(name) is None
    assert _cached(storage, name) == {"s": None}
    assert not StoredFile.objects.filter(name=name).exists()


# --- a cache that does not answer ----------------------------------------------------------
def test_a_cache_that_refuses_connections_logs_one_warning_per_kind_without_traceback(
    storage: QueuedStorage, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis down: save, url and exists still work from the ledger; the log gets one line for
    the failed writes and one for the failed reads (not one traceback per call); the
    tracebacks are at DEBUG."""
    monkeypatch.setattr(read_side, "_warned_at", {})  # as in a process that just started
    port = free_port()  # nothing listens there
    closed = f"redis://{LOOPBACK}:{port}/0"
    down = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": closed}
    with (
        override_settings(CACHES={**settings.CACHES, "down": down}, QUEUED_STORAGE_CACHE="down"),
        caplog.at_level(logging.DEBUG, logger="queued_storage"),
    ):
        name = storage.save("cache-down.txt", ContentFile(b"saved with the cache down"))
        for _ in range(3):
            assert storage.exists(name)
            assert storage.url(name)
        assert storage.get_state(name) is not None
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    refused = f"ConnectionError: Error 111 connecting to {LOOPBACK}:{port}. Connection refused."
    assert [r.getMessage() for r in loud] == [
        f"the state cache CACHES['down'] failed to {kind} ({refused}); {consequence}. Start "
        "the cache or fix CACHES['down']; the same failure is logged again in 60 s at the "
        "earliest (at DEBUG each time, with its traceback)."
        for kind, consequence in [
            ("write", "states are not cached; the ledger holds them"),
            ("read", "states are read from the ledger"),
        ]
    ]
    assert [r.exc_info for r in loud] == [None, None]
    quiet = [r for r in caplog.records if r.name == "queued_storage.state" and r.levelno < 30]
    assert len(quiet) >= 8  # every failure, at DEBUG
    assert all(r.exc_info is not None for r in quiet)
