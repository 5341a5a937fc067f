"""``queued_storage.transfer`` (the engine and its S3 adapter) against the real S3 server:
resume, abort, conditional commit, checksums, progress, error classification. The HTTP fault
proxy's request log shows what was actually sent.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import zlib
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile

from queued_storage import state as file_state
from queued_storage._s3 import upload as s3_upload
from queued_storage._s3.upload import choose_part_size, s3_transfer  # no public seam yet
from queued_storage.exceptions import (
    ChecksumMismatch,
    InfrastructureError,
    PermanentTransferError,
    TransientTransferError,
)
from queued_storage.ledger import Ledger
from queued_storage.models import State, StoredFile
from queued_storage.storage import QueuedStorage
from queued_storage.transfer import EngineConfig, Part, Resume, classify_error, transfer_file
from queued_storage.worker import Heartbeat, LedgerCheckpoint, Outcome, _resume_of, run_transfer
from tests.harness.suite import direct_s3_client, open_uploads, s3_bytes, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024
PART = 5 * MiB
CONFIG = EngineConfig(
    multipart_threshold=PART,
    multipart_chunksize=PART,
    max_concurrency=2,
    chunk_size=MiB,
    checksum="md5",
)
CRC32 = dataclasses.replace(CONFIG, checksum="crc32")


def storage(**options: Any) -> QueuedStorage:
    """A storage of this module's own: no worker of the suite watches its expired leases."""
    return QueuedStorage(local="staging", remote="s3", delayed=True, queue="parked", **options)


def part_uploads(proxy: Any) -> list[str]:
    """Query strings of the UploadPart requests the proxy saw."""
    return [r[2] for r in proxy.requests if r[0] == "PUT" and "partNumber=" in r[2]]


class Crash(BaseException):
    """Stands for the worker dying: raised after a number of parts were recorded."""


class CrashingCheckpoint(LedgerCheckpoint):
    def __init__(self, *args: Any, after: int) -> None:
        super().__init__(*args)
        self.after = after

    def part(self, part: Part) -> None:
        super().part(part)
        if len(self.parts) >= self.after:
            raise Crash(f"killed after {self.after} parts")


def crash_after(s: QueuedStorage, name: str, parts: int) -> StoredFile:
    """Run a first attempt that dies after *parts* parts, leaving its lease to expire."""
    assert Ledger(s.alias).lease(name, "dead-worker", 0.01).acquired
    checkpoint = CrashingCheckpoint(s.ledger, name, "dead-worker", None, after=parts)
    with pytest.raises(Crash):
        transfer_file(s.local, s.remote, name, config=CONFIG, checkpoint=checkpoint)
    row = StoredFile.get_row(s.alias, name)
    assert row is not None
    return row


def test_part_size_respects_s3_limits() -> None:
    assert choose_part_size(1 * MiB, 1 * MiB) == 5 * MiB  # 5 MiB minimum
    assert choose_part_size(100 * MiB, 16 * MiB) == 16 * MiB
    huge = 200 * 1024 * MiB  # 200 GiB: 10,000 parts of 16 MiB would not be enough
    size = choose_part_size(huge, 16 * MiB)
    assert size % MiB == 0
    assert huge / size <= 10_000


def test_resume_sends_only_the_missing_parts(s3_proxy: Any) -> None:
    s = storage()
    data = os.urandom(6 * PART + 123)  # 7 parts
    name = s.save("resume.bin", ContentFile(data))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("queued_storage.transfer.EngineConfig.from_settings", lambda: CONFIG)
        row = crash_after(s, name, 3)
        recorded = len(row.parts)
        assert row.upload_id and recorded >= 3
        first_upload = row.upload_id
        s3_proxy.clear_log()
        assert run_transfer(s.alias, name) is Outcome.TRANSFERRED
    resent = part_uploads(s3_proxy)
    print(f"parts recorded before the crash: {recorded}, parts sent on resume: {len(resent)}")
    assert len(resent) == 7 - recorded
    assert all(f"uploadId={first_upload}" in q for q in resent)
    row = StoredFile.get_row(s.alias, name)
    assert row is not None and row.state == State.REMOTE
    assert (row.upload_id, row.parts) == ("", [])
    assert s3_bytes(s3(), name) == data
    assert open_uploads(s3()) == []


s3 = direct_s3_client


def test_resume_starts_over_when_the_file_changed(s3_proxy: Any) -> None:
    s = storage()
    name = s.save("changed.bin", ContentFile(os.urandom(3 * PART)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("queued_storage.transfer.EngineConfig.from_settings", lambda: CONFIG)
        old = crash_after(s, name, 1).upload_id
        new_data = os.urandom(3 * PART)
        Path(s.local.path(name)).write_bytes(new_data)
        assert run_transfer(s.alias, name) is Outcome.TRANSFERRED
    assert s3_bytes(s3(), name) == new_data
    assert all(u["UploadId"] != old for u in open_uploads(s3()))
    assert open_uploads(s3()) == []  # the stale upload was aborted


def test_final_failure_aborts_the_open_upload(s3_proxy: Any) -> None:
    s = storage()
    name = s.save("doomed.bin", ContentFile(os.urandom(3 * PART)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("queued_storage.transfer.EngineConfig.from_settings", lambda: CONFIG)
        crash_after(s, name, 1)
        assert len(open_uploads(s3())) == 1
        Path(s.local.path(name)).unlink()  # a permanent error on the retry
        assert run_transfer(s.alias, name) is Outcome.FAILED
    assert open_uploads(s3()) == []
    row = StoredFile.get_row(s.alias, name)
    assert row is not None and row.upload_id == "" and "missing" in row.last_error


def test_delete_aborts_the_open_upload(s3_proxy: Any) -> None:
    s = storage()
    name = s.save("deleted.bin", ContentFile(os.urandom(3 * PART)))
    crash_after(s, name, 1)
    assert len(open_uploads(s3())) == 1
    s.delete(name)
    assert open_uploads(s3()) == []
    assert run_transfer(s.alias, name) is Outcome.GONE


@pytest.mark.parametrize("size", [MiB, 2 * PART + 5], ids=["single-put", "multipart"])
def test_commit_never_overwrites_a_different_object(s3_proxy: Any, size: int) -> None:
    s = storage()
    name = s.save(f"taken-{size}.bin", ContentFile(os.urandom(size)))
    s3().put_object(Bucket=settings.BUCKET, Key=name, Body=b"someone else's")
    with pytest.raises(PermanentTransferError, match="already holds a different object"):
        transfer_file(s.local, s.remote, name, config=CONFIG)
    assert s3_bytes(s3(), name) == b"someone else's"
    assert open_uploads(s3()) == []


@pytest.mark.parametrize("size", [MiB, 2 * PART + 5], ids=["single-put", "multipart"])
def test_retry_finding_its_own_verified_object_succeeds(s3_proxy: Any, size: int) -> None:
    s = storage()
    data = os.urandom(size)
    name = s.save(f"again-{size}.bin", ContentFile(data))
    first = transfer_file(s.local, s.remote, name, config=CONFIG)
    again = transfer_file(s.local, s.remote, name, config=CONFIG)
    assert again == first
    assert s3_bytes(s3(), name) == data
    assert open_uploads(s3()) == []


def test_file_changed_between_read_and_verify_fails(s3_proxy: Any) -> None:
    s = storage()
    name = s.save("moving.bin", ContentFile(os.urandom(3 * PART)))
    path = Path(s.local.path(name))

    def tamper(done: int, total: int) -> None:
        if 0 < done < total:  # after the first part: rewrite bytes already sent
            with path.open("r+b") as fh:
                fh.write(b"X" * 16)

    with pytest.raises(ChecksumMismatch, match="changed while it was transferred"):
        transfer_file(s.local, s.remote, name, config=CONFIG, progress=tamper)
    assert s3().list_objects_v2(Bucket=settings.BUCKET).get("KeyCount") == 0


def test_changed_file_is_never_recorded_remote(s3_proxy: Any) -> None:
    s = storage()
    data = os.urandom(2 * PART)
    name = s.save("never-remote.bin", ContentFile(data))
    path = s.local.path(name)
    real = s3_transfer

    def tampering(*args: Any, **kwargs: Any) -> Any:
        kwargs["progress"] = lambda done, total: os.utime(path, ns=(1, 1)) if done else None
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("queued_storage.transfer.s3_transfer", tampering)
        with pytest.raises(Exception, match="changed while it was transferred"):
            run_transfer(s.alias, name)
    row = StoredFile.get_row(s.alias, name)
    assert row is not None
    assert row.state == State.PENDING and "changed while it was transferred" in row.last_error
    assert Path(path).read_bytes() == data  # the local copy is kept
    assert s.using_local(name)


def test_single_put_checks_the_server_md5(s3_proxy: Any) -> None:
    s = storage()
    data = b"tiny" * 1000
    name = s.save("tiny.bin", ContentFile(data))
    result = transfer_file(s.local, s.remote, name, config=CONFIG)
    assert (result.algorithm, result.checksum) == ("md5", hashlib.md5(data).hexdigest())
    head = s3().head_object(Bucket=settings.BUCKET, Key=name)
    assert head["ETag"].strip('"') == result.checksum


def test_multipart_checksum_is_the_server_etag(s3_proxy: Any) -> None:
    s = storage()
    data = os.urandom(2 * PART + 1)
    name = s.save("three.bin", ContentFile(data))
    result = transfer_file(s.local, s.remote, name, config=CONFIG)
    parts = [data[i : i + PART] for i in range(0, len(data), PART)]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert result.checksum == expected
    assert s3().head_object(Bucket=settings.BUCKET, Key=name)["ETag"].strip('"') == expected


def test_progress_is_reported_in_order_up_to_the_total(s3_proxy: Any) -> None:
    s = storage()
    size = 4 * PART + 9
    name = s.save("progress.bin", ContentFile(os.urandom(size)))
    seen: list[tuple[int, int]] = []
    transfer_file(s.local, s.remote, name, config=CONFIG, progress=lambda d, t: seen.append((d, t)))
    dones = [d for d, _ in seen]
    assert dones == sorted(dones)
    assert seen[-1] == (size, size)
    assert {t for _, t in seen} == {size}
    assert len(seen) <= 6  # once per part (and once at the start), not per byte


def test_heartbeat_publishes_progress_to_cache_and_ledger(clean: Any) -> None:
    s = storage()
    name = s.save("beat.bin", ContentFile(b"x" * 10))
    assert Ledger(s.alias).lease(name, "me", 60).acquired
    with Heartbeat(s, name, "me") as beat:
        beat.progress(4, 10)
        wait_for(
            lambda: file_state.get_progress(s.cache_prefix, s.alias, name) == (4, 10),
            what="progress in the cache",
        )
    row = StoredFile.get_row(s.alias, name)
    assert row is not None and row.bytes_done == 4
    progress = s.get_progress(name)
    assert progress is not None
    assert (progress.done, progress.total, progress.percent) == (4, 10, 40.0)


def test_get_progress_of_a_finished_transfer(clean: Any) -> None:
    s = storage()
    name = s.save("fin.bin", ContentFile(b"y" * 7))
    pending = s.get_progress(name)  # nothing sent yet: from the ledger
    assert pending is not None
    assert (pending.state, pending.done, pending.total) == ("pending", 0, 7)
    assert run_transfer(s.alias, name) is Outcome.TRANSFERRED
    progress = s.get_progress(name)
    assert progress is not None
    assert (progress.state, progress.done, progress.total) == ("remote", 7, 7)
    assert s.get_progress("unknown.bin") is None


def test_resume_without_a_ledger_still_works_with_a_resume_object(s3_proxy: Any) -> None:
    """The engine takes a Resume from any caller (the ledger is only one source)."""
    s = storage()
    data = os.urandom(2 * PART + 3)
    name = s.save("direct.bin", ContentFile(data))
    client = s3()
    key = name
    upload = client.create_multipart_upload(Bucket=settings.BUCKET, Key=key)["UploadId"]
    first = data[:PART]
    etag = client.upload_part(
        Bucket=settings.BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=first
    )["ETag"].strip('"')
    st = os.stat(s.local.path(name))
    resume = Resume(
        upload_id=upload,
        part_size=PART,
        source=f"md5:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}",
        parts=[Part(1, etag, hashlib.md5(first).hexdigest(), PART)],
    )
    s3_proxy.clear_log()
    transfer_file(s.local, s.remote, name, config=CONFIG, resume=resume)
    assert len(part_uploads(s3_proxy)) == 2
    assert s3_bytes(s3(), name) == data


class SentParts:
    """The engine's S3 client, each ``UploadPart``'s body and Content-MD5 noted."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.parts: dict[int, tuple[bytes, str]] = {}

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.client, attribute)

    def upload_part(self, **kwargs: Any) -> Any:
        body = kwargs["Body"]
        start = body.tell()
        data = body.read()
        body.seek(start)
        self.parts[kwargs["PartNumber"]] = (bytes(data), kwargs.get("ContentMD5", ""))
        return self.client.upload_part(**kwargs)


def test_md5_mode_sends_each_part_with_the_md5_of_the_bytes_it_sends(
    s3_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = storage()
    data = os.urandom(2 * PART + 7)
    name = s.save("md5-sent.bin", ContentFile(data))
    real = getattr(s3_upload, "s3_client")  # noqa: B009 (imported, not exported)
    spy = SentParts(real(s.remote, CONFIG.max_concurrency))
    monkeypatch.setattr(s3_upload, "s3_client", lambda *args, **kwargs: spy)
    result = transfer_file(s.local, s.remote, name, config=CONFIG)
    parts = [data[i : i + PART] for i in range(0, len(data), PART)]
    assert sorted(spy.parts) == [1, 2, 3]
    for number, (sent, content_md5) in spy.parts.items():
        assert sent == parts[number - 1]
        assert content_md5 == base64.b64encode(hashlib.md5(sent).digest()).decode()
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert result.checksum == expected
    assert s3().head_object(Bucket=settings.BUCKET, Key=name)["ETag"].strip('"') == expected


def test_crc32_mode_records_the_servers_composite_crc32(s3_proxy: Any) -> None:
    s = storage()
    data = os.urandom(2 * PART + 5)
    name = s.save("crc.bin", ContentFile(data))
    result = transfer_file(s.local, s.remote, name, config=CRC32)
    parts = [data[i : i + PART] for i in range(0, len(data), PART)]
    composite = base64.b64encode(crc(b"".join(crc(p) for p in parts))).decode()
    assert (result.algorithm, result.checksum) == ("s3-composite-crc32", f"{composite}-3")
    head = s3().head_object(Bucket=settings.BUCKET, Key=name, ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == composite  # moto reports it without "-<parts>"
    assert s3_bytes(s3(), name) == data


def test_crc32_mode_sends_a_small_file_as_one_put_checked_by_etag(s3_proxy: Any) -> None:
    s = storage()
    data = os.urandom(MiB)
    name = s.save("crc-small.bin", ContentFile(data))
    result = transfer_file(s.local, s.remote, name, config=CRC32)
    assert (result.algorithm, result.checksum) == ("md5", hashlib.md5(data).hexdigest())


def test_moto_builds_the_composite_crc32_from_the_bytes_not_the_headers(clean: Any) -> None:
    """What the crc32 mode rests on against moto: the composite is the server's own."""
    key = "composite-proof.bin"
    parts = [os.urandom(PART), os.urandom(1000)]
    upload = clean.create_multipart_upload(
        Bucket=settings.BUCKET, Key=key, ChecksumAlgorithm="CRC32"
    )["UploadId"]
    lying = base64.b64encode(b"\x00\x00\x00\x00").decode()  # not the parts' CRC32
    etags = [
        clean.upload_part(
            Bucket=settings.BUCKET,
            Key=key,
            UploadId=upload,
            PartNumber=n,
            Body=body,
            ChecksumAlgorithm="CRC32",
            ChecksumCRC32=lying,
        )["ETag"]
        for n, body in enumerate(parts, start=1)
    ]
    clean.complete_multipart_upload(
        Bucket=settings.BUCKET,
        Key=key,
        UploadId=upload,
        MultipartUpload={
            "Parts": [
                {"PartNumber": n, "ETag": e, "ChecksumCRC32": lying}
                for n, e in enumerate(etags, start=1)
            ]
        },
    )
    head = clean.head_object(Bucket=settings.BUCKET, Key=key, ChecksumMode="ENABLED")
    from_bytes = base64.b64encode(crc(b"".join(crc(p) for p in parts))).decode()
    assert head["ChecksumCRC32"] == from_bytes


def crc(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def test_a_response_cut_mid_body_is_a_failure_of_the_infrastructure() -> None:
    """A connection that breaks while botocore reads a response's body (S3 went down as it
    answered CreateMultipartUpload, say) is a failure of the infrastructure: retried without
    spending the file's budget."""
    import socket
    import threading

    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_half() -> None:
        conn, _ = server.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 400\r\n"
                b"\r\n<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult>"
            )
        server.close()

    thread = threading.Thread(target=answer_half, daemon=True)
    thread.start()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        config=Config(retries={"total_max_attempts": 1}),
    )
    # botocore makes it a 500 of the operation (older releases: ConnectionClosedError).
    with pytest.raises((ClientError, BotoCoreError)) as cut:
        client.create_multipart_upload(Bucket="b", Key="k")
    thread.join(timeout=10)
    client.close()
    classified = classify_error(cut.value, "big.bin")
    assert type(classified) is InfrastructureError, (type(cut.value), cut.value)


def test_classify_error_sorts_transient_and_permanent() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(code: str, status: int) -> ClientError:
        response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(response, "PutObject")

    for transient in (
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        client_error("RequestTimeout", 400),
        client_error("Throttling", 429),
        EndpointConnectionError(endpoint_url="http://x"),
    ):
        assert isinstance(classify_error(transient, "f"), TransientTransferError), transient
    for permanent in (
        client_error("AccessDenied", 403),
        client_error("InvalidAccessKeyId", 403),
    ):
        assert isinstance(classify_error(permanent, "f"), PermanentTransferError), permanent
    # A missing bucket is the site's configuration: the file waits for it, as for an outage.
    assert type(classify_error(client_error("NoSuchBucket", 404), "f")) is InfrastructureError
    # The hint follows a full stop (botocore's message has none).
    denied = client_error("AccessDenied", 403)
    denied.response["Error"]["Message"] = "Access Denied"
    assert str(ClientError(denied.response, "PutObject")).endswith("Access Denied")
    assert str(classify_error(ClientError(denied.response, "PutObject"), "f")) == (
        "Transfer of 'f' to the remote storage failed: An error occurred (AccessDenied) when "
        "calling the PutObject operation: Access Denied. Give the worker's credentials "
        "s3:PutObject and s3:GetObject."
    )
    # boto3 wraps client errors in S3UploadFailedError: the cause is still found.
    from boto3.exceptions import S3UploadFailedError

    wrapped = S3UploadFailedError("Failed to upload")
    wrapped.__context__ = client_error("AccessDenied", 403)
    assert isinstance(classify_error(wrapped, "f"), PermanentTransferError)


@pytest.mark.parametrize("operation", ["CreateMultipartUpload", "ListParts"])
def test_an_answer_cut_before_its_body_is_a_failure_of_the_infrastructure(
    s3_proxy: Any, operation: str
) -> None:
    """S3 going away as it answers, after the headers and before the body: botocore parses the
    empty body as an empty answer, and raises nothing. The engine must take it for the cut
    connection it is (retried as an outage, spending none of the file's budget), not for an
    error about the file; and once the connection is back the file goes."""
    s = storage()
    data = os.urandom(2 * PART + 7)
    name = s.save(f"cut-{operation}.bin", ContentFile(data))
    resume = crash_after(s, name, 1) if operation == "ListParts" else None
    wanted = {
        "CreateMultipartUpload": lambda r: r.method == "POST" and r.query.startswith("uploads"),
        "ListParts": lambda r: r.method == "GET" and "uploadId=" in r.query,
    }[operation]
    # Every answer to the operation is cut: older botocore releases take the short body for a
    # closed connection and retry it themselves (newer ones parse it as an empty answer).
    for _ in range(10):
        s3_proxy.cut_answer_next(wanted)
    with pytest.raises(InfrastructureError):
        transfer_file(
            s.local,
            s.remote,
            name,
            config=CONFIG,
            resume=None if resume is None else _resume_of(resume),
        )
    assert any(wanted(r) for r in s3_proxy.requests)
    s3_proxy.clear_faults()
    result = transfer_file(s.local, s.remote, name, config=CONFIG)
    assert result.size == len(data)
    assert s3_bytes(s3(), name) == data
