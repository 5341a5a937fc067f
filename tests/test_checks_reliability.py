"""The check ids of the reconcile pass, the staging budget and redelivery: E010, E011, W011
(W010 reads the ledger and is tested in ``test_reconcile.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from queued_storage.checks import check_reliability_settings


def _ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_configured_project_has_no_messages() -> None:
    assert check_reliability_settings() == []


@pytest.mark.parametrize("value", [None, 1, 50 * 1024**3])
def test_e010_silent_for_none_or_a_positive_budget(value: Any) -> None:
    with override_settings(QUEUED_STORAGE_STAGING_BUDGET=value):
        assert check_reliability_settings() == []


@pytest.mark.parametrize("value", [0, -1, "10G", 2.5, True])
def test_e010_staging_budget_not_a_positive_integer(value: Any) -> None:
    with override_settings(QUEUED_STORAGE_STAGING_BUDGET=value):
        messages = check_reliability_settings()
    assert _ids(messages) == ["queued_storage.E010"]
    assert messages[0].msg == (
        f"QUEUED_STORAGE_STAGING_BUDGET must be None or a positive number of bytes, got {value!r}."
    )


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("RECONCILE_AFTER", 0),
        ("RECONCILE_AFTER", "15m"),
        ("RECONCILE_BATCH", 0),
        ("RECONCILE_BATCH", 2.5),
        ("RECONCILE_BATCH", None),
    ],
)
def test_e011_reconcile_settings_positive(setting: str, value: Any) -> None:
    with override_settings(**{f"QUEUED_STORAGE_{setting}": value}):
        messages = check_reliability_settings()
    assert _ids(messages) == ["queued_storage.E011"]
    assert f"QUEUED_STORAGE_{setting} must be a positive number of" in messages[0].msg


@pytest.fixture
def celery_conf() -> Iterator[Any]:
    from celery import current_app

    conf = current_app.conf
    saved = (conf.broker_url, conf.broker_transport_options)
    yield conf
    conf.broker_url, conf.broker_transport_options = saved


def test_w011_visibility_timeout_shorter_than_the_longest_retry_delay(celery_conf: Any) -> None:
    celery_conf.broker_url = "redis://127.0.0.1:1/0"
    celery_conf.broker_transport_options = {"visibility_timeout": 600}
    with override_settings(QUEUED_STORAGE_RETRY_MAX_DELAY=3600):
        messages = check_reliability_settings()
        assert _ids(messages) == ["queued_storage.W011"]
        assert "visibility_timeout (600 s) is shorter than QUEUED_STORAGE_RETRY_MAX_DELAY" in (
            messages[0].msg
        )
        celery_conf.broker_transport_options = {}  # Redis' default: 3600 s
        assert check_reliability_settings() == []
        celery_conf.broker_url = "amqp://127.0.0.1//"  # RabbitMQ has no visibility timeout
        celery_conf.broker_transport_options = {"visibility_timeout": 600}
        assert check_reliability_settings() == []


def test_reliability_checks_are_bound() -> None:
    with (
        override_settings(QUEUED_STORAGE_STAGING_BUDGET=-1),
        pytest.raises(SystemCheckError, match=r"queued_storage\.E010"),
    ):
        call_command("check")
