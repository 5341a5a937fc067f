"""``queued_storage.testing``: a project's own tests run transfers synchronously, into a local
directory, with no broker, no Redis and no S3 of the helper's.

The Celery broker is pointed at a closed port for these tests: a transfer that went through
the broker would leave the file ``pending`` (the refused message is logged), never ``remote``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import current_app
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages
from django.test import TestCase

from queued_storage.storage import QueuedStorage
from queued_storage.testing import (
    CACHE_ALIAS,
    SynchronousTransfers,
    SynchronousTransfersMixin,
    queued_transfers,  # noqa: F401  (the fixture, as pytest_plugins = [...] would give it)
    synchronous_transfers,
)
from tests.testapp.models import Document

CLOSED_BROKER = "redis://127.0.0.1:1/0"


class _NoBroker:
    """Points the Celery app at a closed port; as ``tests/test_checks.py`` sets both spellings."""

    def __enter__(self) -> None:
        conf = current_app.conf
        self.saved = {k: conf[k] for k in ("broker_url", "CELERY_BROKER_URL") if k in conf}
        conf.update(broker_url=CLOSED_BROKER, CELERY_BROKER_URL=CLOSED_BROKER)

    def __exit__(self, *exc: Any) -> None:
        current_app.conf.update(self.saved)


class SynchronousTransfersTestCase(SynchronousTransfersMixin, TestCase):
    def setUp(self) -> None:
        super().setUp()
        no_broker = _NoBroker()
        no_broker.__enter__()
        self.addCleanup(no_broker.__exit__)

    def test_a_model_save_reaches_the_local_remote_when_the_block_ends(self) -> None:
        with self.transfers():
            doc = Document.objects.create(title="t", file=ContentFile(b"hello", name="a.txt"))
            assert doc.file.state == "pending"
        doc.refresh_from_db()
        assert doc.file.state == "remote"
        assert (self.remote_dir / doc.file.name).read_bytes() == b"hello"
        storage = doc.file.storage
        assert isinstance(storage, QueuedStorage)
        assert isinstance(storage.remote, FileSystemStorage)
        assert caches[CACHE_ALIAS].get(storage.get_cache_key(doc.file.name)) is not None
        assert doc.file.url.startswith("/")  # a FileSystemStorage's URL, not S3's


@pytest.mark.django_db
def test_the_pytest_fixture_runs_the_transfers_of_a_block(
    queued_transfers: SynchronousTransfers,  # noqa: F811
) -> None:
    with _NoBroker(), queued_transfers.run_on_commit():
        doc = Document.objects.create(file=ContentFile(b"bytes", name="b.txt"))
    assert doc.file.state == "remote"
    assert (queued_transfers.remote_dir / doc.file.name).read_bytes() == b"bytes"


@pytest.fixture
def default_storage() -> Iterator[QueuedStorage]:
    storage = storages["default"]
    assert isinstance(storage, QueuedStorage)
    return storage


def test_the_storages_are_given_back_and_the_temporary_remote_removed(
    default_storage: QueuedStorage,
) -> None:
    remote, task = default_storage.remote, default_storage.task
    with synchronous_transfers() as transfers:
        assert default_storage.remote is transfers.remote
        assert transfers.remote_dir.is_dir()
    assert (default_storage.remote, default_storage.task) == (remote, task)
    assert not transfers.remote_dir.exists()
