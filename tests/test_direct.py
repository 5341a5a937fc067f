"""Direct uploads (``queued_storage.direct``, the ``direct*`` views) against the real S3 server.

The JSON endpoints are driven through Django's test client as a signed-in user; the parts go
from the test to moto (through the HTTP fault proxy) with ``requests`` and the presigned URLs
the server answered: an independent client written here, computing its own CRC32s. Clients
that lie (about the size, the bytes, the parts, whose upload it is) are each refused with
nothing left on S3 and the name released or the upload untouched.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.test import Client

from queued_storage import direct
from queued_storage.conf import settings as qs_settings
from queued_storage.models import State, StoredFile
from queued_storage.reconcile import reconcile
from tests.harness.suite import direct_s3_client, open_uploads, remote_keys, s3_bytes

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024
PART = 5 * MiB


@pytest.fixture(autouse=True)
def small_parts(settings: Any, clean: Any) -> None:
    settings.QUEUED_STORAGE_DIRECT_PART_SIZE = PART


def _client(username: str, *codenames: str) -> Client:
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice() -> Client:
    return _client("alice", "add_storedfile", "view_storedfile")


@pytest.fixture
def bob() -> Client:
    return _client("bob", "add_storedfile", "view_storedfile")


def crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def post(client: Client, url: str, body: dict[str, Any]) -> Any:
    return client.post(url, json.dumps(body), content_type="application/json")


def start(client: Client, name: str, size: int, status: int = 201) -> dict[str, Any]:
    response = post(client, "/uploads/direct/", {"name": name, "size": size})
    assert response.status_code == status, response.content
    return response.json()  # type: ignore[no-any-return]


def pieces(data: bytes, part_size: int = PART) -> dict[int, bytes]:
    return {n + 1: data[i : i + part_size] for n, i in enumerate(range(0, len(data), part_size))}


def sign(client: Client, started: dict[str, Any], parts: dict[int, bytes]) -> dict[int, Any]:
    response = post(
        client,
        started["parts_url"],
        {"parts": [{"number": n, "checksum": crc32(p)} for n, p in parts.items()]},
    )
    assert response.status_code == 200, response.content
    return {p["number"]: p for p in response.json()["parts"]}


def put(signed: dict[str, Any], body: bytes) -> requests.Response:
    assert signed["method"] == "PUT"
    return requests.put(signed["url"], data=body, headers=signed["headers"], timeout=30)


def send(client: Client, started: dict[str, Any], parts: dict[int, bytes]) -> None:
    signed = sign(client, started, parts)
    for number, body in parts.items():
        assert put(signed[number], body).status_code == 200


def complete(client: Client, started: dict[str, Any]) -> Any:
    return post(client, started["complete_url"], {})


def row(name: str) -> StoredFile | None:
    return StoredFile.get_row("default", name)


def test_a_direct_upload_arrives_byte_identical_and_is_served_from_s3(alice: Client) -> None:
    data = os.urandom(2 * PART + 12345)
    started = start(alice, "direct/clip.bin", len(data))
    assert (started["parts"], started["part_size"], started["state"]) == (3, PART, "uploading")
    name = started["name"]
    reserved = row(name)
    assert reserved is not None and reserved.state == State.UPLOADING
    assert started["upload_id"] == reserved.upload_id != ""
    assert reserved.owner and not reserved.local_exists and reserved.host == ""
    storage = storages["default"]
    assert not storage.exists(name)  # not readable until it is finished
    with pytest.raises(FileNotFoundError):
        storage.open(name)
    status = alice.get(started["status_url"]).json()
    assert (status["state"], status["url"], status["local"]) == ("uploading", None, False)
    with pytest.raises(ValueError, match="being uploaded directly"):
        storage.transfer(name)
    send(alice, started, pieces(data))
    response = complete(alice, started)
    assert response.status_code == 201, response.content
    assert response.json()["state"] == "remote"
    assert s3_bytes(direct_s3_client(), name) == data
    done = row(name)
    assert done is not None and done.state == State.REMOTE and done.size == len(data)
    assert done.checksum_algorithm == "s3-composite-crc32" and done.upload_id == ""
    assert storage.exists(name)
    with storage.open(name) as served:
        assert served.read() == data
    assert open_uploads(direct_s3_client()) == []
    staged = [p for p in Path(settings.STAGING_ROOT).rglob("*") if p.is_file()]
    assert staged == []  # nothing was written to the staging disk


def test_a_resumed_upload_sends_only_the_parts_s3_does_not_hold(alice: Client) -> None:
    data = os.urandom(3 * PART)
    parts = pieces(data)
    started = start(alice, "direct/resume.bin", len(data))
    send(alice, started, {1: parts[1], 3: parts[3]})
    # A page reload: the client asks what S3 holds.
    found = alice.get(started["upload_url"]).json()
    assert [p["number"] for p in found["received"]] == [1, 3]
    assert (found["parts"], found["part_size"], found["size"]) == (3, PART, len(data))
    early = complete(alice, started)
    assert early.status_code == 409 and "2" in early.json()["error"]
    assert row(started["name"]).state == State.UPLOADING  # type: ignore[union-attr]
    send(alice, started, {2: parts[2]})
    assert complete(alice, started).status_code == 201
    assert s3_bytes(direct_s3_client(), started["name"]) == data


def test_a_client_that_declares_1_mib_and_sends_5_is_refused_and_nothing_is_kept(
    alice: Client,
) -> None:
    started = start(alice, "direct/liar-size.bin", MiB)
    assert started["parts"] == 1
    big = os.urandom(5 * MiB)
    signed = sign(alice, started, {1: os.urandom(MiB)})
    # Real S3 refuses this PUT (its Content-Length is signed); moto takes it.
    put(signed[1], big)
    response = complete(alice, started)
    assert response.status_code == 422, response.content
    assert "5242880 bytes" in response.json()["error"]
    assert row(started["name"]) is None  # the name is released
    assert remote_keys(direct_s3_client()) == [] and open_uploads(direct_s3_client()) == []


def test_a_part_with_other_bytes_than_declared_is_refused_and_the_object_deleted(
    alice: Client,
) -> None:
    data = os.urandom(PART + 100)
    parts = pieces(data)
    started = start(alice, "direct/liar-bytes.bin", len(data))
    signed = sign(alice, started, parts)
    assert put(signed[1], parts[1]).status_code == 200
    other = os.urandom(len(parts[2]))  # same length, other bytes, under the declared CRC32
    put(signed[2], other)
    response = complete(alice, started)
    assert response.status_code == 422, response.content
    assert "does not match the declared parts" in response.json()["error"]
    assert row(started["name"]) is None
    assert remote_keys(direct_s3_client()) == [] and open_uploads(direct_s3_client()) == []


def test_a_completion_with_a_part_list_is_refused(alice: Client) -> None:
    started = start(alice, "direct/list.bin", MiB)
    response = post(alice, started["complete_url"], {"parts": [{"number": 1, "etag": "x"}]})
    assert response.status_code == 400
    assert row(started["name"]).state == State.UPLOADING  # type: ignore[union-attr]


def test_someone_elses_upload_is_a_name_that_does_not_exist(alice: Client, bob: Client) -> None:
    data = os.urandom(MiB)
    started = start(alice, "direct/alices.bin", len(data))
    send(alice, started, {1: data})
    for response in (
        complete(bob, started),
        bob.get(started["upload_url"]),
        bob.delete(started["upload_url"]),
        post(bob, started["parts_url"], {"parts": [{"number": 1, "checksum": crc32(b"x")}]}),
    ):
        assert response.status_code == 404, response.content
    assert len(open_uploads(direct_s3_client())) == 1  # untouched
    assert complete(alice, started).status_code == 201
    assert s3_bytes(direct_s3_client(), started["name"]) == data


def test_requests_that_may_not_start_an_upload_are_refused_before_anything_is_reserved(
    alice: Client, settings: Any
) -> None:
    assert post(Client(), "/uploads/direct/", {"name": "a.bin", "size": 1}).status_code == 401
    nobody = _client("nobody")
    assert post(nobody, "/uploads/direct/", {"name": "a.bin", "size": 1}).status_code == 403
    settings.QUEUED_STORAGE_UPLOAD_MAX_BYTES = 10 * MiB
    too_big = post(alice, "/uploads/direct/", {"name": "a.bin", "size": 10 * MiB + 1})
    assert (
        too_big.status_code == 413 and "QUEUED_STORAGE_UPLOAD_MAX_BYTES" in too_big.json()["error"]
    )
    form = alice.post("/uploads/direct/", {"name": "a.bin", "size": "1"})
    assert form.status_code == 415
    for bad in (
        {"name": "a.bin"},
        {"name": "a.bin", "size": 0},
        {"name": "a.bin", "size": "12"},
        {"name": "../a.bin", "size": 1},
        {"name": "a.bin", "size": 1, "checksum_algorithm": "md5"},
    ):
        assert post(alice, "/uploads/direct/", bad).status_code == 400, bad
    assert StoredFile.objects.count() == 0
    assert open_uploads(direct_s3_client()) == []


def test_parts_are_declared_once_with_a_valid_checksum_and_number(alice: Client) -> None:
    started = start(alice, "direct/declare.bin", 2 * PART)
    url = started["parts_url"]
    good = crc32(b"first")
    for parts in (
        [{"number": 3, "checksum": good}],
        [{"number": 0, "checksum": good}],
        [{"number": 1, "checksum": "not base64!"}],
        [{"number": 1, "checksum": base64.b64encode(b"12345").decode()}],
        [],
    ):
        assert post(alice, url, {"parts": parts}).status_code == 400, parts
    assert post(alice, url, {"parts": [{"number": 1, "checksum": good}]}).status_code == 200
    again = post(alice, url, {"parts": [{"number": 1, "checksum": good}]})
    assert again.status_code == 200  # the same declaration: new URLs
    changed = post(alice, url, {"parts": [{"number": 1, "checksum": crc32(b"other")}]})
    assert changed.status_code == 409 and "changed" in changed.json()["error"]


def test_an_object_already_in_the_bucket_is_never_overwritten(alice: Client) -> None:
    s3 = direct_s3_client()
    s3.put_object(Bucket=settings.BUCKET, Key="direct/theirs.bin", Body=b"not ours")
    data = os.urandom(MiB)
    started = start(alice, "direct/theirs.bin", len(data))
    assert started["name"] == "direct/theirs.bin"  # the ledger does not know the object
    send(alice, started, {1: data})
    response = complete(alice, started)
    assert response.status_code == 409 and "not overwritten" in response.json()["error"]
    assert s3_bytes(s3, "direct/theirs.bin") == b"not ours"
    assert row("direct/theirs.bin") is None and open_uploads(s3) == []


def test_a_name_the_ledger_holds_is_reserved_under_a_free_variant(alice: Client) -> None:
    storages["default"].save("direct/taken.bin", ContentFile(b"saved"))
    started = start(alice, "direct/taken.bin", 10)
    assert started["name"] != "direct/taken.bin"
    assert started["name"].startswith("direct/taken_") and started["name"].endswith(".bin")


def test_a_cancelled_upload_is_aborted_and_its_name_released(alice: Client) -> None:
    started = start(alice, "direct/cancel.bin", MiB)
    send(alice, started, {1: os.urandom(MiB)})
    assert alice.delete(started["upload_url"]).status_code == 204
    assert row(started["name"]) is None and open_uploads(direct_s3_client()) == []
    assert start(alice, "direct/cancel.bin", 1)["name"] == "direct/cancel.bin"


def test_the_reconcile_pass_expires_an_abandoned_upload_and_spares_a_live_one(
    alice: Client,
) -> None:
    old = start(alice, "direct/abandoned.bin", MiB)
    send(alice, old, {1: os.urandom(MiB)})
    live = start(alice, "direct/live.bin", MiB)
    now = datetime.datetime.now(datetime.timezone.utc)
    # The live upload's parts are old enough for the orphan sweep: its row protects them.
    expiry = datetime.timedelta(seconds=qs_settings.DIRECT_EXPIRY + 60)
    StoredFile.objects.filter(name=old["name"]).update(updated=now - expiry)
    report = reconcile(aliases=["default"])
    assert report.expired_direct == [f"default:{old['name']}"]
    assert report.aborted_uploads == []
    assert row(old["name"]) is None
    assert row(live["name"]).state == State.UPLOADING  # type: ignore[union-attr]
    held = [u["Key"] for u in open_uploads(direct_s3_client())]
    assert held == [live["name"]]


def test_the_cors_configuration_in_the_docs_is_the_one_the_package_gives() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "direct.md").read_text()
    shown = re.search(r"```json\n(.*?)```", text, re.S)
    assert shown is not None
    assert json.loads(shown.group(1)) == direct.cors_configuration(["https://app.example"])


def test_the_bucket_cors_configuration_of_the_docs_lets_a_page_put_a_part(alice: Client) -> None:
    s3 = direct_s3_client()
    origin = "http://app.example"
    s3.put_bucket_cors(
        Bucket=settings.BUCKET, CORSConfiguration=direct.cors_configuration([origin])
    )
    try:
        data = os.urandom(1000)
        started = start(alice, "direct/cors.bin", len(data))
        signed = sign(alice, started, {1: data})[1]
        preflight = requests.options(
            signed["url"],
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": ",".join(signed["headers"]),
            },
            timeout=10,
        )
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        response = requests.put(
            signed["url"], data=data, headers={**signed["headers"], "Origin": origin}, timeout=10
        )
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert complete(alice, started).status_code == 201
    finally:
        s3.delete_bucket_cors(Bucket=settings.BUCKET)


def test_s3_down_when_an_upload_starts_is_503_and_reserves_nothing(
    alice: Client, s3_proxy: Any
) -> None:
    s3_proxy.go_down()
    try:
        response = post(alice, "/uploads/direct/", {"name": "direct/down.bin", "size": MiB})
    finally:
        s3_proxy.come_up()
    assert response.status_code == 503, response.content
    assert "Retry later" in response.json()["error"]
    assert row("direct/down.bin") is None
    assert open_uploads(direct_s3_client()) == []


def _finish_on_s3(started: dict[str, Any]) -> None:
    """Complete the upload on S3 as a completion would, and stop before recording it (a web
    process killed between S3's answer and the ledger's write)."""
    reserved = row(started["name"])
    assert reserved is not None
    s3 = direct_s3_client()
    listed = s3.list_parts(Bucket=settings.BUCKET, Key=started["name"], UploadId=reserved.upload_id)
    s3.complete_multipart_upload(
        Bucket=settings.BUCKET,
        Key=started["name"],
        UploadId=reserved.upload_id,
        MultipartUpload={
            "Parts": [
                {"PartNumber": p["PartNumber"], "ETag": p["ETag"], "ChecksumCRC32": d[2]}
                for p, d in zip(listed["Parts"], reserved.parts, strict=True)
            ]
        },
    )


def test_a_completion_that_stopped_after_s3_finished_is_recorded_by_the_next_one(
    alice: Client,
) -> None:
    data = os.urandom(PART + 10)
    started = start(alice, "direct/half-done.bin", len(data))
    send(alice, started, pieces(data))
    _finish_on_s3(started)
    response = complete(alice, started)
    assert response.status_code == 201, response.content
    assert row(started["name"]).state == State.REMOTE  # type: ignore[union-attr]
    assert s3_bytes(direct_s3_client(), started["name"]) == data


def test_the_pass_records_an_expired_upload_that_s3_finished_and_a_cancel_deletes_it(
    alice: Client,
) -> None:
    finished = start(alice, "direct/finished.bin", 1000)
    send(alice, finished, {1: b"f" * 1000})
    _finish_on_s3(finished)
    cancelled = start(alice, "direct/cancelled.bin", 1000)
    send(alice, cancelled, {1: b"c" * 1000})
    _finish_on_s3(cancelled)
    assert alice.delete(cancelled["upload_url"]).status_code == 204
    assert remote_keys(direct_s3_client()) == [finished["name"]]  # the cancelled one is gone
    StoredFile.objects.filter(name=finished["name"]).update(
        updated=datetime.datetime.now(datetime.timezone.utc)
        - datetime.timedelta(seconds=qs_settings.DIRECT_EXPIRY + 60)
    )
    report = reconcile(aliases=["default"])
    assert report.expired_direct == []
    recorded = row(finished["name"])
    assert recorded is not None and recorded.state == State.REMOTE and recorded.size == 1000
    assert s3_bytes(direct_s3_client(), finished["name"]) == b"f" * 1000


def test_an_api_of_its_own_drives_the_same_flow_through_the_functions() -> None:
    storage = storages["default"]
    data = os.urandom(PART + 3)
    parts = pieces(data)
    started = direct.start(storage, "direct/api.bin", len(data), owner="token-user-7")
    assert (started.name, started.parts) == ("direct/api.bin", 2)
    signed = direct.sign_parts(
        storage,
        started.name,
        "token-user-7",
        [{"number": n, "checksum": crc32(p)} for n, p in parts.items()],
    )
    for part in signed:
        assert put(part, parts[part["number"]]).status_code == 200
    held = direct.received(storage, started.name, "token-user-7")
    assert [p["number"] for p in held["received"]] == [1, 2]
    with pytest.raises(direct.DirectRefused) as other:
        direct.complete(storage, started.name, "someone-else")
    assert other.value.status == 404
    done = direct.complete(storage, started.name, "token-user-7")
    assert done.state == State.REMOTE and done.owner == "token-user-7"
    assert s3_bytes(direct_s3_client(), started.name) == data


def test_an_upload_aborted_behind_the_apps_back_is_said_so_and_released_on_completion(
    alice: Client,
) -> None:
    started = start(alice, "direct/lifecycle.bin", 1000)
    send(alice, started, {1: b"l" * 1000})
    reserved = row(started["name"])
    assert reserved is not None
    direct_s3_client().abort_multipart_upload(
        Bucket=settings.BUCKET, Key=started["name"], UploadId=reserved.upload_id
    )  # a lifecycle rule's AbortIncompleteMultipartUpload, say
    resume = alice.get(started["upload_url"])
    assert resume.status_code == 409 and "no longer holds the parts" in resume.json()["error"]
    completed = complete(alice, started)
    assert completed.status_code == 409
    assert "gone from the remote storage" in completed.json()["error"]
    assert row(started["name"]) is None and remote_keys(direct_s3_client()) == []
