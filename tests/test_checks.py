"""Each system check id fires on its misconfiguration, grouped by id (E001-E024, W001, W002,
W020; W010 reads the ledger and is tested in ``test_reconcile.py``), the checks are bound,
and every hint states its fix without pointing at a file of the repository."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test import override_settings

from queued_storage.checks import (
    check_direct_settings,
    check_metrics_settings,
    check_queued_storages,
    check_reliability_settings,
    check_serving_settings,
    check_settings,
    check_tus_settings,
    check_upload_settings,
)


def _ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def _serving_checks() -> list[Any]:
    """``check_serving_settings()`` on the suite's storages that have no processors: W021,
    which only those draw, has tests of its own (tests/test_scanning.py)."""
    from django.conf import settings

    plain = {
        alias: conf
        for alias, conf in settings.STORAGES.items()
        if "processors" not in conf.get("OPTIONS", {})
    }
    serve = settings.QUEUED_STORAGE_SERVE_STAGED
    if isinstance(serve, dict):  # the suite's own names the scanned storages
        serve = {a: t for a, t in serve.items() if not a.startswith("queued_scanned")} or None
    with override_settings(STORAGES=plain, QUEUED_STORAGE_SERVE_STAGED=serve):
        return check_serving_settings()


def _storages(**options: Any) -> dict[str, Any]:
    from django.conf import settings

    return {
        **settings.STORAGES,
        "broken": {"BACKEND": "queued_storage.storage.QueuedStorage", "OPTIONS": options},
    }


def _assert_upload_check(setting: str, value: Any, text: str, check_id: str) -> None:
    with override_settings(**{f"QUEUED_STORAGE_{setting}": value}):
        messages = check_upload_settings()
    assert _ids(messages) == [f"queued_storage.{check_id}"]
    assert text in messages[0].msg


@pytest.fixture
def celery_conf() -> Iterator[Callable[..., None]]:
    """Sets the Celery app's broker settings (``broker_url=``, ``broker_transport_options=``)
    for the test. Both spellings are set: the test app reads the Django settings with
    ``namespace="CELERY"``, and before Celery 5.7 ``CELERY_BROKER_URL`` there wins over a
    ``broker_url`` set on the configuration."""
    from celery import current_app

    conf = current_app.conf
    names = ("broker_url", "broker_transport_options", "broker_channel_error_retry")
    keys = [key for name in names for key in (name, f"CELERY_{name.upper()}") if key in conf]
    saved = {key: conf[key] for key in keys}

    def configure(**options: Any) -> None:
        for name, value in options.items():
            conf.update({name: value, f"CELERY_{name.upper()}": value})

    yield configure
    conf.update(saved)


# --- a configured project -----------------------------------------------------------------
def test_configured_project_has_no_messages() -> None:
    assert check_queued_storages() == []
    assert check_settings() == []


def test_configured_project_has_no_reliability_messages() -> None:
    assert check_reliability_settings() == []


def test_test_settings_have_no_upload_messages() -> None:
    assert check_upload_settings() == []


@override_settings(QUEUED_STORAGE_NGINX_SECRET=None, QUEUED_STORAGE_NGINX_UPLOAD_DIR=None)
def test_defaults_have_no_upload_messages() -> None:
    assert check_upload_settings() == []


# --- E001-E007: storages and settings --------------------------------------------------------
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


def test_e002_names_a_dotted_path_that_cannot_be_imported() -> None:
    with override_settings(STORAGES=_storages(local="staging", remote="storages.nope.Storage")):
        messages = check_queued_storages()
    assert _ids(messages) == ["queued_storage.E002"]
    assert "the remote storage 'storages.nope.Storage'" in messages[0].msg


def test_a_class_path_django_storages_renamed_is_accepted_as_the_storage_accepts_it() -> None:
    remote = {"remote": "storages.backends.s3boto.S3BotoStorage"}
    with override_settings(STORAGES=_storages(local="staging", **remote)):
        messages = check_queued_storages()
    assert messages == []


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


@pytest.mark.parametrize(
    "setting", ["CLEANUP_LOCAL_AFTER", "CLEANUP_SPOOL_AFTER", "CLEANUP_UPLOADS_AFTER"]
)
@pytest.mark.parametrize("value", [0, -3, "3600", True])
def test_e005_cleanup_ages_positive(setting: str, value: Any) -> None:
    with override_settings(**{f"QUEUED_STORAGE_{setting}": value}):
        messages = check_settings()
    assert _ids(messages) == ["queued_storage.E005"]
    assert f"QUEUED_STORAGE_{setting} must be " in messages[0].msg


@pytest.mark.parametrize(
    ("setting", "value"),
    [("CLEANUP_LOCAL_AFTER", None), ("CLEANUP_LOCAL_AFTER", 60), ("CLEANUP_SPOOL_AFTER", 0.5)],
)
def test_e005_silent_for_keeping_local_copies_or_a_positive_age(setting: str, value: Any) -> None:
    with override_settings(**{f"QUEUED_STORAGE_{setting}": value}):
        assert check_settings() == []


def test_e005_a_cleanup_spool_age_of_none_is_refused() -> None:
    with override_settings(QUEUED_STORAGE_CLEANUP_SPOOL_AFTER=None):
        messages = check_settings()
    assert [m.msg for m in messages] == [
        "QUEUED_STORAGE_CLEANUP_SPOOL_AFTER must be a positive number of seconds, got None."
    ]


def test_e006_cache_alias_missing() -> None:
    with override_settings(QUEUED_STORAGE_CACHE="states"):
        messages = check_settings()
    assert _ids(messages) == ["queued_storage.E006"]


def test_e007_invalid_option() -> None:
    with override_settings(STORAGES=_storages(local="staging", remote="s3", dleayed=True)):
        messages = check_queued_storages()
    assert _ids(messages) == ["queued_storage.E007"]
    assert "Invalid option 'dleayed' for QueuedStorage" in messages[0].msg


@pytest.mark.parametrize("value", [0, -1, "30", True])
def test_e005_upload_idle_timeout_none_or_positive(value: Any) -> None:
    with override_settings(QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT=value):
        messages = check_upload_settings()
    assert _ids(messages) == ["queued_storage.E005"]
    assert messages[0].msg == (
        "QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT must be None or a positive number of seconds, "
        f"got {value!r}."
    )


@pytest.mark.parametrize("value", [None, 0.5, 30])
def test_e005_silent_for_no_or_a_positive_idle_timeout(value: Any) -> None:
    with override_settings(QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT=value):
        assert check_upload_settings() == []


# --- E008-E009: the upload storage and sizes -----------------------------------------------
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
    ("setting", "value", "text"),
    [
        ("UPLOAD_MAX_BYTES", 0, "QUEUED_STORAGE_UPLOAD_MAX_BYTES must be a positive integer"),
        ("UPLOAD_MAX_BYTES", "5G", "QUEUED_STORAGE_UPLOAD_MAX_BYTES must be a positive integer"),
        ("UPLOAD_CHUNK_SIZE", -1, "QUEUED_STORAGE_UPLOAD_CHUNK_SIZE must be a positive integer"),
    ],
)
def test_e009_upload_sizes_not_positive_integers(setting: str, value: Any, text: str) -> None:
    _assert_upload_check(setting, value, text, "E009")


# --- E010-E011: the staging budget and the reconcile pass ------------------------------------
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
        ("DISPATCH_WAIT", 0),
        ("DISPATCH_WAIT", "soon"),
        ("DISPATCH_WAIT", None),
        ("BATCH_FILES", 0),
        ("BATCH_FILES", "many"),
        ("BATCH_FILE_BYTES", -1),
        ("BATCH_FILE_BYTES", 1.5),
    ],
)
def test_e011_reconcile_settings_positive(setting: str, value: Any) -> None:
    with override_settings(**{f"QUEUED_STORAGE_{setting}": value}):
        messages = check_reliability_settings()
    assert _ids(messages) == ["queued_storage.E011"]
    assert f"QUEUED_STORAGE_{setting} must be a positive number of" in messages[0].msg


@pytest.mark.parametrize("value", [None, 30, 0.5])
def test_e011_silent_for_a_derived_or_positive_reconcile_after(value: Any) -> None:
    with override_settings(QUEUED_STORAGE_RECONCILE_AFTER=value):
        assert check_reliability_settings() == []


# --- E016-E017: the retry bound and the start-up pass ----------------------------------------
@pytest.mark.parametrize("value", [0, -1, "1d", None, True])
def test_e016_retry_for_not_a_positive_number(value: Any) -> None:
    with override_settings(QUEUED_STORAGE_RETRY_FOR=value):
        messages = check_reliability_settings()
    assert _ids(messages) == ["queued_storage.E016"]
    assert messages[0].msg == (
        f"QUEUED_STORAGE_RETRY_FOR must be a positive number of seconds, got {value!r}."
    )
    assert "remove it for the default (86400 s, a day)" in messages[0].hint


@pytest.mark.parametrize("value", [-1, 2.5, "500", None, False])
def test_e017_reconcile_on_start_not_a_count(value: Any) -> None:
    with override_settings(QUEUED_STORAGE_RECONCILE_ON_START=value):
        messages = check_reliability_settings()
    assert _ids(messages) == ["queued_storage.E017"]
    assert messages[0].msg == (
        f"QUEUED_STORAGE_RECONCILE_ON_START must be an integer of 0 or more (files), got {value!r}."
    )
    assert "0 turns that off" in messages[0].hint


@pytest.mark.parametrize(("retry_for", "on_start"), [(3600, 0), (0.5, 10), (86400, 500)])
def test_e016_e017_silent_for_valid_values(retry_for: Any, on_start: Any) -> None:
    with override_settings(
        QUEUED_STORAGE_RETRY_FOR=retry_for, QUEUED_STORAGE_RECONCILE_ON_START=on_start
    ):
        assert check_reliability_settings() == []


# --- E012-E015: the upload hooks and nginx ---------------------------------------------------
@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("no.such.hook", "QUEUED_STORAGE_UPLOAD_AUTHORIZER 'no.such.hook'"),
        ("queued_storage.conf.MiB", "must be the dotted path of a function"),
    ],
)
def test_e012_authorizer_is_not_a_function(value: Any, text: str) -> None:
    _assert_upload_check("UPLOAD_AUTHORIZER", value, text, "E012")


@pytest.mark.parametrize(
    ("setting", "value", "text"),
    [
        ("UPLOAD_PERMISSION", "add_storedfile", "QUEUED_STORAGE_UPLOAD_PERMISSION must be None"),
        ("STATUS_PERMISSION", 3, "QUEUED_STORAGE_STATUS_PERMISSION must be None"),
        ("READ_PERMISSION", "view", "QUEUED_STORAGE_READ_PERMISSION must be None"),
    ],
)
def test_e013_invalid_permission_settings(setting: str, value: Any, text: str) -> None:
    _assert_upload_check(setting, value, text, "E013")


def test_e014_relative_nginx_upload_dir() -> None:
    _assert_upload_check(
        "NGINX_UPLOAD_DIR", "relative/dir", "QUEUED_STORAGE_NGINX_UPLOAD_DIR must be None", "E014"
    )


def test_e015_empty_nginx_secret() -> None:
    _assert_upload_check(
        "NGINX_SECRET",
        "",
        "QUEUED_STORAGE_NGINX_SECRET must be None or a non-empty string",
        "E015",
    )


# --- E019-E021: serving waiting files ---------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "check_id", "text"),
    [
        ({"SERVE_STAGED": 3}, "E019", "QUEUED_STORAGE_SERVE_STAGED must be a URL name"),
        (
            {"SERVE_STAGED": "/no-slash"},
            "E019",
            "or a path prefix ending with '/', got '/no-slash'",
        ),
        ({"SERVE_STAGED": {"nope": "queued_storage:file"}}, "E019", "keys that are not aliases"),
        ({"SERVE_STAGED": "queued_storage:status-nope"}, "W020", "the URLconf has no URL of"),
        ({"SERVE_STAGED": {"default": "metrics"}}, "E020", "SERVE_STAGED['default'] is 'metrics'"),
        ({"SENDFILE": "x-accel"}, "E021", "QUEUED_STORAGE_SENDFILE must be None, 'x-accel-red"),
        ({"SENDFILE_PREFIX": "/internal"}, "E021", "starting and ending with '/', got '/internal'"),
    ],
)
def test_e019_e021_serving_settings(settings: dict[str, Any], check_id: str, text: str) -> None:
    with override_settings(**{f"QUEUED_STORAGE_{k}": v for k, v in settings.items()}):
        messages = _serving_checks()
    assert _ids(messages) == [f"queued_storage.{check_id}"]
    assert text in messages[0].msg


@pytest.mark.parametrize(
    "serve", [None, "queued_storage:file", "/waiting/", {"queued_delayed": "delayed-file"}]
)
def test_e019_e021_silent_for_valid_serving_settings(serve: Any) -> None:
    with override_settings(
        QUEUED_STORAGE_SERVE_STAGED=serve, QUEUED_STORAGE_SENDFILE="X-Accel-Redirect"
    ):
        assert _serving_checks() == []


# --- W020: the URL of SERVE_STAGED is not in the URLconf yet ------------------------------------
def test_w020_serve_staged_before_the_urls_are_included_names_the_line_to_add() -> None:
    with override_settings(
        ROOT_URLCONF="tests.urls_without_uploads", QUEUED_STORAGE_SERVE_STAGED="queued_storage:file"
    ):
        messages = _serving_checks()
    assert _ids(messages) == ["queued_storage.W020"]
    assert messages[0].msg == (
        "QUEUED_STORAGE_SERVE_STAGED is 'queued_storage:file', but the URLconf has no URL of "
        "that name: url() of a file waiting for its transfer raises NoReverseMatch until it has."
    )
    assert messages[0].hint == (
        'Add path("uploads/", include("queued_storage.urls")) to your urlpatterns (ROOT_URLCONF).'
    )


def test_w020_a_name_of_your_own_not_in_the_urlconf_names_both_ways_to_add_it() -> None:
    with override_settings(QUEUED_STORAGE_SERVE_STAGED={"default": "waiting-file"}):
        messages = _serving_checks()
    assert _ids(messages) == ["queued_storage.W020"]
    assert messages[0].hint == (
        "Add a URL named 'waiting-file' whose pattern takes a 'name' argument (e.g. "
        "path('waiting/<path:name>', queued_storage.views.StagedFileView.as_view(), name=...)), "
        'or add path("uploads/", include("queued_storage.urls")) to your urlpatterns and set '
        "QUEUED_STORAGE_SERVE_STAGED['default'] = 'queued_storage:file'."
    )


def test_w020_lets_check_and_doctor_run(db: None) -> None:
    """The newcomer's order: the setting first, the URLconf line later. ``check`` passes with
    the warning and ``queued_storage doctor`` runs its checks instead of stopping at E020."""
    out, err = io.StringIO(), io.StringIO()
    with override_settings(
        ROOT_URLCONF="tests.urls_without_uploads", QUEUED_STORAGE_SERVE_STAGED="queued_storage:file"
    ):
        call_command("check", stdout=out, stderr=err)
        assert "queued_storage.W020" in err.getvalue()
        failed: CommandError | None = None
        try:
            call_command(
                "queued_storage",
                "doctor",
                "--storage",
                "default",
                "--timeout",
                "1",
                stdout=out,
                skip_checks=False,
            )
        except CommandError as error:  # SystemCheckError is one too
            failed = error
    assert not isinstance(failed, SystemCheckError), failed
    # A failing line (no worker answers, say) is not what this test is about: doctor ran.
    assert failed is None or re.fullmatch(r"\d+ check\(s\) failed: .*", str(failed)), failed
    assert re.search(r"^OK    ledger ", out.getvalue(), flags=re.M), out.getvalue()


# --- every hint states its fix, and points at nothing the installed package lacks ---------------
#: A path in the repository (docs/, tests/, a Markdown page, the nginx example): not in a wheel.
REPOSITORY_PATH = re.compile(r"\bdocs/|\btests/|\bexample_project/|\.md\b|\bnginx\.conf\b")

_EVERY_ERROR = {
    "QUEUED_STORAGE_RETRIES": 0,
    "QUEUED_STORAGE_RETRY_DELAY": 0,
    "QUEUED_STORAGE_CACHE": "nope",
    "QUEUED_STORAGE_STAGING_BUDGET": -1,
    "QUEUED_STORAGE_RECONCILE_BATCH": 0,
    "QUEUED_STORAGE_RETRY_FOR": 0,
    "QUEUED_STORAGE_RECONCILE_ON_START": -1,
    "QUEUED_STORAGE_UPLOAD_STORAGE": "staging",
    "QUEUED_STORAGE_UPLOAD_MAX_BYTES": 0,
    "QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT": 0,
    "QUEUED_STORAGE_UPLOAD_AUTHORIZER": "tests.nowhere.authorize",
    "QUEUED_STORAGE_UPLOAD_PERMISSION": "add_storedfile",
    "QUEUED_STORAGE_NGINX_UPLOAD_DIR": "relative/dir",
    "QUEUED_STORAGE_NGINX_SECRET": "",
    "QUEUED_STORAGE_METRICS_TOKEN": "",
    "QUEUED_STORAGE_SERVE_STAGED": {
        "nope": 3,
        "default": "metrics",
        "queued_delete": "queued_storage:nope",
    },
    "QUEUED_STORAGE_SENDFILE": "sendfile",
    "QUEUED_STORAGE_SENDFILE_PREFIX": "relative",
    "QUEUED_STORAGE_TUS_EXPIRY": 0,
    "QUEUED_STORAGE_DIRECT_EXPIRY": 0,
    "QUEUED_STORAGE_WATCH_INTERVAL": -1,
    "QUEUED_STORAGE_SERVE_UNPROCESSED": "staff",
    "QUEUED_STORAGE_QUARANTINE": "relative/quarantine",
}


def _every_message(**overrides: Any) -> list[Any]:
    checks = (
        check_queued_storages,
        check_settings,
        check_reliability_settings,
        check_upload_settings,
        check_metrics_settings,
        check_serving_settings,
        check_tus_settings,
        check_direct_settings,
    )
    with override_settings(**overrides):
        return [message for check in checks for message in check()]


def test_every_check_hint_states_a_fix_and_names_no_repository_path(
    celery_conf: Callable[..., None],
) -> None:
    broken = {
        "unknown_parts": {"local": "nope", "remote": "nope-either"},
        "bad_option": {"local": "staging", "remote": "s3", "dleayed": True},
        "no_path": {"local": "s3", "remote": "s3"},
    }
    queued = "queued_storage.storage.QueuedStorage"
    storages_ = {
        **django_settings.STORAGES,
        **{alias: {"BACKEND": queued, "OPTIONS": options} for alias, options in broken.items()},
    }
    messages = _every_message(STORAGES=storages_, **_EVERY_ERROR)
    celery_conf(
        broker_url="redis://127.0.0.1:1/0", broker_transport_options={"visibility_timeout": 600}
    )
    locmem = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    messages += _every_message(
        CACHES=locmem, QUEUED_STORAGE_NGINX_SECRET=None, QUEUED_STORAGE_RETRY_MAX_DELAY=3600
    )
    celery_conf(broker_url="amqp://127.0.0.1//", broker_channel_error_retry=False)
    messages += _every_message()
    ids = {m.id.split(".")[1] for m in messages}
    every_id = {f"E{n:03d}" for n in range(1, 26)} | {"W001", "W002", "W012", "W020", "W021"}
    assert ids == every_id  # W010 reads the ledger: its hint is checked in test_docs.py
    for message in messages:
        assert isinstance(message.hint, str) and len(message.hint) > 20, message
        assert not REPOSITORY_PATH.search(message.hint), message
        assert not REPOSITORY_PATH.search(message.msg), message


# --- E022: tus uploads -----------------------------------------------------------------------
@pytest.mark.parametrize("expiry", [0, -1, "a day", None, True])
def test_e022_tus_expiry_must_be_a_positive_number(expiry: Any) -> None:
    with override_settings(QUEUED_STORAGE_TUS_EXPIRY=expiry):
        messages = check_tus_settings()
    assert _ids(messages) == ["queued_storage.E022"]
    assert messages[0].msg == (
        f"QUEUED_STORAGE_TUS_EXPIRY must be a positive number of seconds, got {expiry!r}."
    )


@pytest.mark.parametrize("expiry", [1, 3600, 0.5])
def test_e022_silent_for_a_positive_expiry(expiry: Any) -> None:
    with override_settings(QUEUED_STORAGE_TUS_EXPIRY=expiry):
        assert check_tus_settings() == []


def test_tus_checks_are_bound(db: None) -> None:
    with (
        override_settings(QUEUED_STORAGE_TUS_EXPIRY=0),
        pytest.raises(SystemCheckError, match=r"queued_storage\.E022"),
    ):
        call_command("check")


# --- E024: direct uploads --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("DIRECT_EXPIRY", 0, "QUEUED_STORAGE_DIRECT_EXPIRY must be a positive number"),
        ("DIRECT_EXPIRY", "a day", "QUEUED_STORAGE_DIRECT_EXPIRY must be a positive number"),
        ("DIRECT_PART_SIZE", 5 * 1024 * 1024 - 1, "S3's smallest part"),
        ("DIRECT_PART_SIZE", True, "S3's smallest part"),
        ("DIRECT_URL_EXPIRY", 0, "7 days"),
        ("DIRECT_URL_EXPIRY", 7 * 24 * 3600 + 1, "7 days"),
    ],
)
def test_e024_direct_settings_out_of_range(setting: str, value: Any, says: str) -> None:
    with override_settings(**{f"QUEUED_STORAGE_{setting}": value}):
        messages = check_direct_settings()
    assert _ids(messages) == ["queued_storage.E024"]
    assert says in messages[0].msg and repr(value) in messages[0].msg


def test_e024_silent_for_the_defaults_and_sensible_values() -> None:
    assert check_direct_settings() == []
    with override_settings(
        QUEUED_STORAGE_DIRECT_EXPIRY=600,
        QUEUED_STORAGE_DIRECT_PART_SIZE=64 * 1024 * 1024,
        QUEUED_STORAGE_DIRECT_URL_EXPIRY=7 * 24 * 3600,
    ):
        assert check_direct_settings() == []


# --- W001-W002, W011 (retired), E023 ------------------------------------------------------
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


def test_w002_nginx_directory_without_a_secret() -> None:
    with override_settings(QUEUED_STORAGE_NGINX_SECRET=None):
        messages = check_upload_settings()
    assert _ids(messages) == ["queued_storage.W002"]
    assert "QUEUED_STORAGE_NGINX_SECRET is not" in messages[0].msg


def test_w011_is_retired_a_short_visibility_timeout_warns_of_nothing(
    celery_conf: Callable[..., None],
) -> None:
    # Retries wait in the ledger (retry_at), not in Redis: no delivery waits for its countdown.
    celery_conf(
        broker_url="redis://127.0.0.1:1/0", broker_transport_options={"visibility_timeout": 600}
    )
    with override_settings(QUEUED_STORAGE_RETRY_MAX_DELAY=3600):
        assert check_reliability_settings() == []


@pytest.mark.parametrize("interval", [-1, "5", None, True])
def test_e023_watch_interval_must_be_a_number_of_0_or_more(interval: Any) -> None:
    with override_settings(QUEUED_STORAGE_WATCH_INTERVAL=interval):
        messages = check_reliability_settings()
    assert _ids(messages) == ["queued_storage.E023"]
    assert messages[0].msg == (
        f"QUEUED_STORAGE_WATCH_INTERVAL must be a number of seconds of 0 or more, got {interval!r}."
    )


@pytest.mark.parametrize("interval", [0, 0.5, 5])
def test_e023_silent_for_0_or_a_positive_interval(interval: float) -> None:
    with override_settings(QUEUED_STORAGE_WATCH_INTERVAL=interval):
        assert check_reliability_settings() == []


@pytest.mark.parametrize("url", ["amqp://guest@127.0.0.1//", "pyamqp://127.0.0.1:5672//"])
@pytest.mark.parametrize("retry", [False, None])
def test_w012_rabbitmq_broker_without_channel_error_retry(
    celery_conf: Callable[..., None], url: str, retry: bool | None
) -> None:
    celery_conf(broker_url=url, broker_channel_error_retry=retry)
    messages = check_reliability_settings()
    assert _ids(messages) == ["queued_storage.W012"]
    scheme = url.split("://")[0]
    assert messages[0].msg == (
        f"The broker is RabbitMQ ({scheme}://) and Celery's broker_channel_error_retry is "
        f"{retry!r}: when RabbitMQ closes a worker's channel (a delivery unacknowledged for "
        "longer than its consumer_timeout, 30 minutes by default: one the worker prefetched "
        "while its pool processes were busy) the worker exits instead of reconnecting."
    )
    assert "guest" not in messages[0].msg
    assert messages[0].hint.startswith("Set CELERY_BROKER_CHANNEL_ERROR_RETRY = True")


def test_w012_silent_with_channel_error_retry_or_another_broker(
    celery_conf: Callable[..., None],
) -> None:
    celery_conf(broker_url="amqp://127.0.0.1//", broker_channel_error_retry=True)
    assert check_reliability_settings() == []
    celery_conf(broker_url="redis://127.0.0.1:1/0", broker_channel_error_retry=False)
    assert check_reliability_settings() == []


# --- every check function is registered --------------------------------------------------
# `manage.py check` opens the database on Django >= 6.1: run_checks() gives the model checks
# every database alias when none is named (JSONField asks the backend whether it supports it).
def test_checks_are_bound(db: None) -> None:
    with (
        override_settings(QUEUED_STORAGE_RETRIES=0),
        pytest.raises(SystemCheckError, match=r"queued_storage\.E004"),
    ):
        call_command("check")


def test_reliability_checks_are_bound(db: None) -> None:
    with (
        override_settings(QUEUED_STORAGE_STAGING_BUDGET=-1),
        pytest.raises(SystemCheckError, match=r"queued_storage\.E010"),
    ):
        call_command("check")


def test_upload_checks_are_bound(db: None) -> None:
    with (
        override_settings(QUEUED_STORAGE_UPLOAD_STORAGE="staging"),
        pytest.raises(SystemCheckError, match=r"queued_storage\.E008"),
    ):
        call_command("check")


def test_serving_checks_are_bound(db: None) -> None:
    with (
        override_settings(QUEUED_STORAGE_SENDFILE="sendfile"),
        pytest.raises(SystemCheckError, match=r"queued_storage\.E021"),
    ):
        call_command("check")


@pytest.mark.django_db
def test_no_pending_migrations() -> None:
    call_command("makemigrations", "queued_storage", "--check", "--dry-run", verbosity=0)


@pytest.mark.django_db(databases=["default", "postgres"])
@pytest.mark.parametrize("database", ["default", "postgres"])
def test_the_package_models_raise_no_system_check_on_sqlite_or_postgresql(database: str) -> None:
    """Django's model checks against each database (``check --database``; Django 6.1 runs
    them before commands too): an index the database cannot build as declared (``models.W040``
    for ``INCLUDE`` columns on SQLite) would warn before every command."""
    if database not in django_settings.DATABASES:
        pytest.fail(f"the test settings have no {database!r} database")
    found = [
        message
        for message in checks.run_checks(databases=[database])
        if getattr(message.obj, "_meta", None) is not None
        and message.obj._meta.app_label == "queued_storage"
    ]
    assert found == []
