from __future__ import annotations

from pathlib import Path

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import TemplateView
from django.views.static import serve

import queued_storage
from queued_storage.metrics import metrics_view
from queued_storage.tus import TusUploadView
from queued_storage.views import StagedFileView, StatusView, UploadView
from tests.views import direct_form_page, form_upload, uploader_page

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics/", metrics_view, name="metrics"),
    path("uploads/", include("queued_storage.urls")),
    # A project's own form view (tests/views.py).
    path("form-upload/", form_upload, name="form-upload"),
    # A project's own form with a DirectFileField (tests/test_browser.py).
    path("direct-form/", direct_form_page, name="direct-form"),
    # The shipped upload widget on a page (tests/test_browser.py), its static files served
    # from the package itself: the browser runs the JavaScript that ships.
    path("uploader/", uploader_page, name="uploader"),
    re_path(
        r"^static/(?P<path>.*)$",
        serve,
        {"document_root": Path(queued_storage.__file__).parent / "static"},
    ),
    # An independent tus client in a page of this site (tests/test_browser.py): the vendored
    # tus-js-client (tests/assets/, a test fixture, not shipped) and a file input.
    path(
        "tus-js-client/",
        TemplateView.as_view(template_name="testapp/tus_js_client_page.html"),
        name="tus-js-client",
    ),
    re_path(
        r"^test-assets/(?P<path>.*)$",
        serve,
        {"document_root": Path(__file__).resolve().parent / "assets"},
    ),
    # A remote without network clients: memory measurements see the upload path only.
    path("fs/<path:name>", UploadView.as_view(storage_alias="queued_fs"), name="fs-upload"),
    # A small limit, to refuse an over-long chunked body without sending gigabytes.
    path("small/<path:name>", UploadView.as_view(max_bytes=1024 * 1024), name="small-upload"),
    # A storage that does not dispatch: no transfer writes to the ledger while a test saves.
    path(
        "delayed-put/<path:name>",
        UploadView.as_view(storage_alias="queued_delayed"),
        name="delayed-upload",
    ),
    # A short idle timeout, to drop a stalled client within a test.
    path("quick/<path:name>", UploadView.as_view(idle_timeout=1.5), name="quick-upload"),
    path("quick-tus/<str:upload_id>", TusUploadView.as_view(idle_timeout=1.5), name="quick-tus"),
    # Waiting files of a storage that never dispatches by itself (tests/test_serving.py).
    path(
        "delayed-files/<path:name>",
        StagedFileView.as_view(storage_alias="queued_delayed"),
        name="delayed-file",
    ),
    # A storage whose processors scan before the transfer (tests/test_scanning.py).
    path("scanned-put/<path:name>", UploadView.as_view(storage_alias="queued_scanned")),
    path("scanned-status/<path:name>", StatusView.as_view(storage_alias="queued_scanned")),
    path(
        "scanned-files/<path:name>",
        StagedFileView.as_view(storage_alias="queued_scanned"),
        name="scanned-file",
    ),
    path(
        "scanned-delayed-files/<path:name>",
        StagedFileView.as_view(storage_alias="queued_scanned_delayed"),
        name="scanned-delayed-file",
    ),
]
