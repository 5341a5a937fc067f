"""The example project; importing it loads the Celery app so that tasks are sent through it."""

from example.celery import app as celery_app

__all__ = ["celery_app"]
