"""System checks (ids ``queued_storage.E00N`` / ``W00N``); none does network I/O.

| id   | problem |
|------|---------|
| E001 | a QueuedStorage's ``local`` storage is neither a STORAGES alias nor a dotted path |
| E002 | a QueuedStorage's ``remote`` storage is neither a STORAGES alias nor a dotted path |
| E003 | the local storage cannot give a filesystem path |
| E004 | ``QUEUED_STORAGE_RETRIES`` is not a positive integer |
| E005 | a delay or timeout setting is not a positive number |
| E006 | ``QUEUED_STORAGE_CACHE`` is not an alias in ``CACHES`` |
| E007 | a QueuedStorage in STORAGES has an invalid option |
| W001 | the state cache is not shared between processes while Celery is not eager |
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from queued_storage.conf import settings

__all__ = ["check_queued_storages", "check_settings"]

_BACKEND = "queued_storage.storage.QueuedStorage"


def _queued_entries() -> Iterator[tuple[str, dict[str, Any]]]:
    from queued_storage.storage import QueuedStorage

    for alias, conf in getattr(django_settings, "STORAGES", {}).items():
        try:
            backend = import_string(conf.get("BACKEND", ""))
        except ImportError:
            continue
        if isinstance(backend, type) and issubclass(backend, QueuedStorage):
            yield alias, conf.get("OPTIONS", {})


def _known(spec: Any) -> bool:
    if not isinstance(spec, str) or not spec:
        return False
    if spec in getattr(django_settings, "STORAGES", {}):
        return True
    if "." in spec:
        try:
            import_string(spec)
        except ImportError:
            return False
        return True
    return False


@register(Tags.compatibility)
def check_queued_storages(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from queued_storage.storage import QueuedStorage

    messages: list[CheckMessage] = []
    for alias, options in _queued_entries():
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
            messages.append(Error(f"STORAGES[{alias!r}]: {err}", id="queued_storage.E007"))
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
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    retries = getattr(django_settings, "QUEUED_STORAGE_RETRIES", 5)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries <= 0:
        messages.append(
            Error(
                f"QUEUED_STORAGE_RETRIES must be a positive integer, got {retries!r}.",
                hint="Set it to the number of retries after a failed attempt, e.g. 5.",
                id="queued_storage.E004",
            )
        )
    for name, default in (
        ("RETRY_DELAY", 60),
        ("RETRY_MAX_DELAY", 3600),
        ("LEASE_TIMEOUT", 120),
        ("CACHE_TIMEOUT", 7 * 24 * 3600),
    ):
        value = getattr(django_settings, f"QUEUED_STORAGE_{name}", default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            messages.append(
                Error(
                    f"QUEUED_STORAGE_{name} must be a positive number of seconds, got {value!r}.",
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
    try:
        from celery import current_app
    except ImportError:  # pragma: no cover
        return False
    return bool(current_app.conf.task_always_eager)
