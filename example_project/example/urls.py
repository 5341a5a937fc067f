"""URLs: the library at ``/``, the upload page, queued_storage's upload and status views, the
admin, and (DEBUG only) the staged files."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from gallery import views

urlpatterns = [
    path("", views.index, name="index"),
    path("upload/", views.upload, name="upload"),
    path("attach/", views.attach, name="attach"),
    # PUT uploads/put/?name=<name>, the tus endpoint uploads/tus/ (the upload page's widget) and
    # GET uploads/status/<name> (namespace "queued_storage")
    path("uploads/", include("queued_storage.urls")),
    path("admin/", admin.site.urls),
]
# Files not yet on S3 are served by queued_storage's view, uploads/files/<name>
# (QUEUED_STORAGE_SERVE_STAGED): the staging directory itself is never served.
