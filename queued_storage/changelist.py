"""The ledger's admin list at a size of millions: filters, counts and the date hierarchy that
read the kept tally (:mod:`queued_storage.tally`) instead of the table.

* :class:`StateFilter`, :class:`AliasFilter`, :class:`HostFilter`: the list filters, whose
  choices come from ``State`` and from the tally's groups that hold files (no ``DISTINCT``
  over the ledger); the URLs stay Django's (``?state__exact=``, ``?alias=``, ``?host=``);
* :class:`LedgerPaginator`: the count of a list filtered by nothing but exact states,
  aliases and hosts is the tally's sum, exact; any other list (a search, a date) is counted
  up to :data:`COUNT_CAP` rows and one more, and said to be "more than" that;
* :class:`LedgerChangeList`: no date hierarchy when the ledger holds more than
  :data:`DATE_HIERARCHY_MAX_FILES` files (its drill-down reads every row's date), and each
  row's link made from one URL reversed per page.

On databases that keep no tally (neither PostgreSQL nor SQLite) the choices are read with
``DISTINCT`` and every list is counted up to the cap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.db.models.expressions import Col
from django.db.models.lookups import Exact
from django.db.models.sql.where import AND
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property

from queued_storage import tally
from queued_storage.models import State, StoredFile, Tally, TallyGroup

__all__ = [
    "COUNT_CAP",
    "DATE_HIERARCHY_MAX_FILES",
    "AliasFilter",
    "HostFilter",
    "LedgerChangeList",
    "LedgerPaginator",
    "StateFilter",
    "exact_filters",
    "ledger_groups",
]

#: A list that the tally cannot count is counted up to this many rows (and one more).
COUNT_CAP = 10_000
#: Above this many files in the ledger, the list has no date hierarchy.
DATE_HIERARCHY_MAX_FILES = 100_000
#: The fields whose exact values the tally counts by.
_COUNTED = ("alias", "host", "state")
#: The request's attribute that keeps the tally's groups for the rest of the request.
_GROUPS = "_queued_storage_tally_groups"


def ledger_groups(request: HttpRequest | None = None) -> list[TallyGroup] | None:
    """The tally's groups (``None`` where the database keeps no tally), read once per
    *request* for its filters, its count and its date hierarchy."""
    if not Tally.kept():
        return None
    if request is None:
        return tally.read()
    found: list[TallyGroup] | None = getattr(request, _GROUPS, None)
    if found is None:
        found = tally.read()
        setattr(request, _GROUPS, found)
    return found


def exact_filters(rows: QuerySet[Any]) -> dict[str, str] | None:
    """``{field: value}`` when *rows*' only conditions are exact values of the ledger's
    alias, host and state (ANDed), else ``None`` (a search, a date, anything else)."""
    query = rows.query
    where = query.where
    if rows.model is not StoredFile or query.combinator or query.distinct or query.is_sliced:
        return None
    if where.negated or where.connector != AND:
        return None
    found: dict[str, str] = {}
    for child in where.children:
        if not isinstance(child, Exact) or not isinstance(child.lhs, Col):
            return None
        field = child.lhs.target
        if field.model is not StoredFile or field.name not in _COUNTED:
            return None
        if not isinstance(child.rhs, str) or found.get(field.name, child.rhs) != child.rhs:
            return None
        found[field.name] = child.rhs
    return found


def tally_count(rows: QuerySet[Any], groups: list[TallyGroup] | None) -> int | None:
    """The number of *rows* from the tally's *groups*, when their conditions allow it."""
    wanted = exact_filters(rows) if groups is not None else None
    if wanted is None or groups is None:
        return None
    return sum(
        group.files
        for group in groups
        if all(getattr(group, name) == value for name, value in wanted.items())
    )


if TYPE_CHECKING:
    _PaginatorBase = Paginator[Any]
else:  # Paginator is generic for type checkers only (django-stubs)
    _PaginatorBase = Paginator


class LedgerPaginator(_PaginatorBase):
    """Counts from the tally (exact) when it can, else up to :attr:`cap` rows and one more:
    :attr:`estimated` is then true and the page says "more than" :attr:`cap`."""

    cap = COUNT_CAP

    def __init__(
        self,
        object_list: QuerySet[Any],
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
        *,
        groups: list[TallyGroup] | None = None,
    ) -> None:
        super().__init__(object_list, per_page, orphans, allow_empty_first_page)
        self.rows = object_list
        self.groups = groups
        #: The count is a lower bound: more than :attr:`cap` rows match.
        self.estimated = False

    @cached_property
    def count(self) -> int:
        known = tally_count(self.rows, self.groups)
        if known is not None:
            return known
        counted = int(self.rows[: self.cap + 1].count())
        self.estimated = counted > self.cap
        return counted

    @property
    def cap_label(self) -> str:
        return f"{self.cap:,}"

    @property
    def count_label(self) -> str:
        """What the page says of the count: ``"more than 10,000"`` when it stopped at the cap."""
        return f"more than {self.cap_label}" if self.estimated else f"{self.count:,}"


#: Stands for a row's primary key in the change URL reversed once per page.
_PK = "0000pk0000"


class LedgerChangeList(ChangeList):
    """Django's change list without the date hierarchy above
    :data:`DATE_HIERARCHY_MAX_FILES` files (the tally's total), and each row's change link
    made from one reversed URL (Django reverses it for every row: about a fifth of the time a
    page takes to draw)."""

    def __init__(
        self,
        request: HttpRequest,
        model: Any,
        list_display: Any,
        list_display_links: Any,
        list_filter: Any,
        date_hierarchy: str | None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        groups = ledger_groups(request)
        total = sum(group.files for group in groups) if groups is not None else None
        #: The ledger's files when the tally knows them (``None`` elsewhere).
        self.ledger_files = total
        big = total is None or total > DATE_HIERARCHY_MAX_FILES
        self.date_hierarchy_off = bool(date_hierarchy) and big
        hierarchy = None if self.date_hierarchy_off else date_hierarchy
        super().__init__(
            request,
            model,
            list_display,
            list_display_links,
            list_filter,
            hierarchy,
            *args,
            **kwargs,
        )

    @cached_property
    def _change_url(self) -> str:
        opts = self.opts
        return reverse(
            f"admin:{opts.app_label}_{opts.model_name}_change",
            args=(_PK,),
            current_app=self.model_admin.admin_site.name,
        )

    def url_for_result(self, result: Any) -> str:
        """Django's URL of *result*'s change page (the same string ``reverse`` makes: an
        integer key needs no quoting)."""
        pk = getattr(result, self.pk_attname)
        if not isinstance(pk, int):
            return str(super().url_for_result(result))
        return self._change_url.replace(_PK, str(pk), 1)


class _ExactFilter(admin.SimpleListFilter):
    """A filter on one field's exact value; ``""`` is a value too (rows without a host)."""

    field = ""
    empty_label = ""

    def values(self, request: HttpRequest) -> list[str]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value or self.empty_label) for value in self.values(request)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        if value is None:
            return queryset
        found: QuerySet[Any] = queryset.filter(**{self.field: value})
        return found


class StateFilter(_ExactFilter):
    """The states (``State``, ``uploading`` included), whatever the ledger holds: no query."""

    title = "state"
    parameter_name = "state__exact"
    field = "state"

    def values(self, request: HttpRequest) -> list[str]:
        return [str(value) for value in State.values]


class _TallyFilter(_ExactFilter):
    """The values of :attr:`field` that the tally's groups with files hold, sorted."""

    def values(self, request: HttpRequest) -> list[str]:
        groups = ledger_groups(request)
        if groups is None:  # no tally on this database: ask the table
            rows = StoredFile.all_rows().order_by(self.field).values_list(self.field, flat=True)
            return [str(value) for value in rows.distinct()]
        return sorted({getattr(group, self.field) for group in groups if group.files > 0})


class AliasFilter(_TallyFilter):
    title = "alias"
    parameter_name = "alias"
    field = "alias"


class HostFilter(_TallyFilter):
    title = "host"
    parameter_name = "host"
    field = "host"
    empty_label = "(no host)"
