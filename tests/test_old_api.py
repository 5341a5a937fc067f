"""django-queued-storage's API, as its users wrote against it (its tests/test_storages.py is
the reference): ``Transfer`` subclasses with their own ``transfer`` hook, ``storage.result``,
``queued_storage.utils``, the ``QUEUED_STORAGE_*`` spelling of the settings, old cache values."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages
from django.db import transaction

from queued_storage.conf import settings as qs_settings
from queued_storage.exceptions import BadHookResult
from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage
from queued_storage.utils import import_attribute
from queued_storage.worker import RetryLater, run_transfer
from tests.harness.suite import wait_for
from tests.testapp.models import hook_storage, says_nothing_storage
from tests.testapp.tasks import CopyByHand

pytestmark = pytest.mark.django_db(transaction=True)


def storage_with(task: str, alias: str, **options: Any) -> QueuedStorage:
    return QueuedStorage(local="staging", remote="fs_remote", task=task, alias=alias, **options)


def test_a_transfer_subclass_hook_runs_in_a_real_worker(worker: Any, clean: Any) -> None:
    storage = hook_storage  # built where the worker builds it too: tests/testapp/models.py
    assert isinstance(storage.task, CopyByHand)
    assert storage.task.name == "tests.testapp.tasks.CopyByHand"
    with transaction.atomic():
        name = storage.save("by-hand.txt", ContentFile(b"copied by the hook"))

    def remote() -> StoredFile | None:
        # The row, then the state cache (published just after the row commits) say remote.
        row = StoredFile.get_row("old-api-hook", name)
        if row is None or row.state != State.REMOTE:
            return None
        return row if storage.using_remote(name) else None

    row = wait_for(remote, timeout=60, what="the hook's transfer")
    assert (row.size, row.checksum_algorithm) == (18, "hook")
    with storage.remote.open(name) as fh:
        assert fh.read() == b"copied by the hook"
    assert storage.using_remote(name)


def test_transfer_returns_a_result_whose_get_gives_the_outcome(worker: Any, clean: Any) -> None:
    storage = storages["queued_delayed"]
    name = storage.save("with-result.txt", ContentFile(b"result"))
    result = storage.transfer(name)
    assert result is not None
    assert storage.result is None  # a manual transfer leaves it alone, as in the old app
    assert result.get(timeout=60) == "transferred"
    assert storage.transfer(name).get(timeout=60) == "already-remote"


def test_a_hook_that_returns_false_is_retried(clean: Any) -> None:
    storage = storage_with("tests.testapp.tasks.NotYet", "old-api-not-yet", delayed=True)
    name = storage.save("later.txt", ContentFile(b"x"))
    with pytest.raises(RetryLater, match=r"NotYet.transfer\(\) returned False"):
        run_transfer(storage.alias, name, hook=storage.task.transfer)
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None and (row.state, row.attempts) == (State.PENDING, 1)


def test_a_hook_that_returns_anything_else_fails_the_file_and_raises_value_error(
    clean: Any,
) -> None:
    storage = storage_with("tests.testapp.tasks.SaysNothing", "old-api-nothing", delayed=True)
    name = storage.save("nothing.txt", ContentFile(b"x"))
    with pytest.raises(ValueError, match=r"SaysNothing.transfer\(\) returned None") as raised:
        run_transfer(storage.alias, name, hook=storage.task.transfer)
    assert isinstance(raised.value, BadHookResult)
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None and row.state == State.FAILED
    assert row.last_error.startswith(
        "tests.testapp.tasks.SaysNothing.transfer() returned None for 'nothing.txt': it must "
        "return True"
    )


def test_the_task_of_a_hook_that_returns_anything_else_fails_with_value_error_in_a_worker(
    worker: Any, clean: Any
) -> None:
    storage = says_nothing_storage  # the worker builds it too: tests/testapp/models.py
    name = storage.save("says-nothing.txt", ContentFile(b"x"))
    result = storage.transfer(name)
    with pytest.raises(ValueError, match=r"SaysNothing.transfer\(\) returned None"):
        result.get(timeout=60, propagate=True)
    assert result.state == "FAILURE"
    row = StoredFile.get_row(storage.alias, name)
    assert row is not None and row.state == State.FAILED
    assert storage.using_local(name)  # still served from its local copy


def test_a_hook_that_claims_a_copy_it_did_not_make_is_not_believed(clean: Any) -> None:
    storage = storage_with("tests.testapp.tasks.ClaimsDone", "old-api-claims", delayed=True)
    name = storage.save("claimed.txt", ContentFile(b"x"))
    with pytest.raises(RetryLater, match=r"the remote storage does not hold 'claimed.txt'"):
        run_transfer(storage.alias, name, hook=storage.task.transfer)
    assert StoredFile.get_row(storage.alias, name).state == State.PENDING  # type: ignore[union-attr]


def test_a_task_that_is_not_a_celery_task_is_refused_when_the_storage_is_built() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"is a function, not a Celery task"):
        storage_with("tests.testapp.tasks.not_a_task", "old-api-function")


def test_a_plain_function_with_a_delay_attribute_is_refused_when_the_storage_is_built() -> None:
    with pytest.raises(
        ImproperlyConfigured,
        match=r"option 'task' is 'tests.testapp.tasks.has_delay', which is a function, not a "
        r"Celery task",
    ):
        storage_with("tests.testapp.tasks.has_delay", "old-api-has-delay")


def test_result_is_the_last_save_dispatch_of_this_thread_only(clean: Any) -> None:
    storage = storage_with("queued_storage.tasks.Transfer", "old-api-result")
    assert storage.result is None
    name = storage.save("result.txt", ContentFile(b"x"))  # autocommit: dispatched at once
    sent = storage.result
    assert sent is not None and sent.id
    assert storage.transfer(name) is not sent
    assert storage.result is sent  # a manual transfer leaves it alone
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(storage.result))
    thread.start()
    thread.join()
    assert seen == [None]


def test_import_attribute_and_the_old_settings_spelling() -> None:
    assert import_attribute("django.core.files.storage.FileSystemStorage") is FileSystemStorage
    built = import_attribute("django.core.files.storage.FileSystemStorage", {"location": "/tmp/x"})
    assert isinstance(built, FileSystemStorage) and built.location == "/tmp/x"
    assert import_attribute(FileSystemStorage) is FileSystemStorage
    assert qs_settings.QUEUED_STORAGE_RETRIES == qs_settings.RETRIES
    assert qs_settings.QUEUED_STORAGE_CACHE_PREFIX == qs_settings.CACHE_PREFIX
    with pytest.raises(AttributeError, match="no setting 'QUEUED_STORAGE_NOPE'"):
        _ = qs_settings.QUEUED_STORAGE_NOPE


@pytest.mark.parametrize("old_value", [True, False, "remote", 1, {"x": 1}])
def test_a_cache_value_that_is_not_ours_is_a_miss_and_replaced(clean: Any, old_value: Any) -> None:
    storage = storage_with("queued_storage.tasks.Transfer", "old-api-cache", delayed=True)
    name = storage.save("cached.txt", ContentFile(b"cached"))
    caches["default"].set(storage.get_cache_key(name), old_value)
    assert storage.exists(name)
    assert storage.get_state(name).state == State.PENDING  # type: ignore[union-attr]
    with storage.open(name) as fh:
        assert fh.read() == b"cached"
    assert caches["default"].get(storage.get_cache_key(name))["s"] == "pending"
    assert Path(storage.path(name)).exists()
