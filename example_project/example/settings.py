"""Settings of the queued_storage example project: a local demo, not a production template.

Uploads are saved to a local staging directory, recorded in queued_storage's ledger, and a
Celery worker streams them to S3; the admin shows each file's state and where it is served from.

With no environment variable set, nothing needs a server: SQLite, a file-based cache and
kombu's filesystem broker live in the data directory, and ``example_project/demo.py`` starts a
moto S3 server on loopback. Environment variables switch to real parts:

``QS_DEMO_DIR``
    Data directory: SQLite database, staging files, cache, Celery broker folders and logs.
    Default: ``<repo>/.demo``.
``DEMO_REDIS_URL``
    If set (``redis://host:port/db``), the Celery broker and Django's cache (a ``RedisCache``)
    both use this Redis instead of the filesystem broker and the file-based cache.
``DEMO_S3_ENDPOINT_URL``
    S3 API endpoint (MinIO, moto, another S3-compatible server; path-style addressing is used).
    If set, the launcher starts no moto. If neither it nor ``DEMO_S3_BUCKET`` is set, the
    launcher starts a moto server and passes its endpoint in this variable. Unset here (with
    ``DEMO_S3_BUCKET`` set) means AWS S3 itself.
``DEMO_S3_BUCKET``
    Bucket name. Default: ``demo-media``. The launcher creates it if it is missing.
``DEMO_S3_ACCESS_KEY``
    Access key id. Default: ``demo`` (moto accepts anything).
``DEMO_S3_SECRET_KEY``
    Secret access key. Default: ``demo-secret``. Credentials are only read from the
    environment and never printed.
``DEMO_S3_REGION``
    Region name. Default: ``us-east-1``.
``DEMO_DATABASE_URL``
    If set (``postgresql://user:password@host:port/dbname``), the database is this PostgreSQL
    (``psycopg`` must be installed) instead of the SQLite file in the data directory.
``DEMO_CLAMD_ADDRESS``
    If set (``host:port``, or the path of a Unix socket), the worker scans every upload with
    this ClamAV daemon before sending it to S3, and a file it finds a virus in is ``rejected``.
    The launcher starts a private ``clamd`` and sets it when ``clamd`` is installed
    (``apt-get install clamav-daemon``). Unset: uploads are not scanned.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent  # example_project/
REPO_DIR = BASE_DIR.parent
DATA_DIR = Path(os.environ.get("QS_DEMO_DIR") or REPO_DIR / ".demo").resolve()
STAGING_ROOT = DATA_DIR / "staging"
STAGING_URL = "/staging/"
DATA_DIR.mkdir(parents=True, exist_ok=True)  # SQLite does not create the directory

SECRET_KEY = "django-insecure-queued-storage-demo-only"  # a local demo: not a secret
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ROOT_URLCONF = "example.urls"
WSGI_APPLICATION = "example.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"
LOGIN_URL = "admin:login"  # the upload page asks the demo's user to sign in

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "queued_storage",
    "gallery",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# The web process and the worker share one SQLite file: WAL lets the admin read while the
# worker writes, IMMEDIATE transactions avoid lock-upgrade deadlocks.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "db.sqlite3",
        "OPTIONS": {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}
DATABASE_URL = os.environ.get("DEMO_DATABASE_URL") or None
if DATABASE_URL:
    _db = urlsplit(DATABASE_URL)
    if _db.scheme not in ("postgres", "postgresql"):
        raise ValueError("DEMO_DATABASE_URL must be a postgresql://user:password@host/db URL")
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(_db.path.lstrip("/")),
        "USER": unquote(_db.username or ""),
        "PASSWORD": unquote(_db.password or ""),
        "HOST": _db.hostname or "",
        "PORT": str(_db.port or ""),
    }

# --- cache and broker: shared by the web process and the worker ------------------------------
REDIS_URL = os.environ.get("DEMO_REDIS_URL") or None
BROKER_DIR = DATA_DIR / "broker"
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            # a Redis that stops answering costs a save a quarter of a second, not 5 s
            "OPTIONS": {"socket_connect_timeout": 0.25, "socket_timeout": 0.5},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }
    # kombu's filesystem transport: a message is a file; producer and worker share the folder.
    for _folder in ("queue", "control"):
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)  # kombu does not create them
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }

CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# On RabbitMQ a worker whose channel the broker closed (consumer_timeout) reconnects instead of
# exiting (queued_storage.W012); harmless on the other brokers.
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True

# --- storages --------------------------------------------------------------------------------
S3_ENDPOINT_URL = os.environ.get("DEMO_S3_ENDPOINT_URL") or None
S3_BUCKET = os.environ.get("DEMO_S3_BUCKET") or "demo-media"
S3_OPTIONS: dict[str, object] = {
    "bucket_name": S3_BUCKET,
    "endpoint_url": S3_ENDPOINT_URL,
    "access_key": os.environ.get("DEMO_S3_ACCESS_KEY") or "demo",
    "secret_key": os.environ.get("DEMO_S3_SECRET_KEY") or "demo-secret",
    "region_name": os.environ.get("DEMO_S3_REGION") or "us-east-1",
    "querystring_auth": True,  # pre-signed URLs: the bucket stays private
    "signature_version": "s3v4",  # botocore would presign with the deprecated SigV2
}
if S3_ENDPOINT_URL:
    S3_OPTIONS["addressing_style"] = "path"  # loopback and MinIO have no bucket subdomains

# What the worker runs on each file's staged copy before sending it to S3, in order: the virus
# scan when there is a clamd, the check of the content against the name, the image's format and
# size, then the thumbnail (last, so that a rejected file leaves none behind). A rejected file
# never reaches S3. Direct uploads go to S3 without the worker: nothing runs on them.
CLAMD_ADDRESS = os.environ.get("DEMO_CLAMD_ADDRESS") or None
PROCESSORS: list[object] = [
    "queued_storage.processors.content_type.ContentTypeCheck",
    "queued_storage.processors.images.ImageInfo",
    {"path": "gallery.processors.Thumbnail", "options": {"size": 256}},
]
if CLAMD_ADDRESS:
    CLAMAV = "queued_storage.processors.clamav.ClamAV"
    PROCESSORS.insert(0, {"path": CLAMAV, "options": {"address": CLAMD_ADDRESS}})

STORAGES = {
    "default": {
        "BACKEND": "queued_storage.storage.QueuedStorage",
        "OPTIONS": {
            "local": "staging",
            "remote": "s3",
            "delete_local": True,
            "processors": PROCESSORS,
        },
    },
    "staging": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(STAGING_ROOT), "base_url": STAGING_URL},
    },
    "s3": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": S3_OPTIONS},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Demo-friendly retry policy: a transient S3 error is retried after seconds, not minutes.
QUEUED_STORAGE_RETRY_DELAY = 5
QUEUED_STORAGE_RETRY_MAX_DELAY = 60
# Files not on S3 yet are served by queued_storage's view (its owner and staff until the
# processors passed it; never a rejected file), not from the staging directory itself.
QUEUED_STORAGE_SERVE_STAGED = "queued_storage:file"
# Django's development server cannot interrupt a stalled upload (gunicorn and queued_storage.asgi
# can): no idle limit here, rather than a warning on every upload.
QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT = None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"queued_storage": {"handlers": ["console"], "level": "INFO"}},
}
