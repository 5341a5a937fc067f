"""System checks (ids ``queued_storage.E00N`` / ``W00N``); none does network I/O.

Every hint states the fix on its own: the installed package has no documentation pages a user
could open (``docs/`` is in the repository, not in the wheel, and there is no published site),
so a hint never points at one. The id is the key of its entry in the docs' configuration page.

One module per topic, each registering its checks when this package is imported
(``AppConfig.ready()``): ``storages`` (the QueuedStorages, retries, delays, the cache),
``reliability`` (retry bound, reconcile, staging budget, broker), ``ingest`` (the upload views,
tus), ``serving`` (waiting files), ``monitoring`` (metrics); ``common`` holds what they share.

| id   | problem |
|------|---------|
| E001 | a QueuedStorage's ``local`` storage is neither a STORAGES alias nor a dotted path |
| E002 | a QueuedStorage's ``remote`` storage is neither a STORAGES alias nor a dotted path |
| E003 | the local storage cannot give a filesystem path |
| E004 | ``QUEUED_STORAGE_RETRIES`` is not a positive integer |
| E005 | a delay, timeout or cleanup age is not a positive number (or ``None`` where allowed) |
| E006 | ``QUEUED_STORAGE_CACHE`` is not an alias in ``CACHES`` |
| E007 | a QueuedStorage in STORAGES has an invalid option |
| W001 | the state cache is not shared between processes while Celery is not eager |
| E010 | ``QUEUED_STORAGE_STAGING_BUDGET`` is neither ``None`` nor a positive integer |
| E011 | ``RECONCILE_AFTER``, ``RECONCILE_BATCH``, ``DISPATCH_WAIT``, ``BATCH_*`` not positive |
| W010 | this host's waiting bytes are at 80 % of the staging budget (database check) |
| W011 | retired: retries wait in the ledger (it checked the Redis ``visibility_timeout``) |
| W012 | the broker is RabbitMQ and Celery's ``broker_channel_error_retry`` is not ``True`` |
| E008 | ``QUEUED_STORAGE_UPLOAD_STORAGE`` is not the alias of a QueuedStorage in STORAGES |
| E009 | ``QUEUED_STORAGE_UPLOAD_MAX_BYTES`` / ``UPLOAD_CHUNK_SIZE`` is not a positive integer |
| E012 | ``QUEUED_STORAGE_UPLOAD_AUTHORIZER`` cannot be imported or is not callable |
| E013 | ``QUEUED_STORAGE_UPLOAD_PERMISSION`` / ``STATUS_PERMISSION``: not ``"<app>.<codename>"`` |
| E014 | ``QUEUED_STORAGE_NGINX_UPLOAD_DIR`` is not an absolute path |
| E015 | ``QUEUED_STORAGE_NGINX_SECRET`` is empty or not a string |
| W002 | ``QUEUED_STORAGE_NGINX_UPLOAD_DIR`` is set without ``QUEUED_STORAGE_NGINX_SECRET`` |
| E016 | ``QUEUED_STORAGE_RETRY_FOR`` is not a positive number |
| E017 | ``QUEUED_STORAGE_RECONCILE_ON_START`` is not an integer of 0 or more |
| E018 | ``QUEUED_STORAGE_METRICS_TOKEN`` is neither ``None`` nor a non-empty string |
| E019 | ``QUEUED_STORAGE_SERVE_STAGED`` is not ``None``, a URL name or prefix, or a dict of them |
| E020 | ``QUEUED_STORAGE_SERVE_STAGED`` names a URL that exists but does not take ``name`` |
| W020 | ``QUEUED_STORAGE_SERVE_STAGED`` names a URL the URLconf does not have (not included yet) |
| E021 | ``QUEUED_STORAGE_SENDFILE`` / ``SENDFILE_PREFIX`` is not a valid mode / location |
| E022 | ``QUEUED_STORAGE_TUS_EXPIRY`` is not a positive number of seconds |
| E023 | ``QUEUED_STORAGE_WATCH_INTERVAL`` is not a number of seconds of 0 or more |
| E024 | ``QUEUED_STORAGE_DIRECT_EXPIRY`` / ``_PART_SIZE`` / ``_URL_EXPIRY`` is out of range |
| E025 | ``QUEUED_STORAGE_SERVE_UNPROCESSED`` / ``QUARANTINE`` is not a value they take |
| W021 | a storage with processors serves its waiting files at the staging storage's own URL |
"""

from __future__ import annotations

from queued_storage.checks.ingest import (
    check_direct_settings,
    check_tus_settings,
    check_upload_settings,
)
from queued_storage.checks.monitoring import check_metrics_settings
from queued_storage.checks.reliability import check_reliability_settings, check_staging_budget
from queued_storage.checks.serving import INCLUDE_URLS, check_serving_settings
from queued_storage.checks.storages import check_queued_storages, check_settings

__all__ = [
    "INCLUDE_URLS",
    "check_direct_settings",
    "check_metrics_settings",
    "check_queued_storages",
    "check_reliability_settings",
    "check_serving_settings",
    "check_settings",
    "check_staging_budget",
    "check_tus_settings",
    "check_upload_settings",
]
