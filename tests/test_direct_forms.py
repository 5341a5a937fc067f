"""Direct upload forms (``queued_storage.forms``): the field's widget, and the names its
``clean()`` accepts, against real direct uploads to the S3 server.

Uploads are made as ``tests/test_direct.py`` makes them (Django's test client for the JSON
endpoints, ``requests`` for the parts); the form is the project's own ``ModelForm`` of
``Document`` and, end to end, the admin's add form of ``QueuedFileAdminMixin``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from django import forms
from django.contrib import admin
from django.contrib.auth.models import AnonymousUser, Permission, User
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from queued_storage.forms import DirectFileField, DirectUploadFormMixin
from queued_storage.models import State, StoredFile
from tests.harness.suite import direct_s3_client, open_uploads, remote_keys
from tests.test_direct import PART, MiB, complete, pieces, send, start
from tests.testapp.models import Document

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def small_parts(settings: Any, clean: Any) -> None:
    settings.QUEUED_STORAGE_DIRECT_PART_SIZE = PART


class DocumentForm(DirectUploadFormMixin, forms.ModelForm):  # type: ignore[type-arg]
    file = DirectFileField()

    class Meta:
        model = Document
        fields = ["title", "file"]


def signed_in(username: str, *, staff: bool = False) -> tuple[Client, User]:
    """A user who may upload (a superuser for the admin's tests), and a client signed in."""
    if staff:
        user = User.objects.create_superuser(username, f"{username}@example.com", "pw")
    else:
        user = User.objects.create_user(username)
        codenames = ("add_storedfile", "view_storedfile")
        user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client, user


def finished(client: Client, name: str, data: bytes) -> str:
    """A direct upload of *data* by *client*'s user, finished: its reserved name."""
    started = start(client, name, len(data))
    send(client, started, pieces(data))
    assert complete(client, started).status_code == 201
    return str(started["name"])


def refusal(name: str) -> dict[str, list[str]]:
    return {"file": [f"{name!r} is not a finished upload of yours."]}


def test_a_finished_upload_of_the_user_validates_and_the_saved_document_reads_it_from_s3() -> None:
    alice, user = signed_in("alice")
    data = os.urandom(PART + 1000)
    name = finished(alice, "forms/report.bin", data)
    form = DocumentForm({"title": "report", "file": name}, user=user)
    assert form.is_valid(), form.errors
    document = form.save()
    document.refresh_from_db()
    assert document.file.name == name  # the reserved name as it is: no upload_to, no save
    with document.file.open("rb") as served:
        assert served.read() == data
    assert remote_keys(direct_s3_client()) == [name]  # nothing copied or saved again
    assert list(StoredFile.all_rows().values_list("name", "state")) == [(name, State.REMOTE)]


def test_names_that_are_not_a_finished_upload_of_the_user_are_refused() -> None:
    alice, user = signed_in("alice")
    bob, _ = signed_in("bob")
    bobs = finished(bob, "forms/bobs.bin", os.urandom(MiB))
    unfinished = start(alice, "forms/unfinished.bin", MiB)["name"]
    saved = alice.put(
        "/uploads/put/forms/saved.bin", b"saved by the upload view", "application/octet-stream"
    )
    assert saved.status_code == 201, saved.content
    pending = saved.json()["name"]
    kept = StoredFile.get_row("default", pending)
    # Saved through the staging disk, by the same user: the suite's worker may already be
    # sending it (pending, transferring or remote), never a direct upload in any of them.
    assert kept is not None and kept.owner == str(user.pk) and kept.host != ""
    for name in (bobs, unfinished, "forms/never-uploaded.bin", pending):
        form = DocumentForm({"title": "t", "file": name}, user=user)
        assert not form.is_valid()
        assert form.errors == refusal(name), name
    # An initial value is no claim: a query string can fill it (the admin's ?file=...).
    offered = DocumentForm({"title": "t", "file": bobs}, initial={"file": bobs}, user=user)
    assert offered.errors == refusal(bobs)
    anonymous = DocumentForm({"title": "t", "file": bobs}, user=AnonymousUser())
    assert anonymous.errors == refusal(bobs)  # nothing is an anonymous user's
    assert Document.objects.count() == 0


def test_the_widget_renders_the_uploader_in_direct_mode_around_the_hidden_name() -> None:
    _, user = signed_in("alice")
    html = str(DocumentForm(user=user)["file"])
    assert html == (
        '<div class="qs-uploader" data-qs-uploader data-mode="direct"\n'
        '     data-direct-url="/uploads/direct/"\n'
        '     data-poll-interval="500">\n'
        '  <input type="hidden" name="file" data-qs-name maxlength="1024" required id="id_file">\n'
        '  <label class="qs-drop">\n'
        '    <input class="qs-input" type="file" id="id_file_file">\n'
        '    <span class="qs-drop-text">Drop a file here, or <u>choose a file</u></span>\n'
        "  </label>\n"
        '  <ul class="qs-files" aria-live="polite"></ul>\n'
        "</div>"
    )  # the file input has no name: the file's bytes are never posted with the form
    label = DocumentForm(user=user)["file"].label_tag()
    assert 'for="id_file_file"' in label
    media = str(DocumentForm(user=user).media)
    assert "queued_storage/uploader.js" in media and "queued_storage/uploader.css" in media


def test_an_edit_form_keeps_the_documents_file_whoever_uploaded_it() -> None:
    bob, _ = signed_in("bob")
    _, editor = signed_in("editor")
    name = finished(bob, "forms/kept.bin", os.urandom(1000))
    document = Document.objects.create(title="bob's", file=name)
    shown = DocumentForm(instance=document, user=editor)
    assert f'<input type="hidden" name="file" value="{name}" data-qs-name' in str(shown["file"])
    posted = DocumentForm({"title": "renamed", "file": name}, instance=document, user=editor)
    assert posted.is_valid(), posted.errors
    assert posted.save().file.name == name
    emptied = DocumentForm({"title": "again", "file": ""}, instance=document, user=editor)
    assert emptied.errors == {"file": ["This field is required."]}


def test_a_bound_form_without_the_user_is_a_programming_error() -> None:
    with pytest.raises(ImproperlyConfigured) as raised:
        DocumentForm({"title": "t", "file": "forms/x.bin"})
    assert str(raised.value) == (
        "DocumentForm has direct upload fields (file), which need the user: pass request= "
        "(or user=) when you make the form."
    )


class PlainForm(forms.Form):
    file = DirectFileField()


def test_a_direct_file_field_outside_the_mixin_says_how_to_fix_it() -> None:
    form = PlainForm({"file": "forms/x.bin"})
    with pytest.raises(ImproperlyConfigured) as raised:
        form.is_valid()
    assert str(raised.value) == (
        "A DirectFileField is checked against the request's user: add "
        "queued_storage.forms.DirectUploadFormMixin to the form's bases and pass request= (or "
        "user=) when you make the form."
    )


def test_the_admin_add_form_of_the_mixin_accepts_the_staff_users_upload_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin.site._registry[Document], "form", DocumentForm)
    boss, _ = signed_in("boss", staff=True)
    other, _ = signed_in("other", staff=True)
    page = boss.get("/admin/testapp/document/add/")
    assert page.status_code == 200
    assert b'data-mode="direct"' in page.content and b"queued_storage/uploader.js" in page.content
    data = os.urandom(2000)
    name = finished(boss, "forms/admin.bin", data)
    refused = other.post(
        f"/admin/testapp/document/add/?file={name}", {"title": "theirs", "file": name}
    )
    assert refused.status_code == 200
    assert refused.context["adminform"].form.errors == refusal(name)
    added = boss.post("/admin/testapp/document/add/", {"title": "mine", "file": name})
    assert added.status_code == 302, added.content
    [document] = Document.objects.all()
    assert document.file.name == name
    with document.file.open("rb") as served:
        assert served.read() == data
    assert open_uploads(direct_s3_client()) == []
