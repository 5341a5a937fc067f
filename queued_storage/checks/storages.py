"""System checks of the QueuedStorages in ``STORAGES`` (E001-E003, E007) and of the settings
every transfer uses: retries, delays and timeouts, the state cache (E004-E006, W001)."""

from __future__ import annotations

from collections.abc import Sequence

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from queued_storage.checks.common import setting
from queued_storage.conf import DEFAULTS, settings
from queued_storage.construction import queued_entries, storage_spec
from queued_storage.exceptions import QueuedStorageConfigError
from queued_storage.storage import QueuedStorage

__all__ = ["check_queued_storages", "check_settings"]


def _known(spec: object) -> bool:
    """Whether *spec* names a storage: a ``STORAGES`` alias, or a dotted path that imports
    (the storage's own rule, :func:`~queued_storage.construction.storage_spec`)."""
    try:
        storage_spec("local", spec)
    except QueuedStorageConfigError:
        return False
    return True


@register(Tags.compatibility)
def check_queued_storages(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for alias, options, _backend in queued_entries():
        local, remote = options.get("local"), options.get("remote")
        if not _known(local):
            messages.append(
                Error(
                    f"STORAGES[{alias!r}]: the local storage {local!r} is not an alias in "
                    "STORAGES.",
                    hint="Add it to STORAGES (for example a FileSystemStorage on fast disk) or "
                    "name an existing alias in OPTIONS['local'].",
                    id="queued_storage.E001",
                )
            )
        if not _known(remote):
            messages.append(
                Error(
                    f"STORAGES[{alias!r}]: the remote storage {remote!r} is not an alias in "
                    "STORAGES.",
                    hint="Add it to STORAGES (for example storages.backends.s3.S3Storage) or "
                    "name an existing alias in OPTIONS['remote'].",
                    id="queued_storage.E002",
                )
            )
        if not (_known(local) and _known(remote)):
            continue
        try:
            storage = QueuedStorage(**options)
        except ImproperlyConfigured as err:
            messages.append(
                Error(
                    f"STORAGES[{alias!r}]: {err}",
                    hint=f"Fix or remove the option the message names in STORAGES[{alias!r}]"
                    "['OPTIONS'] (QueuedStorage takes local, remote, delete_local, the task "
                    "options and local_options/remote_options for storages built in code).",
                    id="queued_storage.E007",
                )
            )
            continue
        try:
            storage.local.path("queued-storage-check")
        except NotImplementedError:
            messages.append(
                Error(
                    f"STORAGES[{alias!r}]: the local storage {local!r} "
                    f"({type(storage.local).__name__}) cannot give a filesystem path.",
                    hint="The local storage must be on a filesystem the workers can read, "
                    "such as django.core.files.storage.FileSystemStorage.",
                    id="queued_storage.E003",
                )
            )
        except Exception:
            pass
    return messages


@register(Tags.compatibility)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    retries = setting("RETRIES")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries <= 0:
        messages.append(
            Error(
                f"QUEUED_STORAGE_RETRIES must be a positive integer, got {retries!r}.",
                hint="Set it to the number of retries after a failed attempt, e.g. 5.",
                id="queued_storage.E004",
            )
        )
    delays = ("RETRY_DELAY", "RETRY_MAX_DELAY", "LEASE_TIMEOUT", "CACHE_TIMEOUT")
    cleanup = ("CLEANUP_LOCAL_AFTER", "CLEANUP_SPOOL_AFTER", "CLEANUP_UPLOADS_AFTER")
    for name in delays + cleanup:
        value, default = setting(name), DEFAULTS[name]
        nullable = name == "CLEANUP_LOCAL_AFTER"  # None: local copies are kept
        if value is None and nullable:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            must = "None or a positive number" if nullable else "a positive number"
            messages.append(
                Error(
                    f"QUEUED_STORAGE_{name} must be {must} of seconds, got {value!r}.",
                    hint=f"Remove the setting to use the default ({default}).",
                    id="queued_storage.E005",
                )
            )
    caches = getattr(django_settings, "CACHES", {})
    alias = settings.CACHE
    if alias not in caches:
        messages.append(
            Error(
                f"QUEUED_STORAGE_CACHE is {alias!r}, which is not an alias in CACHES.",
                hint="Name a cache shared by the web processes and the workers (Redis, "
                "Memcached, database or file-based).",
                id="queued_storage.E006",
            )
        )
    else:
        backend = str(caches[alias].get("BACKEND", ""))
        local_only = backend.endswith(("DummyCache", "LocMemCache"))
        if local_only and not _celery_eager():
            messages.append(
                Warning(
                    f"The state cache {alias!r} ({backend.rsplit('.', 1)[-1]}) is not shared "
                    "between processes, but Celery runs tasks in worker processes.",
                    hint="Web processes will not see the workers' state changes until the "
                    "ledger is read again. Point QUEUED_STORAGE_CACHE at a shared cache "
                    "(Redis, Memcached, database or file-based).",
                    id="queued_storage.W001",
                )
            )
    return messages


def _celery_eager() -> bool:
    if getattr(django_settings, "CELERY_TASK_ALWAYS_EAGER", False):
        return True
    from celery import current_app  # only when the checks run: the package works without it

    return bool(current_app.conf.task_always_eager)
