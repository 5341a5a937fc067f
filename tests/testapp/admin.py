"""The test project's admin: ``Document`` with the queued state column and transfer action."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin

from queued_storage.admin import QueuedFileAdminMixin
from tests.testapp.models import Document

if TYPE_CHECKING:
    _DocumentAdminBase = admin.ModelAdmin[Document]
else:
    _DocumentAdminBase = admin.ModelAdmin


@admin.register(Document)
class DocumentAdmin(QueuedFileAdminMixin, _DocumentAdminBase):
    list_display = ("title", "file")
    queued_file_fields = ["file"]
