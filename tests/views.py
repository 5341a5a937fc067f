"""A project's own form upload view, as the README's "form" way in shows it.

It saves ``request.FILES["file"]`` through a queued storage (``?model=1``: through the
``Document`` model's ``QueuedFileField``) and reports the inode of Django's temporary upload
file before the save and of the staged file after it: equal inodes mean the file was moved
(renamed), not copied. The memory test uses the ``queued_fs`` storage (its remote is a
directory), so that the measurement sees the upload, not the creation of an S3 client.
"""

from __future__ import annotations

import os

from django import forms
from django.core.files.storage import storages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from queued_storage.forms import DirectFileField, DirectUploadFormMixin
from tests.testapp.models import Document


def form_upload(request: HttpRequest) -> JsonResponse:
    uploaded = request.FILES["file"]
    temp_path = uploaded.temporary_file_path()  # type: ignore[attr-defined]
    temp_inode = os.stat(temp_path).st_ino
    if request.GET.get("model"):
        doc = Document.objects.create(title="form upload", file=uploaded)
        name, path = doc.file.name, doc.file.path
    else:
        storage = storages["queued_fs"]
        name = storage.save(f"forms/{uploaded.name}", uploaded)
        path = storage.path(name)
    return JsonResponse(
        {
            "name": name,
            "handler": type(uploaded).__name__,
            "temp_inode": temp_inode,
            "inode": os.stat(path).st_ino,
            "temp_left": os.path.exists(temp_path),
        },
        status=201,
    )


def uploader_page(request: HttpRequest) -> HttpResponse:
    """A page with nothing but the shipped widget (``queued_storage/uploader.html``);
    ``?tus=<chunk size>`` puts it in tus mode with chunks of that many bytes, ``?direct=1`` in
    direct mode (``data-mode="direct"``), ``&stall=<ms>`` sets its stall timeout."""
    chunk_size = request.GET.get("tus", "")
    stall = request.GET.get("stall", "")
    return render(
        request,
        "testapp/uploader_page.html",
        {
            "tus": bool(chunk_size),
            "chunk_size": chunk_size if chunk_size.isdigit() else "",
            "stall_timeout": stall if stall.isdigit() else "",
            "mode": "direct" if request.GET.get("direct") else "",
        },
    )


class DirectDocumentForm(DirectUploadFormMixin, forms.ModelForm):  # type: ignore[type-arg]
    file = DirectFileField()

    class Meta:
        model = Document
        fields = ["title", "file"]


def direct_form_page(request: HttpRequest) -> HttpResponse:
    """A project's own form with a ``DirectFileField`` (tests/test_browser.py): ``GET`` renders
    it (the widget in direct mode, its hidden input); ``POST`` validates it as the signed-in
    user and saves the ``Document``: 201 with the file's name, else 400 with the errors."""
    if request.method == "POST":
        form = DirectDocumentForm(request.POST, request=request)
        if not form.is_valid():
            return JsonResponse({"errors": form.errors}, status=400)
        document = form.save()
        return JsonResponse({"id": document.pk, "name": document.file.name}, status=201)
    form = DirectDocumentForm(request=request)
    return render(request, "testapp/direct_form_page.html", {"form": form})
