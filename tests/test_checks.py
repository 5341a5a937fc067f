"""Each system check id fires on its misconfiguration, and the checks are bound."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from queued_storage.checks import check_queued_storages, check_settings


def _ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def _storages(**options: Any) -> dict[str, Any]:
    from django.conf import settings

    return {
        **settings.STORAGES,
        "broken": {"BACKEND": "queued_storage.storage.QueuedStorage", "OPTIONS": options},
    }


def test_configured_project_has_no_messages() -> None:
    assert check_queued_storages() == []
    assert check_settings() == []


def test_e001_local_alias_missing() -> None:
    with override_settings(STORAGES=_storages(local="nope", remote="s3")):
        messages = check_queued_storages()
    assert _ids(messages) == ["queued_storage.E001"]
    assert "STORAGES['broken']: the local storage 'nope' is not an alias" in messages[0].msg


def test_e002_remote_alias_missing() -> None:
    with override_settings(STORAGES=_storages(local="staging", remote="s4")):
        messages = check_queued_storages()
    assert _ids(messages) == ["queued_storage.E002"]
    assert "the remote storage 's4'" in messages[0].msg


def test_e003_local_storage_without_path() -> None:
    with override_settings(STORAGES=_storages(local="s3", remote="fs_remote")):
        messages = check_queued_storages()
    assert _ids(messages) == ["queued_storage.E003"]
    assert "cannot give a filesystem path" in messages[0].msg


@pytest.mark.parametrize("value", [0, -1, "5", 2.5])
def test_e004_retries_not_positive_int(value: Any) -> None:
    with override_settings(QUEUED_STORAGE_RETRIES=value):
        messages = check_settings()
    assert _ids(messages) == ["queued_storage.E004"]


@pytest.mark.parametrize(
    "setting", ["RETRY_DELAY", "RETRY_MAX_DELAY", "LEASE_TIMEOUT", "CACHE_TIMEOUT"]
)
@pytest.mark.parametrize("value", [0, -3, "60"])
def test_e005_delays_and_timeouts_positive(setting: str, value: Any) -> None:
    with override_settings(**{f"QUEUED_STORAGE_{setting}": value}):
        messages = check_settings()
    assert _ids(messages) == ["queued_storage.E005"]
    assert f"QUEUED_STORAGE_{setting} must be a positive number" in messages[0].msg


def test_e006_cache_alias_missing() -> None:
    with override_settings(QUEUED_STORAGE_CACHE="states"):
        messages = check_settings()
    assert _ids(messages) == ["queued_storage.E006"]


def test_e007_invalid_option() -> None:
    with override_settings(STORAGES=_storages(local="staging", remote="s3", dleayed=True)):
        messages = check_queued_storages()
    assert _ids(messages) == ["queued_storage.E007"]
    assert "Invalid option 'dleayed' for QueuedStorage" in messages[0].msg


@pytest.mark.parametrize(
    "backend",
    [
        "django.core.cache.backends.locmem.LocMemCache",
        "django.core.cache.backends.dummy.DummyCache",
    ],
)
def test_w001_process_local_cache_while_not_eager(backend: str) -> None:
    with override_settings(CACHES={"default": {"BACKEND": backend}}):
        messages = check_settings()
    assert _ids(messages) == ["queued_storage.W001"]


def test_w001_silent_when_celery_is_eager() -> None:
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(CACHES=caches, CELERY_TASK_ALWAYS_EAGER=True):
        assert check_settings() == []


def test_checks_are_bound() -> None:
    with (
        override_settings(QUEUED_STORAGE_RETRIES=0),
        pytest.raises(SystemCheckError, match=r"queued_storage\.E004"),
    ):
        call_command("check")


@pytest.mark.django_db
def test_no_pending_migrations() -> None:
    call_command("makemigrations", "queued_storage", "--check", "--dry-run", verbosity=0)
