"""URLs of the upload views; include them in a project's ``urls.py``::

    path("uploads/", include("queued_storage.urls")),

which gives (names in the ``queued_storage`` namespace):

* ``uploads/put/<name>`` (``upload``): ``PUT``/``POST`` a raw body or ``POST`` a form;
  ``uploads/put/?name=<name>`` (``upload-query``) takes the name from the query string;
* ``uploads/status/<name>`` (``status``): the file's state as JSON;
* ``uploads/files/<name>`` (``file``): a waiting file's bytes, once
  ``QUEUED_STORAGE_SERVE_STAGED = "queued_storage:file"`` (404 until then);
* ``uploads/nginx/<name>`` (``nginx-upload``): the body nginx wrote to disk (``X-File-Path``);
* ``uploads/nginx-auth/`` (``nginx-auth``): nginx's ``auth_request`` target;
* ``uploads/tus/`` (``tus``): the tus 1.0 endpoint (create with ``POST``), and
  ``uploads/tus/<upload_id>`` (``tus-upload``) one resumable upload (``docs/tus.md``);
* ``uploads/direct/`` (``direct``) starts a direct upload to S3, ``uploads/direct/parts/<name>``
  (``direct-parts``) signs its parts, ``uploads/direct/upload/<name>`` (``direct-upload``)
  lists the parts S3 holds (``GET``) or cancels it (``DELETE``), and
  ``uploads/direct/complete/<name>`` (``direct-complete``) verifies and completes it
  (``docs/direct.md``).

To upload into another ``STORAGES`` alias than ``QUEUED_STORAGE_UPLOAD_STORAGE``, include
them with ``{"storage_alias": "videos"}`` as the third argument of ``path()``, under another
``namespace`` if both are included.
"""

from __future__ import annotations

from django.urls import path

from queued_storage import tus, views
from queued_storage.views import direct

app_name = "queued_storage"

urlpatterns = [
    path("put/", views.UploadView.as_view(), name="upload-query"),
    path("put/<path:name>", views.UploadView.as_view(), name="upload"),
    path("status/<path:name>", views.StatusView.as_view(), name="status"),
    path("files/<path:name>", views.StagedFileView.as_view(), name="file"),
    path("nginx-auth/", views.NginxAuthView.as_view(), name="nginx-auth"),
    path("nginx/", views.NginxUploadView.as_view(), name="nginx-upload-query"),
    path("nginx/<path:name>", views.NginxUploadView.as_view(), name="nginx-upload"),
    path("tus/", tus.TusUploadView.as_view(), name="tus"),
    path("tus/<str:upload_id>", tus.TusUploadView.as_view(), name="tus-upload"),
    path("direct/", direct.DirectStartView.as_view(), name="direct"),
    path("direct/parts/<path:name>", direct.DirectPartsView.as_view(), name="direct-parts"),
    path("direct/upload/<path:name>", direct.DirectUploadView.as_view(), name="direct-upload"),
    path(
        "direct/complete/<path:name>", direct.DirectCompleteView.as_view(), name="direct-complete"
    ),
]
