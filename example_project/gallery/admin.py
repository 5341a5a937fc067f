"""Upload a file here and refresh the list to watch it move from the staging disk to S3."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html

from gallery.models import Upload

if TYPE_CHECKING:
    _UploadAdminBase = admin.ModelAdmin[Upload]
else:  # ModelAdmin is generic for type checkers only (django-stubs)
    _UploadAdminBase = admin.ModelAdmin


@admin.register(Upload)
class UploadAdmin(_UploadAdminBase):
    list_display = ("title", "file_name", "state", "file_size", "served_from")
    readonly_fields = ("state", "file_size", "served_from", "link")
    search_fields = ("title", "file")
    actions = ("queue_transfer",)

    def get_fields(self, request: HttpRequest, obj: Upload | None = None) -> Any:
        if obj is None:  # the add form: nothing to show about a file not saved yet
            return ("title", "file")
        return ("title", "file", "state", "file_size", "served_from", "link")

    @admin.display(description="file")
    def file_name(self, obj: Upload) -> str:
        return obj.file.name or "-"

    @admin.display(description="transfer state")
    def state(self, obj: Upload) -> str:
        return obj.transfer_state

    @admin.display(description="size")
    def file_size(self, obj: Upload) -> str:
        return "-" if obj.size is None else filesizeformat(obj.size)

    @admin.display(description="served from")
    def served_from(self, obj: Upload) -> str:
        return obj.served_from

    @admin.display(description="URL")
    def link(self, obj: Upload) -> str:
        if not obj.file:
            return "-"
        url = obj.file.url
        return format_html('<a href="{}">{}</a>', url, url.split("?", 1)[0])

    def save_model(
        self, request: HttpRequest, obj: Upload, form: ModelForm[Upload], change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        if "file" in form.changed_data:
            messages.info(
                request,
                f"The file {obj.file.name} is saved on the local disk and served from there; "
                "a Celery worker transfers it to S3 once this request is committed. Refresh "
                "the list to watch its state change.",
            )

    @admin.action(description="Queue the transfer of the selected files again")
    def queue_transfer(self, request: HttpRequest, queryset: QuerySet[Upload]) -> None:
        queued = 0
        for upload in queryset:
            if upload.file and upload.transfer_state != "remote":
                upload.file.transfer()
                queued += 1
        self.message_user(request, f"Queued {queued} transfer(s).")
