"""Derivatives: the example project's :class:`Thumbnail` processor saves a thumbnail of an
image through the same queued storage, from the worker, before the image is sent. The
thumbnail is served while its source still waits for S3, then reaches S3 itself with a
file's guarantees (verified, ``remote``). Against moto through the fault proxy; the transfers
run in this process (``run_transfer``), no Celery."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
import requests
from django.conf import settings
from django.core.files.base import ContentFile
from PIL import Image

from example_project.gallery.processors import Thumbnail, thumbnail_name
from queued_storage.models import State, StoredFile
from queued_storage.processors import Later, Outcome, Passed, Staged
from queued_storage.processors.images import ImageInfo
from queued_storage.storage import QueuedStorage, owned_by
from queued_storage.worker import Outcome as Done
from queued_storage.worker import RetryLater, run_transfer

pytestmark = pytest.mark.django_db(transaction=True)


class LaterOnceFor:
    """A processor that cannot decide the first time it sees *name* (its scanner is down),
    and passes every other file, and *name* from then on."""

    def __init__(self, name: str) -> None:
        self.name, self.asked = name, False

    def __call__(self, staged: Staged) -> Outcome:
        if staged.name == self.name and not self.asked:
            self.asked = True
            return Later("the scanner is down")
        return Passed()


def png(width: int = 400, height: int = 300) -> bytes:
    image = Image.new("RGB", (width, height))
    image.putdata([(x % 256, y % 256, 128) for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def row(storage: QueuedStorage, name: str) -> StoredFile:
    found = StoredFile.get_row(storage.alias, name)
    assert found is not None
    return found


def metadata(storage: QueuedStorage, name: str) -> dict[str, Any]:
    """What the processors kept in *name*'s row (``{}``: none ran yet)."""
    return dict(row(storage, name).metadata or {})


def on_s3(client: Any) -> list[str]:
    listed = client.list_objects_v2(Bucket=settings.BUCKET).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def thumbs(storage: QueuedStorage) -> list[str]:
    rows = StoredFile.objects.filter(alias=storage.alias, name__startswith="thumbs/")
    return sorted(rows.values_list("name", flat=True))


def read(storage: QueuedStorage, name: str) -> bytes:
    with storage.open(name, "rb") as fh:
        data: bytes = fh.read()
    return data


def get(url: str) -> bytes:
    with requests.Session() as session:
        session.trust_env = False  # loopback: no proxy
        response = session.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return response.content


def test_a_thumbnail_is_served_while_its_source_waits_then_reaches_s3_verified(
    clean: Any, s3_proxy: Any
) -> None:
    storage = QueuedStorage(
        local="staging", remote="s3", delayed=True, processors=[ImageInfo(), Thumbnail(size=64)]
    )
    with owned_by("7"):
        name = storage.save("photos/cat.png", ContentFile(png()))
    derived = thumbnail_name(name)
    assert derived == "thumbs/photos/cat.png.jpg"

    s3_proxy.go_down()  # the processors run, then the source cannot be sent
    with pytest.raises(RetryLater):
        run_transfer(storage.alias, name)
    s3_proxy.come_up()
    source = row(storage, name)
    assert source.state == State.PENDING and source.processed is not None
    assert metadata(storage, name)["thumbnail"] == derived
    assert metadata(storage, name)["thumbnail_size"] == [64, 48]
    made = row(storage, derived)
    assert (made.state, made.owner) == (State.PENDING, "7")
    data = read(storage, derived)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("JPEG", (64, 48))
    assert storage.url(derived) == "/staging/thumbs/photos/cat.png.jpg"
    assert on_s3(clean) == []

    StoredFile.rows(storage.alias, name).update(retry_at=None)
    assert run_transfer(storage.alias, name) is Done.TRANSFERRED
    assert row(storage, name).state == State.REMOTE
    assert row(storage, derived).state == State.PENDING
    assert read(storage, derived) == data
    assert storage.url(derived) == "/staging/thumbs/photos/cat.png.jpg"
    assert on_s3(clean) == [name]

    assert run_transfer(storage.alias, derived) is Done.TRANSFERRED
    sent = row(storage, derived)
    assert sent.state == State.REMOTE
    assert (sent.size, sent.checksum) == (len(data), hashlib.md5(data).hexdigest())
    kept = metadata(storage, derived)
    assert kept["image"]["width"] == 64  # the thumbnail went through the processors
    assert "thumbnail" not in kept  # and got no thumbnail of its own
    assert storage.using_remote(derived)
    url = storage.url(derived)
    assert url.startswith(settings.S3_ENDPOINT)
    assert get(url) == data
    assert read(storage, derived) == data
    assert on_s3(clean) == sorted([name, derived])
    assert thumbs(storage) == [derived]


def test_a_second_run_replaces_the_thumbnail_under_the_same_name_also_once_on_s3(
    clean: Any,
) -> None:
    name = "photos/dog.png"
    storage = QueuedStorage(
        local="staging",
        remote="s3",
        delayed=True,
        processors=[Thumbnail(size=64), LaterOnceFor(name)],
    )
    assert storage.save(name, ContentFile(png(300, 400))) == name
    derived = thumbnail_name(name)
    with pytest.raises(RetryLater):  # the thumbnail is made, then the next processor waits
        run_transfer(storage.alias, name)
    assert row(storage, name).processed is None
    assert run_transfer(storage.alias, derived) is Done.TRANSFERRED
    assert on_s3(clean) == [derived]

    StoredFile.rows(storage.alias, name).update(retry_at=None)
    assert run_transfer(storage.alias, name) is Done.TRANSFERRED
    assert metadata(storage, name)["thumbnail"] == derived
    assert thumbs(storage) == [derived]  # the same name, not thumbs/photos/dog_a1b2c3d.png.jpg
    assert storage.local.listdir("thumbs/photos") == ([], ["dog.png.jpg"])
    assert row(storage, derived).state == State.PENDING  # the one on S3 was deleted
    assert on_s3(clean) == [name]
    assert run_transfer(storage.alias, derived) is Done.TRANSFERRED
    assert on_s3(clean) == sorted([name, derived])
    with Image.open(io.BytesIO(read(storage, derived))) as image:
        assert image.size == (48, 64)


def test_a_file_that_is_no_image_gets_no_thumbnail(clean: Any) -> None:
    storage = QueuedStorage(local="staging", remote="s3", delayed=True, processors=[Thumbnail()])
    name = storage.save("notes/readme.txt", ContentFile(b"plain words\n"))
    assert run_transfer(storage.alias, name) is Done.TRANSFERRED
    assert row(storage, name).processed is not None
    assert "thumbnail" not in metadata(storage, name)
    assert thumbs(storage) == []


def test_an_image_pillow_cannot_read_is_rejected_with_no_thumbnail(clean: Any) -> None:
    storage = QueuedStorage(local="staging", remote="s3", delayed=True, processors=[Thumbnail()])
    name = storage.save("photos/broken.png", ContentFile(b"not a PNG at all"))
    assert run_transfer(storage.alias, name) is Done.REJECTED
    assert row(storage, name).last_error.startswith("'photos/broken.png' is not a readable image")
    assert thumbs(storage) == []
    assert on_s3(clean) == []


def test_a_thumbnail_name_too_long_for_the_storage_is_a_hash_of_the_source_name() -> None:
    name = "photos/" + "x" * 250 + ".png"
    derived = thumbnail_name(name)
    assert derived == f"thumbs/{hashlib.sha256(name.encode()).hexdigest()}.jpg"
    assert thumbnail_name(name) == derived
