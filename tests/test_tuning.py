"""Each tuning setting does what docs/configuration.md says it does (the system checks only
validate their values): the state cache's timeout, the engine's read, part and threshold sizes
and its concurrency, the upload views' read size and permissions, and how the staged-file view
hands a file to the web server.

Transfers run in this process (``run_transfer``) on the ``queued_delayed`` storage, which never
dispatches by itself, so the suite's worker does not race them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.cache import caches
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.test import Client, override_settings

import queued_storage._s3.upload as s3_upload
import queued_storage.views.upload as upload_view
from queued_storage.models import StoredFile
from queued_storage.state import cache_key
from queued_storage.storage import QueuedStorage, owned_by
from queued_storage.worker import Outcome, run_transfer
from tests.harness.suite import direct_s3_client, need

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024
SERVE = {"queued_delayed": "delayed-file"}


@pytest.fixture
def delayed(clean: Any) -> QueuedStorage:
    storage = storages["queued_delayed"]
    assert isinstance(storage, QueuedStorage)
    return storage


def _transferred(storage: QueuedStorage, name: str, data: bytes) -> str:
    """Save *data* as *name*, transfer it here; the S3 ETag of the remote copy."""
    saved = storage.save(name, ContentFile(data))
    assert run_transfer(storage.alias, saved) == Outcome.TRANSFERRED
    head = direct_s3_client().head_object(Bucket=settings.BUCKET, Key=saved)
    assert head["ContentLength"] == len(data)
    return str(head["ETag"]).strip('"')


def _user(username: str, *perms: str, **flags: bool) -> User:
    user: User = User.objects.create_user(username, **flags)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


# -- the state cache ------------------------------------------------------------------------------
@override_settings(QUEUED_STORAGE_CACHE_TIMEOUT=4321)
def test_cache_timeout_is_the_ttl_of_a_files_state_in_redis(delayed: QueuedStorage) -> None:
    need("redis")
    name = delayed.save("ttl.txt", ContentFile(b"ttl"))
    key = caches["default"].make_key(cache_key(delayed.cache_prefix, delayed.alias, name))
    client = redis.Redis.from_url(f"{settings.REDIS_URL}/1")
    try:
        ttl = client.ttl(key)
    finally:
        client.close()
    # Redis counts down in whole seconds from the moment of the write.
    assert 4321 - 60 < ttl <= 4321


# -- the transfer engine --------------------------------------------------------------------------
@override_settings(QUEUED_STORAGE_CHUNK_SIZE=1000)
def test_chunk_size_is_the_read_size_of_the_generic_copy(monkeypatch: Any, clean: Any) -> None:
    storage = storages["queued_fs"]
    assert isinstance(storage, QueuedStorage)
    name = storage.save("chunks.bin", ContentFile(b"c" * 4500))
    reads: list[list[int]] = []
    real_open = storage.local.open

    class Counted(File):  # type: ignore[type-arg]
        """The local copy, each read's length noted."""

        def __init__(self, fh: File) -> None:  # type: ignore[type-arg]
            super().__init__(fh.file, fh.name)
            self.sizes: list[int] = []
            reads.append(self.sizes)

        def read(self, size: int = -1) -> bytes:
            assert self.file is not None
            data: bytes = self.file.read(size)
            if data:
                self.sizes.append(len(data))
            return data

    def spying_open(path: str, mode: str = "rb") -> File:  # type: ignore[type-arg]
        return Counted(real_open(path, mode))

    monkeypatch.setattr(storage.local, "open", spying_open)
    assert run_transfer(storage.alias, name) == Outcome.TRANSFERRED
    # The checksum pass over the local copy reads CHUNK_SIZE bytes at a time.
    assert reads[0] == [1000, 1000, 1000, 1000, 500]


@override_settings(
    QUEUED_STORAGE_MULTIPART_THRESHOLD=7 * MiB, QUEUED_STORAGE_MULTIPART_CHUNKSIZE=5 * MiB
)
def test_multipart_threshold_is_the_size_from_which_a_file_goes_in_parts(
    delayed: QueuedStorage,
) -> None:
    below = _transferred(delayed, "below.bin", b"b" * (7 * MiB - 1))
    at = _transferred(delayed, "at.bin", b"a" * (7 * MiB))
    assert "-" not in below  # one PUT: a plain MD5 ETag
    assert at.endswith("-2")  # a multipart upload of two parts (5 MiB + 2 MiB)


@override_settings(
    QUEUED_STORAGE_MULTIPART_THRESHOLD=5 * MiB, QUEUED_STORAGE_MULTIPART_CHUNKSIZE=6 * MiB
)
def test_multipart_chunksize_is_the_part_size_on_s3(delayed: QueuedStorage) -> None:
    etag = _transferred(delayed, "parts.bin", b"p" * (13 * MiB))
    assert etag.endswith("-3")  # 6 + 6 + 1 MiB
    first = direct_s3_client().head_object(Bucket=settings.BUCKET, Key="parts.bin", PartNumber=1)
    assert first["ContentLength"] == 6 * MiB


@override_settings(
    QUEUED_STORAGE_MULTIPART_THRESHOLD=5 * MiB,
    QUEUED_STORAGE_MULTIPART_CHUNKSIZE=5 * MiB,
    QUEUED_STORAGE_MAX_CONCURRENCY=2,
)
def test_max_concurrency_is_the_number_of_parts_in_flight(
    delayed: QueuedStorage, monkeypatch: Any
) -> None:
    lock = threading.Lock()
    more = threading.Condition(lock)
    in_flight = [0]
    peak = [0]
    real_client = getattr(s3_upload, "s3_client")  # noqa: B009 (imported, not exported)

    class Counting:
        """The engine's S3 client; each part waits (up to 1 s) for one more part to start."""

        def __init__(self, client: Any) -> None:
            self.client = client

        def __getattr__(self, attribute: str) -> Any:
            return getattr(self.client, attribute)

        def upload_part(self, **kwargs: Any) -> Any:
            with more:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
                more.notify_all()
                more.wait_for(lambda: in_flight[0] > 2, timeout=1)
            try:
                return self.client.upload_part(**kwargs)
            finally:
                with more:
                    in_flight[0] -= 1

    monkeypatch.setattr(
        s3_upload, "s3_client", lambda *args, **kwargs: Counting(real_client(*args, **kwargs))
    )
    etag = _transferred(delayed, "concurrent.bin", b"m" * (16 * MiB))
    assert etag.endswith("-4")
    assert peak[0] == 2


# -- the upload views -----------------------------------------------------------------------------
@override_settings(QUEUED_STORAGE_UPLOAD_CHUNK_SIZE=1000)
def test_upload_chunk_size_is_the_read_size_of_the_upload_view(
    clean: Any, monkeypatch: Any
) -> None:
    reads: list[int] = []
    real_spool_stream = getattr(upload_view, "spool_stream")  # noqa: B009 (imported, not exported)

    def spying_spool_stream(read: Any, *args: Any, **kwargs: Any) -> Any:
        def counted(size: int) -> bytes:
            data: bytes = read(size)
            if data:
                reads.append(len(data))
            return data

        return real_spool_stream(counted, *args, **kwargs)

    monkeypatch.setattr(upload_view, "spool_stream", spying_spool_stream)
    client = _client(_user("uploader", "queued_storage.add_storedfile"))
    response = client.put("/uploads/put/chunked.bin", data=b"u" * 4500)
    assert response.status_code == 201, response.content
    assert reads == [1000, 1000, 1000, 1000, 500]
    assert (Path(settings.STAGING_ROOT) / "chunked.bin").read_bytes() == b"u" * 4500


@override_settings(QUEUED_STORAGE_UPLOAD_PERMISSION="testapp.add_document")
def test_upload_permission_is_the_permission_the_upload_view_requires(clean: Any) -> None:
    # The default permission is not enough once another is configured.
    without = _client(_user("default-perm", "queued_storage.add_storedfile"))
    assert without.put("/uploads/put/refused.txt", data=b"no").status_code == 403
    allowed = _client(_user("document-adder", "testapp.add_document"))
    response = allowed.put("/uploads/put/allowed.txt", data=b"yes")
    assert response.status_code == 201, response.content
    assert StoredFile.get_row("default", "refused.txt") is None
    assert StoredFile.get_row("default", "allowed.txt") is not None


@override_settings(QUEUED_STORAGE_STATUS_PERMISSION="testapp.view_document")
def test_status_permission_is_the_permission_the_status_view_requires(clean: Any) -> None:
    # Staff, so that the file's owner does not matter: only the permission decides.
    without = _user("staff-default", "queued_storage.view_storedfile", is_staff=True)
    allowed = _user("staff-documents", "testapp.view_document", is_staff=True)
    storages["default"].save("status.txt", ContentFile(b"s"))
    assert _client(without).get("/uploads/status/status.txt").status_code == 403
    response = _client(allowed).get("/uploads/status/status.txt")
    assert response.status_code == 200, response.content
    # (the session's worker may have transferred it by now: the state is not the point)
    assert response.json()["name"] == "status.txt"


# -- the staged-file view: handing the file to the web server -------------------------------------
@override_settings(QUEUED_STORAGE_SERVE_STAGED=SERVE, QUEUED_STORAGE_SENDFILE="x-sendfile")
def test_x_sendfile_hands_the_staged_files_path_to_the_web_server(
    delayed: QueuedStorage,
) -> None:
    owner = _user("sendfile-owner")
    with owned_by(str(owner.pk)):
        name = delayed.save("clips/été 1.mp4", ContentFile(b"x" * 100))
    response = _client(owner).get("/delayed-files/clips/%C3%A9t%C3%A9%201.mp4")
    assert response.status_code == 200
    assert response.content == b""
    assert response["X-Sendfile"] == quote(str(Path(settings.STAGING_ROOT) / name))
    assert "X-Accel-Redirect" not in response


@override_settings(
    QUEUED_STORAGE_SERVE_STAGED=SERVE,
    QUEUED_STORAGE_SENDFILE="x-accel-redirect",
    QUEUED_STORAGE_SENDFILE_PREFIX="/internal/waiting/",
)
def test_sendfile_prefix_begins_the_x_accel_redirect_location(delayed: QueuedStorage) -> None:
    owner = _user("accel-owner")
    with owned_by(str(owner.pk)):
        delayed.save("clips/été 2.mp4", ContentFile(b"y" * 100))
    response = _client(owner).get("/delayed-files/clips/%C3%A9t%C3%A9%202.mp4")
    assert response.status_code == 200
    assert response.content == b""
    assert response["X-Accel-Redirect"] == "/internal/waiting/clips/%C3%A9t%C3%A9%202.mp4"
    assert "X-Sendfile" not in response
