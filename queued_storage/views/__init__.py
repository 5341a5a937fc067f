"""Upload views: large files in, without holding them in memory.

Three ways in (``urls.py`` wires them; docs/uploads.md shows each):

* :class:`UploadView` — ``PUT`` (or ``POST`` with ``Content-Type: application/octet-stream``)
  of a raw body, for scripts and ``curl -T``; ``POST`` of a ``multipart/form-data`` form works
  too (its ``file`` field). The client is authorised, and ``Content-Length`` checked against
  ``QUEUED_STORAGE_UPLOAD_MAX_BYTES``, before a single byte of the body is read; the body is
  then read in chunks of ``QUEUED_STORAGE_UPLOAD_CHUNK_SIZE`` into the staging disk.
* :class:`NginxUploadView` and :class:`NginxAuthView` — nginx authorises the request with an
  ``auth_request`` to :class:`NginxAuthView` before it accepts the body, writes the body to
  ``QUEUED_STORAGE_NGINX_UPLOAD_DIR`` itself and passes its path in ``X-File-Path``; the view
  moves that file into the staging storage.
* :class:`StatusView` — JSON with a file's state, bytes transferred, size and the URL to use now.

Every file goes through ``QueuedStorage.save()``, so name reservation, the ledger and the
dispatch on commit apply as for any other save.

* :class:`StagedFileView` — ``GET`` a waiting file's bytes from the staging disk (Django
  streams them, or hands them to nginx or Apache with ``QUEUED_STORAGE_SENDFILE``); a file
  already on the remote is a redirect to its remote URL.

The modules, one concern each: :mod:`~queued_storage.views.authorization` (the authorizer
hook, :func:`default_authorize`, :func:`owner_of` and :class:`QueuedStorageView`, the base the
others share), :mod:`~queued_storage.views.upload`, :mod:`~queued_storage.views.nginx`,
:mod:`~queued_storage.views.status`, :mod:`~queued_storage.views.staged` and
:mod:`~queued_storage.views.common` (the JSON answers). Every public name is importable from
``queued_storage.views``, as before the split (dotted paths in settings and docs keep working).
"""

from __future__ import annotations

from queued_storage.views.authorization import (
    SIGN_IN,
    QueuedStorageView,
    default_authorize,
    get_authorizer,
    owner_of,
)
from queued_storage.views.common import STAGING_FULL, not_found
from queued_storage.views.nginx import (
    SECRET_HEADER,
    NginxAuthView,
    NginxUploadView,
)
from queued_storage.views.staged import ACTIVE_TYPES, StagedFileView
from queued_storage.views.status import StatusView
from queued_storage.views.upload import UploadView, budget_reserved

__all__ = [
    "ACTIVE_TYPES",
    "SECRET_HEADER",
    "SIGN_IN",
    "STAGING_FULL",
    "NginxAuthView",
    "NginxUploadView",
    "QueuedStorageView",
    "StagedFileView",
    "StatusView",
    "UploadView",
    "budget_reserved",
    "default_authorize",
    "get_authorizer",
    "not_found",
    "owner_of",
]
