"""The admin: the ledger (read-only, its actions), the state column of the user's own models,
and an upload through the admin's own file widget that a real worker sends to moto S3.

Transfer messages of the action tests go to the "parked" queue, which no worker consumes: the
tests read them from Redis. The end-to-end tests use the session's real worker.
"""

from __future__ import annotations

import base64
import datetime
import inspect
import json
import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.admin import options as admin_options
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.text import Truncator

from queued_storage import changelist, direct, tally
from queued_storage.admin import ERROR_PREVIEW, StoredFileAdmin, queued_state_column
from queued_storage.batches import run_batch
from queued_storage.conf import settings as qs_settings
from queued_storage.ledger import Ledger, tus_complete, tus_create, tus_named
from queued_storage.models import State, StoredFile, TusUpload
from queued_storage.storage import QueuedStorage
from queued_storage.worker import Outcome, run_transfer
from tests.harness.suite import (
    broker_messages,
    need,
    open_uploads,
    purge_queues,
    s3_bytes,
    wait_for,
)
from tests.testapp.models import Document

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LEDGER = "/admin/queued_storage/storedfile/"
TUS_UPLOADS = "/admin/queued_storage/tusupload/"
DOCUMENTS = "/admin/testapp/document/"
#: What no admin page may show: the remote's credentials and options.
SECRETS = (
    settings.S3_SECRET,
    settings.S3_OPTIONS["access_key"],
    settings.S3_OPTIONS["endpoint_url"],
)
LONG_ERROR = "The remote storage refused the upload of this file " + "because of reasons " * 20


def queued(alias: str) -> QueuedStorage:
    found = storages[alias]
    assert isinstance(found, QueuedStorage)
    return found


def row(alias: str, name: str) -> StoredFile:
    found = StoredFile.get_row(alias, name)
    assert found is not None
    return found


def staged(alias: str, name: str, data: bytes = b"staged bytes") -> str:
    """A local file and its ``pending`` row, as a save leaves them, but no message sent."""
    storage = queued(alias)
    stored = storage.local.save(name, ContentFile(data))
    assert storage.ledger.saved(stored, qs_settings.HOST, len(data))
    return stored


def failed(alias: str, name: str, error: str = LONG_ERROR, *, local: bool = True) -> str:
    stored = staged(alias, name)
    ledger = queued(alias).ledger
    assert ledger.lease(stored, "worker-1", 60).acquired
    assert ledger.fail(stored, "worker-1", error)
    if not local:
        queued(alias).local.delete(stored)
    return stored


def transferring(alias: str, name: str, done: int, total: int) -> str:
    stored = staged(alias, name, b"t" * total)
    ledger = queued(alias).ledger
    assert ledger.lease(stored, "worker-1", 60).acquired
    assert ledger.renew(stored, "worker-1", 60, done, total)
    return stored


def transferred(name: str, data: bytes = b"on s3 now") -> str:
    """Saved through the ``delayed`` storage and sent by the real engine, in this process."""
    stored = queued("queued_delayed").save(name, ContentFile(data))
    assert run_transfer("queued_delayed", stored) is Outcome.TRANSFERRED
    return stored


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def act(client: Client, url: str, action: str, rows: list[Any]) -> list[str]:
    """Run an admin action on *rows* (objects with a ``pk``); the messages it left."""
    response = client.post(
        url,
        {"action": action, "_selected_action": [str(r.pk) for r in rows], "index": "0"},
        follow=True,
    )
    assert response.status_code == 200
    return messages_of(response)


@pytest.fixture
def parked(clean: Any) -> Any:
    """The "parked" queue, empty before and after: ``parked()`` is its messages' ``args``."""
    need("redis")
    purge_queues("parked")

    def messages() -> list[list[Any]]:
        found = broker_messages("parked")
        return [json.loads(base64.b64decode(m["body"]))[0] for m in found]

    yield messages
    purge_queues("parked")


# --- the ledger: what it shows -------------------------------------------------------------------
def test_ledger_pages_show_each_state_and_no_credential_or_storage_option(
    admin_client: Client, clean: Any
) -> None:
    pending = staged("queued_parked", "pages/pending.txt")
    moving = transferring("queued_parked", "pages/moving.bin", 250, 1000)
    broken = failed("queued_parked", "pages/broken.txt")
    Ledger("queued_parked").seed_remote([("pages/remote.txt", 2048, "0123abcd")])

    listing = admin_client.get(LEDGER)

    assert listing.status_code == 200
    html = listing.content.decode()
    for state in ("pending", "transferring", "failed", "remote"):
        assert f'<span class="qs-state qs-state-{state}"' in html
    assert '<progress class="qs-progress" value="250" max="1000">25%</progress> 25%' in html
    assert Truncator(LONG_ERROR).chars(ERROR_PREVIEW) in html
    assert LONG_ERROR not in html  # the list shows the beginning only
    assert "2.0\xa0KB" in html  # the size, for people
    assert "Add stored file" not in html
    for secret in SECRETS:
        assert secret not in html
    for name in (pending, moving, broken, "pages/remote.txt"):
        detail = admin_client.get(f"{LEDGER}{row('queued_parked', name).pk}/change/")
        assert detail.status_code == 200
        page = detail.content.decode()
        assert name in page
        assert 'name="_save"' not in page  # read-only: nothing to submit
        for secret in SECRETS:
            assert secret not in page
    detail = admin_client.get(f"{LEDGER}{row('queued_parked', broken).pk}/change/").content
    assert LONG_ERROR in detail.decode()  # the detail page shows all of it


def test_ledger_rows_cannot_be_added_changed_or_deleted_by_hand(
    admin_client: Client, clean: Any
) -> None:
    name = staged("queued_parked", "by-hand.txt")
    pk = row("queued_parked", name).pk
    assert admin_client.get(f"{LEDGER}add/").status_code == 403
    assert admin_client.post(f"{LEDGER}{pk}/change/", {"state": "remote"}).status_code == 403
    assert admin_client.post(f"{LEDGER}{pk}/delete/", {"post": "yes"}).status_code == 403
    actions = admin_client.get(LEDGER).context["action_form"].fields["action"].choices
    assert [value for value, _ in actions] == [
        "",
        "transfer_now",
        "retry_failed",
        "verify_remote",
        "delete_local_copy",
        "abort_direct",
        "release_rejected",
    ]
    assert row("queued_parked", name).state == State.PENDING


def test_ledger_list_of_10000_rows_costs_a_bounded_number_of_queries(
    admin_client: Client, clean: Any
) -> None:
    def bulk(start: int, count: int) -> None:
        states = [State.PENDING, State.TRANSFERRING, State.REMOTE, State.FAILED]
        with transaction.atomic():  # one commit, not one per INSERT of the batch
            StoredFile.objects.bulk_create(
                StoredFile(
                    alias="queued_parked",
                    name=f"bulk/{i:05d}.bin",
                    state=states[i % 4],
                    size=1000 + i,
                    bytes_done=i % 1000,
                    host=f"web-{i % 3}",
                    local_exists=True,
                    last_error=LONG_ERROR if i % 4 == 3 else "",
                )
                for i in range(start, start + count)
            )

    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(url).status_code == 200
        return len(captured)

    urls = [LEDGER, f"{LEDGER}?state__exact=failed&q=bulk", f"{LEDGER}?host=web-1&p=2"]
    bulk(0, 10)
    queries(LEDGER)  # the first read of the tally after the inserts repairs or folds it, once
    few = [queries(url) for url in urls]
    bulk(10, 9_990)
    assert StoredFile.objects.count() == 10_000
    queries(LEDGER)
    many = [queries(url) for url in urls]
    assert many == few
    assert max(many) <= 12


def test_a_view_only_user_sees_the_ledger_but_no_action(
    client: Client, clean: Any, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_storedfile"))
    client.force_login(user)
    name = failed("queued_parked", "not-yours.txt")

    response = client.get(LEDGER)

    assert response.status_code == 200
    assert name in response.content.decode()
    assert response.context["action_form"] is None  # no action is offered
    refused = client.post(
        LEDGER,
        {"action": "retry_failed", "_selected_action": [str(row("queued_parked", name).pk)]},
    )
    assert refused.status_code in (200, 302)
    assert row("queued_parked", name).state == State.FAILED


# --- the ledger: actions -------------------------------------------------------------------------
def test_transfer_now_queues_pending_and_failed_files_through_the_dispatch(
    admin_client: Client, parked: Any
) -> None:
    waiting = staged("queued_parked", "now/waiting.txt")
    broken = failed("queued_parked", "now/broken.txt")
    moving = transferring("queued_parked", "now/moving.bin", 10, 100)
    rows = [row("queued_parked", n) for n in (waiting, broken, moving)]

    shown = act(admin_client, LEDGER, "transfer_now", rows)

    assert shown == [
        "Transfer now: queued the transfer of 2 file(s); 1 skipped (transferring or remote "
        "already)."
    ]
    assert sorted(parked()) == sorted([["queued_parked", waiting], ["queued_parked", broken]])
    again = row("queued_parked", broken)
    assert (again.state, again.attempts) == (State.PENDING, 0)  # a new budget
    assert row("queued_parked", moving).state == State.TRANSFERRING


def test_retry_failed_gives_a_new_budget_where_the_local_copy_is_there(
    admin_client: Client, parked: Any
) -> None:
    there = failed("queued_parked", "retry/there.txt")
    gone = failed("queued_parked", "retry/gone.txt", local=False)
    waiting = staged("queued_parked", "retry/waiting.txt")
    rows = [row("queued_parked", n) for n in (there, gone, waiting)]

    shown = act(admin_client, LEDGER, "retry_failed", rows)

    assert shown == [
        "Retry failed: 1 failed file(s) queued again with a new retry budget; 1 not retried: "
        "the local copy is gone (restore it first, or delete the file through its storage); "
        "1 skipped (not failed)."
    ]
    assert parked() == [["queued_parked", there]]
    assert (row("queued_parked", there).state, row("queued_parked", there).attempts) == (
        State.PENDING,
        0,
    )
    assert row("queued_parked", gone).state == State.FAILED


def test_verify_action_reports_lost_remote_copies_and_marks_them_failed(
    admin_client: Client, clean: Any
) -> None:
    kept = transferred("check/kept.txt")
    gone = transferred("check/gone.txt")
    clean.delete_object(Bucket=settings.BUCKET, Key=gone)
    rows = [row("queued_delayed", n) for n in (kept, gone)]

    response = admin_client.post(
        LEDGER,
        {"action": "verify_remote", "_selected_action": [str(r.pk) for r in rows]},
        follow=True,
    )

    [shown] = list(response.context["messages"])
    assert shown.level_tag == "error"
    assert str(shown) == (
        "Verify: 2 remote file(s) checked: 1 verified (0 by size only), 1 lost, 0 unchecked. "
        f"queued_delayed:{gone}: missing: is missing from the remote storage"
    )
    assert row("queued_delayed", gone).state == State.FAILED
    assert row("queued_delayed", kept).state == State.REMOTE


def test_delete_local_copy_only_where_the_remote_copy_verifies_right_then(
    admin_client: Client, clean: Any
) -> None:
    storage = queued("queued_delayed")
    safe = transferred("drop/safe.txt", b"safe on s3")
    unsafe = transferred("drop/unsafe.txt", b"gone from s3")
    clean.delete_object(Bucket=settings.BUCKET, Key=unsafe)
    waiting = storage.save("drop/waiting.txt", ContentFile(b"not sent yet"))
    rows = [row("queued_delayed", n) for n in (safe, unsafe, waiting)]

    shown = act(admin_client, LEDGER, "delete_local_copy", rows)

    assert shown == [
        "Delete the local copy: deleted the local copy of 1 file(s) whose remote copy "
        "verified; 1 kept: the remote copy did not verify; 1 skipped (not remote, or no local "
        f"copy here). queued_delayed:{unsafe}: missing: is missing from the remote storage"
    ]
    assert not Path(storage.local.path(safe)).exists()
    assert not row("queued_delayed", safe).local_exists
    assert not storage.get_state(safe).local_exists  # type: ignore[union-attr]
    with storage.open(safe) as fh:  # served from S3
        assert fh.read() == b"safe on s3"
    assert Path(storage.local.path(unsafe)).exists()  # its only copy now
    assert row("queued_delayed", unsafe).state == State.FAILED
    assert Path(storage.local.path(waiting)).exists()


# --- the ledger at a size of millions ------------------------------------------------------------
def bulk_rows(rows: list[tuple[str, str, str, str]]) -> None:
    """Ledger rows ``(alias, name, state, host)``, one INSERT (the triggers count them)."""
    with transaction.atomic():
        StoredFile.objects.bulk_create(
            StoredFile(alias=alias, name=name, state=state, host=host, size=10, local_exists=True)
            for alias, name, state, host in rows
        )
    tally.read()  # after the inserts (and the test database's flush): repaired, folded


def ledger_sql(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if "queued_storage_storedfile" in q["sql"]]


def test_filter_choices_are_the_states_and_the_tallys_aliases_and_hosts_with_no_distinct_scan(
    admin_client: Client, clean: Any
) -> None:
    bulk_rows(
        [
            ("queued_parked", "choices/a.txt", State.FAILED, "web-2"),
            ("queued_delayed", "choices/b.txt", State.REMOTE, ""),
            ("queued_parked", "choices/c.txt", State.PENDING, "web-1"),
        ]
    )

    with CaptureQueriesContext(connection) as captured:
        listing = admin_client.get(LEDGER)

    assert listing.status_code == 200
    specs = {spec.title: spec.lookup_choices for spec in listing.context["cl"].filter_specs}
    assert specs == {
        "state": [
            (s, s) for s in ("pending", "transferring", "remote", "failed", "uploading", "rejected")
        ],
        "alias": [("queued_delayed", "queued_delayed"), ("queued_parked", "queued_parked")],
        "host": [("", "(no host)"), ("web-1", "web-1"), ("web-2", "web-2")],
    }
    distinct = [sql for sql in ledger_sql(captured) if "DISTINCT" in sql.upper()]
    assert [sql for sql in distinct if '"alias"' in sql or '"host"' in sql] == []
    assert "COUNT(" not in " ".join(ledger_sql(captured)).upper()  # the tally counted
    chosen = admin_client.get(f"{LEDGER}?host=web-2&alias=queued_parked")
    assert [r.name for r in chosen.context["cl"].result_list] == ["choices/a.txt"]
    unhosted = admin_client.get(f"{LEDGER}?host=")
    assert [r.name for r in unhosted.context["cl"].result_list] == ["choices/b.txt"]


# --- direct uploads ------------------------------------------------------------------------------
def direct_upload(name: str, owner: str, size: int = 1000) -> str:
    """A direct upload started for real in ``default`` (its name reserved, its S3 multipart
    upload open), no part sent."""
    return direct.start(queued("default"), name, size, owner=owner).name


def test_direct_uploads_are_listed_filtered_and_counted_as_uploading(
    admin_client: Client, clean: Any
) -> None:
    name = direct_upload("direct/listed.bin", "7", size=3000)
    staged("queued_parked", "direct/staged.txt")

    listing = admin_client.get(f"{LEDGER}?state__exact=uploading")

    assert listing.status_code == 200
    found = listing.context["cl"]
    assert [r.name for r in found.result_list] == [name]
    assert found.result_count == 1  # from the tally
    html = listing.content.decode()
    assert '<span class="qs-state qs-state-uploading" style="' in html
    assert "nowhere yet (a direct upload to the remote)" in html
    detail = admin_client.get(f"{LEDGER}{row('default', name).pk}/change/").content.decode()
    assert '<div class="readonly">7</div>' in detail  # the owner


def test_abort_direct_uploads_aborts_the_selected_uploads_whoever_started_them(
    admin_client: Client, clean: Any
) -> None:
    mine = direct_upload("direct/a.bin", "7")
    theirs = direct_upload("direct/b.bin", "8")
    other = staged("queued_parked", "direct/c.txt")
    chosen = [row("default", mine), row("default", theirs), row("queued_parked", other)]

    assert act(admin_client, LEDGER, "abort_direct", chosen) == [
        "Abort direct uploads: aborted 2 direct upload(s) (their names are free again); 1 "
        "skipped (not uploading, or a storage this process does not know)."
    ]
    assert list(StoredFile.objects.values_list("name", flat=True)) == [other]
    assert open_uploads(clean) == []
    assert direct_upload("direct/a.bin", "9") == "direct/a.bin"  # the name is free again


def test_release_lets_a_rejected_file_through_not_to_be_scanned_again(
    admin_client: Client, parked: Any
) -> None:
    kept = staged("queued_parked", "scan/false-positive.pdf")
    gone = staged("queued_parked", "scan/deleted.pdf")
    other = staged("queued_parked", "scan/pending.pdf")
    StoredFile.rows("queued_parked", kept).update(state=State.REJECTED, last_error="FOUND x")
    StoredFile.rows("queued_parked", gone).update(state=State.REJECTED, local_exists=False)
    queued("queued_parked").local.delete(gone)
    chosen = [row("queued_parked", name) for name in (kept, gone, other)]

    assert act(admin_client, LEDGER, "release_rejected", chosen) == [
        "Release: 1 rejected file(s) released and queued, not to be scanned again; 1 not "
        "released: the local copy is gone (QUEUED_STORAGE_QUARANTINE is 'delete', or it was "
        "deleted by hand); 1 skipped (not rejected)."
    ]
    released = row("queued_parked", kept)
    assert (released.state, released.last_error) == (State.PENDING, "")
    assert released.processed is not None
    assert row("queued_parked", gone).state == State.REJECTED
    assert parked() == [["queued_parked", kept]]


def test_a_rows_checkbox_is_the_html_djangos_widget_draws(admin_client: Client, clean: Any) -> None:
    bulk_rows([("queued_parked", 'odd/<"name">&.txt', State.FAILED, "web-1")])
    row = StoredFile.all_rows().get(name='odd/<"name">&.txt')
    ours = admin.site._registry[StoredFile]
    assert ours.action_checkbox(row) == admin_options.ModelAdmin.action_checkbox(ours, row)
    listing = admin_client.get(LEDGER)
    assert str(ours.action_checkbox(row)) in listing.content.decode()


def test_a_page_of_the_ledger_holds_50_rows_each_linked_to_the_url_django_reverses(
    admin_client: Client, clean: Any
) -> None:
    bulk_rows([("queued_parked", f"page/{i:03d}.txt", State.REMOTE, "web-1") for i in range(60)])
    listing = admin_client.get(LEDGER)
    rows = listing.context["cl"].result_list
    assert [r.name for r in rows] == [f"page/{i:03d}.txt" for i in range(59, 9, -1)]
    page = listing.content.decode()
    for row in rows:
        url = reverse("admin:queued_storage_storedfile_change", args=(quote(row.pk),))
        assert listing.context["cl"].url_for_result(row) == url
        assert f'<a href="{url}">{row.name}</a>' in page
    second = admin_client.get(f"{LEDGER}?p=2").context["cl"].result_list
    assert [r.name for r in second] == [f"page/{i:03d}.txt" for i in range(9, -1, -1)]


def test_the_search_finds_names_that_begin_with_the_text_letter_case_as_typed(
    admin_client: Client, clean: Any
) -> None:
    bulk_rows(
        [
            ("queued_parked", "reports/2024.pdf", State.REMOTE, "web-1"),
            ("queued_parked", "Reports/2025.pdf", State.REMOTE, "web-1"),
            ("queued_parked", "old/reports/2023.pdf", State.REMOTE, "web-1"),
            ("queued_parked", "reports_100%.pdf", State.REMOTE, "web-1"),
        ]
    )

    with CaptureQueriesContext(connection) as captured:
        found = admin_client.get(f"{LEDGER}?q=reports/")

    assert sorted(r.name for r in found.context["cl"].result_list) == ["reports/2024.pdf"]
    assert [sql for sql in ledger_sql(captured) if "UPPER(" in sql.upper()] == []
    assert [sql for sql in ledger_sql(captured) if "%reports" in sql] == []  # no inside search
    assert "Names that begin with the text, letter case as typed" in found.content.decode()
    literal = admin_client.get(f"{LEDGER}?q=reports_1")  # "_" is a character, not a wildcard
    assert [r.name for r in literal.context["cl"].result_list] == ["reports_100%.pdf"]


def test_the_date_hierarchy_is_shown_up_to_a_number_of_files_and_off_above(
    admin_client: Client, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changelist, "DATE_HIERARCHY_MAX_FILES", 3)
    bulk_rows([("queued_parked", f"dates/{i}.txt", State.REMOTE, "web-1") for i in range(3)])
    small = admin_client.get(LEDGER)
    assert small.context["cl"].date_hierarchy == "created"
    assert 'class="toplinks"' in small.content.decode()

    bulk_rows([("queued_parked", "dates/3.txt", State.REMOTE, "web-1")])
    with CaptureQueriesContext(connection) as captured:
        big = admin_client.get(LEDGER)

    assert big.context["cl"].date_hierarchy is None
    assert 'class="toplinks"' not in big.content.decode()
    assert [sql for sql in ledger_sql(captured) if '"created"' in sql and "MIN(" in sql] == []


def test_a_list_filtered_by_state_alias_and_host_is_counted_by_the_tally_and_others_up_to_a_cap(
    admin_client: Client, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changelist.LedgerPaginator, "cap", 3)
    bulk_rows(
        [("queued_parked", f"cap/{i}.txt", State.FAILED, "web-1") for i in range(5)]
        + [("queued_parked", "cap/remote.txt", State.REMOTE, "web-1")]
    )

    with CaptureQueriesContext(connection) as captured:
        exact = admin_client.get(f"{LEDGER}?state__exact=failed&host=web-1")
    assert (exact.context["cl"].result_count, exact.context["cl"].paginator.estimated) == (5, False)
    assert [sql for sql in ledger_sql(captured) if "COUNT(" in sql.upper()] == []
    assert "5 stored files" in exact.content.decode()

    with CaptureQueriesContext(connection) as captured:
        searched = admin_client.get(f"{LEDGER}?q=cap/&state__exact=failed")

    html = searched.content.decode()
    assert searched.context["cl"].paginator.estimated
    [count] = [sql for sql in ledger_sql(captured) if "COUNT(" in sql.upper()]
    assert "LIMIT 4" in count
    assert "more than 3 stored files" in html
    assert "more than 3 results" in html
    assert "Select all more than 3 stored files" in html
    assert len(searched.context["cl"].result_list) == 5  # one page of them
    few = admin_client.get(f"{LEDGER}?q=cap/r")
    assert (few.context["cl"].result_count, few.context["cl"].paginator.estimated) == (1, False)


def select_all(client: Client, action: str) -> list[str]:
    """Run *action* on "select all" of the ledger's list (every page)."""
    response = client.post(
        LEDGER,
        {"action": action, "select_across": "1", "_selected_action": ["0"], "index": "0"},
        follow=True,
    )
    assert response.status_code == 200
    return messages_of(response)


def test_an_action_on_select_all_of_many_files_is_queued_in_batches_of_primary_keys(
    admin_client: Client, parked: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StoredFileAdmin, "action_batch", 2)
    names = [failed("queued_parked", f"many/{i}.txt") for i in range(5)]
    staged("queued_parked", "many/pending.txt")  # not failed: not in a batch of retry_failed
    pks = sorted(row("queued_parked", n).pk for n in names)

    shown = select_all(admin_client, "retry_failed")

    assert shown == [
        "Retry failed: 5 selected failed file(s) queued for the workers in 3 batch(es) of up "
        "to 2; each batch logs what it did."
    ]
    batches = sorted(parked())
    assert batches == [
        ["retry_failed", pks[:2]],
        ["retry_failed", pks[2:4]],
        ["retry_failed", pks[4:]],
    ]
    assert {row("queued_parked", n).state for n in names} == {State.FAILED}  # not in the request
    assert run_batch(*batches[0]) == (
        "Retry failed: 2 failed file(s) queued again with a new retry budget."
    )
    assert [row("queued_parked", n).state for n in names[:2]] == [State.PENDING] * 2
    transfers = [["queued_parked", n] for n in names[:2]]
    assert sorted(parked()) == sorted(batches + transfers)


def test_an_action_on_select_all_of_few_files_runs_in_the_request(
    admin_client: Client, parked: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StoredFileAdmin, "action_batch", 2)
    names = [failed("queued_parked", f"few/{i}.txt") for i in range(2)]
    staged("queued_parked", "few/pending.txt")

    shown = select_all(admin_client, "retry_failed")

    assert shown == [
        "Retry failed: 2 failed file(s) queued again with a new retry budget; 1 skipped (not "
        "failed)."
    ]
    assert sorted(parked()) == sorted([["queued_parked", n] for n in names])


def test_a_worker_runs_the_queued_batches_of_an_action_and_the_files_reach_s3(
    worker: Any, clean: Any, admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StoredFileAdmin, "action_batch", 2)
    names = [failed("default", f"batch/{i}.txt") for i in range(3)]

    shown = select_all(admin_client, "transfer_now")

    assert shown == [
        "Transfer now: 3 selected pending or failed file(s) queued for the workers in 2 "
        "batch(es) of up to 2; each batch logs what it did."
    ]
    for name in names:
        wait_for(lambda n=name: row("default", n).state == State.REMOTE, what=f"{name!r} on S3")
        assert s3_bytes(clean, name) == b"staged bytes"


# --- the user's own models: the mixin ------------------------------------------------------------
def test_the_state_column_costs_one_ledger_query_for_the_whole_page(
    admin_client: Client, clean: Any
) -> None:
    local = queued("default").local
    states = [State.PENDING, State.TRANSFERRING, State.REMOTE, State.FAILED, None]

    def documents(start: int, count: int) -> None:
        names = [f"docs/{i:03d}.pdf" for i in range(start, start + count)]
        for name in names:  # the staged files, as saves leave them
            Path(local.path(name)).parent.mkdir(parents=True, exist_ok=True)
            Path(local.path(name)).write_bytes(b"p" * 400)
        Document.objects.bulk_create(Document(title=name, file=name) for name in names)
        StoredFile.objects.bulk_create(
            StoredFile(
                alias="default",
                name=name,
                state=states[i % 5],
                size=400,
                bytes_done=100,
                local_exists=True,
            )
            for i, name in enumerate(names, start)
            if states[i % 5] is not None
        )

    def page() -> tuple[str, int, int]:
        # The "file" column links each file through storage.url(), which reads its state
        # from the cache (filled by the first view of the page); the state column reads the
        # page's rows in one query, cache or not.
        admin_client.get(DOCUMENTS)
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(DOCUMENTS)
        assert response.status_code == 200
        ledger = [q for q in captured.captured_queries if "queued_storage_storedfile" in q["sql"]]
        return response.content.decode(), len(captured), len(ledger)

    documents(0, 5)
    html, few, ledger_queries = page()
    assert ledger_queries == 1
    for state in ("pending", "transferring", "remote", "failed", "unknown"):
        assert f'class="qs-state qs-state-{state}"' in html
    assert '<progress class="qs-progress" value="100" max="400">25%</progress>' in html
    assert 'value="transfer_queued_files"' in html  # the mixin's action is offered
    documents(5, 95)
    html, many, ledger_queries = page()
    assert (many, ledger_queries) == (few, 1)
    assert html.count('class="qs-state ') == 100


def test_the_state_column_alone_reads_the_state_through_the_storage(clean: Any) -> None:
    name = staged("default", "alone/one.txt")
    doc = Document.objects.create(title="alone", file=name)
    column = queued_state_column("file")
    assert column is queued_state_column("file")
    assert 'class="qs-state qs-state-pending"' in column(doc)
    assert column.short_description == "file state"


# --- end to end: the admin's file widget, a real worker, moto S3 ---------------------------------
def test_a_file_uploaded_with_the_admin_add_form_reaches_s3_and_the_column_says_remote(
    worker: Any, clean: Any, client: Client, django_user_model: Any
) -> None:
    django_user_model.objects.create_superuser("boss", "boss@example.com", "a-password")
    login = client.post(
        "/admin/login/?next=/admin/", {"username": "boss", "password": "a-password"}
    )
    assert login.status_code == 302
    payload = os.urandom(300_000)

    added = client.post(
        f"{DOCUMENTS}add/",
        {"title": "via the admin", "file": SimpleUploadedFile("scan.pdf", payload), "_save": "1"},
    )

    assert added.status_code == 302, added.content.decode()[:2000]
    doc = Document.objects.get(title="via the admin")
    name = doc.file.name
    assert name.startswith("docs/scan")

    def remote() -> StoredFile | None:
        found = StoredFile.get_row("default", name)
        assert found is None or found.state != State.FAILED, found.last_error
        return found if found is not None and found.state == State.REMOTE else None

    wait_for(remote, what=f"{name!r} to reach S3")
    assert s3_bytes(clean, name) == payload
    listing = client.get(DOCUMENTS).content.decode()
    assert '<span class="qs-state qs-state-remote"' in listing
    assert "via the admin" in listing


def test_the_mixin_action_transfers_the_selected_objects_files(
    worker: Any, clean: Any, admin_client: Client
) -> None:
    broken = failed("default", "docs/broken.txt")
    waiting = staged("default", "docs/waiting.txt")
    docs = [Document.objects.create(title=n, file=n) for n in (broken, waiting)]

    shown = act(admin_client, DOCUMENTS, "transfer_queued_files", docs)

    assert shown == ["Transfer now: queued the transfer of 2 file(s)."]
    for name in (broken, waiting):
        wait_for(lambda n=name: row("default", n).state == State.REMOTE, what=f"{name!r} on S3")
        assert s3_bytes(clean, name) == b"staged bytes"


def test_the_mixin_adds_its_action_to_the_change_list_and_none_to_the_change_form(
    admin_user: Any,
) -> None:
    # Django 6.1 asks get_actions() for a location; an override must take the argument (or
    # each admin page warns RemovedInDjango2028Warning), and the change form had no actions.
    request = RequestFactory().get(DOCUMENTS)
    request.user = admin_user
    model_admin = admin.site._registry[Document]
    assert "transfer_queued_files" in model_admin.get_actions(request)
    change_form = getattr(admin_options, "ActionLocation", None)
    location = change_form.CHANGE_FORM if change_form else SimpleNamespace(value="CHANGE_FORM")
    assert model_admin.get_actions(request, action_location=location) == {}
    assert "action_location" in inspect.signature(model_admin.get_actions).parameters


# --- tus uploads ---------------------------------------------------------------------------------
def _tus(name: str, offset: int, length: int, expires_in: float) -> TusUpload:
    row = tus_create(
        id=str(uuid.uuid4()),
        alias="queued_parked",
        name=name,
        metadata="filename c2VjcmV0",
        owner="7",
        host="web-1",
        length=length,
        offset=offset,
        expires=timezone.now() + datetime.timedelta(seconds=expires_in),
    )
    return row


def test_tus_uploads_are_listed_with_status_and_progress_and_cannot_be_edited(
    admin_client: Client,
) -> None:
    receiving = _tus("videos/film.mp4", 512 * 1024, 2 * 1024 * 1024, 3600)
    stale = _tus("videos/stale.mp4", 10, 100, -60)
    done = _tus("videos/done.mp4", 40, 40, 3600)
    assert tus_complete(done.id, timezone.now()) and tus_named(done.id, "videos/done.mp4")

    listing = admin_client.get(TUS_UPLOADS)

    assert listing.status_code == 200
    html = listing.content.decode()
    shown = {str(r.pk): r for r in listing.context["cl"].result_list}
    assert set(shown) == {str(receiving.id), str(stale.id), str(done.id)}
    admin_view = listing.context["cl"].model_admin
    assert [admin_view.status(shown[str(r.id)]) for r in (receiving, stale, done)] == [
        "receiving",
        "expired",
        "finished",
    ]
    assert '<progress class="qs-progress" value="524288" max="2097152">25%</progress>' in html
    assert "2.0\xa0MB" in html
    for secret in SECRETS:
        assert secret not in html
    unfinished = admin_client.get(f"{TUS_UPLOADS}?completed__isempty=1")
    assert {str(r.pk) for r in unfinished.context["cl"].result_list} == {
        str(receiving.id),
        str(stale.id),
    }
    detail = admin_client.get(f"{TUS_UPLOADS}{receiving.id}/change/").content.decode()
    assert "videos/film.mp4" in detail and 'name="_save"' not in detail
    assert admin_client.get(f"{TUS_UPLOADS}add/").status_code == 403
    deleted = admin_client.post(f"{TUS_UPLOADS}{receiving.id}/delete/", {"post": "yes"})
    assert deleted.status_code == 403
    assert TusUpload.objects.filter(pk=receiving.id).exists()
