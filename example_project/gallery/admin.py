"""The media library in the admin: a thumbnail, and queued_storage's state column per field.

``QueuedFileAdminMixin`` adds the columns "image state" and "file state" (a badge, and a
progress bar while a file is transferring; one ledger query per page) and the action
"Transfer the selected files now".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.forms import ModelForm
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html

from gallery.models import Upload
from queued_storage.admin import QueuedFileAdminMixin

if TYPE_CHECKING:
    _UploadAdminBase = admin.ModelAdmin[Upload]
else:  # ModelAdmin is generic for type checkers only (django-stubs)
    _UploadAdminBase = admin.ModelAdmin


@admin.register(Upload)
class UploadAdmin(QueuedFileAdminMixin, _UploadAdminBase):
    list_display = ("thumbnail", "title", "file_name", "file_size", "served_from")
    list_display_links = ("thumbnail", "title")
    queued_file_fields = ("image", "file")
    readonly_fields = ("thumbnail", "file_size", "served_from", "link")
    search_fields = ("title", "image", "file")

    def get_fields(self, request: HttpRequest, obj: Upload | None = None) -> Any:
        if obj is None:  # the add form: nothing to show about a file not saved yet
            return ("title", "image", "file")
        return ("title", "thumbnail", "image", "file", "file_size", "served_from", "link")

    @admin.display(description="")
    def thumbnail(self, obj: Upload) -> str:
        if not obj.image:
            return "-"
        return format_html(
            '<img src="{}" alt="" style="width:64px;height:48px;object-fit:cover">',
            obj.thumbnail_url,
        )

    @admin.display(description="file")
    def file_name(self, obj: Upload) -> str:
        stored = obj.stored
        return stored.name or "-" if stored is not None else "-"

    @admin.display(description="size")
    def file_size(self, obj: Upload) -> str:
        return "-" if obj.size is None else filesizeformat(obj.size)

    @admin.display(description="served from")
    def served_from(self, obj: Upload) -> str:
        return obj.served_from

    @admin.display(description="URL")
    def link(self, obj: Upload) -> str:
        stored = obj.stored
        if stored is None:
            return "-"
        url = stored.url
        return format_html('<a href="{}">{}</a>', url, url.split("?", 1)[0])

    def save_model(
        self, request: HttpRequest, obj: Upload, form: ModelForm[Upload], change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        if {"image", "file"} & set(form.changed_data):
            messages.info(
                request,
                f"{obj.title}: saved on the local disk and served from there; a Celery worker "
                "transfers it to S3 once this request is committed. Refresh the list to watch "
                "its state change, or upload on the site's upload page to watch it live.",
            )
