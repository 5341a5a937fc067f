"""The ledger in the Django admin, and a state column for the admins of the user's own models.

:class:`StoredFileAdmin` (registered when ``django.contrib.admin`` discovers this module) shows
the ledger read-only: nobody edits a state by hand, every change goes through the ledger's
transitions, from these actions:

* **transfer now**: pending or failed files get a fresh budget and a transfer message, sent
  through :func:`queued_storage.dispatch.dispatch` as a save sends it (``[alias, name]``);
* **retry failed**: :meth:`~queued_storage.ledger.Ledger.retry_failed` for failed files whose
  local copy is there, then a transfer message;
* **verify the remote copy**: :func:`queued_storage.verify.verify` (a HEAD per file);
* **delete the local copy**: for ``remote`` files whose remote copy verifies right then,
  :meth:`~queued_storage.ledger.Ledger.drop_local` with the local storage's delete, as the
  worker does after a transfer;
* **abort direct uploads**: :func:`queued_storage.direct.abort` for ``uploading`` files,
  whoever started them.

On "select all" of more than :attr:`StoredFileAdmin.action_batch` files an action is queued
for the workers in batches (:mod:`queued_storage.batches`). Filter choices, counts and the
date hierarchy read the ledger's kept tally (:mod:`queued_storage.changelist`); the search
matches names by prefix, through an index.

The actions need the ``change`` permission of the ledger model (the change form itself stays
read-only). Pages show the rows' own fields only: no storage, no option, no URL (a signed URL
would carry the access key id).

:class:`TusUploadAdmin` shows the resumable (tus) uploads being received, read-only: status,
bytes received of the whole, owner, host, expiry.

For the user's models, :class:`QueuedFileAdminMixin` adds a state column (badge, progress bar)
per queued file field, costing one ledger query for the whole page, an action that transfers
the selected objects' files now, and the request for a form with direct upload fields
(:mod:`queued_storage.forms`); :func:`queued_state_column` is the column alone.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.db import connections
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.timesince import timesince
from django.utils.translation import gettext

from queued_storage.badges import progress_html, state_html
from queued_storage.batches import ACTIONS, BATCH, ELIGIBLE, queue_batches
from queued_storage.changelist import (
    AliasFilter,
    HostFilter,
    LedgerChangeList,
    LedgerPaginator,
    StateFilter,
    ledger_groups,
)
from queued_storage.forms import with_request
from queued_storage.models import State, StoredFile, TusUpload
from queued_storage.operations import counted, transfer_rows
from queued_storage.storage import QueuedStorage

__all__ = [
    "QueuedFileAdminMixin",
    "StoredFileAdmin",
    "TusUploadAdmin",
    "queued_state_column",
    "state_html",
]

if TYPE_CHECKING:
    _ModelAdminBase = admin.ModelAdmin[Any]
    _MixinBase = admin.ModelAdmin[Any]
else:  # ModelAdmin is generic for type checkers only (django-stubs)
    _ModelAdminBase = admin.ModelAdmin
    _MixinBase = object

#: After every name that begins with a text, in code point order: the search's upper bound.
_LAST_CHARACTER = "\U0010ffff"
#: The list page shows this much of a row's last error (the detail page shows all of it).
ERROR_PREVIEW = 80


def _served_from(row: StoredFile) -> str:
    if row.state == State.REMOTE:
        return "remote"
    if row.state == State.UPLOADING:
        return "nowhere yet (a direct upload to the remote)"
    if row.state == State.REJECTED:
        return "nowhere (rejected: never served)"
    return "local" if row.local_exists else "nowhere (local copy gone)"


# -- the ledger ----------------------------------------------------------------------------------
_MAIN_FIELDS = (
    "name",
    "storage",
    "state_badge",
    "progress",
    "served_from",
    "size_human",
    "local_exists",
    "host",
    "owner",
)
_TRANSFER_FIELDS = (
    "attempts",
    "last_error_full",
    "checksum",
    "checksum_algorithm",
    "retrying_since",
    "dispatch_refused",
    "lease_owner",
    "lease_expires",
    "upload_id",
    "part_size",
    "parts_done",
)
_TIME_FIELDS = ("created", "updated", "processed", "transferred")
#: What the storage's processors kept (shown on the detail page only).
_PROCESSING_FIELDS = ("metadata",)


class _ReadOnlyLedgerAdmin(_ModelAdminBase):
    """The package's own tables, read from the ledger's database; nobody adds, edits or deletes
    a row by hand: rows change through ``ledger.py`` only."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        rows: QuerySet[Any] = super().get_queryset(request).using(StoredFile.db())
        return rows

    def action_checkbox(self, obj: Model) -> SafeString:
        """Django's checkbox of a row, the same HTML written out: rendered through a form
        widget's templates it costs about half a millisecond a row, a third of the time a page
        of 100 rows takes to draw."""
        label = format_html(gettext("Select this object for an action - {}"), str(obj))
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            str(obj.pk),
            label,
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(StoredFile)
class StoredFileAdmin(_ReadOnlyLedgerAdmin):
    """The ledger, read-only, with the operator's actions (see the module docstring)."""

    list_display = (
        "name",
        "storage",
        "state_badge",
        "progress",
        "size_human",
        "attempts",
        "error_preview",
        "host",
        "age",
        "served_from",
    )
    # A ledger of millions (docs/operations.md, "The admin"): filter choices and counts from
    # the kept tally, the search by name prefix through its index, the date hierarchy off on a
    # big ledger, actions on "select all" queued in batches.
    list_filter = (StateFilter, AliasFilter, HostFilter)
    search_fields = ("name",)
    search_help_text = (
        "Names that begin with the text, letter case as typed (e.g. uploads/2024/); "
        "no search inside names."
    )
    date_hierarchy = "created"
    ordering = ("-pk",)
    paginator = LedgerPaginator
    #: Drawing a row costs about half a millisecond of Python whatever the ledger's size:
    #: 50 rows a page (Django's default is 100) keep a page of the ledger within 100 ms.
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    #: Files per batch when an action on "select all" is queued for the workers; a selection
    #: of at most this many files that the action can act on runs in the request.
    action_batch = BATCH
    actions = tuple(ACTIONS)
    fieldsets = (
        (None, {"fields": _MAIN_FIELDS}),
        ("Transfer", {"fields": _TRANSFER_FIELDS}),
        ("Processing", {"fields": _PROCESSING_FIELDS}),
        ("Times", {"fields": _TIME_FIELDS}),
    )
    readonly_fields = (*_MAIN_FIELDS, *_TRANSFER_FIELDS, *_PROCESSING_FIELDS, *_TIME_FIELDS)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """The actions: the ledger model's ``change`` permission (the form stays read-only)."""
        codename = get_permission_codename("change", self.opts)
        return bool(request.user.has_perm(f"{self.opts.app_label}.{codename}"))

    # -- columns --------------------------------------------------------------------------------
    @admin.display(description="storage", ordering="alias")
    def storage(self, row: StoredFile) -> str:
        return row.alias

    @admin.display(description="state", ordering="state")
    def state_badge(self, row: StoredFile) -> SafeString:
        return state_html(row.state)

    @admin.display(description="progress")
    def progress(self, row: StoredFile) -> SafeString | str:
        if row.state != State.TRANSFERRING:
            return ""
        return progress_html(row.bytes_done, row.size or 0)

    @admin.display(description="size", ordering="size")
    def size_human(self, row: StoredFile) -> str:
        return "" if row.size is None else str(filesizeformat(row.size))

    @admin.display(description="last error")
    def error_preview(self, row: StoredFile) -> str:
        return Truncator(row.last_error).chars(ERROR_PREVIEW)

    @admin.display(description="last error")
    def last_error_full(self, row: StoredFile) -> SafeString | str:
        if not row.last_error:
            return ""
        return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', row.last_error)

    @admin.display(description="age", ordering="created")
    def age(self, row: StoredFile) -> str:
        return timesince(row.created, depth=1)

    @admin.display(description="served from")
    def served_from(self, row: StoredFile) -> str:
        return _served_from(row)

    @admin.display(description="parts done")
    def parts_done(self, row: StoredFile) -> int:
        return len(row.parts or [])

    # -- a ledger of millions --------------------------------------------------------------
    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LedgerChangeList

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> LedgerPaginator:
        return LedgerPaginator(
            queryset, per_page, orphans, allow_empty_first_page, groups=ledger_groups(request)
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Names that begin with *search_term*, letter case as typed, through the index
        ``queued_storage_name`` (a search inside names would read them all): ``LIKE 'term%'``
        on PostgreSQL; on SQLite, whose ``LIKE`` ignores case and no index, the range of names
        from the term up to the term followed by the last character."""
        if not search_term:
            return queryset, False
        if connections[queryset.db].vendor == "sqlite":
            found = queryset.filter(name__gte=search_term, name__lt=search_term + _LAST_CHARACTER)
        else:
            found = queryset.filter(name__startswith=search_term)
        return found, False

    # -- actions --------------------------------------------------------------------------------
    def _act(self, request: HttpRequest, queryset: QuerySet[StoredFile], action: str) -> None:
        """Run *action* on the selection in this request; on "select all" of more than
        :attr:`action_batch` files it can act on, queue it in batches for the workers."""
        if request.POST.get("select_across") == "1":
            eligible = queryset.filter(ELIGIBLE[action][0])
            if eligible[: self.action_batch + 1].count() > self.action_batch:
                level, text = queue_batches(action, queryset, self.action_batch).message()
                self.message_user(request, text, level)
                return
        level, text = ACTIONS[action](queryset)
        self.message_user(request, text, level)

    @admin.action(description="Transfer now (pending or failed files)", permissions=["operate"])
    def transfer_now(self, request: HttpRequest, queryset: QuerySet[StoredFile]) -> None:
        self._act(request, queryset, "transfer_now")

    @admin.action(description="Retry failed files (new retry budget)", permissions=["operate"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[StoredFile]) -> None:
        self._act(request, queryset, "retry_failed")

    @admin.action(description="Verify the remote copy", permissions=["operate"])
    def verify_remote(self, request: HttpRequest, queryset: QuerySet[StoredFile]) -> None:
        self._act(request, queryset, "verify_remote")

    @admin.action(
        description="Delete the local copy (remote files whose remote copy verifies)",
        permissions=["operate"],
    )
    def delete_local_copy(self, request: HttpRequest, queryset: QuerySet[StoredFile]) -> None:
        self._act(request, queryset, "delete_local_copy")

    @admin.action(description="Abort direct uploads (uploading files)", permissions=["operate"])
    def abort_direct(self, request: HttpRequest, queryset: QuerySet[StoredFile]) -> None:
        self._act(request, queryset, "abort_direct")

    @admin.action(
        description="Release rejected files (a false positive: transfer, not scanned again)",
        permissions=["operate"],
    )
    def release_rejected(self, request: HttpRequest, queryset: QuerySet[StoredFile]) -> None:
        self._act(request, queryset, "release_rejected")


# -- the user's own models -----------------------------------------------------------------------
#: The attribute of a listed object that holds its page's ledger rows, by ``(alias, name)``.
_ROWS = "_queued_storage_rows"


_TUS_FIELDS = (
    "id",
    "alias",
    "name",
    "status",
    "received",
    "length_human",
    "content_type",
    "owner",
    "host",
    "created",
    "expires",
    "completed",
    "stored_name",
)


@admin.register(TusUpload)
class TusUploadAdmin(_ReadOnlyLedgerAdmin):
    """Resumable (tus) uploads, read-only: what is being received, by whom, how far, until
    when. An unfinished upload ends with its last chunk, its client's ``DELETE`` or
    ``manage.py queued_storage cleanup`` after it expired; nobody edits one by hand."""

    list_display = (
        "name",
        "status",
        "received",
        "length_human",
        "owner",
        "host",
        "age",
        "expires",
    )
    list_filter = (("completed", admin.EmptyFieldListFilter), "alias", "host")
    search_fields = ("name", "owner", "stored_name")
    date_hierarchy = "created"
    ordering = ("-created",)
    fields = _TUS_FIELDS
    readonly_fields = _TUS_FIELDS

    @admin.display(description="status")
    def status(self, row: TusUpload) -> str:
        if row.completed is not None:
            return "finished"
        if row.expires <= timezone.now():
            return "expired"
        return "receiving"

    @admin.display(description="received", ordering="offset")
    def received(self, row: TusUpload) -> SafeString | str:
        if row.length is None:  # Upload-Defer-Length: the client has not said yet
            return str(filesizeformat(row.offset))
        return progress_html(row.offset, row.length)

    @admin.display(description="length", ordering="length")
    def length_human(self, row: TusUpload) -> str:
        return "not known yet" if row.length is None else str(filesizeformat(row.length))

    @admin.display(description="age", ordering="created")
    def age(self, row: TusUpload) -> str:
        return timesince(row.created, depth=1)


def _queued_file(obj: Model, field: str) -> tuple[QueuedStorage, str] | None:
    """The queued storage and name of *obj*'s file in *field*, if it has one."""
    file = getattr(obj, field, None)
    if not file or not getattr(file, "name", None):
        return None
    storage = getattr(file, "storage", None)
    if not isinstance(storage, QueuedStorage):
        return None
    return storage, str(file.name)


def ledger_rows(
    objects: Iterable[Model], fields: Sequence[str]
) -> dict[tuple[str, str], StoredFile]:
    """The ledger rows of the files in *fields* of *objects*, by ``(alias, name)``: one query
    whatever the number of objects (none when they hold no queued file)."""
    wanted: dict[str, set[str]] = {}
    for obj in objects:
        for field in fields:
            found = _queued_file(obj, field)
            if found is not None:
                wanted.setdefault(found[0].alias, set()).add(found[1])
    if not wanted:
        return {}
    query = Q()
    for alias, names in wanted.items():
        query |= Q(alias=alias, name__in=sorted(names))
    rows = (
        StoredFile.all_rows()
        .filter(query)
        .only("alias", "name", "state", "size", "bytes_done", "local_exists", "host", "updated")
    )
    return {(row.alias, row.name): row for row in rows}


def attach_ledger_rows(objects: Iterable[Model], fields: Sequence[str]) -> None:
    """Give each of *objects* the ledger rows of the page (see :func:`ledger_rows`), for the
    state columns to read without a query per row."""
    listed = list(objects)  # a page's queryset: evaluated once, its cache serves the template
    rows = ledger_rows(listed, fields)
    for obj in listed:
        setattr(obj, _ROWS, rows)


class QueuedStateColumn:
    """A ``list_display`` column: the state badge (and progress) of one queued file field.

    Reads the rows :func:`attach_ledger_rows` attached to the object (no query); on an object
    without them, the state comes from the storage's read path (cache, then ledger).
    """

    def __init__(self, field: str, description: str | None = None) -> None:
        self.field = field
        self.__name__ = f"{field}_queued_state"
        self.short_description = description or f"{field.replace('_', ' ')} state"

    def __repr__(self) -> str:
        return f"<QueuedStateColumn {self.field!r}>"

    def __call__(self, obj: Model) -> SafeString | str:
        found = _queued_file(obj, self.field)
        if found is None:
            return ""
        storage, name = found
        rows: dict[tuple[str, str], StoredFile] | None = getattr(obj, _ROWS, None)
        if rows is not None:
            row = rows.get((storage.alias, name))
            if row is None:
                return state_html(None)
            return state_html(row.state, row.bytes_done, row.size or 0)
        progress = storage.get_progress(name)
        if progress is None:
            state = storage.get_state(name)
            return state_html(None if state is None else state.state)
        return state_html(progress.state, progress.done, progress.total)


@functools.cache
def queued_state_column(field: str, description: str | None = None) -> QueuedStateColumn:
    """The state column of the queued file field *field*, for any admin's ``list_display``.

    Alone it reads each row's state through the storage (the cache, the ledger on a miss);
    with :class:`QueuedFileAdminMixin` the whole page costs one ledger query.
    """
    return QueuedStateColumn(field, description)


class QueuedFileAdminMixin(_MixinBase):
    """For a ``ModelAdmin`` of a model with queued file fields: a state column per field in
    :attr:`queued_file_fields` (badge, and a progress bar while transferring), read with one
    ledger query for the whole page, and the action "Transfer the selected files now".

    Put it before ``admin.ModelAdmin`` in the bases::

        @admin.register(Document)
        class DocumentAdmin(QueuedFileAdminMixin, admin.ModelAdmin):
            list_display = ("title", "file")
            queued_file_fields = ["file"]
    """

    #: Names of the model's file fields whose storage is a ``QueuedStorage``.
    queued_file_fields: Sequence[str] = ("file",)

    def get_list_display(self, request: HttpRequest) -> Any:
        shown = list(super().get_list_display(request))
        columns = [queued_state_column(field) for field in self.queued_file_fields]
        return [*shown, *(column for column in columns if column not in shown)]

    def get_form(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        """The form; one with direct upload fields (``DirectUploadFormMixin``) gets the request."""
        return with_request(super().get_form(request, *args, **kwargs), request)

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        changelist = super().get_changelist_instance(request)
        attach_ledger_rows(changelist.result_list, self.queued_file_fields)
        return changelist

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        """The model admin's actions and, on the change list, ``transfer_queued_files``.

        *action_location* is Django 6.1's (``None``: the change list, as before 6.1); the
        change form gets no actions, as Django 6.1 gives an override without that argument.
        """
        if action_location is not None and getattr(action_location, "value", None) != (
            "CHANGE_LIST"
        ):
            return {}
        where: dict[str, Any] = (
            {} if action_location is None else {"action_location": action_location}
        )
        actions: dict[str, Any] = dict(super().get_actions(request, **where))
        if self.actions is None or IS_POPUP_VAR in request.GET:
            return actions  # actions are off on this page
        if self.has_change_permission(request):
            name = "transfer_queued_files"
            function = QueuedFileAdminMixin.transfer_queued_files
            description = getattr(function, "short_description", name)
            actions.setdefault(name, (function, name, description))
        return actions

    @admin.action(description="Transfer the selected files now")
    def transfer_queued_files(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        objects = list(queryset)
        rows = ledger_rows(objects, self.queued_file_fields)
        known: list[StoredFile] = []
        recorded = missing = 0
        for obj in objects:
            for field in self.queued_file_fields:
                found = _queued_file(obj, field)
                if found is None:
                    continue
                storage, name = found
                row = rows.get((storage.alias, name))
                if row is not None:
                    known.append(row)
                elif storage.local.exists(name):
                    storage.transfer(name)  # records the local file, then queues it
                    recorded += 1
                else:
                    missing += 1
        done = transfer_rows(known)
        queued, message = done.queued, done.message()
        extra = counted(
            [
                (recorded, "{n} local file(s) unknown to the ledger recorded and queued"),
                (missing, "{n} skipped (no ledger row and no local copy)"),
            ]
        )
        text = "; ".join(part for part in (message, extra) if part) or "nothing to transfer"
        level = messages.SUCCESS if queued or recorded else messages.INFO
        self.message_user(request, f"Transfer now: {text}.", level)
