"""The Storage contract (as Django's own storage tests state it) and where QueuedStorage differs.

Run against ``QueuedStorage(local=FileSystemStorage, remote=FileSystemStorage)`` in two modes:
``eager`` (each file is transferred, in this process, right after its save; the local copy is
deleted) and ``delayed`` (``delayed=True``: nothing is transferred). Name reuse stays forbidden on
purpose (README, "Differences from FileSystemStorage").
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages

from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage
from queued_storage.worker import Outcome, run_transfer

pytestmark = pytest.mark.django_db(transaction=True)

STAGING = Path(settings.STAGING_ROOT)
REMOTE = Path(settings.WORKDIR) / "fs_remote"


class Contract:
    """A queued storage over two filesystem storages, and how its saves are completed."""

    def __init__(self, mode: str, storage_class: type[QueuedStorage] = QueuedStorage) -> None:
        self.mode = mode
        self.storage = storage_class(
            local="staging",
            remote="fs_remote",
            delayed=mode == "delayed",
            delete_local=mode == "eager",
            alias=f"contract-{mode}-{storage_class.__name__}",
        )

    def save(self, name: str, data: bytes = b"content") -> str:
        stored = self.storage.save(name, ContentFile(data))
        if self.mode == "eager":
            assert run_transfer(self.storage.alias, stored) == Outcome.TRANSFERRED
        return stored


@pytest.fixture(params=["eager", "delayed"])
def contract(request: Any, clean: Any) -> Contract:
    return Contract(request.param)


class UUIDNames(QueuedStorage):
    """Django's documented way to choose names: override ``get_available_name``."""

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        return f"by-uuid/0f8fad5b-d9cb-469f-a165-70867728950e{os.path.splitext(name)[1]}"


def test_save_asks_get_available_name_of_a_subclass(request: Any, clean: Any) -> None:
    for mode in ("eager", "delayed"):
        contract = Contract(mode, UUIDNames)
        name = contract.save("holiday.jpg")
        assert name == "by-uuid/0f8fad5b-d9cb-469f-a165-70867728950e.jpg"
        row = StoredFile.get_row(contract.storage.alias, name)
        assert row is not None
        # The proposal is taken now: the ledger still decides, and picks an alternative.
        again = contract.storage.save("other.jpg", ContentFile(b"2"))
        assert again != name and again.startswith("by-uuid/0f8fad5b-")


def test_a_name_get_available_name_proposes_is_still_validated(clean: Any) -> None:
    class Escaping(QueuedStorage):
        def get_available_name(self, name: str, max_length: int | None = None) -> str:
            return "../outside.txt"

    storage = Escaping(local="staging", remote="fs_remote", delayed=True, alias="contract-escape")
    with pytest.raises(SuspiciousFileOperation):
        storage.save("inside.txt", ContentFile(b"x"))
    assert not (STAGING.parent / "outside.txt").exists()
    assert not StoredFile.objects.filter(alias="contract-escape").exists()


@pytest.mark.parametrize("name", ["path/to/../test.file", "/path/to/test.file"])
def test_save_refuses_a_traversing_name_as_given_before_looking_at_the_content(
    name: str, clean: Any
) -> None:
    # Django's Storage.save(): the name first, with Django's message naming the whole name;
    # a str content (no chunks(), no size) is not looked at before that.
    storage = Contract("delayed").storage
    with pytest.raises(SuspiciousFileOperation) as raised:
        storage.save(name, "content")
    assert str(raised.value) == f"Detected path traversal attempt in '{name}'"
    assert not StoredFile.objects.filter(alias=storage.alias).exists()
    assert not (STAGING / "path").exists()


@pytest.mark.parametrize("proposed", ["path/to/../test.file", "/path/to/test.file"])
def test_a_traversing_name_from_get_available_name_is_refused_naming_it(
    proposed: str, clean: Any
) -> None:
    class Proposes(QueuedStorage):
        def get_available_name(self, name: str, max_length: int | None = None) -> str:
            return proposed

    storage = Proposes(local="staging", remote="fs_remote", delayed=True, alias="contract-proposes")
    with pytest.raises(SuspiciousFileOperation) as raised:
        storage.save("test.file", "content")
    assert str(raised.value) == f"Detected path traversal attempt in '{proposed}'"
    assert not StoredFile.objects.filter(alias="contract-proposes").exists()
    assert not (STAGING / "test.file").exists()


def test_unknown_names_belong_to_the_local_storage(contract: Contract) -> None:
    storage = contract.storage
    with storage.open("by-hand.txt", "wb") as fh:  # FileSystemStorage makes no directory here
        fh.write(b"by hand")
    assert (STAGING / "by-hand.txt").read_bytes() == b"by hand"
    assert not (REMOTE / "by-hand.txt").exists()
    assert storage.path("by-hand.txt") == str(STAGING / "by-hand.txt")
    assert storage.path("never-saved.txt") == str(STAGING / "never-saved.txt")
    assert storage.url("never-saved.txt") == "/staging/never-saved.txt"
    assert not storage.exists("never-saved.txt")
    assert storage.exists("by-hand.txt")


@pytest.mark.parametrize("name", ["/evil.com", "//evil.com/x", "/a/b.txt"])
def test_url_of_a_leading_slash_answers_as_filesystemstorage_does(
    contract: Contract, name: str
) -> None:
    reference = FileSystemStorage(location=str(STAGING), base_url="/staging/")
    assert contract.storage.url(name) == reference.url(name)


def test_listdir_of_a_directory_on_one_side_only(contract: Contract) -> None:
    contract.save("only/one.txt")
    contract.save("only/sub/two.txt")
    if contract.mode == "eager":
        shutil.rmtree(STAGING / "only")  # the emptied directories the local copies left
    dirs, files = contract.storage.listdir("only")
    assert (dirs, files) == (["sub"], ["one.txt"])
    # In eager mode the directory is on the remote only (local copies deleted), in delayed
    # mode on the local side only.
    side = REMOTE if contract.mode == "eager" else STAGING
    other = STAGING if contract.mode == "eager" else REMOTE
    assert (side / "only" / "one.txt").exists()
    assert not (other / "only").exists()
    with pytest.raises(FileNotFoundError):
        contract.storage.listdir("nowhere")


def test_times_and_path_describe_the_same_copy_after_a_transfer_that_keeps_it(clean: Any) -> None:
    storage = QueuedStorage(local="staging", remote="fs_remote", alias="contract-keep")
    name = storage.save("kept.txt", ContentFile(b"kept"))
    os.utime(storage.local.path(name), (1_000_000_000, 1_000_000_000))  # 2001, unlike the copy
    assert run_transfer(storage.alias, name) == Outcome.TRANSFERRED
    assert StoredFile.get_row(storage.alias, name).state == State.REMOTE  # type: ignore[union-attr]
    local = Path(storage.path(name))
    assert local.parent == STAGING
    assert storage.get_modified_time(name).timestamp() == pytest.approx(local.stat().st_mtime)
    assert storage.get_accessed_time(name).timestamp() == pytest.approx(local.stat().st_atime)
    assert storage.get_modified_time(name).year == 2001
    # Once the local copy is gone, the remote's times answer.
    storage.local.delete(name)
    assert storage.get_modified_time(name).year > 2001


def test_basic_round_trip(contract: Contract) -> None:
    name = contract.save("round/trip.txt", b"round trip")
    storage = contract.storage
    assert storage.exists(name)
    assert storage.size(name) == 10
    with storage.open(name) as fh:
        assert fh.read() == b"round trip"
    storage.delete(name)
    assert not storage.exists(name)
    assert not (STAGING / name).exists() and not (REMOTE / name).exists()


def test_name_reuse_is_forbidden_on_purpose(contract: Contract) -> None:
    first = contract.save("same.txt", b"1")
    second = contract.save("same.txt", b"2")
    assert first == "same.txt" and second != first
    with contract.storage.open(first) as fh:
        assert fh.read() == b"1"


def test_a_name_the_ledger_does_not_know_asks_s3_nothing(s3_proxy: Any) -> None:
    storage = storages["queued_delayed"]
    s3_proxy.clear_log()
    assert not storage.exists("never-saved.bin")
    assert storage.url("never-saved.bin") == "/staging/never-saved.bin"
    with pytest.raises(FileNotFoundError):
        storage.size("never-saved.bin")
    assert [r for r in s3_proxy.requests if "never-saved" in r.path] == []
