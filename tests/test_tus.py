"""tus 1.0 resumable uploads (``queued_storage.tus``) against real gunicorn and uvicorn.

The client is ``tuspy`` (an independent tus implementation from PyPI), or a raw socket where a
test needs to stop in the middle of a body. Interruptions are real: a TCP fault proxy between
client and server cuts the connection, the web process is killed and started again, and a
client process (``tests/tus_client.py``) is killed with SIGKILL. The 256 MiB version with
three interruptions is marked ``faults`` (``make test-faults``). Several web processes on one
staging directory take turns with the chunks of one upload.
"""

# ruff: noqa: F811  (the fixtures of test_uploads are imported, and used as arguments)
from __future__ import annotations

import base64
import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError
from tusclient.uploader import Uploader

import queued_storage.uploads as uploads
from queued_storage.conf import settings as qs_settings
from queued_storage.exceptions import StagingFull
from queued_storage.ledger import check_staging_budget
from queued_storage.models import State, StoredFile, TusUpload
from queued_storage.names import TUS_DIRNAME
from tests.harness.faults import TcpFaultProxy
from tests.harness.rawhttp import TUS_RESUMABLE, RawClient, start_tus_patch
from tests.harness.rawhttp import cookie_header as _cookie_header
from tests.harness.suite import django_server, nginx_in_front, wait_for
from tests.harness.webservers import DjangoServer, Nginx
from tests.harness.workers import PROJECT_ROOT
from tests.test_faults import figures
from tests.test_uploads import (  # noqa: F401  (fixtures)
    MiB,
    _answered,
    _payload,
    _session_for,
    _wait_state,
    budgeted,
    cookies,
    gunicorn,
    server,
    staging,
    uvicorn,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TUS = TUS_RESUMABLE


def _meta(name: str, content_type: str = "application/octet-stream") -> str:
    encode = base64.b64encode
    name_b64, type_b64 = encode(name.encode()).decode(), encode(content_type.encode()).decode()
    return f"filename {name_b64},filetype {type_b64}"


def _client(base: str, cookies: dict[str, str]) -> TusClient:
    return TusClient(f"{base}/uploads/tus/", headers={"Cookie": _cookie_header(cookies)})


_OPENED: list[Any] = []


@pytest.fixture(autouse=True)
def _close_streams() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def _opened(path: Path) -> Any:
    """*path* open for tuspy (its file_path mode leaves the files it opens unclosed)."""
    stream = path.open("rb")
    _OPENED.append(stream)
    return stream


def _stream(path: Path, data: bytes) -> Any:
    path.write_bytes(data)
    return _opened(path)


def _partial(staging: Path, url: str) -> Path:
    return staging / TUS_DIRNAME / url.rstrip("/").rsplit("/", 1)[-1]


def _create(base: str, cookies: dict[str, str], name: str, length: int) -> str:
    response = requests.post(
        f"{base}/uploads/tus/",
        headers={
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": _meta(name),
            "Cookie": _cookie_header(cookies),
        },
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return base + response.headers["Location"]


def _offset(url: str, cookies: dict[str, str]) -> int:
    response = requests.head(url, headers={**TUS, "Cookie": _cookie_header(cookies)}, timeout=10)
    assert response.status_code == 200, response.status_code
    return int(response.headers["Upload-Offset"])


def _patch(
    url: str, cookies: dict[str, str], offset: int, data: bytes, **headers: str
) -> requests.Response:
    return requests.patch(
        url,
        data=data,
        headers={
            **TUS,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Cookie": _cookie_header(cookies),
            **headers,
        },
        timeout=60,
    )


def _s3_body(clean: Any, name: str) -> bytes:
    return clean.get_object(Bucket=settings.BUCKET, Key=name)["Body"].read()  # type: ignore[no-any-return]


# -- protocol -------------------------------------------------------------------------------------
def test_options_advertises_version_extensions_limit_and_checksums(server: DjangoServer) -> None:
    response = requests.options(f"{server.url}/uploads/tus/", timeout=10)
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Extension"] == (
        "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination"
    )
    assert response.headers["Tus-Max-Size"] == str(5 * 1024**3)
    assert response.headers["Tus-Checksum-Algorithm"] == "sha1,md5,sha256"


def test_a_request_without_tus_resumable_is_refused_412(
    server: DjangoServer, cookies: dict[str, str]
) -> None:
    response = requests.post(
        f"{server.url}/uploads/tus/",
        headers={"Upload-Length": "3", "Cookie": _cookie_header(cookies)},
        timeout=10,
    )
    assert response.status_code == 412
    assert response.headers["Tus-Version"] == "1.0.0"


@pytest.mark.parametrize("value", ["\u00b2", "+5", "1_0", "0x10", "-1", "9" * 30])
def test_a_length_or_offset_that_is_not_plain_digits_is_400_naming_the_header(
    server: DjangoServer, cookies: dict[str, str], value: str
) -> None:
    headers = {**TUS, "Cookie": _cookie_header(cookies), "Upload-Metadata": _meta("digits.bin")}
    created = requests.post(
        f"{server.url}/uploads/tus/", headers={**headers, "Upload-Length": value}, timeout=10
    )
    assert created.status_code == 400, created.text
    assert created.text.startswith("Upload-Length "), created.text
    url = _create(server.url, cookies, "digits.bin", 10)
    patched = requests.patch(
        url,
        data=b"0123456789",
        headers={
            **headers,
            "Upload-Offset": value,
            "Content-Type": "application/offset+octet-stream",
        },
        timeout=10,
    )
    assert patched.status_code == 400, patched.text
    assert patched.text.startswith("Upload-Offset "), patched.text
    assert _offset(url, cookies) == 0


@pytest.mark.parametrize("filetype", ["text/plain\x00", "image/p\u00e9g", "a\nb"])
def test_a_file_type_that_is_not_printable_ascii_is_400_and_nothing_is_created(
    server: DjangoServer, cookies: dict[str, str], staging: Path, filetype: str
) -> None:
    response = requests.post(
        f"{server.url}/uploads/tus/",
        headers={
            **TUS,
            "Upload-Length": "10",
            "Upload-Metadata": _meta("typed.bin", filetype),
            "Cookie": _cookie_header(cookies),
        },
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert "filetype" in response.text
    assert not TusUpload.objects.exists()
    assert list((staging / TUS_DIRNAME).glob("*")) == []


def test_tuspy_upload_is_moved_into_place_and_ends_byte_identical_on_s3(
    server: DjangoServer, worker: Any, clean: Any, cookies: dict[str, str], tmp_path: Path
) -> None:
    payload = _payload(3 * MiB + 17, server.kind.encode())
    staging = Path(settings.STAGING_ROOT)
    uploader = _client(server.url, cookies).uploader(
        file_stream=_stream(tmp_path / "clip.mp4", payload),
        chunk_size=MiB,
        metadata={"filename": "tus/clip.mp4", "filetype": "video/mp4"},
        upload_checksum=True,  # sha1 per chunk
    )
    uploader.upload(stop_at=2 * MiB)
    assert _offset(uploader.url, cookies) == 2 * MiB
    inode = _partial(staging, uploader.url).stat().st_ino
    uploader.upload()
    headers = uploader.request.response_headers
    assert headers["upload-offset"] == str(len(payload))
    assert headers["x-queued-storage-name"] == "tus/clip.mp4"
    assert headers["x-queued-storage-status-url"] == "/uploads/status/tus/clip.mp4"
    assert (staging / "tus/clip.mp4").stat().st_ino == inode  # renamed, not copied
    assert not _partial(staging, uploader.url).exists()
    row = StoredFile.get_row("default", "tus/clip.mp4")
    assert row is not None and row.owner != ""
    status = _wait_state(server.url, cookies, "tus/clip.mp4", State.REMOTE)
    assert status["size"] == len(payload)
    assert _s3_body(clean, "tus/clip.mp4") == payload
    # The finished upload still answers HEAD with the stored name, until it expires.
    head = requests.head(uploader.url, headers={**TUS, "Cookie": _cookie_header(cookies)})
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(payload))
    assert head.headers["X-Queued-Storage-Name"] == "tus/clip.mp4"


def test_creation_with_upload_takes_the_first_chunk_in_the_post(
    server: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    payload = _payload(MiB, b"cwu")
    response = requests.post(
        f"{server.url}/uploads/tus/",
        data=payload[:1000],
        headers={
            **TUS,
            "Upload-Length": str(len(payload)),
            "Upload-Metadata": _meta("cwu.bin"),
            "Content-Type": "application/offset+octet-stream",
            "Cookie": _cookie_header(cookies),
        },
        timeout=10,
    )
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == "1000"
    url = server.url + response.headers["Location"]
    done = _patch(url, cookies, 1000, payload[1000:])
    assert done.status_code == 204, done.text
    assert done.headers["X-Queued-Storage-Name"] == "cwu.bin"
    assert (staging / "cwu.bin").read_bytes() == payload


# -- checksums, concurrency, termination, expiry --------------------------------------------------
def test_a_chunk_with_a_wrong_checksum_is_refused_460_and_the_upload_resumes(
    server: DjangoServer, staging: Path, cookies: dict[str, str], tmp_path: Path
) -> None:
    payload = _payload(2 * MiB, b"sum")
    url = _create(server.url, cookies, "summed.bin", len(payload))
    wrong = base64.b64encode(hashlib.sha1(b"something else").digest()).decode()
    refused = _patch(url, cookies, 0, payload[:MiB], **{"Upload-Checksum": f"sha1 {wrong}"})
    assert refused.status_code == 460
    assert refused.text == (
        "Upload-Checksum (sha1) does not match the chunk; it was discarded, send it again."
    )
    assert _offset(url, cookies) == 0
    assert _partial(staging, url).stat().st_size == 0
    md5 = base64.b64encode(hashlib.md5(payload[:MiB]).digest()).decode()
    accepted = _patch(url, cookies, 0, payload[:MiB], **{"Upload-Checksum": f"md5 {md5}"})
    assert accepted.status_code == 204
    uploader = _client(server.url, cookies).uploader(
        file_stream=_stream(tmp_path / "summed.bin", payload), url=url, upload_checksum=True
    )
    assert uploader.offset == MiB  # tuspy asked the server (HEAD)
    uploader.upload()
    assert (staging / "summed.bin").read_bytes() == payload


def test_concurrent_patches_one_wins_the_other_gets_409_and_nothing_is_corrupted(
    server: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    payload = _payload(2 * MiB, b"winner")
    url = _create(server.url, cookies, "raced.bin", len(payload))
    winner = start_tus_patch(url, cookies, 0, payload[:MiB], len(payload))
    loser: dict[str, Any] = {}
    try:
        wait_for(lambda: _partial(staging, url).stat().st_size >= MiB, what="the first MiB")

        def race() -> None:
            loser["response"] = _patch(url, cookies, 0, b"L" * len(payload))

        thread = threading.Thread(target=race)
        thread.start()
        thread.join(timeout=2)  # gunicorn answers at once; uvicorn after the winner's body
        winner.send(payload[MiB:])
        status = winner.status()
        thread.join(timeout=30)
    finally:
        winner.close()
    assert status == 204
    assert loser["response"].status_code == 409
    assert (staging / "raced.bin").read_bytes() == payload


def test_termination_deletes_the_partial_file_and_the_upload(
    server: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    url = _create(server.url, cookies, "dropped.bin", 2 * MiB)
    assert _patch(url, cookies, 0, _payload(MiB)).status_code == 204
    assert _partial(staging, url).stat().st_size == MiB
    gone = requests.delete(url, headers={**TUS, "Cookie": _cookie_header(cookies)}, timeout=10)
    assert gone.status_code == 204
    assert gone.headers["Tus-Resumable"] == "1.0.0"
    assert not _partial(staging, url).exists()
    assert not TusUpload.objects.exists()
    head = requests.head(url, headers={**TUS, "Cookie": _cookie_header(cookies)}, timeout=10)
    assert head.status_code == 404


def test_an_expired_upload_answers_410_and_cleanup_removes_it(
    gunicorn: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    url = _create(gunicorn.url, cookies, "stale.bin", 2 * MiB)
    assert _patch(url, cookies, 0, _payload(MiB)).status_code == 204
    assert StoredFile.waiting_bytes(qs_settings.HOST) == 2 * MiB  # reserved
    with override_settings(QUEUED_STORAGE_STAGING_BUDGET=3 * MiB), pytest.raises(StagingFull):
        check_staging_budget("other.bin", 2 * MiB)
    past = timezone.now() - timezone.timedelta(seconds=1)
    TusUpload.objects.update(expires=past)  # as if QUEUED_STORAGE_TUS_EXPIRY had passed
    head = requests.head(url, headers={**TUS, "Cookie": _cookie_header(cookies)}, timeout=10)
    assert head.status_code == 410
    assert _patch(url, cookies, MiB, _payload(MiB)).status_code == 410
    call_command("queued_storage", "cleanup", "--storage", "default", verbosity=0)
    assert not _partial(staging, url).exists()
    assert not TusUpload.objects.exists()
    assert StoredFile.waiting_bytes(qs_settings.HOST) == 0
    head = requests.head(url, headers={**TUS, "Cookie": _cookie_header(cookies)}, timeout=10)
    assert head.status_code == 404


# -- authorisation and limits ---------------------------------------------------------------------
def test_an_anonymous_client_is_refused_before_its_body_is_read(
    server: DjangoServer, staging: Path
) -> None:
    client = RawClient(server.url)
    try:
        client.send_head(
            "POST",
            "/uploads/tus/",
            {
                **TUS,
                "Upload-Length": str(512 * MiB),
                "Upload-Metadata": _meta("secret.bin"),
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(512 * MiB),
            },
        )
        client.send(b"z" * 65536)
        status = client.status()  # answered while 512 MiB are still to come
    finally:
        client.close()
    assert status == 401
    assert not TusUpload.objects.exists()
    assert not (staging / TUS_DIRNAME).exists() or not any((staging / TUS_DIRNAME).iterdir())


def test_another_users_upload_is_a_404_and_the_owner_continues(
    server: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    url = _create(server.url, cookies, "mine.bin", MiB)
    other = _session_for("add_storedfile")
    client = start_tus_patch(url, other, 0, b"x" * 65536, 64 * MiB)
    try:
        status = client.status()
    finally:
        client.close()
    assert status == 404
    assert _offset(url, cookies) == 0
    assert _patch(url, cookies, 0, _payload(MiB)).status_code == 204


def _answer(method: str, url: str, cookies: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers (all but ``Date``) of a tus request to *url*."""
    headers = {**TUS, "Cookie": _cookie_header(cookies)} if cookies else dict(TUS)
    if method == "PATCH":
        headers |= {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    response = requests.request(method, url, headers=headers, data=b"1234", timeout=10)
    shown = {k.lower(): v for k, v in response.headers.items() if k.lower() != "date"}
    return response.status_code, response.content, shown


@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE"])
def test_someone_elses_upload_id_answers_exactly_like_an_unknown_id(
    server: DjangoServer, staging: Path, cookies: dict[str, str], method: str
) -> None:
    url = _create(server.url, cookies, "private.bin", 8)
    unknown = f"{server.url}/uploads/tus/{uuid.uuid4()}"
    clients = {
        "anonymous": {},  # the authorizer would say 401
        "without the permission": _session_for(),  # 403
        "with the permission": _session_for("add_storedfile"),
    }
    for who, client_cookies in clients.items():
        theirs = _answer(method, url, client_cookies)
        assert theirs == _answer(method, unknown, client_cookies), who
        status, body, headers = theirs
        assert status == 404, who
        assert body == (b"" if method == "HEAD" else b"No such upload."), who
        assert headers["vary"] == "Cookie", who
    assert _offset(url, cookies) == 0  # untouched, and still the owner's
    assert _patch(url, cookies, 0, b"12345678").status_code == 204


def test_an_upload_over_the_limit_is_refused_413_at_creation(
    server: DjangoServer, staging: Path, cookies: dict[str, str], tmp_path: Path
) -> None:
    response = requests.post(
        f"{server.url}/uploads/tus/",
        headers={
            **TUS,
            "Upload-Length": str(6 * 1024**3),
            "Upload-Metadata": _meta("huge.iso"),
            "Cookie": _cookie_header(cookies),
        },
        timeout=10,
    )
    assert response.status_code == 413
    assert response.text == f"The upload has {6 * 1024**3} bytes; the limit is {5 * 1024**3}."
    assert not TusUpload.objects.exists()


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "with-checksum"])
def test_a_stalled_chunk_is_answered_408_and_keeps_only_what_it_may(
    server: DjangoServer, cookies: dict[str, str], checksum: bool
) -> None:
    # tests/urls.py: /quick-tus/<id> is the tus view with an idle timeout of 1.5 s.
    payload = _payload(2 * MiB, b"stalled")
    url = _create(server.url, cookies, f"stalled-{checksum}.bin", len(payload))
    upload_id = url.rstrip("/").rsplit("/", 1)[-1]
    headers: dict[str, str] = {}
    if checksum:
        digest = base64.b64encode(hashlib.sha1(payload[:MiB]).digest()).decode()
        headers["Upload-Checksum"] = f"sha1 {digest}"
    quick = f"{server.url}/quick-tus/{upload_id}"
    client = start_tus_patch(quick, cookies, 0, payload[: 256 * 1024], MiB, **headers)
    try:  # nothing more is sent
        status, body = client.response()
    finally:
        client.close()
    assert status == 408
    kept = 0 if checksum else 256 * 1024  # a chunk that cannot be verified is discarded
    assert _offset(url, cookies) == kept
    expected = (
        "the chunk was discarded, send it again"
        if checksum
        else "the bytes that arrived were kept; ask for the offset"
    )
    assert body.decode() == f"No bytes of the body arrived for 1.5 s; {expected}."
    assert _patch(url, cookies, kept, payload[kept:]).status_code == 204
    assert (Path(settings.STAGING_ROOT) / f"stalled-{checksum}.bin").read_bytes() == payload


def test_a_chunk_that_reaches_a_host_without_the_bytes_is_503_and_the_upload_survives(
    server: DjangoServer, cookies: dict[str, str], staging: Path
) -> None:
    # The upload was received by another host (its row names that host; its bytes are on that
    # host's staging disk, not here): a load balancer without sticky routing sent us a chunk.
    url = _create(server.url, cookies, "elsewhere.bin", 8)
    upload_id = url.rstrip("/").rsplit("/", 1)[-1]
    assert _patch(url, cookies, 0, b"1234").status_code == 204
    TusUpload.objects.filter(id=upload_id).update(host="web-2.internal")
    elsewhere = _partial(staging, url).read_bytes()
    _partial(staging, url).unlink()

    patched = _patch(url, cookies, 4, b"5678")
    assert patched.status_code == 503, patched.text
    assert patched.headers["Retry-After"] == "5"
    assert "web-2" not in patched.text  # host names are logged, not sent
    deleted = requests.delete(url, headers={**TUS, "Cookie": _cookie_header(cookies)}, timeout=10)
    assert deleted.status_code == 503
    assert _offset(url, cookies) == 4  # the upload is intact for the host that has its bytes

    # Back on the host with the bytes, the upload continues.
    _partial(staging, url).write_bytes(elsewhere)
    assert _patch(url, cookies, 4, b"5678").status_code == 204
    assert (staging / "elsewhere.bin").read_bytes() == b"12345678"


# -- interruptions --------------------------------------------------------------------------------
@pytest.fixture(params=["gunicorn", "uvicorn"])
def restartable(
    request: pytest.FixtureRequest, django_db_setup: Any, staging: Path
) -> Iterator[tuple[DjangoServer, TcpFaultProxy]]:
    """A gunicorn, then a uvicorn, of its own (the test kills and restarts it) behind a TCP
    fault proxy."""
    kind = request.param
    with (
        django_server(kind, f"web-tus-restartable-{kind}") as web,
        TcpFaultProxy(("127.0.0.1", web.port), name="tus-proxy") as proxy,
    ):
        yield web, proxy


def _kill(web: DjangoServer) -> None:
    """kill -9 of every process of the server (gunicorn's master and worker, uvicorn's one
    process): nothing is cleaned up, no response is finished."""
    assert web.pid is not None
    top = psutil.Process(web.pid)
    processes = [top, *top.children(recursive=True)]
    assert web.app_pid in {p.pid for p in processes}
    for process in processes:
        process.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, alive


def _kill_and_restart(web: DjangoServer) -> None:
    """kill -9 of the server, then a new one on the same port."""
    _kill(web)
    web.stop()  # reaps what was killed
    web.start()


def test_an_interrupted_upload_resumes_after_a_dropped_connection_and_a_killed_server(
    restartable: tuple[DjangoServer, TcpFaultProxy],
    worker: Any,
    clean: Any,
    cookies: dict[str, str],
    tmp_path: Path,
) -> None:
    web, proxy = restartable
    base = f"http://127.0.0.1:{proxy.port}"
    staging = Path(settings.STAGING_ROOT)
    payload = _payload(4 * MiB + 5, b"interrupted")
    source = _stream(tmp_path / "resumed.bin", payload)
    uploader = _client(base, cookies).uploader(
        file_stream=source, chunk_size=2 * MiB, metadata={"filename": "resumed.bin"}
    )
    uploader.set_url(uploader.create_url())
    partial = _partial(staging, uploader.url)

    # 1. The proxy drops the connection after 1 MiB of a 2 MiB chunk: the server keeps it.
    client = start_tus_patch(uploader.url, cookies, 0, payload[:MiB], 2 * MiB)
    wait_for(lambda: partial.stat().st_size >= MiB, what="the first MiB on disk")
    proxy.go_down()
    client.close()
    proxy.come_up()
    wait_for(lambda: _offset(uploader.url, cookies) == MiB, what="the offset to be committed")

    # 2. The web process is killed mid-chunk: what it wrote is not committed, and is cut off.
    client = start_tus_patch(uploader.url, cookies, MiB, payload[MiB : 2 * MiB], 2 * MiB)
    wait_for(lambda: partial.stat().st_size >= 2 * MiB, what="the second MiB on disk")
    _kill_and_restart(web)
    client.close()
    assert _offset(uploader.url, cookies) == MiB

    # 3. tuspy resumes from the server's offset and finishes.
    resumed = _client(base, cookies).uploader(
        file_stream=source, url=uploader.url, chunk_size=2 * MiB, upload_checksum=True
    )
    assert resumed.offset == MiB
    resumed.upload()
    assert resumed.request.response_headers["x-queued-storage-name"] == "resumed.bin"
    assert (staging / "resumed.bin").read_bytes() == payload
    _wait_state(base, cookies, "resumed.bin", State.REMOTE)
    assert _s3_body(clean, "resumed.bin") == payload


def _queued_bytes(local_port: int, remote_port: int) -> tuple[int, int]:
    """``(tx_queue, rx_queue)`` of the loopback TCP socket between these ports
    (``/proc/net/tcp``): bytes sent but not yet acknowledged, and bytes received but not yet
    read by the process that owns the socket."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
        if (local, remote) == (local_port, remote_port):
            tx, rx = fields[4].split(":")
            return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no TCP socket from port {local_port} to port {remote_port}")


def _read_by_server(client: RawClient, server_port: int) -> bool:
    """Whether every byte *client* sent was read by the server's process from its socket."""
    client_port = client.sock.getsockname()[1]
    unacknowledged, _ = _queued_bytes(client_port, server_port)
    _, unread = _queued_bytes(server_port, client_port)
    return unacknowledged == 0 and unread == 0


def test_a_chunk_is_written_back_as_it_arrives_flushed_before_its_offset_moves_then_trimmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk writes each window of a chunk while the rest arrives; the chunk is flushed
    (fsync) before append_stream returns, i.e. before the view can record its offset; then
    the memory its reads freed goes back to the system."""
    events: list[tuple[str, int, int]] = []
    real_fsync = os.fsync

    def writeback(fd: int, offset: int, length: int) -> bool:
        events.append(("writeback", offset, length))
        return True

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_size, 0))
        real_fsync(fd)

    monkeypatch.setattr(uploads, "start_writeback", writeback)
    monkeypatch.setattr(uploads, "release_free_memory", lambda: events.append(("trim", 0, 0)))
    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "partial"
    path.write_bytes(b"a" * MiB)
    data = _payload(20 * MiB)
    fd = os.open(path, os.O_RDWR)
    try:
        appended = uploads.append_stream(
            io.BytesIO(data).read,
            fd,
            offset=MiB,
            declared=len(data),
            remaining=30 * MiB,
            chunk_size=256 * 1024,
            checksum=None,
        )
    finally:
        os.close(fd)
    assert appended == uploads.Appended(20 * MiB)
    assert events == [
        ("writeback", MiB, 8 * MiB),
        ("writeback", 9 * MiB, 8 * MiB),
        ("fsync", 21 * MiB, 0),
        ("trim", 0, 0),
    ]
    assert path.read_bytes() == b"a" * MiB + data


def test_a_patch_cut_mid_body_keeps_exactly_the_bytes_the_server_read(
    server: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    payload = _payload(2 * MiB, b"cut")
    arrived = MiB + 193_206  # not a multiple of the 256 KiB the server reads at a time
    url = _create(server.url, cookies, "cut.bin", len(payload))
    partial = _partial(staging, url)
    client = start_tus_patch(url, cookies, 0, payload[:MiB], len(payload))
    try:
        wait_for(lambda: partial.stat().st_size == MiB, what="four full reads on disk")
        client.send(payload[MiB:arrived])  # the server now waits for the rest of a read
        wait_for(lambda: _read_by_server(client, server.port), what="the server to read it all")
    finally:
        client.close()
    # Every byte reached the server's process. Under uvicorn they are the application's once
    # its body stream took them from uvicorn, which it does as they come while it waits for
    # more, before a disconnect seen after them.
    assert _offset(url, cookies) == arrived
    assert partial.read_bytes() == payload[:arrived]
    finished = _patch(url, cookies, arrived, payload[arrived:])
    assert finished.status_code == 204, finished.text
    assert (staging / "cut.bin").read_bytes() == payload


def test_a_head_right_after_a_dropped_patch_answers_the_offset_the_next_patch_is_held_to(
    server: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    piece = 300_001  # more than one 256 KiB read, and not a multiple of it
    payload = _payload(6 * (piece + 1000), b"head")
    url = _create(server.url, cookies, "dropped-then-head.bin", len(payload))
    partial = _partial(staging, url)
    offset = 0
    for _ in range(5):
        chunk = payload[offset : offset + piece]
        client = start_tus_patch(url, cookies, offset, chunk, len(payload) - offset)
        try:
            # The server holds the chunk (its first read is on disk); the client goes away
            # and asks at once, while the server may still be writing what arrived.
            first_read = offset + 256 * 1024
            wait_for(lambda: partial.stat().st_size >= first_read, what="a read on disk")  # noqa: B023
        finally:
            client.close()
        offset = _offset(url, cookies)
        resumed = _patch(url, cookies, offset, payload[offset : offset + 1000])
        assert resumed.status_code == 204, resumed.text
        offset += 1000
    done = _patch(url, cookies, offset, payload[offset:])
    assert done.status_code == 204, done.text
    assert (staging / "dropped-then-head.bin").read_bytes() == payload


class _Recording(Uploader):
    """tuspy's uploader, noting the offset of every answered ``HEAD`` and of every ``PATCH``
    it starts (a retry asks the server with ``HEAD`` first, then sends from there)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[tuple[str, int]] = []
        super().__init__(*args, **kwargs)

    def get_offset(self) -> int:
        offset = int(super().get_offset())
        self.events.append(("head", offset))
        return offset

    def _do_request(self) -> None:
        self.events.append(("patch", self.offset))
        super()._do_request()


def _resumed_at(events: list[tuple[str, int]], offset: int) -> None:
    """After an interruption the client asked the server (``HEAD``) and sent its next
    ``PATCH`` from the offset the server reported, which is *offset*."""
    first = next(n for n, (kind, _) in enumerate(events) if kind == "patch")
    assert events[first] == ("patch", offset), events
    assert ("head", offset) in events[:first], events
    assert all(event == ("head", offset) for event in events[:first]), events


def _prefix_sha256(path: Path, length: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while length > 0 and (block := fh.read(min(8 * MiB, length))):
            digest.update(block)
            length -= len(block)
    return digest.hexdigest()


@pytest.mark.faults
def test_256_mib_upload_survives_three_interruptions_and_ends_byte_identical_on_s3(
    restartable: tuple[DjangoServer, TcpFaultProxy],
    worker: Any,
    clean: Any,
    cookies: dict[str, str],
    tmp_path: Path,
    capsys: Any,
) -> None:
    """Four 64 MiB chunks with a sha1 each; cut inside the 2nd, 3rd and 4th: (a) the client
    process killed with SIGKILL, (b) the connection dropped by the fault proxy, (c) the web
    process killed with SIGKILL and started again. After each the server's offset is the
    start of the cut chunk (an unverifiable chunk is discarded), it never goes backwards, the
    bytes below it are the file's, and the client resumes from it."""
    web, proxy = restartable
    base = f"http://127.0.0.1:{proxy.port}"
    staging = Path(settings.STAGING_ROOT)
    size, chunk, into = 256 * MiB, 64 * MiB, 16 * MiB
    source = tmp_path / "big.bin"
    with source.open("wb") as out:
        for _ in range(size // MiB):
            out.write(os.urandom(MiB))
    url_file = tmp_path / "upload-url"
    seen: list[int] = []  # every offset of the row the test read, in order
    resent: list[int] = []  # bytes of the cut chunk that had arrived, sent again after it

    def committed(upload_id: str) -> int:
        row = TusUpload.get(upload_id)
        assert row is not None
        seen.append(row.offset)
        return row.offset

    def on_disk() -> int:
        """The size of the partial file (noting the row's offset at each look)."""
        committed(upload_id)
        return partial.stat().st_size

    def holds(offset: int) -> None:
        """The row says *offset*, a chunk boundary, and the file's first bytes are the source's."""
        assert committed(upload_id) == offset
        assert offset % chunk == 0
        assert partial.stat().st_size >= offset
        assert _prefix_sha256(partial, offset) == _prefix_sha256(source, offset)

    started = time.monotonic()
    # (a) The client process, killed with SIGKILL inside its second chunk.
    with (tmp_path / "tus-client.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.tus_client",
                "--endpoint",
                f"{base}/uploads/tus/",
                "--cookie",
                _cookie_header(cookies),
                "--file",
                str(source),
                "--name",
                "big/tus.bin",
                "--url-file",
                str(url_file),
                "--chunk-size",
                str(chunk),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        try:
            url = wait_for(
                lambda: url_file.exists() and url_file.read_text(),
                timeout=60,
                what="the client to store its upload URL",
            )
            upload_id = url.rsplit("/", 1)[-1]
            partial = _partial(staging, url)
            direct = web.url + url.removeprefix(base)  # past the fault proxy
            wait_for(
                lambda: on_disk() >= chunk + into,
                timeout=120,
                what="the client inside its second chunk",
            )
            resent.append(partial.stat().st_size - chunk)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    wait_for(lambda: on_disk() == chunk, what="the server to discard the cut chunk")
    assert _offset(direct, cookies) == chunk
    holds(chunk)

    # A fresh client resumes with the stored URL, from the server's offset.
    uploader = _Recording(
        file_stream=_opened(source),
        client=_client(base, cookies),
        url=url_file.read_text(),
        chunk_size=chunk,
        upload_checksum=True,
        retries=30,
        retry_delay=1,
    )
    assert uploader.offset == chunk
    assert uploader.events == [("head", chunk)]
    failure: list[BaseException] = []

    def run() -> None:
        try:
            uploader.upload()
        except BaseException as err:  # reported by the test thread
            failure.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        # (b) The fault proxy drops the connection inside the third chunk.
        wait_for(
            lambda: on_disk() >= 2 * chunk + into,
            timeout=120,
            what="the third chunk",
        )
        resent.append(partial.stat().st_size - 2 * chunk)
        mark_b = len(uploader.events)
        proxy.go_down()
        wait_for(
            lambda: on_disk() == 2 * chunk,
            what="the server to discard the cut chunk",
        )
        assert _offset(direct, cookies) == 2 * chunk
        holds(2 * chunk)
        proxy.come_up()

        # (c) The web process is killed with SIGKILL inside the fourth chunk, then restarted.
        wait_for(
            lambda: on_disk() >= 3 * chunk + into,
            timeout=120,
            what="the fourth chunk",
        )
        mark_c = len(uploader.events)
        _kill(web)
        resent.append(partial.stat().st_size - 3 * chunk)
        holds(3 * chunk)
        assert partial.stat().st_size > 3 * chunk  # uncommitted: the next append cuts it off
        web.stop()
        web.start()
    finally:
        thread.join(timeout=600)
    assert not failure, failure
    elapsed = time.monotonic() - started
    assert uploader.offset == size
    assert uploader.request.response_headers["x-queued-storage-name"] == "big/tus.bin"
    _resumed_at(uploader.events[mark_b:], 2 * chunk)
    _resumed_at(uploader.events[mark_c:], 3 * chunk)
    patches = [offset for kind, offset in uploader.events if kind == "patch"]
    assert patches == sorted(patches) and all(offset % chunk == 0 for offset in patches)
    assert seen == sorted(seen)  # the offset never went backwards

    _wait_state(base, cookies, "big/tus.bin", State.REMOTE)
    remote = hashlib.sha256()
    for block in clean.get_object(Bucket=settings.BUCKET, Key="big/tus.bin")["Body"].iter_chunks(
        8 * MiB
    ):
        remote.update(block)
    assert remote.hexdigest() == _prefix_sha256(source, size)
    figures(
        capsys,
        f"tus-256MiB[{web.kind}]",
        seconds=f"{elapsed:.1f}",
        chunks="4x64MiB+sha1",
        interruptions="client-kill-9,proxy-drop,server-kill-9",
        resent_mib=f"{sum(resent) / MiB:.1f}",
        resent_each_mib="/".join(f"{n / MiB:.1f}" for n in resent),
        patches=len(patches),
    )


# -- deferred length (creation-defer-length) ------------------------------------------------------
def _create_deferred(
    base: str, headers: dict[str, str], data: bytes = b"", **extra: str
) -> requests.Response:
    if data:
        extra = {"Content-Type": "application/offset+octet-stream", **extra}
    return requests.post(
        f"{base}/uploads/tus/",
        data=data,
        headers={
            **TUS,
            "Upload-Defer-Length": "1",
            "Upload-Metadata": _meta("later.bin"),
            **headers,
            **extra,
        },
        timeout=10,
    )


def test_an_upload_of_deferred_length_learns_its_length_from_a_later_patch_and_is_stored(
    server: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    auth = {"Cookie": _cookie_header(cookies)}
    payload = _payload(2 * MiB + 9, b"deferred")
    created = _create_deferred(server.url, auth, payload[:1000])  # creation-with-upload
    assert created.status_code == 201, created.text
    assert created.headers["Upload-Offset"] == "1000"
    url = server.url + created.headers["Location"]
    head = requests.head(url, headers={**TUS, **auth}, timeout=10)
    assert head.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head.headers
    first = _patch(url, cookies, 1000, payload[1000:MiB])
    assert first.status_code == 204, first.text
    assert first.headers["Upload-Offset"] == str(MiB)
    assert "X-Queued-Storage-Name" not in first.headers  # not finished: no length yet
    assert TusUpload.objects.get().length is None
    last = _patch(url, cookies, MiB, payload[MiB:], **{"Upload-Length": str(len(payload))})
    assert last.status_code == 204, last.text
    assert last.headers["X-Queued-Storage-Name"] == "later.bin"
    assert (staging / "later.bin").read_bytes() == payload
    head = requests.head(url, headers={**TUS, **auth}, timeout=10)
    assert head.headers["Upload-Length"] == str(len(payload))
    assert "Upload-Defer-Length" not in head.headers


def test_a_deferred_length_is_set_once_never_below_the_offset_and_never_with_upload_length(
    server: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    auth = {"Cookie": _cookie_header(cookies)}
    both = _create_deferred(server.url, auth, **{"Upload-Length": "10"})
    assert (both.status_code, both.text) == (
        400,
        "Send Upload-Length, or Upload-Defer-Length: 1 without Upload-Length.",
    )
    assert _create_deferred(server.url, auth, **{"Upload-Defer-Length": "0"}).status_code == 400
    url = server.url + _create_deferred(server.url, auth).headers["Location"]
    assert _patch(url, cookies, 0, b"x" * 100).status_code == 204
    short = _patch(url, cookies, 100, b"", **{"Upload-Length": "99"})
    assert (short.status_code, short.text) == (
        400,
        "Upload-Length 99 is less than the 100 bytes received.",
    )
    assert _patch(url, cookies, 100, b"y" * 10, **{"Upload-Length": "200"}).status_code == 204
    changed = _patch(url, cookies, 110, b"z" * 90, **{"Upload-Length": "300"})
    assert (changed.status_code, changed.text) == (
        400,
        "The upload's length is 200; it cannot change to 300.",
    )
    done = _patch(url, cookies, 110, b"z" * 90, **{"Upload-Length": "200"})  # the same: fine
    assert done.status_code == 204, done.text
    assert (staging / "later.bin").read_bytes() == b"x" * 100 + b"y" * 10 + b"z" * 90


def test_a_chunk_of_deferred_length_past_the_limit_is_refused_413_before_it_is_read(
    server: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    limit = 5 * 1024**3
    auth = {"Cookie": _cookie_header(cookies)}
    url = server.url + _create_deferred(server.url, auth).headers["Location"]
    assert _patch(url, cookies, 0, b"x").status_code == 204
    client = start_tus_patch(url, cookies, 1, b"y" * 65536, limit)  # 1 + limit
    try:
        status, body = client.response()  # answered while the 5 GiB are still to come
    finally:
        client.close()
    assert (status, body.decode()) == (
        413,
        f"The chunk has {limit} bytes; after the 1 received the limit of {limit} leaves "
        f"{limit - 1}.",
    )
    over = _patch(url, cookies, 1, b"", **{"Upload-Length": str(limit + 1)})
    assert (over.status_code, over.text) == (
        413,
        f"The upload has {limit + 1} bytes; the limit is {limit}.",
    )
    chunked = start_tus_patch(url, cookies, 1, b"10000\r\n" + b"z" * 65536 + b"\r\n", None)
    try:
        status, _ = chunked.response()
    finally:
        chunked.close()
    assert status == 411
    assert _offset(url, cookies) == 1
    assert _partial(staging, url).stat().st_size == 1


@override_settings(
    QUEUED_STORAGE_UPLOAD_AUTHORIZER="tests.test_uploads.allow_all",
    QUEUED_STORAGE_STAGING_BUDGET=1000,
)
def test_each_chunk_of_deferred_length_is_checked_against_the_staging_budget(
    staging: Path,
) -> None:
    from django.test import Client

    client = Client(headers=TUS)
    created = client.post(
        "/uploads/tus/",
        headers={"Upload-Defer-Length": "1", "Upload-Metadata": _meta("budget.bin")},
    )
    assert created.status_code == 201
    url = created.headers["Location"]

    def patch(offset: int, data: bytes, **headers: str) -> Any:
        return client.patch(
            url,
            data=data,
            content_type="application/offset+octet-stream",
            headers={"Upload-Offset": str(offset), **headers},
        )

    assert patch(0, b"a" * 600).status_code == 204
    assert StoredFile.waiting_bytes(qs_settings.HOST) == 600  # what it received
    assert patch(600, b"b" * 500).status_code == 507  # 600 + 500 > 1000
    assert patch(600, b"c", **{"Upload-Length": "1100"}).status_code == 507  # 600 + 500
    assert TusUpload.objects.get().length is None
    assert _partial(staging, url).stat().st_size == 600
    done = patch(600, b"c" * 300, **{"Upload-Length": "900"})
    assert done.status_code == 204
    assert done.headers["X-Queued-Storage-Name"] == "budget.bin"
    assert (staging / "budget.bin").read_bytes() == b"a" * 600 + b"c" * 300


def test_a_burst_of_deferred_chunks_beyond_the_staging_budget_is_refused_507_before_they_are_sent(
    budgeted: DjangoServer, staging: Path, cookies: dict[str, str]
) -> None:
    # Six uploads of deferred length (each reserves what it received: nothing yet) send a
    # chunk of 3 MiB at once; the budget is 8 MiB: two chunks fit, whichever come first.
    size = 3 * MiB
    urls = []
    for _ in range(6):
        created = _create_deferred(budgeted.url, {"Cookie": _cookie_header(cookies)})
        assert created.status_code == 201, created.text
        urls.append(budgeted.url + created.headers["Location"])
    clients: list[RawClient] = []
    try:
        for url in urls:  # each head only: the chunks are not sent yet
            clients.append(start_tus_patch(url, cookies, 0, b"", size))
        wait_for(lambda: len(_answered(clients)) >= 4, what="four answers")
        refused = _answered(clients)
        assert len(refused) == 4
        for client in refused:  # answered before a byte of the chunk was sent
            assert client.response() == (
                507,
                b"The staging area is full; nothing was kept. Retry later.",
            )
        admitted = [c for c in clients if c not in refused]
        for client in admitted:
            client.send(_payload(size))
            assert client.status() == 204
    finally:
        for client in clients:
            client.close()
    offsets = sorted(TusUpload.objects.values_list("offset", flat=True))
    assert offsets == [0, 0, 0, 0, size, size]
    parts = [p.stat().st_size for p in (staging / TUS_DIRNAME).iterdir()]
    assert sorted(parts) == [0, 0, 0, 0, size, size]  # 6 MiB on the disk, of a budget of 8


# -- several web processes, one staging volume ----------------------------------------------------
def test_chunks_of_one_upload_alternate_between_two_web_servers_and_it_ends_on_s3(
    gunicorn: DjangoServer,
    uvicorn: DjangoServer,
    worker: Any,
    clean: Any,
    cookies: dict[str, str],
) -> None:
    """A gunicorn and a uvicorn, separate processes on one staging directory and one database:
    created on A, a chunk on B, HEAD on A, a chunk on A, the last one on B."""
    a, b = gunicorn, uvicorn
    assert a.app_pid != b.app_pid
    staging = Path(settings.STAGING_ROOT)
    payload = _payload(4 * MiB + 7, b"two servers")
    on_a = _create(a.url, cookies, "shared/two.bin", len(payload))
    path = on_a.removeprefix(a.url)
    on_b = b.url + path
    sha256 = base64.b64encode(hashlib.sha256(payload[: MiB + 1]).digest()).decode()
    first = _patch(on_b, cookies, 0, payload[: MiB + 1], **{"Upload-Checksum": f"sha256 {sha256}"})
    assert (first.status_code, first.headers["Upload-Offset"]) == (204, str(MiB + 1)), first.text
    assert _offset(on_a, cookies) == MiB + 1
    stale = _patch(on_a, cookies, 0, payload[:MiB])  # A keeps nothing of the upload in memory
    assert (stale.status_code, stale.headers["Upload-Offset"]) == (409, str(MiB + 1))
    second = _patch(on_a, cookies, MiB + 1, payload[MiB + 1 : 3 * MiB])
    assert (second.status_code, second.headers["Upload-Offset"]) == (204, str(3 * MiB))
    last = _patch(on_b, cookies, 3 * MiB, payload[3 * MiB :])
    assert last.status_code == 204, last.text
    assert last.headers["Upload-Offset"] == str(len(payload))
    assert last.headers["X-Queued-Storage-Name"] == "shared/two.bin"
    assert last.headers["X-Queued-Storage-Status-Url"] == "/uploads/status/shared/two.bin"
    assert not _partial(staging, on_a).exists()
    assert (staging / "shared/two.bin").read_bytes() == payload
    _wait_state(a.url, cookies, "shared/two.bin", State.REMOTE)
    assert _s3_body(clean, "shared/two.bin") == payload


def test_tuspy_reports_a_refused_creation(server: DjangoServer, tmp_path: Path) -> None:
    uploader = _client(server.url, {}).uploader(
        file_stream=_stream(tmp_path / "x.bin", b"x"), metadata={"filename": "x.bin"}
    )
    with pytest.raises(TusCommunicationError) as refused:
        uploader.create_url()
    assert refused.value.status_code == 401


# -- behind nginx -----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def tus_nginx(request: pytest.FixtureRequest) -> Iterator[Nginx]:
    """nginx with ``docs/nginx.conf`` as shipped (its ``/uploads/tus/`` location: request
    buffering off) in front of gunicorn, then of uvicorn."""
    upstream: DjangoServer = request.getfixturevalue(request.param)
    with nginx_in_front(upstream, f"nginx-tus-{request.param}") as proxy:
        yield proxy


def test_through_nginx_a_chunk_reaches_staging_before_it_ends_and_a_cut_keeps_it(
    tus_nginx: Nginx, worker: Any, clean: Any, cookies: dict[str, str], tmp_path: Path
) -> None:
    base = tus_nginx.url
    staging = Path(settings.STAGING_ROOT)
    name = f"nginx-cut-{tus_nginx.upstream_port}.bin"
    payload = _payload(4 * MiB + 17, name.encode())
    url = _create(base, cookies, name, len(payload))
    partial = _partial(staging, url)

    # Half a 2 MiB chunk is on the staging disk while the client still owes the other half:
    # nginx streams the body through instead of spooling it first.
    client = start_tus_patch(url, cookies, 0, payload[:MiB], 2 * MiB)
    wait_for(lambda: partial.stat().st_size >= MiB, what="the first MiB on the staging disk")
    client.close()  # the client goes away mid-chunk: nginx closes the upstream request
    wait_for(lambda: _offset(url, cookies) == MiB, what="the first MiB to be committed")

    # tuspy continues from the server's offset, through nginx.
    uploader = _client(base, cookies).uploader(
        file_stream=_stream(tmp_path / name, payload), url=url, chunk_size=2 * MiB
    )
    assert uploader.offset == MiB
    uploader.upload()
    assert uploader.request.response_headers["x-queued-storage-name"] == name
    _wait_state(base, cookies, name, State.REMOTE)
    assert _s3_body(clean, name) == payload


def test_through_nginx_a_chunk_larger_than_the_sites_body_limit_is_accepted(
    tus_nginx: Nginx, worker: Any, clean: Any, cookies: dict[str, str], tmp_path: Path
) -> None:
    # docs/nginx.conf limits every other location to 10m; a tus chunk may be larger.
    name = f"nginx-big-{tus_nginx.upstream_port}.bin"
    payload = _payload(24 * MiB + 3, name.encode())
    uploader = _client(tus_nginx.url, cookies).uploader(
        file_stream=_stream(tmp_path / name, payload),
        chunk_size=16 * MiB,
        metadata={"filename": name},
        upload_checksum=True,
    )
    uploader.upload()
    assert uploader.offset == len(payload)
    assert uploader.request.response_headers["x-queued-storage-name"] == name
    _wait_state(tus_nginx.url, cookies, name, State.REMOTE)
    assert _s3_body(clean, name) == payload
