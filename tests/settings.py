"""Settings of the test suite. They read the services from the environment and start nothing.

``tests/conftest.py`` starts the real services the suite uses (Redis, a moto S3 server,
PostgreSQL, fault proxies) in ``pytest_configure``, before Django loads these settings, and
describes them in ``QS_TEST_*`` variables (``tests.harness.services.ServiceStack.env``) that the
Celery workers and web servers the tests start inherit. Without them (``QS_TEST_NO_SERVICES=1``,
used by mypy and ``makemigrations --check``, or settings loaded outside a pytest run) every
service is unavailable: the tests that need one skip, or fail under
``QUEUED_STORAGE_TEST_STRICT=1``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

STRICT = os.environ.get("QUEUED_STORAGE_TEST_STRICT", "") not in ("", "0")

if os.environ.get("QS_TEST_NO_SERVICES"):
    ENV: dict[str, str] = {"QS_TEST_WORKDIR": tempfile.mkdtemp(prefix="qs-test-")}
    UNAVAILABLE: dict[str, str] = {"all": "QS_TEST_NO_SERVICES is set"}
elif "QS_TEST_WORKDIR" in os.environ:
    ENV = {k: v for k, v in os.environ.items() if k.startswith("QS_TEST_")}
    UNAVAILABLE = dict(json.loads(ENV.get("QS_TEST_UNAVAILABLE", "{}")))
else:
    ENV = {"QS_TEST_WORKDIR": tempfile.mkdtemp(prefix="qs-test-")}
    UNAVAILABLE = {
        "all": "no QS_TEST_* variables in the environment (tests/conftest.py starts the "
        "services and sets them in a pytest run)"
    }

WORKDIR = Path(ENV["QS_TEST_WORKDIR"])
STAGING_ROOT = WORKDIR / "staging"
MEDIA_ROOT = str(WORKDIR / "media")
SQLITE_FILE = str(WORKDIR / "test.sqlite3")

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"  # tests/urls.py serves queued_storage's static files there

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "queued_storage",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.request",
            ]
        },
    }
]

DATABASES: dict[str, dict[str, object]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": SQLITE_FILE,
        # A file, not :memory:, so that worker processes share the test database.
        "TEST": {"NAME": SQLITE_FILE},
        "OPTIONS": {"timeout": 30},
    }
}
if "QS_TEST_PG_HOST" in ENV:
    DATABASES["postgres"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": ENV["QS_TEST_PG_HOST"],
        "PORT": ENV.get("QS_TEST_PG_PORT", ""),
        "USER": "postgres",
        "NAME": "qs",
        "TEST": {"NAME": "test_qs"},
    }

REDIS_URL = ENV.get("QS_TEST_REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"{REDIS_URL}/1",
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(Path(ENV["QS_TEST_WORKDIR"]) / "cache"),
        }
    }

S3_ENDPOINT = ENV.get("QS_TEST_S3_ENDPOINT", "http://127.0.0.1:9")
BUCKET = ENV.get("QS_TEST_BUCKET", "qs-test")
#: The secret the tests look for in task messages, logs and errors: it must never appear.
S3_SECRET = "qs-test-secret-never-in-messages"
S3_OPTIONS = {
    "bucket_name": BUCKET,
    "endpoint_url": S3_ENDPOINT,
    "access_key": "qs-test-access-key",
    "secret_key": S3_SECRET,
    "region_name": "us-east-1",
    "file_overwrite": True,  # the app must avoid overwrites whatever the remote says
    "querystring_auth": True,
}
# The old constructor (tests.testapp.models.legacy_storage) builds S3Storage without options:
# it reads these global settings, as django-queued-storage projects did.
AWS_STORAGE_BUCKET_NAME = BUCKET
AWS_S3_ENDPOINT_URL = S3_ENDPOINT
AWS_S3_ACCESS_KEY_ID = S3_OPTIONS["access_key"]
AWS_S3_SECRET_ACCESS_KEY = S3_SECRET
AWS_S3_REGION_NAME = "us-east-1"

CLAMD_ADDRESS = f"127.0.0.1:{ENV.get('QS_TEST_CLAMD_PORT', '9')}"
SCANNED = [
    {"path": "queued_storage.processors.clamav.ClamAV", "options": {"address": CLAMD_ADDRESS}},
    "queued_storage.processors.content_type.ContentTypeCheck",
]

STORAGES = {
    "default": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "s3"},
    },
    "queued_delete": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "s3", "delete_local": True},
    },
    "queued_fs": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "fs_remote"},
    },
    "queued_parked": {
        # Messages go to a queue no worker consumes: the tests read them from the broker.
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "s3", "queue": "parked"},
    },
    "queued_delayed": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "s3", "delayed": True},
    },
    # tests/test_scanning.py: a ClamAV scan and the type check before the transfer, against
    # the private clamd that module starts on the port the run picked (QS_TEST_CLAMD_PORT).
    "queued_scanned": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "s3", "processors": SCANNED},
    },
    "queued_scanned_delayed": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "s3", "delayed": True, "processors": SCANNED},
    },
    # Per-host routing: transfers go to the queue "queued_storage.<QUEUED_STORAGE_HOST>",
    # consumed by the fault tests' own worker (tests/conftest.py: host_worker).
    "queued_host": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "s3", "queue": "host"},
    },
    "queued_host_delete": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "s3", "queue": "host", "delete_local": True},
    },
    # tests/test_monitoring.py: the signals of these storages' files are recorded in Redis by
    # every process (tests/testapp/receivers.py), the worker's included.
    "monitored": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {"local": "staging", "remote": "s3", "alias": "monitored"},
    },
    "monitored_delayed": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {
            "local": "staging",
            "remote": "s3",
            "delayed": True,
            "alias": "monitored_delayed",
        },
    },
    "staging": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(STAGING_ROOT), "base_url": "/staging/"},
    },
    "fs_remote": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(WORKDIR / "fs_remote"), "base_url": "/fs-remote/"},
    },
    "s3": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": S3_OPTIONS},
    "s3_nobucket": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {**S3_OPTIONS, "bucket_name": "no-such-bucket"},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Redis through the broker's fault proxy, or RabbitMQ through it (QS_TEST_BROKER=rabbitmq,
# make test-rabbitmq); the result backend and the cache stay on Redis either way.
CELERY_BROKER_URL = ENV.get("QS_TEST_BROKER_URL", "memory://")
CELERY_TASK_ALWAYS_EAGER = False
# Results of transfers are kept (storage.transfer(name).get() works), directly in Redis db 2.
CELERY_RESULT_BACKEND = f"{REDIS_URL}/2" if REDIS_URL else None
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 3600}
if CELERY_BROKER_URL.startswith("amqp://"):
    # A publish waits for RabbitMQ's confirm, as one waits for Redis' reply: without it a
    # message written into a connection the broker no longer reads counts as sent.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# RabbitMQ closes the channel of a delivery left unacknowledged beyond its consumer_timeout:
# the worker reconnects instead of exiting (queued_storage.W012).
CELERY_BROKER_CHANNEL_ERROR_RETRY = True

QUEUED_STORAGE_RETRIES = 3
QUEUED_STORAGE_RETRY_DELAY = 0.5
QUEUED_STORAGE_RETRY_MAX_DELAY = 2
QUEUED_STORAGE_LEASE_TIMEOUT = 20
# The suite's shared worker would re-queue the rows other tests aged to make them overdue; the
# fault tests' worker (tests/settings_faults.py) and the tests of the start-up pass turn it on.
QUEUED_STORAGE_RECONCILE_ON_START = 0
# Each worker sends the retries that are due and takes back expired leases this often.
QUEUED_STORAGE_WATCH_INTERVAL = float(ENV.get("QS_TEST_WATCH_INTERVAL", "1"))
QUEUED_STORAGE_MULTIPART_THRESHOLD = 5 * 1024 * 1024
QUEUED_STORAGE_MULTIPART_CHUNKSIZE = 5 * 1024 * 1024
QUEUED_STORAGE_MAX_CONCURRENCY = 2
# Monitoring (tests/test_monitoring.py): the metrics are on in every process of the suite, in
# prometheus-client's multiprocess mode, so the worker's values can be read here (and by the
# metrics view). The variable is set before prometheus-client is imported (by the app's
# ready()), and the workers and web servers the tests start inherit it.
QUEUED_STORAGE_METRICS = True
QUEUED_STORAGE_METRICS_TOKEN = "qs-test-metrics-token"
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(WORKDIR / "prometheus"))
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
# Upload views (tests/test_uploads.py): nginx writes request bodies here.
QUEUED_STORAGE_NGINX_UPLOAD_DIR = str(WORKDIR / "nginx-bodies")
QUEUED_STORAGE_NGINX_SECRET = "qs-test-nginx-secret"
# A web server started with this variable uses that hook (tests.hooks.name_hook); else the default.
QUEUED_STORAGE_UPLOAD_AUTHORIZER = ENV.get("QS_TEST_UPLOAD_AUTHORIZER")
#: A staging budget, for the web servers of one test (tests/test_uploads.py, ``budgeted``).
QUEUED_STORAGE_STAGING_BUDGET = (
    int(ENV["QS_TEST_STAGING_BUDGET"]) if "QS_TEST_STAGING_BUDGET" in ENV else None
)
# Direct uploads (tests/test_browser.py): a web server started with this variable signs parts
# of that many bytes (the suite's own tests set the setting in-process).
if "QS_TEST_DIRECT_PART_SIZE" in ENV:
    QUEUED_STORAGE_DIRECT_PART_SIZE = int(ENV["QS_TEST_DIRECT_PART_SIZE"])
# Serving waiting files (tests/test_serving.py): a web server started with these variables
# points url() of waiting files at the view and hands them to nginx; the suite itself does not.
# A rejected file's local copy moves out of the staging storage (workers share the setting).
QUEUED_STORAGE_QUARANTINE = str(WORKDIR / "quarantine")
# The scanned storages' waiting files are always served by the view (check W021).
QUEUED_STORAGE_SERVE_STAGED = json.loads(
    ENV.get(
        "QS_TEST_SERVE_STAGED",
        '{"queued_scanned": "scanned-file", "queued_scanned_delayed": "scanned-delayed-file"}',
    )
)
QUEUED_STORAGE_SENDFILE = ENV.get("QS_TEST_SENDFILE")
# Django's TemporaryFileUploadHandler writes form uploads here (same filesystem as staging).
FILE_UPLOAD_TEMP_DIR = str(WORKDIR / "form-uploads")
os.makedirs(FILE_UPLOAD_TEMP_DIR, exist_ok=True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"queued_storage": {"handlers": ["console"], "level": "INFO"}},
}
