"""URLs: the upload list at ``/``, the admin, and (DEBUG only) the staged files."""

from __future__ import annotations

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import path

from gallery import views

urlpatterns = [
    path("", views.index, name="index"),
    path("admin/", admin.site.urls),
]
# Files not yet on S3 are served from the staging directory (``static()`` is a no-op unless
# DEBUG; in production the web server serves this directory).
urlpatterns += static(settings.STAGING_URL, document_root=settings.STAGING_ROOT)
