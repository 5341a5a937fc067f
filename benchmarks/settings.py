"""Settings of the benchmark processes: the test project's, with production engine defaults.

The services come from the ``QS_TEST_*`` environment that ``benchmarks/bench.py`` exports after
starting its own stack; S3 is reached directly (not through the tests' fault proxy), and
``BENCH_UNSIGNED=1`` turns botocore's payload signing off, as HTTPS does in production.

Chosen per process through the environment (row 6 runs one child per configuration):

* ``BENCH_DB``: ``postgres`` (default; the ``bench`` database of the stack's PostgreSQL) or
  ``sqlite`` (a file, ``BENCH_SQLITE`` or ``bench-ledger.sqlite3`` in the stack's workdir);
* ``BENCH_S3_ENDPOINT``: the S3 endpoint of the ``s3`` and ``s3_default`` storages (default:
  moto, directly), e.g. a loopback port that refuses connections or never answers;
* ``BENCH_CLAMD``, ``BENCH_CLAMD_TIMEOUT``: the ``clamd`` address and the timeout (default 30 s,
  the processor's) of the ``scanned`` storage's ClamAV processor
  (``benchmarks/bench_processors.py`` starts its own clamd).

Storages: ``s3`` is django-storages' ``S3Storage`` with ``file_overwrite=False`` (a HEAD before
every PUT; the remote of the queued storages), ``s3_default`` the same credentials and bucket
with django-storages' defaults (``file_overwrite=True``: one PUT per file), the baseline.
``scanned`` and ``type_checked`` are the queued storage ``default`` with processors: a ClamAV
scan, a content-type check (``benchmarks/bench_processors.py``).
"""

from __future__ import annotations

import os

from botocore.config import Config

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, ENV, S3_OPTIONS, STORAGES, WORKDIR

S3_ENDPOINT = os.environ.get("BENCH_S3_ENDPOINT") or ENV["QS_TEST_S3_DIRECT_ENDPOINT"]
UNSIGNED = os.environ.get("BENCH_UNSIGNED") == "1"
BENCH_S3_OPTIONS = {**S3_OPTIONS, "endpoint_url": S3_ENDPOINT, "file_overwrite": False}
# django-storages as shipped: the tests' credentials, bucket and endpoint, no other option.
S3_DEFAULT_OPTIONS = {
    key: value
    for key, value in {**S3_OPTIONS, "endpoint_url": S3_ENDPOINT}.items()
    if key in ("bucket_name", "endpoint_url", "access_key", "secret_key", "region_name")
}
if UNSIGNED:
    BENCH_S3_OPTIONS["client_config"] = Config(s3={"payload_signing_enabled": False})
STORAGES = {
    **STORAGES,
    "s3": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": BENCH_S3_OPTIONS},
    "s3_default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": S3_DEFAULT_OPTIONS},
    # bench_processors.py: "default" with processors (the worker builds them from here).
    "scanned": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {
            "local": "staging",
            "remote": "s3",
            "processors": [
                {
                    "path": "queued_storage.processors.clamav.ClamAV",
                    "options": {
                        "address": os.environ.get("BENCH_CLAMD", "127.0.0.1:3310"),
                        "timeout": float(os.environ.get("BENCH_CLAMD_TIMEOUT", "30")),
                    },
                }
            ],
        },
    },
    "type_checked": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {
            "local": "staging",
            "remote": "s3",
            "processors": ["queued_storage.processors.content_type.ContentTypeCheck"],
        },
    },
}
# BENCH_BROKER_URL: the broker through a fault proxy (bench_broker.py), Redis or RabbitMQ.
CELERY_BROKER_URL = os.environ.get("BENCH_BROKER_URL") or f"{ENV['QS_TEST_REDIS_URL']}/0"
if CELERY_BROKER_URL.startswith("amqp://"):
    # docs/deployment.md's RabbitMQ settings: a publish waits for the broker's confirm.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
    CELERY_BROKER_CHANNEL_ERROR_RETRY = True
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# The ledger on PostgreSQL, as in production (SQLite serialises every writer); BENCH_DB=sqlite
# puts it in a SQLite file instead (row 6).
BENCH_DB = os.environ.get("BENCH_DB", "postgres")
if BENCH_DB == "sqlite":
    _sqlite = os.environ.get("BENCH_SQLITE") or str(WORKDIR / "bench-ledger.sqlite3")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _sqlite,
            "TEST": {"NAME": _sqlite},
            "OPTIONS": {"timeout": 30},
        }
    }
elif BENCH_DB == "postgres":
    DATABASES = {"default": {**DATABASES["postgres"], "NAME": "bench", "TEST": {}}}
else:
    raise ValueError(f"BENCH_DB must be 'postgres' or 'sqlite', not {BENCH_DB!r}")
LOGGING = {"version": 1, "disable_existing_loggers": False}

# The engine's production defaults, not the test suite's small ones.
for _name in [n for n in list(globals()) if n.startswith("QUEUED_STORAGE_")]:
    del globals()[_name]
QUEUED_STORAGE_LEASE_TIMEOUT = float(os.environ.get("BENCH_LEASE_TIMEOUT", "120"))
if os.environ.get("BENCH_BATCH_FILES"):  # an A/B of small files in batches (row 4)
    QUEUED_STORAGE_BATCH_FILES = int(os.environ["BENCH_BATCH_FILES"])
