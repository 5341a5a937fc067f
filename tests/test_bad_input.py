"""Bad input: each case gets a clear error, and nothing is written outside the storage roots.

``tests/test_storage.py`` covers ``..``, absolute paths, an unknown option, ``delayed`` of the
wrong type and a missing remote alias; this file covers the rest. The decisions (README,
"File names"): control characters are refused with ``SuspiciousFileOperation`` naming the file;
names are stored in Unicode NFC, so NFC and NFD spellings of one name are one name for the
reservation; a part between slashes may have 255 bytes and a name 1,024 (S3's key limit).
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import storages

from queued_storage.exceptions import QueuedStorageConfigError, StorageNotFound
from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage
from queued_storage.worker import Outcome, run_transfer
from tests.testapp.models import Document

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def roots(tmp_path: Path, clean: Any) -> Any:
    """A storage whose local and remote roots are the only places it may write."""
    storage = QueuedStorage(
        local="django.core.files.storage.FileSystemStorage",
        local_options={"location": str(tmp_path / "local")},
        remote="django.core.files.storage.FileSystemStorage",
        remote_options={"location": str(tmp_path / "remote")},
        delayed=True,
    )

    def written() -> list[str]:
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())

    storage.written = written  # type: ignore[attr-defined]
    return storage


def assert_nothing_written(storage: Any, clean: Any) -> None:
    assert storage.written() == []
    assert not StoredFile.objects.exists()
    assert clean.list_objects_v2(Bucket=settings.BUCKET).get("KeyCount") == 0


# --- names ---------------------------------------------------------------------------------
def test_a_taken_name_whose_free_variant_is_too_long_for_the_disk_is_refused(
    roots: Any, clean: Any
) -> None:
    long = "a" * 250 + ".txt"  # 254 bytes: a free variant adds 8 and is over the 255 allowed
    first = roots.save(long, ContentFile(b"first"))
    assert first == long
    with pytest.raises(SuspiciousFileOperation) as raised:
        roots.save(long, ContentFile(b"second"))
    assert str(raised.value) == (
        f"QueuedStorage cannot store {long!r}: the local storage holds a file of that name, "
        "and a free variant of it is longer than its filesystem allows. Choose a shorter "
        "name; nothing was kept."
    )
    assert roots.written() == [f"local/{long}"]
    assert list(StoredFile.objects.values_list("name", flat=True)) == [first]


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        ("nul\x00byte.txt", "U+0000"),
        ("new\nline.txt", "U+000A"),
        ("carriage\rreturn.txt", "U+000D"),
        ("tab\there.txt", "U+0009"),
        ("bell\x07.txt", "U+0007"),
        ("escape\x1b[31m.txt", "U+001B"),
        ("delete\x7f.txt", "U+007F"),
        ("c1\x85next-line.txt", "U+0085"),
        ("dir\x00/x.txt", "U+0000"),
        ("lone\ud800surrogate.txt", "U+D800"),
        ("invoice\u202etxt.exe", "U+202E"),
        ("isolate\u2067.txt", "U+2067"),
    ],
)
def test_control_characters_are_refused_naming_the_file(
    roots: Any, clean: Any, s3_proxy: Any, bad: str, shown: str
) -> None:
    for storage in (roots, storages["queued_delayed"]):
        with pytest.raises(SuspiciousFileOperation) as raised:
            storage.save(bad, ContentFile(b"x"))
        assert str(raised.value) == (
            f"QueuedStorage refuses the file name {bad!r}: it contains control characters "
            f"({shown}). Rename the file."
        )
    assert_nothing_written(roots, clean)
    assert s3_proxy.requests == []  # refused before asking the remote anything


def test_a_name_under_an_existing_file_is_refused_and_keeps_nothing(roots: Any, clean: Any) -> None:
    first = roots.save("ok.txt", ContentFile(b"first"))
    with pytest.raises(SuspiciousFileOperation) as raised:
        roots.save("ok.txt/inner.txt", ContentFile(b"inner"))
    assert str(raised.value) == (
        "QueuedStorage cannot store 'ok.txt/inner.txt': a folder of that name is a file in the "
        "local storage. Choose a name whose folders are not files; nothing was kept."
    )
    assert roots.written() == ["local/ok.txt"]
    assert list(StoredFile.objects.values_list("name", flat=True)) == [first]


@pytest.mark.parametrize(
    "bad",
    ["..", "../", "./../x.txt", "a/./../../x.txt", "..\\..\\evil.txt", "\\\\server\\share\\x.txt"],
)
def test_more_ways_out_of_the_root_are_refused(roots: Any, clean: Any, bad: str) -> None:
    with pytest.raises(SuspiciousFileOperation):
        roots.save(bad, ContentFile(b"x"))
    assert_nothing_written(roots, clean)


def test_a_1000_character_name_part_is_refused_clearly(roots: Any, clean: Any) -> None:
    bad = "x" * 996 + ".txt"
    with pytest.raises(SuspiciousFileOperation) as raised:
        roots.save(bad, ContentFile(b"x"))
    message = str(raised.value)
    assert message.startswith(f"QueuedStorage refuses the file name {'x' * 60!r}... (1000 bytes)")
    assert "at most 255 bytes between slashes (its longest part has 1000)" in message
    assert "Shorten it, or save through a FileField" in message
    assert_nothing_written(roots, clean)


def test_a_name_over_1024_bytes_is_refused(roots: Any, clean: Any) -> None:
    bad = "/".join(["é" * 100] * 6) + ".txt"  # 6 parts of 200 bytes: 1,209 bytes
    with pytest.raises(SuspiciousFileOperation, match=r"\(1209 bytes\).* 1024 bytes in all"):
        roots.save(bad, ContentFile(b"x"))
    assert_nothing_written(roots, clean)


@pytest.mark.parametrize(
    "bad", [".queued_storage-doctor/x.txt", ".queued_storage-incoming/a/b.bin", ".queued_storage-x"]
)
def test_a_name_under_the_apps_own_prefix_is_refused_by_save_naming_the_file_and_the_fix(
    roots: Any, clean: Any, bad: str
) -> None:
    for storage in (roots, storages["queued_delayed"]):
        with pytest.raises(SuspiciousFileOperation) as raised:
            storage.save(bad, ContentFile(b"x"))
        assert str(raised.value) == (
            f"QueuedStorage refuses the file name {bad!r}: top-level names starting with "
            "'.queued_storage-' are reserved for queued_storage's own files. Choose another "
            "folder or name."
        )
    assert_nothing_written(roots, clean)


def test_a_1000_character_name_in_directories_is_stored_and_transferred(clean: Any) -> None:
    storage = storages["queued_delayed"]
    name = "/".join(["d" * 199] * 4 + ["d" * 196 + ".txt"])  # 1,000 characters
    assert len(name) == 1000
    stored = storage.save(name, ContentFile(b"deep"))
    assert stored == name
    assert run_transfer("queued_delayed", name) is Outcome.TRANSFERRED
    assert clean.get_object(Bucket=settings.BUCKET, Key=name)["Body"].read() == b"deep"
    assert storage.size(name) == 4


def test_a_1000_character_upload_through_a_field_is_truncated_to_max_length(clean: Any) -> None:
    doc = Document.objects.create(file=ContentFile(b"ok", name="y" * 996 + ".txt"))
    assert len(doc.file.name) <= 100
    assert doc.file.name.startswith("docs/yyy") and doc.file.name.endswith(".txt")
    with doc.file.open("rb") as fh:
        assert fh.read() == b"ok"


def test_names_differing_only_in_normalisation_are_one_name(clean: Any) -> None:
    storage = storages["queued_delayed"]
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    assert nfc != nfd
    first = storage.save(nfd, ContentFile(b"first"))
    second = storage.save(nfc, ContentFile(b"second"))
    assert first == nfc  # stored in NFC
    assert second != first and unicodedata.is_normalized("NFC", second)
    assert second.startswith("café_") and second.endswith(".txt")
    for name in (first, second):
        assert run_transfer("queued_delayed", name) is Outcome.TRANSFERRED
    assert clean.get_object(Bucket=settings.BUCKET, Key=first)["Body"].read() == b"first"
    assert clean.get_object(Bucket=settings.BUCKET, Key=second)["Body"].read() == b"second"
    keys = [o["Key"] for o in clean.list_objects_v2(Bucket=settings.BUCKET)["Contents"]]
    assert sorted(keys) == sorted([first, second])
    assert all(unicodedata.is_normalized("NFC", k) for k in keys)


# --- content -------------------------------------------------------------------------------
def test_an_empty_file_is_stored_transferred_and_verified(clean: Any) -> None:
    storage = storages["queued_delayed"]
    name = storage.save("empty.txt", ContentFile(b""))
    row = StoredFile.get_row("queued_delayed", name)
    assert row is not None and (row.state, row.size) == (State.PENDING, 0)
    assert run_transfer("queued_delayed", name) is Outcome.TRANSFERRED
    row.refresh_from_db()
    assert (row.state, row.size) == (State.REMOTE, 0)
    assert row.checksum == hashlib.md5(b"").hexdigest()
    assert clean.head_object(Bucket=settings.BUCKET, Key=name)["ContentLength"] == 0
    assert storage.exists(name) and storage.size(name) == 0
    with storage.open(name) as fh:
        assert fh.read() == b""


def test_a_file_that_vanishes_before_its_transfer_fails_with_its_reason(clean: Any) -> None:
    storage = storages["queued_delayed"]
    name = storage.save("gone-before.txt", ContentFile(b"x"))
    Path(storage.local.path(name)).unlink()
    assert run_transfer("queued_delayed", name) is Outcome.FAILED
    row = StoredFile.get_row("queued_delayed", name)
    assert row is not None
    assert (row.state, row.local_exists, row.attempts) == (State.FAILED, False, 1)
    assert f"The local copy of {name!r} is missing" in row.last_error
    assert clean.list_objects_v2(Bucket=settings.BUCKET).get("KeyCount") == 0


# --- configuration -------------------------------------------------------------------------
def test_a_local_alias_that_is_not_configured_is_named() -> None:
    with pytest.raises(
        ImproperlyConfigured, match=r"the local storage 'stagign' is not an alias in"
    ):
        QueuedStorage(local="stagign", remote="s3")


def test_a_task_for_an_alias_that_is_not_a_queued_storage_is_a_clear_error() -> None:
    with pytest.raises(StorageNotFound, match=r"STORAGES\['s3'\] is a S3Storage, not a Queued"):
        run_transfer("s3", "a.txt")


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("queue", 5, "str, got int 5"),
        ("delete_local", "yes", "bool, got str 'yes'"),
        ("alias", 3, "str, got int 3"),
        ("local_options", "location=/tmp", "dict, got str 'location=/tmp'"),
        ("cache_prefix", b"qs", "str, got bytes b'qs'"),
        ("task", 1.5, "str, got float 1.5"),
    ],
)
def test_an_option_of_the_wrong_type_is_named(option: str, value: Any, expected: str) -> None:
    with pytest.raises(QueuedStorageConfigError, match=rf"option '{option}' must be a {expected}"):
        QueuedStorage(local="staging", remote="s3", **{option: value})


@pytest.mark.parametrize("value", [5, None, ""])
def test_a_storage_given_as_something_else_than_a_name_is_refused(value: Any) -> None:
    with pytest.raises(QueuedStorageConfigError, match=r"needs the 'local' storage as an alias"):
        QueuedStorage(local=value, remote="s3")
