"""The system checks of the upload views: E008, E009, W002 (queued_storage.checks)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from queued_storage.checks import check_upload_settings


def _ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_test_settings_have_no_upload_messages() -> None:
    assert check_upload_settings() == []


@override_settings(QUEUED_STORAGE_NGINX_SECRET=None, QUEUED_STORAGE_NGINX_UPLOAD_DIR=None)
def test_defaults_have_no_upload_messages() -> None:
    assert check_upload_settings() == []


@pytest.mark.parametrize("alias", ["nope", "staging", "s3"])
def test_e008_upload_storage_is_not_a_queued_storage(alias: str) -> None:
    with override_settings(QUEUED_STORAGE_UPLOAD_STORAGE=alias):
        messages = check_upload_settings()
    assert _ids(messages) == ["queued_storage.E008"]
    assert messages[0].msg == (
        f"QUEUED_STORAGE_UPLOAD_STORAGE is {alias!r}, which is not the alias of a QueuedStorage "
        "in STORAGES."
    )


def test_e008_silent_for_a_queued_storage_alias() -> None:
    with override_settings(QUEUED_STORAGE_UPLOAD_STORAGE="queued_fs"):
        assert check_upload_settings() == []


@pytest.mark.parametrize(
    ("setting", "value", "text", "check_id"),
    [
        (
            "UPLOAD_MAX_BYTES",
            0,
            "QUEUED_STORAGE_UPLOAD_MAX_BYTES must be a positive integer",
            "E009",
        ),
        (
            "UPLOAD_MAX_BYTES",
            "5G",
            "QUEUED_STORAGE_UPLOAD_MAX_BYTES must be a positive integer",
            "E009",
        ),
        (
            "UPLOAD_CHUNK_SIZE",
            -1,
            "QUEUED_STORAGE_UPLOAD_CHUNK_SIZE must be a positive integer",
            "E009",
        ),
        (
            "UPLOAD_AUTHORIZER",
            "no.such.hook",
            "QUEUED_STORAGE_UPLOAD_AUTHORIZER 'no.such.hook'",
            "E012",
        ),
        (
            "UPLOAD_AUTHORIZER",
            "queued_storage.conf.MiB",
            "must be the dotted path of a function",
            "E012",
        ),
        (
            "UPLOAD_PERMISSION",
            "add_storedfile",
            "QUEUED_STORAGE_UPLOAD_PERMISSION must be None",
            "E013",
        ),
        ("STATUS_PERMISSION", 3, "QUEUED_STORAGE_STATUS_PERMISSION must be None", "E013"),
        (
            "NGINX_UPLOAD_DIR",
            "relative/dir",
            "QUEUED_STORAGE_NGINX_UPLOAD_DIR must be None",
            "E014",
        ),
        (
            "NGINX_SECRET",
            "",
            "QUEUED_STORAGE_NGINX_SECRET must be None or a non-empty string",
            "E015",
        ),
    ],
)
def test_each_invalid_upload_setting_has_its_own_check_id(
    setting: str, value: Any, text: str, check_id: str
) -> None:
    with override_settings(**{f"QUEUED_STORAGE_{setting}": value}):
        messages = check_upload_settings()
    assert _ids(messages) == [f"queued_storage.{check_id}"]
    assert text in messages[0].msg


def test_w002_nginx_directory_without_a_secret() -> None:
    with override_settings(QUEUED_STORAGE_NGINX_SECRET=None):
        messages = check_upload_settings()
    assert _ids(messages) == ["queued_storage.W002"]
    assert "QUEUED_STORAGE_NGINX_SECRET is not" in messages[0].msg


def test_upload_checks_are_bound() -> None:
    with (
        override_settings(QUEUED_STORAGE_UPLOAD_STORAGE="staging"),
        pytest.raises(SystemCheckError, match=r"queued_storage\.E008"),
    ):
        call_command("check")
