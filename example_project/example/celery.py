"""The Celery app of the example project: ``celery -A example worker`` (from example_project/)."""

from __future__ import annotations

import os

from celery import Celery

from example.broker import install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")
install()  # the filesystem broker's messages written whole (example/broker.py)

app = Celery("example")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()  # finds queued_storage.tasks
