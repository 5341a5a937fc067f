"""Serving waiting files (``StagedFileView``): through real gunicorn, and through real nginx
with X-Accel-Redirect; who may read; what ``url()`` of a waiting file is.

The waiting files belong to the ``queued_delayed`` storage (it never dispatches by itself, so
the suite's worker cannot move them during a test), served at ``/delayed-files/<name>``
(``tests/urls.py``). Two gunicorn servers run with ``QUEUED_STORAGE_SERVE_STAGED`` set: one
streams, one answers with ``X-Accel-Redirect`` to the nginx of ``docs/nginx.conf``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import connections
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from queued_storage.storage import QueuedStorage, owned_by
from tests.harness.suite import django_server, nginx_in_front, wait_for
from tests.harness.webservers import DjangoServer, Nginx

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SERVE = {"queued_delayed": "delayed-file", "default": "queued_storage:file"}
#: Bytes that are not text, with every byte value, so that a mangled stream shows.
PAYLOAD = bytes(range(256)) * 400


def _gunicorn(workdir: str, **env: str) -> DjangoServer:
    return django_server(
        "gunicorn", workdir, {"QS_TEST_SERVE_STAGED": json.dumps(SERVE), **env}, threads=4
    )


@pytest.fixture(scope="module")
def streaming(django_db_setup: Any) -> Iterator[DjangoServer]:
    """gunicorn whose view streams waiting files itself."""
    with _gunicorn("web-serve-stream") as server:
        yield server


@pytest.fixture(scope="module")
def accel(django_db_setup: Any) -> Iterator[tuple[Nginx, DjangoServer]]:
    """nginx (``docs/nginx.conf``) and the gunicorn behind it, whose view answers
    X-Accel-Redirect."""
    with (
        _gunicorn("web-serve-accel", QS_TEST_SENDFILE="x-accel-redirect") as upstream,
        nginx_in_front(upstream, "nginx-serve", staging_dir=Path(settings.STAGING_ROOT)) as front,
    ):
        yield front, upstream


@pytest.fixture
def delayed(clean: Any) -> QueuedStorage:
    """The ``queued_delayed`` storage, its staging directory, bucket and cache emptied."""
    storage = storages["queued_delayed"]
    assert isinstance(storage, QueuedStorage)
    return storage


def _user(username: str, *codenames: str, **flags: bool) -> User:
    user = User.objects.create_user(username, **flags)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def _cookies(user: User) -> dict[str, str]:
    client = Client()
    client.force_login(user)
    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


def _save(storage: QueuedStorage, name: str, owner: User | None, data: bytes = PAYLOAD) -> str:
    with owned_by(str(owner.pk) if owner is not None else ""):
        return storage.save(name, ContentFile(data))


# -- url() ----------------------------------------------------------------------------------------
def test_url_of_a_waiting_file_points_at_the_view_and_at_s3_once_transferred(
    delayed: QueuedStorage, worker: Any
) -> None:
    name = _save(delayed, "videos/clip one.mp4", None)
    assert delayed.url(name) == f"/staging/{name.replace(' ', '%20')}"  # the default: None
    with override_settings(QUEUED_STORAGE_SERVE_STAGED=SERVE):
        assert delayed.url(name) == "/delayed-files/videos/clip%20one.mp4"
        assert delayed.status(name)["url"] == "/delayed-files/videos/clip%20one.mp4"  # type: ignore[index]
        delayed.transfer(name).get(timeout=30)
        url = delayed.url(name)
    assert url.startswith(f"{settings.S3_ENDPOINT}/{settings.BUCKET}/videos/clip%20one.mp4?")


@override_settings(QUEUED_STORAGE_SERVE_STAGED={"queued_delayed": "/waiting/"})
def test_a_path_prefix_is_joined_with_the_quoted_name(delayed: QueuedStorage) -> None:
    name = _save(delayed, "a b/ç?.txt", None)
    assert delayed.url(name) == "/waiting/a%20b/%C3%A7%3F.txt"


# -- through gunicorn: Django streams -------------------------------------------------------------
def test_gunicorn_streams_a_waiting_file_to_its_owner_with_ranges(
    streaming: DjangoServer, delayed: QueuedStorage
) -> None:
    owner = _user("owner")
    name = _save(delayed, "scans/page 1.pdf", owner)
    url = f"{streaming.url}/delayed-files/scans/page%201.pdf"
    whole = requests.get(url, cookies=_cookies(owner), timeout=30)
    assert whole.status_code == 200, whole.text
    assert whole.content == PAYLOAD
    assert whole.headers["Content-Type"] == "application/pdf"
    assert whole.headers["Content-Disposition"] == 'inline; filename="page 1.pdf"'
    assert whole.headers["X-Content-Type-Options"] == "nosniff"
    assert whole.headers["Content-Length"] == str(len(PAYLOAD))
    assert "X-Accel-Redirect" not in whole.headers
    part = requests.get(url, cookies=_cookies(owner), headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(PAYLOAD)}"
    assert part.content == PAYLOAD[1000:2000]
    tail = requests.get(url, cookies=_cookies(owner), headers={"Range": "bytes=-10"})
    assert (tail.status_code, tail.content) == (206, PAYLOAD[-10:])
    past = requests.get(url, cookies=_cookies(owner), headers={"Range": f"bytes={len(PAYLOAD)}-"})
    assert (past.status_code, past.headers["Content-Range"]) == (416, f"bytes */{len(PAYLOAD)}")
    assert delayed.get_state(name).state == "pending"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "ranges",
    [
        "bytes=" + "9" * 5000 + "-",
        "bytes=0-" + "1" * 5000,
        "bytes=-" + "1" * 5000,
        "bytes=" + "1" * 20 + "-",  # one digit past an int64's 19
        "bytes=0-" + "9" * 20,
    ],
    ids=["first-5000-digits", "last-5000-digits", "suffix-5000-digits", "first-20", "last-20"],
)
def test_a_range_position_of_more_than_19_ascii_digits_is_ignored_and_the_file_served_whole(
    streaming: DjangoServer, delayed: QueuedStorage, ranges: str
) -> None:
    owner = _user("ranger")
    _save(delayed, "ranges/data.bin", owner)
    answer = requests.get(
        f"{streaming.url}/delayed-files/ranges/data.bin",
        cookies=_cookies(owner),
        headers={"Range": ranges},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.content == PAYLOAD
    assert "Content-Range" not in answer.headers
    assert answer.headers["Content-Length"] == str(len(PAYLOAD))


def _raw_get(server: DjangoServer, target: str) -> tuple[int, bytes]:
    """``GET`` *target* exactly as written (no client normalises ``..`` away)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: testserver\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "/delayed-files/../../../../etc/passwd",
        "/delayed-files/%2e%2e/%2e%2e/etc/passwd",
        "/delayed-files/a/%252e%252e/b.txt",
        "/delayed-files//etc/passwd",
        "/delayed-files/.queued_storage-incoming/x",
    ],
)
def test_traversal_and_names_the_upload_views_refuse_are_400(
    streaming: DjangoServer, target: str
) -> None:
    status, body = _raw_get(streaming, target)
    assert status == 400, body
    assert b"root:" not in body


def test_a_symlink_out_of_the_staging_root_is_not_served(delayed: QueuedStorage) -> None:
    staff = _user("admin", is_staff=True)
    name = _save(delayed, "links/secret.txt", staff, b"placeholder")
    target = Path(delayed.path(name))
    target.unlink()
    target.symlink_to("/etc/passwd")
    client = Client()
    client.force_login(staff)
    with override_settings(QUEUED_STORAGE_SERVE_STAGED=SERVE):
        response = client.get(f"/delayed-files/{name}")
    assert response.status_code == 404
    assert response.json() == {"error": f"No file {name!r} in this storage."}


# -- through nginx: X-Accel-Redirect --------------------------------------------------------------
def test_nginx_sends_a_waiting_file_that_django_only_authorised(
    accel: tuple[Nginx, DjangoServer], delayed: QueuedStorage
) -> None:
    nginx, upstream = accel
    owner = _user("viewer")
    name = _save(delayed, "films/été 2.mp4", owner)
    path = "/delayed-files/films/%C3%A9t%C3%A9%202.mp4"
    # Django alone: an empty body and where nginx should look.
    direct = requests.get(upstream.url + path, cookies=_cookies(owner), timeout=30)
    assert direct.status_code == 200
    assert direct.content == b""
    assert (
        direct.headers["X-Accel-Redirect"] == "/_queued_storage_staged/films/%C3%A9t%C3%A9%202.mp4"
    )
    # Through nginx: the bytes, sent by nginx's internal location (its header), and Django's
    # headers kept.
    sent = requests.get(nginx.url + path, cookies=_cookies(owner), timeout=30)
    assert sent.status_code == 200
    assert sent.content == PAYLOAD
    assert sent.headers["X-Queued-Storage-Sent-By"] == "nginx"
    assert sent.headers["Content-Type"] == "video/mp4"
    assert sent.headers["Content-Disposition"] == "inline; filename*=utf-8''%C3%A9t%C3%A9%202.mp4"
    assert "X-Accel-Redirect" not in sent.headers
    part = requests.get(nginx.url + path, cookies=_cookies(owner), headers={"Range": "bytes=5-9"})
    assert (part.status_code, part.content) == (206, PAYLOAD[5:10])
    # A refused client gets Django's answer, not the file; the location itself is internal.
    other = requests.get(nginx.url + path, cookies=_cookies(_user("other")), timeout=30)
    assert (other.status_code, other.content) == (
        404,
        json.dumps({"error": f"No file {name!r} in this storage."}).encode(),
    )
    assert (
        requests.get(nginx.url + "/_queued_storage_staged/" + name, timeout=30).status_code == 404
    )


#: What the view sets on every answer to keep a waiting file from acting as a page of the site.
SECURITY_HEADERS = (
    "Content-Type",
    "Content-Disposition",
    "X-Content-Type-Options",
    "Cache-Control",
)


def test_nginx_keeps_the_security_headers_of_djangos_answer_on_every_answer_it_sends(
    accel: tuple[Nginx, DjangoServer], delayed: QueuedStorage
) -> None:
    nginx, upstream = accel
    owner = _user("careful")
    _save(delayed, "pages/index.html", owner, b"<script>alert(1)</script>")
    url = "/delayed-files/pages/index.html"
    direct = requests.get(upstream.url + url, cookies=_cookies(owner), timeout=30)
    assert [direct.headers[h] for h in SECURITY_HEADERS] == [
        "text/html",
        'attachment; filename="index.html"',
        "nosniff",
        "private",
    ]
    for method, ranges, status in [
        ("GET", None, 200),
        ("HEAD", None, 200),
        ("GET", "bytes=0-7", 206),
        ("GET", "bytes=4096-", 416),  # nginx's own answer
    ]:
        sent = requests.request(
            method,
            nginx.url + url,
            cookies=_cookies(owner),
            headers={"Range": ranges} if ranges else {},
            timeout=30,
        )
        assert sent.status_code == status, (method, ranges)
        assert "nginx" in sent.headers["X-Queued-Storage-Sent-By"]
        kept = {h: sent.headers.get(h) for h in SECURITY_HEADERS}
        # A browser reads the first value of X-Content-Type-Options (Fetch, "determine
        # nosniff"): nginx adds its headers twice to its 416 (its header filters run again).
        kept["X-Content-Type-Options"] = (kept["X-Content-Type-Options"] or "").split(",")[0]
        assert kept == {h: direct.headers[h] for h in SECURITY_HEADERS}, (method, ranges)


# -- who may read ---------------------------------------------------------------------------------
@override_settings(QUEUED_STORAGE_SERVE_STAGED=SERVE)
def test_anonymous_is_401_and_another_user_gets_the_404_of_a_missing_name(
    delayed: QueuedStorage,
) -> None:
    name = _save(delayed, "private/report.txt", _user("alice"))
    assert Client().get(f"/delayed-files/{name}").status_code == 401
    bob = Client()
    bob.force_login(_user("bob"))
    theirs, missing = bob.get(f"/delayed-files/{name}"), bob.get("/delayed-files/private/none.txt")
    assert (theirs.status_code, missing.status_code) == (404, 404)
    assert theirs.content == missing.content.replace(b"none.txt", b"report.txt")


def test_an_anonymous_client_is_told_to_sign_in_for_what_it_asked(
    streaming: DjangoServer, delayed: QueuedStorage
) -> None:
    name = _save(delayed, "private/minutes.txt", _user("gina"))
    read = requests.get(f"{streaming.url}/delayed-files/{name}", timeout=30)
    assert (read.status_code, read.json()) == (401, {"error": "Sign in to read this file."})
    status = requests.get(f"{streaming.url}/uploads/status/{name}", timeout=30)
    assert (status.status_code, status.json()) == (
        401,
        {"error": "Sign in to see this file's status."},
    )
    upload = requests.put(f"{streaming.url}/uploads/put/{name}", data=b"x", timeout=30)
    assert (upload.status_code, upload.json()) == (401, {"error": "Sign in to upload files."})


@override_settings(QUEUED_STORAGE_SERVE_STAGED=SERVE)
def test_staff_and_holders_of_the_read_permission_may_read(delayed: QueuedStorage) -> None:
    name = _save(delayed, "notes.txt", None, b"notes")
    readers = [_user("staff", is_staff=True), _user("reader", "view_storedfile")]
    for user, allowed in zip(readers, [True, False], strict=True):
        client = Client()
        client.force_login(user)
        response = client.get(f"/delayed-files/{name}")
        assert (response.status_code == 200) is allowed
        response.close()
    with override_settings(QUEUED_STORAGE_READ_PERMISSION="queued_storage.view_storedfile"):
        client = Client()
        client.force_login(readers[1])
        response = client.get(f"/delayed-files/{name}")
    assert b"".join(response.streaming_content) == b"notes"  # type: ignore[attr-defined]


@override_settings(
    QUEUED_STORAGE_SERVE_STAGED=SERVE, QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.hooks.name_hook"
)
def test_a_refusing_authorizer_answers_before_the_ledger_or_the_disk_is_read(
    delayed: QueuedStorage,
) -> None:
    name = _save(delayed, "private/plan.txt", None)
    Path(delayed.path(name)).unlink()  # a read of the disk would now answer 404, not 403
    client = Client()
    client.force_login(_user("carol"))
    with CaptureQueriesContext(connections["default"]) as queries:
        response = client.get(f"/delayed-files/{name}")
    assert response.status_code == 403
    assert not [q for q in queries.captured_queries if "queued_storage_storedfile" in q["sql"]]


@override_settings(QUEUED_STORAGE_SERVE_STAGED=SERVE)
def test_a_file_that_became_remote_redirects_302_to_its_remote_url(
    delayed: QueuedStorage, worker: Any
) -> None:
    owner = _user("dave")
    name = _save(delayed, "done/report.pdf", owner)
    delayed.transfer(name).get(timeout=30)
    wait_for(lambda: delayed.get_state(name, fresh=True).is_remote, what="remote")  # type: ignore[union-attr]
    client = Client()
    client.force_login(owner)
    response = client.get(f"/delayed-files/{name}")
    assert response.status_code == 302
    assert response["Location"].startswith(f"{settings.S3_ENDPOINT}/{settings.BUCKET}/{name}?")
    assert requests.get(response["Location"], timeout=30).content == PAYLOAD


def test_the_view_is_404_while_serving_is_off(delayed: QueuedStorage) -> None:
    name = _save(delayed, "off.txt", None)
    client = Client()
    client.force_login(_user("erin", is_staff=True))
    response = client.get(f"/delayed-files/{name}")
    assert response.status_code == 404
    assert response.json() == {
        "error": "Serving waiting files is off (QUEUED_STORAGE_SERVE_STAGED)."
    }


@override_settings(QUEUED_STORAGE_SERVE_STAGED=SERVE)
def test_an_html_file_is_an_attachment_never_a_page_of_the_site(delayed: QueuedStorage) -> None:
    name = _save(delayed, "page.html", None, b"<script>alert(1)</script>")
    client = Client()
    client.force_login(_user("frank", is_superuser=True))
    response = client.get(f"/delayed-files/{name}")
    assert response["Content-Type"] == "text/html"
    assert response["Content-Disposition"] == 'attachment; filename="page.html"'
    response.close()
