"""Settings of the benchmark processes: the test project's, with production engine defaults.

The services come from the ``QS_TEST_*`` environment that ``benchmarks/bench.py`` exports after
starting its own stack; S3 is reached directly (not through the tests' fault proxy), and
``BENCH_UNSIGNED=1`` turns botocore's payload signing off, as HTTPS does in production.
"""

from __future__ import annotations

import os

from botocore.config import Config

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, ENV, S3_OPTIONS, STORAGES

S3_ENDPOINT = ENV["QS_TEST_S3_DIRECT_ENDPOINT"]
UNSIGNED = os.environ.get("BENCH_UNSIGNED") == "1"
BENCH_S3_OPTIONS = {**S3_OPTIONS, "endpoint_url": S3_ENDPOINT, "file_overwrite": False}
if UNSIGNED:
    BENCH_S3_OPTIONS["client_config"] = Config(s3={"payload_signing_enabled": False})
STORAGES = {
    **STORAGES,
    "s3": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": BENCH_S3_OPTIONS},
}
CELERY_BROKER_URL = f"{ENV['QS_TEST_REDIS_URL']}/0"
# The ledger on PostgreSQL, as in production (SQLite serialises every writer).
DATABASES = {"default": {**DATABASES["postgres"], "NAME": "bench", "TEST": {}}}
LOGGING = {"version": 1, "disable_existing_loggers": False}

# The engine's production defaults, not the test suite's small ones.
for _name in [n for n in list(globals()) if n.startswith("QUEUED_STORAGE_")]:
    del globals()[_name]
QUEUED_STORAGE_LEASE_TIMEOUT = float(os.environ.get("BENCH_LEASE_TIMEOUT", "120"))
