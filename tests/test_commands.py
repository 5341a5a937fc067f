"""``manage.py queued_storage``: the ``seed`` subcommand against a real S3 server (moto) and a
filesystem remote, and ``reconcile`` as an alias of ``queued_storage_reconcile``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage

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
