"""Passwords in URLs never reach what operators read (``queued_storage.dispatch.redact``).

A broker URL or an S3 endpoint may carry ``user:password@``; the errors that quote them are
logged, printed by the commands and shown by ``status``, ``verify`` and ``doctor``. Each place
that prints them is driven here with a URL holding the password ``hunter2``: the URL is shown
with ``***`` for its password and the password appears nowhere.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from botocore.config import Config
from celery import Celery
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from queued_storage import doctor
from queued_storage.dispatch import dispatch
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "hunter2"
#: A closed port: every request fails at once, quoting the endpoint.
ENDPOINT = f"http://qs:{PASSWORD}@127.0.0.1:9"
SHOWN = "http://qs:***@127.0.0.1:9"
BROKER = f"redis://qs:{PASSWORD}@127.0.0.1:9/0"
BROKER_SHOWN = "redis://qs:***@127.0.0.1:9/0"

LEAKY_STORAGES = {
    **settings.STORAGES,
    "leaky_s3": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            **settings.S3_OPTIONS,
            "endpoint_url": ENDPOINT,
            "client_config": Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=2),
        },
    },
    # Delayed: a save queues nothing (the session's worker does not know this storage).
    "leaky": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "leaky_s3", "alias": "leaky", "delayed": True},
    },
}


@pytest.fixture
def leaky(clean: Any) -> Any:
    """The queued storage ``leaky``, whose S3 endpoint URL holds a password."""
    with override_settings(STORAGES=LEAKY_STORAGES):
        yield storages["leaky"]


def _command(*args: str) -> str:
    """stdout and stderr of ``manage.py queued_storage *args``, and its error if it failed."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("queued_storage", *args, stdout=out, stderr=err)
    except CommandError as failed:
        err.write(f"\nCommandError: {failed}")
    return out.getvalue() + err.getvalue()


def _shown_without_password(text: str, shown: str) -> None:
    assert shown in text, text
    assert PASSWORD not in text, text


class _RefusingTask:
    """A Celery task whose broker refuses the message, quoting its URL."""

    def apply_async(self, **kwargs: Any) -> Any:
        raise ConnectionError(f"Error connecting to {BROKER}: Connection refused.")


def test_a_message_the_broker_refuses_is_logged_without_the_broker_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="queued_storage.dispatch"):
        assert dispatch(_RefusingTask(), "default", "a.txt") is None
    _shown_without_password(caplog.text, BROKER_SHOWN)


def test_doctor_names_an_unreachable_endpoint_without_its_password(leaky: Any) -> None:
    checks = doctor.check_remotes([leaky], timeout=3)
    text = "\n".join(f"{c.subject} {c.detail}" for c in checks)
    assert [c.status for c in checks if c.check == "remote"] == [doctor.FAIL], text
    _shown_without_password(text, SHOWN)


def test_doctor_names_a_broker_without_its_password() -> None:
    app = Celery("redaction", broker=BROKER, set_as_current=False)
    checks = doctor.check_broker(app, timeout=1)
    assert [c.status for c in checks] == [doctor.FAIL]
    assert checks[0].subject == "redis://qs@127.0.0.1:9/0"  # no password, not even a mask
    assert PASSWORD not in f"{checks[0].subject} {checks[0].detail}"


def test_verify_reports_an_unreachable_endpoint_without_its_password(leaky: Any) -> None:
    Ledger("leaky").seed_remote([("seeded.txt", 3, "")])
    text = _command("verify", "--storage", "leaky", "--timeout", "2", "--json")
    _shown_without_password(text, SHOWN)


def test_status_shows_a_failure_reason_without_the_password(leaky: Any) -> None:
    name = leaky.save("failed.txt", ContentFile(b"abc"))
    rows = StoredFile.objects.filter(alias="leaky", name=name)
    reason = f'Could not connect to the endpoint URL: "{ENDPOINT}/qs-test/failed.txt"'
    assert rows.update(state=State.FAILED, last_error=reason) == 1
    report = json.loads(_command("status", "--storage", "leaky", "--json"))
    [failure] = report["failures"]
    assert (
        failure["reason"] == f'Could not connect to the endpoint URL: "{SHOWN}/qs-test/failed.txt"'
    )


def test_a_transfer_run_here_reports_the_endpoint_without_its_password(leaky: Any) -> None:
    name = leaky.save("here.txt", ContentFile(b"abc"))
    text = _command("transfer", "--sync", "--no-progress", "--storage", "leaky", name)
    _shown_without_password(text, SHOWN)


def test_cleanup_reports_an_unreachable_endpoint_without_its_password(leaky: Any) -> None:
    text = _command("cleanup", "--storage", "leaky")
    _shown_without_password(text, SHOWN)
