"""Settings of the fault tests' own worker: ``tests.settings`` plus overrides from the
environment, so that a test can start a worker with, say, a 3-second lease (quick takeover
after ``kill -9``) or a retry budget that outlasts a 15-second S3 outage.

``QS_FAULT_LEASE_TIMEOUT``, ``QS_FAULT_RETRIES``, ``QS_FAULT_RETRY_DELAY``,
``QS_FAULT_RETRY_MAX_DELAY``, ``QS_FAULT_HOST`` (``QUEUED_STORAGE_HOST``),
``QS_FAULT_RECONCILE_ON_START``, ``QS_FAULT_DATABASE`` (``QUEUED_STORAGE_DATABASE``: ``postgres``
names the test run's PostgreSQL database, ``QS_FAULT_PG_NAME``).
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import (
    DATABASES,
    QUEUED_STORAGE_LEASE_TIMEOUT,
    QUEUED_STORAGE_RECONCILE_ON_START,
    QUEUED_STORAGE_RETRIES,
    QUEUED_STORAGE_RETRY_DELAY,
    QUEUED_STORAGE_RETRY_MAX_DELAY,
)

QUEUED_STORAGE_LEASE_TIMEOUT = float(
    os.environ.get("QS_FAULT_LEASE_TIMEOUT", QUEUED_STORAGE_LEASE_TIMEOUT)
)
QUEUED_STORAGE_RETRIES = int(os.environ.get("QS_FAULT_RETRIES", QUEUED_STORAGE_RETRIES))
QUEUED_STORAGE_RETRY_DELAY = float(
    os.environ.get("QS_FAULT_RETRY_DELAY", QUEUED_STORAGE_RETRY_DELAY)
)
QUEUED_STORAGE_RETRY_MAX_DELAY = float(
    os.environ.get("QS_FAULT_RETRY_MAX_DELAY", QUEUED_STORAGE_RETRY_MAX_DELAY)
)
QUEUED_STORAGE_RECONCILE_ON_START = int(
    os.environ.get("QS_FAULT_RECONCILE_ON_START", QUEUED_STORAGE_RECONCILE_ON_START)
)
if os.environ.get("QS_FAULT_HOST"):
    QUEUED_STORAGE_HOST = os.environ["QS_FAULT_HOST"]
if os.environ.get("QS_FAULT_DATABASE"):
    QUEUED_STORAGE_DATABASE = os.environ["QS_FAULT_DATABASE"]
if os.environ.get("QS_FAULT_PG_NAME") and "postgres" in DATABASES:
    DATABASES["postgres"]["NAME"] = os.environ["QS_FAULT_PG_NAME"]
