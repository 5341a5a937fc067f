"""A public list of the uploads, with links that point wherever each file is served from."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from gallery.models import Upload


def index(request: HttpRequest) -> HttpResponse:
    uploads = list(Upload.objects.all()[:100])
    moving = any(u.transfer_state in ("pending", "transferring") for u in uploads)
    return render(request, "gallery/index.html", {"uploads": uploads, "refresh": moving})
