"""Upload views against real servers: gunicorn (WSGI), uvicorn (ASGI), nginx, a Celery worker.

What each test proves is in its name. The servers are subprocesses serving ``tests.webapp``
with this run's database, cache, broker and staging directory; clients are raw sockets (to
watch when the server answers) and ``requests``. Memory is measured as the growth of the
server process's peak RSS (``VmHWM``), never timed.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from django.conf import settings
from django.core.files.storage import storages
from django.db import connections
from django.http import HttpResponse
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from urllib3 import encode_multipart_formdata

from queued_storage.models import State, StoredFile
from queued_storage.storage import owned_by
from queued_storage.uploads import SPOOL_DIRNAME, reserve_in_flight
from tests.harness.rawhttp import RawClient
from tests.harness.rawhttp import cookie_header as _cookie_header
from tests.harness.suite import django_server, need_tool, nginx_in_front, wait_for
from tests.harness.webservers import DjangoServer, Nginx, peak_rss_kib, peak_rss_reset
from tests.hooks import HOOK_LOG, hook_calls

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024
SECRET = settings.QUEUED_STORAGE_NGINX_SECRET


# -- fixtures -------------------------------------------------------------------------------------
def _server(kind: str, *, hooked: bool = False, budget: int | None = None) -> DjangoServer:
    env: dict[str, str] = {}
    workdir = f"web-{kind}"
    if hooked:
        env["QS_TEST_UPLOAD_AUTHORIZER"] = "tests.hooks.name_hook"
        workdir += "-hooked"
    if budget is not None:
        env["QS_TEST_STAGING_BUDGET"] = str(budget)
        workdir += "-budget"
    return django_server(kind, workdir, env)


@pytest.fixture(scope="module")
def gunicorn(django_db_setup: Any) -> Iterator[DjangoServer]:
    with _server("gunicorn") as server:
        yield server


@pytest.fixture(scope="module")
def uvicorn(django_db_setup: Any) -> Iterator[DjangoServer]:
    with _server("uvicorn") as server:
        yield server


@pytest.fixture(scope="module")
def nginx(gunicorn: DjangoServer) -> Iterator[Nginx]:
    with nginx_in_front(gunicorn, "nginx") as server:
        yield server


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def hooked_nginx(request: pytest.FixtureRequest, django_db_setup: Any) -> Iterator[Nginx]:
    """nginx (``docs/nginx.conf``) in front of gunicorn, then of uvicorn, whose authorizer is
    ``tests.hooks.name_hook`` (it refuses names under ``private/`` and logs every name)."""
    kind = request.param
    with (
        _server(kind, hooked=True) as upstream,
        nginx_in_front(upstream, f"nginx-hooked-{kind}") as server,
    ):
        yield server


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def budgeted(request: pytest.FixtureRequest, django_db_setup: Any) -> Iterator[DjangoServer]:
    """A gunicorn, then a uvicorn, whose ``QUEUED_STORAGE_STAGING_BUDGET`` is 8 MiB."""
    with _server(request.param, budget=8 * MiB) as server:
        yield server


@pytest.fixture(params=["gunicorn", "uvicorn"])
def server(request: pytest.FixtureRequest) -> DjangoServer:
    """Each Django server in turn."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture
def staging(clean: Any) -> Path:
    """The staging directory, emptied (with the bucket and the state cache)."""
    return Path(settings.STAGING_ROOT)


def _session_for(*codenames: str) -> dict[str, str]:
    return _user_session(f"user-{'-'.join(codenames) or 'none'}", *codenames)[1]


def _user_session(username: str, *codenames: str, **flags: bool) -> tuple[Any, dict[str, str]]:
    """A new user with these permissions (and flags: ``is_staff``...) and its session cookie."""
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username, **flags)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return user, {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


@pytest.fixture
def cookies() -> dict[str, str]:
    """A session of a user with the default upload and status permissions."""
    return _session_for("add_storedfile", "view_storedfile")


def staged_files(root: Path) -> list[str]:
    """Every file in the staging directory (the spool included), relative."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _payload(size: int, seed: bytes = b"") -> bytes:
    block = hashlib.sha256(seed or b"payload").digest() * (MiB // 32)
    return (block * (size // len(block) + 1))[:size]


def _write_payload(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            out.write(block)
        out.write(block[: size % MiB])
    return path


# -- Django's ASGI handler vs the streaming one (in process) --------------------------------------
_PROBE: dict[str, Any] = {}


def recording_authorizer(request: Any, name: str, action: str) -> Any:
    """Refuses, after noting how much of the body the server had taken by now."""
    _PROBE["body_messages_at_authorize"] = _PROBE["body_messages"]
    return HttpResponse(status=403)


def allow_all(request: Any, name: str, action: str) -> bool:
    return True


def _asgi_upload(app: Any, chunks: list[bytes], *, declared: int) -> tuple[int, bytes]:
    """Run one PUT through an ASGI app in this process; count body messages handed out."""
    _PROBE.clear()
    _PROBE["body_messages"] = 0
    sent: list[dict[str, Any]] = []

    async def main() -> None:
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            index = _PROBE["body_messages"]
            if index < len(chunks):
                _PROBE["body_messages"] = index + 1
                return {
                    "type": "http.request",
                    "body": chunks[index],
                    "more_body": index + 1 < len(chunks),
                }
            await never.wait()  # the client stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "PUT",
            "scheme": "http",
            "path": "/uploads/put/asgi.bin",
            "raw_path": b"/uploads/put/asgi.bin",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), (b"content-length", str(declared).encode())],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
        }
        await app(scope, receive, send)

    asyncio.run(main())
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


@override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.recording_authorizer")
def test_djangos_asgi_handler_receives_the_whole_body_before_the_view_runs() -> None:
    from django.core.asgi import get_asgi_application

    status, _ = _asgi_upload(get_asgi_application(), [b"x" * 1000] * 50, declared=50_000)
    assert status == 403
    assert _PROBE["body_messages_at_authorize"] == 50  # every message, before authorisation


@override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.recording_authorizer")
def test_streaming_asgi_handler_authorises_before_receiving_any_body() -> None:
    from queued_storage.asgi import get_asgi_application

    status, _ = _asgi_upload(get_asgi_application(), [b"x" * 1000] * 50, declared=50_000)
    assert status == 403
    assert _PROBE["body_messages_at_authorize"] == 0
    assert _PROBE["body_messages"] == 0  # and nothing after: the refused body is never read


@override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all")
def test_a_body_longer_than_its_content_length_is_refused_and_nothing_kept(
    staging: Path,
) -> None:
    # Django's ASGIRequest reads whatever its body file holds, past Content-Length.
    from django.core.asgi import get_asgi_application

    status, body = _asgi_upload(get_asgi_application(), [b"y" * 20], declared=10)
    assert status == 400
    assert json.loads(body) == {"error": "The body is longer than its Content-Length (10)."}
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


# -- authorisation before the body, on real servers -----------------------------------------------
def _refused_while_sending(url: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Declare 512 MiB, send 64 KiB, and read the answer before sending any more."""
    client = RawClient(url)
    try:
        client.send_head("PUT", path, {"Content-Length": str(512 * MiB), **headers})
        client.send(b"z" * 65536)
        return client.response()
    finally:
        client.close()


def test_unauthorised_client_is_answered_while_still_sending_the_body(
    server: DjangoServer, staging: Path
) -> None:
    status, body = _refused_while_sending(server.url, "/uploads/put/secret.bin", {})
    assert status == 401
    assert json.loads(body) == {"error": "Sign in to upload files."}
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


def test_user_without_the_permission_is_answered_403_while_still_sending(
    server: DjangoServer, staging: Path
) -> None:
    session = _session_for("view_storedfile")
    status, body = _refused_while_sending(
        server.url, "/uploads/put/secret.bin", {"Cookie": _cookie_header(session)}
    )
    assert status == 403
    assert json.loads(body) == {"error": "You may not upload or read this file."}
    assert not StoredFile.objects.exists()


#: 604 characters (under the 1,000 the views allow), 1,204 bytes of UTF-8 (over S3's 1,024);
#: no part over 255 bytes.
LONG_IN_BYTES = "/".join(["\u00e9" * 120] * 5)
LONG_IN_BYTES_REFUSED = (
    f"The file name {LONG_IN_BYTES[:60]!r}... has 1204 bytes in UTF-8; the limit is 1024 bytes "
    "(S3's limit for a key). Shorten it."
)


def _reserved_refused(name: str) -> str:
    return (
        f"The file name {name!r} starts with '.queued_storage-': top-level names starting "
        "with it are reserved for queued_storage's own files. Choose another folder or name."
    )


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        (LONG_IN_BYTES, LONG_IN_BYTES_REFUSED),
        (".queued_storage-doctor/x.txt", _reserved_refused(".queued_storage-doctor/x.txt")),
        (".queued_storage-later/x.txt", _reserved_refused(".queued_storage-later/x.txt")),
    ],
    ids=["1204-bytes", "doctor", "any-of-the-prefix"],
)
def test_a_name_save_would_refuse_is_refused_400_before_the_body(
    server: DjangoServer, cookies: dict[str, str], staging: Path, name: str, refused: str
) -> None:
    status, body = _refused_while_sending(
        server.url, "/uploads/put/" + quote(name), {"Cookie": _cookie_header(cookies)}
    )
    assert (status, json.loads(body)) == (400, {"error": refused})
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


def test_oversize_content_length_is_refused_413_before_reading(
    server: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    client = RawClient(server.url)
    try:
        client.send_head(
            "PUT",
            "/uploads/put/huge.iso",
            {"Content-Length": str(6 * 1024**3), "Cookie": _cookie_header(cookies)},
        )
        client.send(b"z" * 65536)
        status, body = client.response()
    finally:
        client.close()
    assert status == 413
    assert json.loads(body) == {
        "error": f"The upload has {6 * 1024**3} bytes; the limit is {5 * 1024**3}."
    }
    assert staged_files(staging) == []


def test_client_that_disconnects_mid_body_leaves_no_file_and_no_row(
    server: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    spool = staging / SPOOL_DIRNAME
    client = RawClient(server.url)
    try:
        client.send_head(
            "PUT",
            "/uploads/put/short.bin",
            {"Content-Length": str(64 * MiB), "Cookie": _cookie_header(cookies)},
        )
        client.send(b"s" * MiB)
        # The server is receiving: its spool file exists. Now the client goes away.
        wait_for(lambda: spool.is_dir() and any(spool.iterdir()), what="the body to be spooled")
    finally:
        client.close()
    wait_for(lambda: not any(spool.iterdir()), what="the spool file to be removed")
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


def test_chunked_body_over_the_limit_is_refused_413_and_nothing_kept(
    server: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    client = RawClient(server.url)  # /small/ allows 1 MiB
    try:
        client.send_head(
            "PUT",
            "/small/stream.bin",
            {"Transfer-Encoding": "chunked", "Cookie": _cookie_header(cookies)},
        )
        try:
            for _ in range(24):
                client.send(b"10000\r\n" + b"c" * 65536 + b"\r\n")
            client.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest was sent: read its answer
        status, body = client.response()
    finally:
        client.close()
    assert status == 413
    assert json.loads(body) == {"error": "The body is larger than 1048576 bytes; nothing was kept."}
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


def test_chunked_body_within_the_limit_is_stored(
    server: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    payload = _payload(300_000, b"chunked")
    response = requests.put(
        f"{server.url}/small/stream-{server.kind}.bin",
        data=iter([payload[:100_000], payload[100_000:]]),  # a generator: chunked encoding
        cookies=cookies,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert (staging / f"stream-{server.kind}.bin").read_bytes() == payload


def test_bytes_after_the_declared_length_never_reach_the_file(
    gunicorn: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    # HTTP/1.1 frames a body by its Content-Length: whatever follows is the next request,
    # which the server refuses as malformed. The stored file is exactly what was declared.
    client = RawClient(gunicorn.url)
    try:
        client.send_head(
            "PUT",
            "/uploads/put/declared.bin",
            {"Content-Length": "10", "Cookie": _cookie_header(cookies)},
        )
        client.send(b"0123456789" + b"GARBAGE-NOT-HTTP\r\n\r\n")
        status, _ = client.response()
    finally:
        client.close()
    assert status == 201
    assert staged_files(staging) == ["declared.bin"]
    assert (staging / "declared.bin").read_bytes() == b"0123456789"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Content-MD5", base64.b64encode(hashlib.md5(b"other").digest()).decode()),
        ("X-Checksum-SHA256", hashlib.sha256(b"other").hexdigest()),
    ],
)
def test_checksum_mismatch_is_400_and_nothing_kept(
    gunicorn: DjangoServer, cookies: dict[str, str], staging: Path, header: str, value: str
) -> None:
    response = requests.put(
        f"{gunicorn.url}/uploads/put/sum.bin",
        data=b"these bytes",
        headers={header: value},
        cookies=cookies,
        timeout=30,
    )
    assert response.status_code == 400
    assert "does not match the received body" in response.json()["error"]
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


def test_matching_checksums_are_accepted(
    gunicorn: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    payload = _payload(2 * MiB + 7, b"sums")
    response = requests.put(
        f"{gunicorn.url}/uploads/put/sum.bin",
        data=payload,
        headers={
            "Content-MD5": base64.b64encode(hashlib.md5(payload).digest()).decode(),
            "X-Checksum-SHA256": hashlib.sha256(payload).hexdigest(),
        },
        cookies=cookies,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert (staging / "sum.bin").read_bytes() == payload


# -- slow clients: the idle timeout (tests/urls.py: /quick/ waits 1.5 s for the next bytes) --------
QUICK_408 = {"error": "No bytes of the body arrived for 1.5 s; nothing was kept."}


def _stalled(url: str, name: str, cookies: dict[str, str], *, chunked: bool = False) -> RawClient:
    """A client that sends the head and 64 KiB of a 1 MiB body, then nothing more."""
    client = RawClient(url)
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(MiB)}
    client.send_head("PUT", f"/quick/{name}", {**framing, "Cookie": _cookie_header(cookies)})
    client.send(b"10000\r\n" + b"p" * 65536 + b"\r\n" if chunked else b"p" * 65536)
    return client


def _closed_by_server(client: RawClient) -> bool:
    """Whether the server closed the connection (after its answer was read)."""
    try:
        return client.sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_stalled_upload_is_answered_408_and_dropped_and_leaves_nothing(
    server: DjangoServer, cookies: dict[str, str], staging: Path, chunked: bool
) -> None:
    client = _stalled(server.url, "stalled.bin", cookies, chunked=chunked)
    try:
        status, body = client.response()  # the client's socket gives up after 30 s
        assert status == 408
        assert json.loads(body) == QUICK_408
        assert _closed_by_server(client)
    finally:
        client.close()
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


def test_stalled_uploads_on_every_thread_are_dropped_and_the_server_answers_again(
    server: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    # One more than gunicorn's threads (uvicorn runs each request in a thread of its own).
    stalled = [_stalled(server.url, f"stalled-{i}.bin", cookies) for i in range(server.threads + 1)]
    try:
        after = requests.put(
            f"{server.url}/quick/after.bin", data=b"after", cookies=cookies, timeout=60
        )
        answers = [client.response()[0] for client in stalled]
    finally:
        for client in stalled:
            client.close()
    assert after.status_code == 201, after.text
    assert answers == [408] * len(stalled)
    assert staged_files(staging) == ["after.bin"]


def test_a_slow_but_steady_upload_is_not_cut_off(
    server: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    # 12 pieces 0.2 s apart: 2.4 s in all, longer than the idle timeout, never idle that long.
    client = RawClient(server.url)
    try:
        client.send_head(
            "PUT",
            "/quick/steady.bin",
            {"Content-Length": str(12 * 1000), "Cookie": _cookie_header(cookies)},
        )
        for _ in range(12):
            client.send(b"s" * 1000)
            time.sleep(0.2)
        status, body = client.response()
    finally:
        client.close()
    assert status == 201, body
    assert (staging / "steady.bin").read_bytes() == b"s" * 12_000


def test_a_stalled_form_upload_is_answered_408_and_leaves_nothing(
    gunicorn: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    head = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    client = RawClient(gunicorn.url)
    try:
        client.send_head(
            "POST",
            "/quick/form.bin",
            {
                "Content-Type": "multipart/form-data; boundary=B",
                "Content-Length": str(MiB),
                "Cookie": _cookie_header(cookies),
            },
        )
        client.send(head + b"f" * 65536)
        status, body = client.response()
    finally:
        client.close()
    assert status == 408
    assert json.loads(body) == QUICK_408
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


# -- memory ---------------------------------------------------------------------------------------
def _peak_growth_mib(server: DjangoServer, send: Any) -> tuple[Any, float]:
    """Run *send* and return its result and the growth of the server's peak RSS in MiB."""
    pid = server.app_pid
    warm = send()  # imports, connections, first-use caches: not what is measured
    assert warm.status_code == 201, warm.text
    peak_rss_reset(pid)
    before = peak_rss_kib(pid)
    result = send()
    return result, (peak_rss_kib(pid) - before) / 1024


@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_64_mib_raw_upload_keeps_server_memory_bounded(
    request: pytest.FixtureRequest,
    kind: str,
    cookies: dict[str, str],
    staging: Path,
    tmp_path: Path,
) -> None:
    server: DjangoServer = request.getfixturevalue(kind)
    source = _write_payload(tmp_path / "big.bin", 64 * MiB)

    def send() -> requests.Response:
        with source.open("rb") as body:  # streamed by requests, with a Content-Length
            return requests.put(f"{server.url}/fs/big.bin", data=body, cookies=cookies, timeout=120)

    response, growth = _peak_growth_mib(server, send)
    print(f"{kind}: peak RSS grew {growth:.1f} MiB while receiving 64 MiB")
    assert response.status_code == 201, response.text
    assert response.json()["size"] == 64 * MiB
    assert growth < 16, f"peak RSS grew {growth:.1f} MiB for a 64 MiB upload"


def test_64_mib_form_upload_is_moved_not_copied_and_memory_stays_bounded(
    gunicorn: DjangoServer, cookies: dict[str, str], staging: Path, tmp_path: Path
) -> None:
    # A project's own view (tests/views.py) saving request.FILES["file"] through a model:
    # Django's TemporaryFileUploadHandler, FILE_UPLOAD_TEMP_DIR on the staging filesystem.
    source = _write_payload(tmp_path / "form.bin", 64 * MiB)

    def send() -> requests.Response:
        with source.open("rb") as body:
            return requests.post(
                f"{gunicorn.url}/form-upload/", files={"file": ("form.bin", body)}, timeout=120
            )

    response, growth = _peak_growth_mib(gunicorn, send)
    print(f"form upload: peak RSS grew {growth:.1f} MiB while receiving 64 MiB")
    assert response.status_code == 201, response.text
    found = response.json()
    assert found["handler"] == "TemporaryUploadedFile"
    assert found["inode"] == found["temp_inode"]  # renamed into staging, not copied
    assert found["temp_left"] is False
    assert (staging / found["name"]).stat().st_size == 64 * MiB
    assert growth < 16, f"peak RSS grew {growth:.1f} MiB for a 64 MiB form upload"


def test_form_upload_through_a_model_field_is_moved_not_copied(
    gunicorn: DjangoServer, staging: Path
) -> None:
    payload = _payload(4 * MiB, b"model")  # over FILE_UPLOAD_MAX_MEMORY_SIZE: a temporary file
    response = requests.post(
        f"{gunicorn.url}/form-upload/?model=1", files={"file": ("doc.pdf", payload)}, timeout=60
    )
    assert response.status_code == 201, response.text
    found = response.json()
    assert found["name"] == "docs/doc.pdf"
    assert found["handler"] == "TemporaryUploadedFile"
    assert found["inode"] == found["temp_inode"]
    assert (staging / "docs/doc.pdf").read_bytes() == payload


def test_form_post_to_the_upload_view_is_moved_from_the_spool(
    server: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    payload = _payload(3 * MiB, b"form")
    body, content_type = encode_multipart_formdata({"file": ("picked.bin", payload)})
    spool = staging / SPOOL_DIRNAME
    seen: dict[str, int] = {}

    class Body:
        """The form in two halves; between them the server has the spool file open: its
        inode is noted (a Content-Length, not a chunked body: Django's form parser needs it)."""

        def __len__(self) -> int:
            return len(body)

        def __iter__(self) -> Iterator[bytes]:
            yield body[: 1 * MiB]
            spooled = wait_for(
                lambda: (
                    [p for p in spool.iterdir() if p.stat().st_size > 0] if spool.is_dir() else None
                ),
                timeout=30,
                what="the form's spool file",
            )
            assert len(spooled) == 1, spooled
            seen["inode"] = spooled[0].stat().st_ino
            yield body[1 * MiB :]

    response = requests.post(
        f"{server.url}/uploads/put/",
        data=Body(),
        headers={"Content-Type": content_type},
        cookies=cookies,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "picked.bin"
    assert (staging / "picked.bin").read_bytes() == payload
    assert (staging / "picked.bin").stat().st_ino == seen["inode"]  # a rename, not a copy
    assert staged_files(staging) == ["picked.bin"]


# -- round trips ----------------------------------------------------------------------------------
def _wait_state(url: str, cookies: dict[str, str], name: str, state: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = requests.get(f"{url}/uploads/status/{name}", cookies=cookies, timeout=10).json()
        if found.get("state") == State.FAILED:
            pytest.fail(f"{name!r} failed: {StoredFile.get_row('default', name)}")
        return found if found.get("state") == state else None

    # A bound for a loaded machine, not a timing assertion.
    return wait_for(reached, timeout=90, what=f"{name!r} to be {state}")  # type: ignore[no-any-return]


def test_raw_put_round_trip_to_s3(
    server: DjangoServer, worker: Any, clean: Any, cookies: dict[str, str]
) -> None:
    payload = _payload(6 * MiB + 123, server.kind.encode())  # > multipart threshold (5 MiB)
    response = requests.put(
        f"{server.url}/uploads/put/videos/clip.mp4", data=payload, cookies=cookies, timeout=60
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["name"] == "videos/clip.mp4"
    assert created["state"] == State.PENDING  # as saved: the answer is built before the commit
    assert created["size"] == len(payload)
    assert created["local"] is True
    assert created["url"] == "/staging/videos/clip.mp4"
    assert created["status_url"] == "/uploads/status/videos/clip.mp4"
    assert response.headers["Location"] == created["status_url"]

    status = _wait_state(server.url, cookies, "videos/clip.mp4", State.REMOTE)
    assert status["bytes_done"] == status["size"] == len(payload)
    assert status["url"].startswith(settings.S3_ENDPOINT)
    assert requests.get(status["url"], timeout=30).content == payload
    body = clean.get_object(Bucket=settings.BUCKET, Key="videos/clip.mp4")["Body"].read()
    assert body == payload


def test_second_upload_of_a_name_gets_a_free_name(
    gunicorn: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    first = requests.put(
        f"{gunicorn.url}/uploads/put/same.txt", data=b"one", cookies=cookies, timeout=30
    )
    second = requests.put(
        f"{gunicorn.url}/uploads/put/?name=same.txt", data=b"two", cookies=cookies, timeout=30
    )
    assert first.json()["name"] == "same.txt"
    assert second.json()["name"] != "same.txt"
    assert (staging / "same.txt").read_bytes() == b"one"
    assert (staging / second.json()["name"]).read_bytes() == b"two"


# -- nginx ----------------------------------------------------------------------------------------
def test_nginx_refuses_an_unauthorised_client_before_accepting_the_body(
    nginx: Nginx, staging: Path
) -> None:
    body_dir = Path(settings.QUEUED_STORAGE_NGINX_UPLOAD_DIR)
    status, _ = _refused_while_sending(nginx.url, "/uploads/nginx/secret.bin", {})
    assert status == 401
    assert list(body_dir.iterdir()) == []  # nginx wrote no body file
    assert staged_files(staging) == []


def test_nginx_offload_end_to_end_to_s3(
    nginx: Nginx, worker: Any, clean: Any, cookies: dict[str, str], tmp_path: Path
) -> None:
    body_dir = Path(settings.QUEUED_STORAGE_NGINX_UPLOAD_DIR)
    source = _write_payload(tmp_path / "scan.tiff", 8 * MiB + 5)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with source.open("rb") as body:
        response = requests.put(
            f"{nginx.url}/uploads/nginx/scans/scan.tiff",
            data=body,
            headers={"X-Checksum-SHA256": digest},
            cookies=cookies,
            timeout=60,
        )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "scans/scan.tiff"
    assert list(body_dir.iterdir()) == []  # moved out of nginx's directory
    row = wait_for(
        lambda: StoredFile.objects.filter(name="scans/scan.tiff", state=State.REMOTE).first(),
        timeout=90,
        what="the nginx upload to reach S3",
    )
    assert row.size == 8 * MiB + 5
    body = clean.get_object(Bucket=settings.BUCKET, Key="scans/scan.tiff")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == digest


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        (LONG_IN_BYTES, LONG_IN_BYTES_REFUSED),
        (".queued_storage-doctor/x.txt", _reserved_refused(".queued_storage-doctor/x.txt")),
    ],
    ids=["1204-bytes", "doctor"],
)
def test_nginx_refuses_a_name_save_would_refuse_before_accepting_the_body(
    nginx: Nginx,
    gunicorn: DjangoServer,
    cookies: dict[str, str],
    staging: Path,
    name: str,
    refused: str,
) -> None:
    target = "/uploads/nginx/" + quote(name)
    # The auth answer nginx gets, asked as nginx asks it.
    auth = requests.get(
        f"{gunicorn.url}/uploads/nginx-auth/",
        headers={
            "X-Original-URI": target,
            "X-Original-Content-Length": str(512 * MiB),
            "X-Queued-Storage-Secret": SECRET,
        },
        cookies=cookies,
        timeout=30,
    )
    assert (auth.status_code, auth.json()) == (403, {"error": refused})
    # Through nginx: answered while the body is still being sent, and no body written.
    body_dir = Path(settings.QUEUED_STORAGE_NGINX_UPLOAD_DIR)
    status, _ = _refused_while_sending(nginx.url, target, {"Cookie": _cookie_header(cookies)})
    assert status == 403
    assert list(body_dir.iterdir()) == []
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


@pytest.mark.parametrize("path", ["/uploads/nginx/stolen.bin", "/uploads/%6Eginx/stolen.bin"])
def test_a_clients_own_x_file_path_moves_nothing(
    nginx: Nginx, gunicorn: DjangoServer, cookies: dict[str, str], staging: Path, path: str
) -> None:
    victim = Path(settings.QUEUED_STORAGE_NGINX_UPLOAD_DIR) / "victim"
    victim.write_bytes(b"someone else's upload")
    try:
        # Straight to Django: no secret, refused.
        direct = requests.put(
            f"{gunicorn.url}{path}",
            headers={"X-File-Path": str(victim), "X-Queued-Storage-Secret": "guess"},
            cookies=cookies,
            timeout=30,
        )
        assert direct.status_code == 403
        assert direct.json() == {"error": "X-Queued-Storage-Secret is missing or wrong."}
        # Through nginx: nginx replaces the header with the path of the body it received.
        proxied = requests.put(
            f"{nginx.url}{path}",
            data=b"mine",
            headers={"X-File-Path": str(victim)},
            cookies=cookies,
            timeout=30,
        )
        assert proxied.status_code == 201, proxied.text
        assert (staging / proxied.json()["name"]).read_bytes() == b"mine"
        assert victim.read_bytes() == b"someone else's upload"
    finally:
        victim.unlink()


# -- nginx: the authorizer sees the name the upload stores ----------------------------------------
@pytest.fixture
def hook_log(staging: Path) -> Iterator[Path]:
    """What ``tests.hooks.name_hook`` records in the hooked servers, emptied before and after."""
    HOOK_LOG.unlink(missing_ok=True)
    yield HOOK_LOG
    HOOK_LOG.unlink(missing_ok=True)


def _put_raw(url: str, target: str, body: bytes, cookies: dict[str, str]) -> tuple[int, Any]:
    """PUT *body* to the request target exactly as written (no client re-encodes it)."""
    client = RawClient(url)
    try:
        client.send_head(
            "PUT", target, {"Content-Length": str(len(body)), "Cookie": _cookie_header(cookies)}
        )
        client.send(body)
        status, answer = client.response()
    finally:
        client.close()
    return status, json.loads(answer)


@pytest.mark.parametrize(
    ("target", "status", "hook_saw"),
    [
        ("/uploads/nginx/%70rivate/x.bin", 403, ["private/x.bin"]),  # an encoded letter
        ("/uploads/nginx/private%2Fx.bin", 403, ["private/x.bin"]),  # an encoded slash
        ("/uploads/%6Eginx/private/x.bin", 403, ["private/x.bin"]),  # the route encoded
        ("/uploads/nginx/?name=%70rivate/x.bin", 403, ["private/x.bin"]),
        ("/uploads/nginx/?name=ok.bin&name=private/x.bin", 403, []),  # which one? refused
        ("/uploads/nginx/a/%2e%2e/x.bin", 403, []),  # an encoded ..
        ("/uploads/nginx/a/b/%2e%2e/%2e%2e/etc/x", 403, []),
        ("/uploads/nginx/a%2F..%2Fx.bin", 403, []),  # .. between encoded slashes
        ("/uploads/nginx/%252e%252e/x.bin", 403, []),  # encoded twice
        ("/uploads/nginx/%FF.bin", 403, []),  # not UTF-8: "%FF" to WSGI, U+FFFD to ASGI
        ("/uploads/nginx/caf\u00e9.bin", 403, []),  # raw UTF-8 bytes, not percent-encoded
        ("/uploads/nginx/%0A.bin", 403, []),  # a newline: no URL pattern matches it
        # nginx resolves these dots itself, out of the upload location: its 10m limit answers.
        ("/uploads/nginx/%2e%2e/%2e%2e/etc/x", 413, []),
    ],
)
def test_nginx_refuses_encoded_names_before_accepting_the_body(
    hooked_nginx: Nginx,
    hook_log: Path,
    cookies: dict[str, str],
    staging: Path,
    target: str,
    status: int,
    hook_saw: list[str],
) -> None:
    body_dir = Path(settings.QUEUED_STORAGE_NGINX_UPLOAD_DIR)
    answered, _ = _refused_while_sending(
        hooked_nginx.url, target, {"Cookie": _cookie_header(cookies)}
    )
    assert answered == status
    assert list(body_dir.iterdir()) == []  # nginx wrote no body file
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()
    # The hook saw the decoded name at the auth step, and no view ever ran for the upload.
    assert hook_calls() == [{"step": "auth", "action": "upload", "name": n} for n in hook_saw]


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("/uploads/nginx/caf%C3%A9%20menu.bin", "caf\u00e9 menu.bin"),
        ("/uploads/nginx/cafe%CC%81.bin", "caf\u00e9.bin"),  # NFD, stored in NFC
        ("/uploads/nginx/menus%2Fweek.bin", "menus/week.bin"),  # an encoded slash is a slash
        ("/uploads/nginx/?name=caf%C3%A9+menu.bin", "caf\u00e9 menu.bin"),
        ("/uploads/%6Eginx/%70lain.bin", "plain.bin"),
        ("/uploads/nginx/50%25.bin", "50%.bin"),  # a percent sign, encoded once
    ],
)
def test_the_hook_sees_the_stored_name_before_and_after_the_body(
    hooked_nginx: Nginx,
    hook_log: Path,
    cookies: dict[str, str],
    staging: Path,
    target: str,
    name: str,
) -> None:
    status, answer = _put_raw(hooked_nginx.url, target, b"soup", cookies)
    assert status == 201, answer
    assert answer["name"] == name
    assert hook_calls() == [
        {"step": "auth", "action": "upload", "name": name},
        {"step": "view", "action": "upload", "name": name},
    ]
    assert (staging / name).read_bytes() == b"soup"
    assert list(Path(settings.QUEUED_STORAGE_NGINX_UPLOAD_DIR).iterdir()) == []


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (
            "/uploads/put/%252e%252e/x.bin",
            "The file name '%2e%2e/x.bin' holds the percent-escape '%2e' once decoded "
            "(encoded twice?); such names are refused, as a later decode would change them.",
        ),
        (
            "/uploads/put/?name=a.bin&name=b.bin",
            "Give the file name once (?name= appears more than once).",
        ),
    ],
)
def test_a_name_encoded_twice_or_given_twice_is_refused_unread(
    server: DjangoServer, cookies: dict[str, str], staging: Path, target: str, error: str
) -> None:
    status, body = _refused_while_sending(server.url, target, {"Cookie": _cookie_header(cookies)})
    assert status == 400
    assert json.loads(body) == {"error": error}
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


def test_a_path_that_is_not_utf8_is_refused_unread_by_wsgi_and_asgi(
    server: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    # gunicorn hands Django "%FF.bin", uvicorn "\ufffd.bin": either way, no file of that name.
    status, body = _refused_while_sending(
        server.url, "/uploads/put/%FF.bin", {"Cookie": _cookie_header(cookies)}
    )
    assert status == 400
    assert json.loads(body)["error"] in (
        "The file name '%FF.bin' holds the percent-escape '%FF' once decoded (encoded "
        "twice?); such names are refused, as a later decode would change them.",
        "The file name is not valid UTF-8 once percent-decoded; encode it as UTF-8.",
    )
    assert staged_files(staging) == []


# -- owners ---------------------------------------------------------------------------------------
def test_the_upload_views_record_the_uploader_as_owner(server: DjangoServer, staging: Path) -> None:
    user, cookies = _user_session("uploader", "add_storedfile", "view_storedfile")
    raw = requests.put(f"{server.url}/uploads/put/own/raw.bin", data=b"r", cookies=cookies)
    form = requests.post(
        f"{server.url}/uploads/put/", files={"file": ("form.bin", b"f")}, cookies=cookies
    )
    assert raw.status_code == form.status_code == 201, (raw.text, form.text)
    owners = dict(StoredFile.objects.values_list("name", "owner"))
    assert owners == {"own/raw.bin": str(user.pk), "form.bin": str(user.pk)}


def test_an_nginx_upload_records_the_uploader_as_owner(nginx: Nginx, staging: Path) -> None:
    user, cookies = _user_session("nginx-uploader", "add_storedfile")
    status, answer = _put_raw(nginx.url, "/uploads/nginx/own/big.bin", b"nginx", cookies)
    assert status == 201, answer
    assert StoredFile.objects.get(name="own/big.bin").owner == str(user.pk)


@override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all")
def test_an_upload_without_a_signed_in_user_has_no_owner(staging: Path) -> None:
    assert Client().put("/uploads/put/anonymous.bin", data=b"a").status_code == 201
    assert StoredFile.objects.get(name="anonymous.bin").owner == ""


def test_a_file_saved_from_code_has_an_owner_only_inside_owned_by(staging: Path) -> None:
    from django.core.files.base import ContentFile

    storage = storages["queued_delayed"]  # no transfer meanwhile
    with owned_by("42"):
        with CaptureQueriesContext(connections[StoredFile.db()]) as queries:
            owned = storage.save("code/owned.txt", ContentFile(b"o"))
        with owned_by("7"):
            inner = storage.save("code/inner.txt", ContentFile(b"i"))
        again = storage.save("code/again.txt", ContentFile(b"a"))
    plain = storage.save("code/plain.txt", ContentFile(b"p"))
    assert [storage.get_owner(n) for n in (owned, inner, again, plain)] == ["42", "7", "42", ""]
    assert storage.get_owner("code/none.txt") is None
    # The owner is part of the row's one INSERT: no other write.
    writes = [q["sql"] for q in queries if not q["sql"].startswith("SELECT")]
    assert len(writes) == 1
    assert writes[0].startswith('INSERT INTO "queued_storage_storedfile"')
    assert "owner" in writes[0]


# -- the status endpoint: the owner and staff only -----------------------------------------------
def _status(server: DjangoServer, name: str, cookies: dict[str, str]) -> requests.Response:
    return requests.get(f"{server.url}/uploads/status/{name}", cookies=cookies, timeout=30)


def test_status_is_shown_to_the_owner_and_staff_and_is_404_to_others(
    server: DjangoServer, staging: Path
) -> None:
    _, owner = _user_session("owner", "add_storedfile", "view_storedfile")
    _, other = _user_session("other", "add_storedfile", "view_storedfile")
    _, staff = _user_session("staff", "view_storedfile", is_staff=True)
    _, root = _user_session("root", is_superuser=True)
    put = requests.put(f"{server.url}/uploads/put/mine/scan.bin", data=b"scan", cookies=owner)
    assert put.status_code == 201, put.text
    for cookies in (owner, staff, root):
        shown = _status(server, "mine/scan.bin", cookies)
        assert shown.status_code == 200
        assert shown.json()["name"] == "mine/scan.bin"
    hidden = _status(server, "mine/scan.bin", other)
    storages["default"].delete("mine/scan.bin")
    missing = _status(server, "mine/scan.bin", other)
    # The same answer as for a name that does not exist: nothing tells the two apart.
    assert hidden.status_code == missing.status_code == 404
    assert hidden.content == missing.content
    assert hidden.json() == {"error": "No file 'mine/scan.bin' in this storage."}
    assert hidden.headers["Content-Type"] == missing.headers["Content-Type"]


def test_a_file_without_an_owner_shows_its_status_to_staff_only(
    gunicorn: DjangoServer, staging: Path
) -> None:
    from django.core.files.base import ContentFile

    _, user = _user_session("reader", "view_storedfile")
    _, staff = _user_session("staff", "view_storedfile", is_staff=True)
    name = storages["default"].save("code/report.txt", ContentFile(b"from code"))
    assert _status(gunicorn, name, staff).status_code == 200
    hidden = _status(gunicorn, name, user)
    assert hidden.status_code == 404
    assert hidden.json() == {"error": f"No file {name!r} in this storage."}


def test_an_upload_under_a_taken_name_tells_nothing_of_the_other_file(
    gunicorn: DjangoServer, staging: Path
) -> None:
    _, first = _user_session("first", "add_storedfile", "view_storedfile")
    _, second = _user_session("second", "add_storedfile", "view_storedfile")
    url = f"{gunicorn.url}/uploads/put/taken/report.pdf"
    assert requests.put(url, data=b"the first user's report", cookies=first).status_code == 201
    answer = requests.put(url, data=b"mine", cookies=second)
    assert answer.status_code == 201, answer.text
    stored = answer.json()["name"]
    # Only that the name was taken shows (the stored name differs); the rest is the new file's.
    assert stored != "taken/report.pdf"
    assert stored.startswith("taken/report_") and stored.endswith(".pdf")
    assert answer.json() == {
        "name": stored,
        "state": "pending",
        "size": 4,
        "bytes_done": 0,
        "local": True,
        "url": f"/staging/{stored}",
        "reason": None,
        "status_url": f"/uploads/status/{stored}",
    }
    assert _status(gunicorn, stored, second).status_code == 200
    assert _status(gunicorn, "taken/report.pdf", second).status_code == 404
    assert (staging / "taken/report.pdf").read_bytes() == b"the first user's report"


def test_a_hook_reads_the_owner_with_owner_of(
    hooked_nginx: Nginx, hook_log: Path, staging: Path
) -> None:
    user, cookies = _user_session("hooked", "add_storedfile", "view_storedfile")
    status, answer = _put_raw(hooked_nginx.url, "/uploads/nginx/hooked.bin", b"h", cookies)
    assert status == 201, answer
    shown = requests.get(f"{hooked_nginx.url}/uploads/status/hooked.bin", cookies=cookies)
    missing = requests.get(f"{hooked_nginx.url}/uploads/status/none.bin", cookies=cookies)
    assert (shown.status_code, missing.status_code) == (200, 404)
    assert hook_calls()[-2:] == [
        {"step": "view", "action": "status", "name": "hooked.bin", "owner": str(user.pk)},
        {"step": "view", "action": "status", "name": "none.bin", "owner": None},
    ]


def test_owner_of_reads_a_storage_and_refuses_a_request_routed_elsewhere(staging: Path) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.core.files.base import ContentFile
    from django.test import RequestFactory

    from queued_storage.views import owner_of

    storage = storages["queued_delayed"]  # no transfer meanwhile
    with owned_by("42"):
        name = storage.save("owned/of.txt", ContentFile(b"x"))
    assert owner_of(storage, name) == "42"
    assert owner_of(storage, "owned/none.txt") is None
    with pytest.raises(ImproperlyConfigured, match="owner_of\\(request, name\\) needs a request"):
        owner_of(RequestFactory().get("/uploads/nginx-auth/"), name)


# -- nginx view: forged paths (in process) --------------------------------------------------------
@pytest.fixture
def nginx_dir(tmp_path: Path) -> Iterator[Path]:
    body_dir = tmp_path / "bodies"
    body_dir.mkdir()
    with override_settings(
        QUEUED_STORAGE_NGINX_UPLOAD_DIR=str(body_dir),
        QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all",
    ):
        yield body_dir


def _nginx_put(path: str, name: str = "moved.bin", **headers: str) -> Any:
    return Client().put(
        f"/uploads/nginx/{name}",
        headers={"X-Queued-Storage-Secret": SECRET, "X-File-Path": path, **headers},
    )


def test_nginx_file_inside_the_directory_is_renamed_into_staging(
    nginx_dir: Path, staging: Path
) -> None:
    body = nginx_dir / "0000000001"
    body.write_bytes(b"nginx wrote this")
    inode = body.stat().st_ino
    response = _nginx_put(str(body), **{"X-Content-Length": "16"})
    assert response.status_code == 201, response.content
    assert not body.exists()
    assert (staging / "moved.bin").read_bytes() == b"nginx wrote this"
    assert (staging / "moved.bin").stat().st_ino == inode  # a rename, not a copy
    assert StoredFile.get_row("default", "moved.bin") is not None


def test_nginx_file_on_another_filesystem_is_copied_then_removed(staging: Path) -> None:
    shm = Path("/dev/shm")
    need_tool(
        "a second filesystem (/dev/shm) to move from",
        shm.is_dir() and os.stat(shm).st_dev != os.stat(staging).st_dev,
        "mount a tmpfs on /dev/shm (the staging directory must be on another filesystem)",
    )
    body_dir = shm / f"qs-bodies-{os.getpid()}"
    body_dir.mkdir()
    try:
        body = body_dir / "0000000002"
        body.write_bytes(b"across filesystems")
        with override_settings(
            QUEUED_STORAGE_NGINX_UPLOAD_DIR=str(body_dir),
            QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all",
        ):
            response = _nginx_put(str(body))
        assert response.status_code == 201, response.content
        assert not body.exists()
        assert (staging / "moved.bin").read_bytes() == b"across filesystems"
    finally:
        shutil.rmtree(body_dir, ignore_errors=True)


def _forged(nginx_dir: Path, tmp_path: Path, kind: str) -> tuple[str, Path]:
    """A forged X-File-Path and the file that must stay where it is."""
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not an upload")
    inside = nginx_dir / "0000000003"
    inside.write_bytes(b"an upload")
    if kind == "outside":
        return str(outside), outside
    if kind == "symlink-out":
        (nginx_dir / "link").symlink_to(outside)
        return str(nginx_dir / "link"), outside
    if kind == "symlink-in":
        (nginx_dir / "link").symlink_to(inside)
        return str(nginx_dir / "link"), inside
    if kind == "dotdot":
        return f"{nginx_dir}/../{outside.name}", outside
    if kind == "dotdot-inside":
        return f"{nginx_dir}/sub/../{inside.name}", inside
    if kind == "nul":
        return f"{inside}\x00.txt", inside
    if kind == "relative":
        return inside.name, inside
    if kind == "directory":
        (nginx_dir / "sub").mkdir()
        return str(nginx_dir / "sub"), inside
    if kind == "hardlink":
        os.link(inside, nginx_dir / "second-link")
        return str(inside), inside
    if kind == "the-directory-itself":
        return str(nginx_dir), inside
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("outside", "X-File-Path is outside QUEUED_STORAGE_NGINX_UPLOAD_DIR."),
        ("symlink-out", "X-File-Path is outside QUEUED_STORAGE_NGINX_UPLOAD_DIR."),
        ("symlink-in", "X-File-Path is a symbolic link."),
        ("dotdot", "X-File-Path must not contain '..'."),
        ("dotdot-inside", "X-File-Path must not contain '..'."),
        ("nul", "X-File-Path is empty or contains control characters."),
        ("relative", "X-File-Path must be an absolute path."),
        ("directory", "X-File-Path is not a regular file."),
        ("hardlink", "X-File-Path has other hard links; refusing to move it."),
        ("the-directory-itself", "X-File-Path is outside QUEUED_STORAGE_NGINX_UPLOAD_DIR."),
    ],
)
def test_forged_nginx_path_is_400_and_nothing_moves(
    nginx_dir: Path, staging: Path, tmp_path: Path, kind: str, error: str
) -> None:
    forged, target = _forged(nginx_dir, tmp_path, kind)
    before = target.read_bytes()
    if kind == "nul":
        # No HTTP client sends a NUL in a header; ask the view directly.
        from django.test import RequestFactory

        from queued_storage.views import NginxUploadView

        request = RequestFactory().put(
            "/uploads/nginx/moved.bin",
            headers={"X-Queued-Storage-Secret": SECRET, "X-File-Path": forged},
        )
        response = NginxUploadView.as_view()(request, name="moved.bin")
    else:
        response = _nginx_put(forged)
    assert response.status_code == 400
    assert json.loads(response.content) == {"error": error}
    assert target.read_bytes() == before
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


def test_nginx_file_of_another_size_than_declared_is_400(nginx_dir: Path, staging: Path) -> None:
    body = nginx_dir / "0000000004"
    body.write_bytes(b"12345")
    response = _nginx_put(str(body), **{"X-Content-Length": "6"})
    assert response.status_code == 400
    assert body.read_bytes() == b"12345"
    assert staged_files(staging) == []


def test_nginx_view_without_the_secret_is_403(nginx_dir: Path, staging: Path) -> None:
    body = nginx_dir / "0000000005"
    body.write_bytes(b"x")
    response = Client().put("/uploads/nginx/x.bin", headers={"X-File-Path": str(body)})
    assert response.status_code == 403
    assert json.loads(response.content) == {"error": "X-Queued-Storage-Secret is missing or wrong."}
    assert body.exists()


@override_settings(QUEUED_STORAGE_NGINX_UPLOAD_DIR=None)
def test_nginx_view_is_404_while_the_directory_is_not_set() -> None:
    response = Client().put("/uploads/nginx/x.bin", headers={"X-Queued-Storage-Secret": SECRET})
    assert response.status_code == 404


# -- nginx auth endpoint (in process) -------------------------------------------------------------
def _auth(uri: str, cookies: dict[str, str] | None = None, **headers: str) -> int:
    client = Client()
    for key, value in (cookies or {}).items():
        client.cookies[key] = value
    response = client.get(
        "/uploads/nginx-auth/",
        headers={"X-Queued-Storage-Secret": SECRET, "X-Original-URI": uri, **headers},
    )
    return response.status_code


def test_nginx_auth_answers_204_401_403(cookies: dict[str, str]) -> None:
    assert _auth("/uploads/nginx/a.bin", cookies) == 204
    assert _auth("/uploads/nginx/?name=a.bin", cookies) == 204
    assert _auth("/uploads/nginx/a.bin") == 401
    assert _auth("/uploads/nginx/a.bin", _session_for("view_storedfile")) == 403
    assert _auth("/uploads/nginx/../etc/passwd", cookies) == 403
    assert _auth("/uploads/put/a.bin", cookies) == 403  # not an nginx upload URL
    assert _auth("/nowhere", cookies) == 403
    big = str(6 * 1024**3)
    assert _auth("/uploads/nginx/a.bin", cookies, **{"X-Original-Content-Length": big}) == 403
    assert _auth("/uploads/nginx/a.bin", cookies, **{"X-Queued-Storage-Secret": "no"}) == 403


# -- views in process: names, methods, status -----------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "a/../../b", "/etc/passwd", "a//b", "a/", "./a", "a\\b", "a\x01b", "x" * 256],
)
def test_bad_names_are_refused_400(name: str, staging: Path) -> None:
    from django.test import RequestFactory

    from queued_storage.views import UploadView

    request = RequestFactory().put("/uploads/put/x", data=b"abc", content_type="text/plain")
    with override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all"):
        response = UploadView.as_view()(request, name=name)
    assert response.status_code == 400
    assert staged_files(staging) == []


def test_names_under_the_spool_directory_are_reserved(staging: Path) -> None:
    with override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all"):
        response = Client().put(f"/uploads/put/{SPOOL_DIRNAME}/x.bin", data=b"abc")
    assert response.status_code == 400


@override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all")
def test_post_needs_octet_stream_or_a_form(staging: Path) -> None:
    response = Client().post("/uploads/put/a.txt", data=b"abc", content_type="text/plain")
    assert response.status_code == 415


@override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all")
def test_an_upload_under_an_existing_file_is_400_and_leaves_nothing(staging: Path) -> None:
    client = Client()
    assert client.put("/uploads/put/ok.txt", data=b"first").status_code == 201
    response = client.put("/uploads/put/ok.txt/inner.txt", data=b"inner")
    assert response.status_code == 400
    assert "a folder of that name is a file" in response.json()["error"]
    assert staged_files(staging) == ["ok.txt"]
    assert list(StoredFile.objects.values_list("name", flat=True)) == ["ok.txt"]


@override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all")
def test_a_name_with_a_bidirectional_control_is_refused_unread(staging: Path) -> None:
    response = Client().put("/uploads/put/invoice%E2%80%AEtxt.exe", data=b"x")
    assert response.status_code == 400
    assert "bidirectional control" in response.json()["error"]
    assert staged_files(staging) == []


@override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all")
def test_raw_upload_without_a_name_is_400(staging: Path) -> None:
    response = Client().put("/uploads/put/", data=b"abc")
    assert response.status_code == 400
    assert json.loads(response.content) == {
        "error": "The upload needs a file name (in the URL or ?name=)."
    }


@override_settings(QUEUED_STORAGE_UPLOAD_STORAGE="queued_delayed")  # no transfer meanwhile
def test_status_endpoint_json(staging: Path) -> None:
    from django.core.files.base import ContentFile

    user, cookies = _user_session("status-json", "add_storedfile", "view_storedfile")
    client = Client()
    client.cookies.load(cookies)
    with owned_by(str(user.pk)):
        name = storages["queued_delayed"].save("status/one.txt", ContentFile(b"12345"))
    response = client.get("/uploads/status/status/one.txt")
    assert response.status_code == 200
    assert response.json() == {
        "name": "status/one.txt",
        "state": "pending",
        "size": 5,
        "bytes_done": 0,
        "local": True,
        "url": f"/staging/{name}",
        "reason": None,
    }
    assert client.get("/uploads/status/status/none.txt").status_code == 404
    assert Client().get("/uploads/status/status/one.txt").status_code == 401
    other = Client()
    other.cookies.load(_session_for("add_storedfile"))
    assert other.get("/uploads/status/status/one.txt").status_code == 403


def test_custom_authorizer_setting_is_used(staging: Path) -> None:
    with override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.token_authorizer"):
        refused = Client().put("/uploads/put/t.bin", data=b"abc")
        allowed = Client().put(
            "/uploads/put/t.bin", data=b"abc", headers={"Authorization": "Token upload-token"}
        )
    assert refused.status_code == 401
    assert refused.content == b"token please"
    assert allowed.status_code == 201
    assert (staging / "t.bin").read_bytes() == b"abc"


def token_authorizer(request: Any, name: str, action: str) -> Any:
    """An example hook: a bearer token instead of Django's users and permissions."""
    if request.headers.get("Authorization") == "Token upload-token":
        return True
    return HttpResponse(b"token please", status=401)


def test_subclass_can_override_authorize(staging: Path) -> None:
    from django.test import RequestFactory

    from queued_storage.views import UploadView

    class OnlyPdf(UploadView):
        def authorize(self, request: Any, name: str) -> bool:
            return name.endswith(".pdf")

    factory = RequestFactory()
    refused = OnlyPdf.as_view()(factory.put("/x", data=b"a", content_type="x/y"), name="a.exe")
    allowed = OnlyPdf.as_view()(factory.put("/x", data=b"a", content_type="x/y"), name="a.pdf")
    assert refused.status_code == 403
    assert allowed.status_code == 201


def _answered(clients: list[RawClient]) -> list[RawClient]:
    """Those of *clients* with bytes of an answer to read."""
    readable, _, _ = select.select([c.sock for c in clients], [], [], 0)
    return [c for c in clients if c.sock in readable]


def test_a_burst_of_uploads_beyond_the_staging_budget_is_refused_507_before_any_body_is_sent(
    budgeted: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    # Six uploads of 3 MiB declare their length at once; the budget is 8 MiB, nothing waits:
    # two fit, whichever come first. Their bodies are on the way (reserved), not on the disk.
    # (A storage that does not dispatch: a running transfer's ledger writes would race the
    # second save's on SQLite, "database is locked", which is not what this test is about.)
    size = 3 * MiB
    clients = [RawClient(budgeted.url) for _ in range(6)]
    try:
        for number, client in enumerate(clients):
            client.send_head(
                "PUT",
                f"/delayed-put/burst-{number}.bin",
                {"Content-Length": str(size), "Cookie": _cookie_header(cookies)},
            )
        wait_for(lambda: len(_answered(clients)) >= 4, what="four answers")
        refused = _answered(clients)
        assert len(refused) == 4
        for client in refused:  # answered before a byte of their body was sent
            status, body = client.response()
            assert (status, json.loads(body)) == (
                507,
                {"error": "The staging area is full; nothing was kept. Retry later."},
            )
        admitted = [c for c in clients if c not in refused]
        for client in admitted:
            client.send(_payload(size))
            status, body = client.response()
            assert status == 201, body
    finally:
        for client in clients:
            client.close()
    stored = staged_files(staging)  # the reservations are gone too
    assert len(stored) == 2, stored
    assert sum((staging / name).stat().st_size for name in stored) == 2 * size  # <= 8 MiB
    assert StoredFile.objects.count() == 2


_HOLDER = """
import sys, time
from queued_storage.uploads import reserve_in_flight
with reserve_in_flight(sys.argv[1], 5000, lambda in_flight: None):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_reservation_counts_in_every_process_and_a_killed_process_releases_it(
    tmp_path: Path,
) -> None:
    directory = str(tmp_path / "in-flight")
    root = str(Path(__file__).resolve().parents[1])
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, directory],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": root},
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        seen: list[int] = []
        with (
            reserve_in_flight(directory, 300, seen.append),
            reserve_in_flight(directory, 20, seen.append),
        ):
            assert len(os.listdir(directory)) == 3
        assert seen == [5000, 5300]  # the other process's, then this one's too
        holder.send_signal(signal.SIGKILL)  # no cleanup: the kernel drops its flock
        holder.wait(timeout=10)
        with reserve_in_flight(directory, 1, seen.append):
            assert len(os.listdir(directory)) == 1  # the dead process's file is gone
        assert seen == [5000, 5300, 0]
        assert os.listdir(directory) == []
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


@override_settings(
    QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all",
    QUEUED_STORAGE_STAGING_BUDGET=1000,
)
def test_upload_over_the_staging_budget_is_507_before_reading(staging: Path) -> None:
    response = Client().put("/uploads/put/over.bin", data=b"b" * 1001)
    assert response.status_code == 507
    assert json.loads(response.content) == {
        "error": "The staging area is full; nothing was kept. Retry later."
    }
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


@override_settings(
    QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all",
    QUEUED_STORAGE_STAGING_BUDGET=1000,
)
def test_staging_full_from_save_is_507_and_the_spool_is_emptied(
    staging: Path, monkeypatch: Any
) -> None:
    from queued_storage.views import upload

    monkeypatch.setattr(upload, "budget_reserved", lambda *args: contextlib.nullcontext())  # a race
    response = Client().put("/uploads/put/over.bin", data=b"b" * 1001)
    assert response.status_code == 507
    assert staged_files(staging) == []
    assert not StoredFile.objects.exists()


def test_a_burst_over_the_staging_budget_on_a_sqlite_ledger_is_201_or_507_never_500(
    staging: Path,
) -> None:
    # A SQLite transaction that has read cannot wait for the write lock: the budget's SELECT
    # must not run before the ledger INSERT in the save's transaction (it was 10-15 x 500
    # "database is locked" in 20 uploads). Signed in, with an authorizer that does not look at
    # the user: the session and the user are read when the owner is recorded, not before the
    # save's transaction either.
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    size, budget, uploads = 64 * 1024, 10 * 64 * 1024, 20
    user, cookies = _user_session("burst-uploader")
    with (
        django_server(
            "gunicorn",
            "web-gunicorn-budget",
            {
                "QS_TEST_UPLOAD_AUTHORIZER": "tests.test_uploads.allow_all",
                "QS_TEST_STAGING_BUDGET": str(budget),
            },
            threads=uploads,
        ) as server,
        concurrent.futures.ThreadPoolExecutor(uploads) as pool,
    ):
        answers = list(
            pool.map(
                lambda i: requests.put(
                    f"{server.url}/delayed-put/burst/{i}.bin",
                    data=b"b" * size,
                    cookies=cookies,
                    timeout=60,
                ),
                range(uploads),
            )
        )
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {201, 507}, [a.text for a in answers if a.status_code not in (201, 507)]
    saved = statuses.count(201)
    # Nothing is transferred (every saved file still waits), and bodies in flight count too.
    assert 1 <= saved <= budget // size
    assert len(staged_files(staging)) == saved
    assert StoredFile.objects.count() == saved
    assert set(StoredFile.objects.values_list("owner", flat=True)) == {str(user.pk)}


@override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all")
def test_a_wsgi_server_that_hides_its_socket_is_logged_once(
    staging: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from queued_storage.bodies import _log_no_idle_timeout

    _log_no_idle_timeout.cache_clear()  # once per process: forget earlier tests
    with caplog.at_level(logging.WARNING, logger="queued_storage.bodies"):
        for name in ("one.bin", "two.bin"):  # Django's test client: no gunicorn.socket
            assert Client().put(f"/uploads/put/{name}", data=b"x").status_code == 201
    assert [record.getMessage() for record in caplog.records] == [
        "QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT cannot be applied under an unknown WSGI server "
        "(only under gunicorn and queued_storage.asgi): a client that stops sending holds its "
        "thread as long as the server allows. Put nginx in front or serve through "
        "queued_storage.asgi (docs/uploads.md, Slow clients)."
    ]


@override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all")
def test_names_are_stored_in_nfc(staging: Path) -> None:
    response = Client().put("/uploads/put/cafe\u0301.txt", data=b"nfc")
    assert response.status_code == 201
    assert response.json()["name"] == "caf\u00e9.txt"


def test_spool_files_are_renamed_into_place(staging: Path, monkeypatch: Any) -> None:
    from queued_storage.storage import QueuedStorage

    seen: dict[str, int] = {}
    real_save = QueuedStorage.save

    def spy(self: Any, name: Any, content: Any, max_length: Any = None) -> str:
        seen["inode"] = os.stat(content.temporary_file_path()).st_ino
        return real_save(self, name, content, max_length)

    monkeypatch.setattr(QueuedStorage, "save", spy)
    with override_settings(QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all"):
        response = Client().put("/uploads/put/renamed.bin", data=b"r" * 100_000)
    assert response.status_code == 201
    assert (staging / "renamed.bin").stat().st_ino == seen["inode"]
    assert staged_files(staging) == ["renamed.bin"]
