"""WSGI and ASGI applications of the test project, for the web servers the upload tests start.

``gunicorn tests.webapp:wsgi``, ``uvicorn tests.webapp:asgi`` (queued_storage's streaming
handler) and ``uvicorn tests.webapp:asgi_django`` (Django's own ``ASGIHandler``). The server
processes inherit the ``QS_TEST_*`` environment of the test run, so they use its database,
cache, broker and staging directory and start no services of their own.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from django.core.asgi import get_asgi_application as _django_asgi
from django.core.wsgi import get_wsgi_application

from queued_storage.asgi import get_asgi_application
from tests.celery_app import app as celery_app  # noqa: F401  (as a project's __init__ does)

wsgi = get_wsgi_application()
asgi = get_asgi_application()
asgi_django = _django_asgi()
