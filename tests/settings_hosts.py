"""Settings of the host lab's processes (``tests/harness/hosts.py``, ``make test-hosts``).

``tests.settings`` with the lab's endpoints, read from the environment the lab gives every
process of a host: ``QS_LAB_INFRA`` (the infra namespace's address: PostgreSQL, Redis, moto,
RabbitMQ), ``QS_LAB_BROKER_URL`` (Celery's broker: Redis db 0 or the RabbitMQ node),
``QS_LAB_HOST`` (``QUEUED_STORAGE_HOST``), ``QS_LAB_STAGING`` (the staging path, the same on
every host, each host's own disk mounted there) and ``QS_LAB_BUCKET``. Uploads go to the
``queued_host`` storage (``queue="host"``: each transfer to ``queued_storage.<host>``).
``QS_LAB_LEASE_TIMEOUT`` (default 3 s) sets the lease and the reconcile pass's overdue time.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import S3_OPTIONS, STORAGES

INFRA = os.environ["QS_LAB_INFRA"]
QUEUED_STORAGE_HOST = os.environ["QS_LAB_HOST"]
LAB_STAGING = os.environ["QS_LAB_STAGING"]
BUCKET = os.environ.get("QS_LAB_BUCKET", "qs-hosts")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": INFRA,
        "PORT": "5432",
        "USER": "postgres",
        "NAME": "qs",
        "OPTIONS": {"connect_timeout": 5},
        "TEST": {"NAME": "test_qs"},
    }
}
REDIS_URL = f"redis://{INFRA}:6379"
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"{REDIS_URL}/1",
        # As the quick start has them: an unreachable cache costs a save a quarter of a
        # second, not redis-py's default 5 s connect timeout.
        "OPTIONS": {"socket_connect_timeout": 0.25, "socket_timeout": 0.5},
    }
}
# QS_LAB_BROKER_URL: the lab's broker, Redis db 0 or its RabbitMQ node (HostLab.broker_url).
CELERY_BROKER_URL = os.environ.get("QS_LAB_BROKER_URL", f"{REDIS_URL}/0")
CELERY_RESULT_BACKEND = f"{REDIS_URL}/2"
if CELERY_BROKER_URL.startswith("amqp://"):
    # docs/deployment.md, "RabbitMQ": a publish waits for the broker's confirm.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
else:
    # As the quick start has them: a broker that stops answering fails a publish in seconds.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": 3600,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
    }
# docs/deployment.md, "RabbitMQ" (tests.settings has them too; the lab states its own).
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

S3_ENDPOINT = f"http://{INFRA}:5000"
LAB_S3_OPTIONS = {**S3_OPTIONS, "bucket_name": BUCKET, "endpoint_url": S3_ENDPOINT}
STORAGES = {
    **STORAGES,
    "staging": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": LAB_STAGING, "base_url": "/staging/"},
    },
    "s3": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": LAB_S3_OPTIONS},
}
AWS_STORAGE_BUCKET_NAME = BUCKET
AWS_S3_ENDPOINT_URL = S3_ENDPOINT

QUEUED_STORAGE_UPLOAD_STORAGE = "queued_host"
QUEUED_STORAGE_UPLOAD_AUTHORIZER = "tests.hooks.lab_hook"
QUEUED_STORAGE_METRICS = False
QUEUED_STORAGE_LEASE_TIMEOUT = int(os.environ.get("QS_LAB_LEASE_TIMEOUT", "3"))
QUEUED_STORAGE_RECONCILE_ON_START = 500
QUEUED_STORAGE_RETRY_DELAY = 0.5
QUEUED_STORAGE_RETRY_MAX_DELAY = 4

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"queued_storage": {"handlers": ["console"], "level": "INFO"}},
}
