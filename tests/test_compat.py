"""django-queued-storage's documented uses keep working (its README and docs, 2015)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.test import override_settings

from queued_storage import backends, fields, signals, tasks
from queued_storage.models import State
from queued_storage.state import cache_key
from queued_storage.worker import Outcome, run_transfer
from tests.harness.suite import s3_bytes, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_old_positional_constructor_with_removed_s3boto_path(clean: Any, caplog: Any) -> None:
    storage = backends.QueuedStorage(
        "django.core.files.storage.FileSystemStorage",
        "storages.backends.s3boto.S3BotoStorage",
        delayed=True,
    )
    assert "storages.backends.s3boto.S3BotoStorage no longer exists" in caplog.text
    from storages.backends.s3 import S3Storage

    assert isinstance(storage.remote, S3Storage)
    assert storage.local_path == "django.core.files.storage.FileSystemStorage"
    assert storage.delayed is True
    assert storage.delete_local is False  # the old default task keeps the local copy


def test_old_subclasses_keep_their_defaults() -> None:
    fs = backends.QueuedFileSystemStorage(remote="storages.backends.s3.S3Storage")
    assert fs.local_path == "django.core.files.storage.FileSystemStorage"
    s3 = backends.QueuedS3BotoStorage(task="queued_storage.tasks.TransferAndDelete")
    assert s3.remote_path == "storages.backends.s3.S3Storage"
    assert s3.delete_local is True
    assert backends.QueuedRemoteStorage is backends.QueuedStorage


def test_subclass_with_class_attributes_as_in_the_old_docs() -> None:
    class MyQueuedStorage(backends.QueuedStorage):
        local = "django.core.files.storage.FileSystemStorage"
        remote = "storages.backends.s3.S3Storage"
        delayed = True

    storage = MyQueuedStorage()
    assert storage.delayed is True
    assert storage.remote_path == "storages.backends.s3.S3Storage"


def test_old_task_names_are_celery_tasks() -> None:
    assert tasks.Transfer.name == "queued_storage.tasks.transfer"
    assert tasks.TransferAndDelete.name == "queued_storage.tasks.TransferAndDelete"
    storage = backends.QueuedStorage(
        "django.core.files.storage.FileSystemStorage",
        "storages.backends.s3.S3Storage",
        task="queued_storage.tasks.TransferAndDelete",
    )
    assert isinstance(storage.task, tasks.TransferAndDelete)


def test_cache_prefix_setting_and_option() -> None:
    storage = backends.QueuedStorage("staging", "s3")
    with override_settings(QUEUED_STORAGE_CACHE_PREFIX="legacy"):
        renamed = backends.QueuedStorage("staging", "s3")
    explicit = backends.QueuedStorage("staging", "s3", cache_prefix="mine")
    assert storage.get_cache_key("a b.txt") == cache_key("queued_storage", storage.alias, "a b.txt")
    assert renamed.get_cache_key("x").startswith("legacy:")
    assert explicit.get_cache_key("x").startswith("mine:")


def test_get_storage_using_local_using_remote_and_transfer(clean: Any) -> None:
    storage = backends.QueuedS3BotoStorage(
        local="staging", remote="s3", delayed=True, task="queued_storage.tasks.TransferAndDelete"
    )
    name = storage.save("old-api.txt", ContentFile(b"legacy"))
    assert storage.get_storage(name) is storage.local
    assert storage.using_local(name) and not storage.using_remote(name)
    result = storage.transfer(name)  # queues the task, as before
    assert result is not None and result.id
    # Whichever process runs it (a worker may be up), the outcome is the same.
    outcome = run_transfer(storage.alias, name)
    assert outcome in (Outcome.TRANSFERRED, Outcome.ALREADY_REMOTE)
    assert storage.using_remote(name)
    assert storage.get_storage(name) is storage.remote


def test_queued_file_field_transfer_and_state(worker: Any, clean: Any) -> None:
    from tests.testapp.models import Document

    field = Document._meta.get_field("file")
    assert isinstance(field, fields.QueuedFileField)
    doc = Document(title="x")
    doc.file.save("field.txt", ContentFile(b"abc"), save=False)
    assert doc.file.state == State.PENDING
    assert not doc.file.is_remote
    result = doc.file.transfer()
    assert result is not None and result.id
    # The queued transfer reaches the worker and the field's state follows it to the remote.
    wait_for(lambda: doc.file.state == State.REMOTE, what="the field's file to reach the remote")
    assert doc.file.is_remote
    assert s3_bytes(clean, doc.file.name) == b"abc"


def test_file_transferred_keeps_its_old_arguments(clean: Any) -> None:
    storage = backends.QueuedStorage("staging", "s3", delayed=True)
    name = storage.save("signal.txt", ContentFile(b"abc"))
    got: dict[str, Any] = {}

    def receiver(sender: Any, name: str, local: Any, remote: Any, **kwargs: Any) -> None:
        got.update(name=name, local=local, remote=remote)

    signals.file_transferred.connect(receiver)
    try:
        run_transfer(storage.alias, name)
    finally:
        signals.file_transferred.disconnect(receiver)
    assert got == {"name": name, "local": storage.local, "remote": storage.remote}
    assert Path(storage.local.path(name)).exists()
