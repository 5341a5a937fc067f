"""The media library's pages: the list of every file, and the upload page.

The upload page includes queued_storage's widget (``queued_storage/uploader.html``) in tus mode:
the browser sends each file in resumable chunks to queued_storage's tus endpoint
(``uploads/tus/``), then posts the stored name to :func:`attach`,
which records it in the library, and follows its state on the status endpoint. With
``?mode=direct`` the widget sends the file straight to S3 (``uploads/direct/``) instead.
"""

from __future__ import annotations

import mimetypes

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from gallery.models import Upload
from queued_storage.views import owner_of


def index(request: HttpRequest) -> HttpResponse:
    uploads = list(Upload.objects.all()[:100])
    moving = any(u.transfer_state in ("pending", "transferring") for u in uploads)
    return render(request, "gallery/index.html", {"uploads": uploads, "refresh": moving})


@login_required
def upload(request: HttpRequest) -> HttpResponse:
    """The upload page: the widget in tus mode, or with ``?mode=direct`` in direct mode (the
    browser sends the parts straight to S3; the bucket needs the CORS rule the demo sets)."""
    direct = request.GET.get("mode") == "direct"
    context = {"attach_url": reverse("attach"), "direct": direct}
    return render(request, "gallery/upload.html", context)


@login_required
@require_POST
def attach(request: HttpRequest) -> JsonResponse:
    """Add the file the upload view stored as *name* to the library, as an image or a file.

    Only the user who uploaded it may attach it (``owner_of``: the upload view recorded the
    uploader), so that nobody can claim another user's upload by guessing its name.
    """
    name = request.POST.get("name", "")
    storage = Upload().file.queued_storage
    if not name or owner_of(storage, name) != str(request.user.pk):
        return JsonResponse({"error": f"No upload {name!r} of yours to attach."}, status=404)
    item = Upload(title=name.rsplit("/", 1)[-1])
    kind = mimetypes.guess_type(name)[0] or ""
    if kind.startswith("image/"):
        item.image = name  # type: ignore[assignment]  (a stored name, as Django allows)
    else:
        item.file = name  # type: ignore[assignment]
    item.save()
    return JsonResponse({"id": item.pk, "title": item.title}, status=201)
