"""System checks of what keeps a file moving: the retry bound, the reconcile pass, the staging
budget and the broker's redelivery (E010, E011, E016, E017, E023, W010, W012). W011 (the Redis
broker's visibility_timeout against the retry delay) is retired: retries wait in the ledger."""

from __future__ import annotations

from collections.abc import Sequence

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from queued_storage.checks.common import positive_int, positive_number, setting
from queued_storage.conf import DEFAULTS, settings
from queued_storage.models import StoredFile

__all__ = ["check_reliability_settings", "check_staging_budget"]


@register(Tags.compatibility)
def check_reliability_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[CheckMessage]:
    """E010, E011, E016, E017, E023, W012: the retry bound, the reconcile pass, the staging
    budget, the broker's redelivery."""
    messages: list[CheckMessage] = []
    budget = setting("STAGING_BUDGET")
    if budget is not None and not positive_int(budget):
        messages.append(
            Error(
                f"QUEUED_STORAGE_STAGING_BUDGET must be None or a positive number of bytes, got "
                f"{budget!r}.",
                hint="Set it to the most bytes that may wait for their transfer on one host "
                "(e.g. 50 * 1024**3), or remove it for no limit.",
                id="queued_storage.E010",
            )
        )
    for name, positive, what in (
        ("RECONCILE_AFTER", positive_number, "seconds"),
        ("RECONCILE_BATCH", positive_int, "rows (an integer)"),
        ("DISPATCH_WAIT", positive_number, "seconds"),
        ("BATCH_FILES", positive_int, "files (an integer; 1 sends each file alone)"),
        ("BATCH_FILE_BYTES", positive_int, "bytes (an integer)"),
    ):
        value, default = setting(name), DEFAULTS[name]
        if not positive(value) and not (name == "RECONCILE_AFTER" and value is None):
            messages.append(
                Error(
                    f"QUEUED_STORAGE_{name} must be a positive number of {what}, got {value!r}.",
                    hint=f"Remove the setting to use the default ({default}).",
                    id="queued_storage.E011",
                )
            )
    retry_for = setting("RETRY_FOR")
    if not positive_number(retry_for):
        messages.append(
            Error(
                f"QUEUED_STORAGE_RETRY_FOR must be a positive number of seconds, got "
                f"{retry_for!r}.",
                hint="It is how long a file's transient failures (S3 down, lost workers) are "
                f"retried before it is failed; remove it for the default ({DEFAULTS['RETRY_FOR']}"
                " s, a day).",
                id="queued_storage.E016",
            )
        )
    on_start = setting("RECONCILE_ON_START")
    if not isinstance(on_start, int) or isinstance(on_start, bool) or on_start < 0:
        messages.append(
            Error(
                "QUEUED_STORAGE_RECONCILE_ON_START must be an integer of 0 or more (files), got "
                f"{on_start!r}.",
                hint="It is the most files a starting worker re-queues; 0 turns that off. "
                f"Remove it for the default ({DEFAULTS['RECONCILE_ON_START']}).",
                id="queued_storage.E017",
            )
        )
    watch = setting("WATCH_INTERVAL")
    if not (positive_number(watch) or (watch == 0 and not isinstance(watch, bool))):
        messages.append(
            Error(
                "QUEUED_STORAGE_WATCH_INTERVAL must be a number of seconds of 0 or more, got "
                f"{watch!r}.",
                hint="It is how often a worker sends the retries that are due and takes back "
                "expired leases; 0 leaves both to the scheduled reconcile pass. Remove it for "
                f"the default ({DEFAULTS['WATCH_INTERVAL']} s).",
                id="queued_storage.E023",
            )
        )
    messages.extend(_check_channel_error_retry())
    return messages


#: URL schemes of Celery's AMQP transports (RabbitMQ).
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")


def _check_channel_error_retry() -> list[CheckMessage]:
    """W012: on RabbitMQ a worker must reconnect after the broker closes its channel."""
    from celery import current_app

    conf = current_app.conf
    scheme = _broker_scheme(conf.broker_url)
    if scheme not in AMQP_SCHEMES:
        return []
    retry = conf.get("broker_channel_error_retry")
    if retry is True:
        return []
    return [
        Warning(
            f"The broker is RabbitMQ ({scheme}://) and Celery's broker_channel_error_retry is "
            f"{retry!r}: when RabbitMQ closes a worker's channel (a delivery unacknowledged for "
            "longer than its consumer_timeout, 30 minutes by default: one the worker prefetched "
            "while its pool processes were busy) the worker exits instead of reconnecting.",
            hint="Set CELERY_BROKER_CHANNEL_ERROR_RETRY = True (Celery's "
            "broker_channel_error_retry), and CELERY_WORKER_PREFETCH_MULTIPLIER = 1.",
            id="queued_storage.W012",
        )
    ]


def _broker_scheme(url: object) -> str:
    """The scheme of the (first) broker URL, lower case; ``""`` when there is none."""
    first = url[0] if isinstance(url, (list, tuple)) and url else url
    text = str(first or "").split(";", 1)[0].strip()
    return text.split("://", 1)[0].lower() if "://" in text else ""


@register(Tags.database)
def check_staging_budget(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: object,
) -> list[CheckMessage]:
    """W010: reads the ledger, so it runs with ``check --database`` and ``migrate`` only."""
    raw = setting("STAGING_BUDGET")
    if not databases or not positive_int(raw):
        return []  # no budget, or an invalid one (E010)
    budget = int(raw)
    if StoredFile.db() not in databases:
        return []
    try:
        waiting = StoredFile.waiting_bytes(settings.HOST)
    except Exception:  # no ledger table yet (before migrate)
        return []
    if waiting < 0.8 * budget:
        return []
    return [
        Warning(
            f"{waiting} of the {budget} bytes of QUEUED_STORAGE_STAGING_BUDGET wait on host "
            f"{settings.HOST!r} for their transfer; saves fail with StagingFull beyond it.",
            hint="Check that the workers consuming this host's transfers run and that the "
            "remote storage is reachable (manage.py queued_storage_reconcile reports what "
            "waits), or raise the budget.",
            id="queued_storage.W010",
        )
    ]
