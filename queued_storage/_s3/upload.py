"""The S3 upload: part-wise from a path, verified by the server's own checksums, resumable.

Why not boto3's ``upload_file``: it cannot resume an interrupted multipart upload, buffers
whole parts, and does not check what the server computed. Here:

* A file below the multipart threshold is one ``PutObject``, checked by its ETag (the MD5 the
  server computes from the bytes). Above it, parts of ``part_size`` bytes are read from the
  file by offset and streamed, at most ``max_concurrency`` in flight, with about 1 MiB of
  buffer each: memory does not depend on the file's size.
* Multipart verification (``checksum``, see :mod:`queued_storage._s3.checksums`):

  - ``"crc32"`` (default): each part carries ``x-amz-checksum-crc32``, which S3 checks on
    arrival; after completion the object's composite CRC32 (the CRC32 of the parts' CRC32s,
    ``-<parts>``) must equal ours. S3 builds it from the checksums it verified, moto from the
    bytes it stored, so the whole object is proven by the server's computation on both.
  - ``"md5"``: each part's MD5 travels as ``Content-MD5`` and must equal the part's ETag (the
    MD5 the server computed); the object's ETag must be the MD5 of the parts' MD5s,
    ``-<parts>``. Works on any server that computes S3 ETags.

* Every finished part is reported to a :class:`Checkpoint` from the orchestrating thread (the
  task layer writes it to the ledger), so a retry lists the upload's parts on the server and
  sends only the missing ones.
* The object is created with ``If-None-Match: *`` (``PutObject`` and
  ``CompleteMultipartUpload``): a transfer can never overwrite a different object. A retry that
  finds its own verified object already there (same size and checksum) succeeds.
* A local file that changes during the transfer (size, mtime or inode differ at the end) fails
  verification: the object is deleted and nothing is recorded.
* Where an MD5 ETag cannot be compared (SSE-KMS, SSE-C), the object is read back and compared
  by SHA-256 instead.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

from botocore.exceptions import ClientError
from storages.backends.s3 import S3Storage

from queued_storage._s3.checksums import CHECKS, Digest, Md5Checks
from queued_storage._s3.client import s3_client, s3_key
from queued_storage._s3.errors import error_code
from queued_storage._s3.objects import SSE_C, abort_upload
from queued_storage.exceptions import ChecksumMismatch, PermanentTransferError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ListPartsRequestTypeDef

__all__ = ["Checkpoint", "Part", "Resume", "S3Result", "choose_part_size", "s3_transfer"]

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000


@dataclass(frozen=True)
class Part:
    number: int
    etag: str
    digest: str  # the part's checksum in the algorithm's encoding (MD5 hex, CRC32 base64)
    size: int


@dataclass
class Resume:
    """What an earlier attempt left: its open upload and the parts it finished."""

    upload_id: str
    part_size: int
    source: str
    parts: list[Part] = field(default_factory=list)


class Checkpoint(Protocol):
    """Receives the upload's progress as it happens (always from the calling thread)."""

    def begin(self, upload_id: str, part_size: int, source: str) -> None: ...

    def part(self, part: Part) -> None: ...

    def end(self) -> None: ...


class _NoCheckpoint:
    def begin(self, upload_id: str, part_size: int, source: str) -> None:
        pass

    def part(self, part: Part) -> None:
        pass

    def end(self) -> None:
        pass


def choose_part_size(size: int, configured: int) -> int:
    """The configured part size, raised to S3's 5 MiB minimum and to fit 10,000 parts.

    Rounded up to whole MiB so that the same file and setting always give the same parts
    (the multipart ETag depends on them).
    """
    part = max(configured, MIN_PART, math.ceil(size / MAX_PARTS))
    return min(MAX_PART, math.ceil(part / MiB) * MiB)


class _Source:
    """The local file, read by offset from any thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        st = os.fstat(self.fd)
        self.size = st.st_size
        self.fingerprint = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        while len(data) < length:  # short reads are legal; EOF means the file shrank
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def digest(self, new: Callable[[], Digest], offset: int, length: int, read_size: int) -> Digest:
        """A *new()* hash of a range, read in *read_size* pieces (never the range at once)."""
        digest = new()
        end = offset + length
        while offset < end:
            chunk = os.pread(self.fd, min(read_size, end - offset), offset)
            if not chunk:
                raise ChecksumMismatch(
                    f"The local file {self.path!r} shrank during its transfer.", name=self.path
                )
            digest.update(chunk)
            offset += len(chunk)
        return digest

    def unchanged(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}" == self.fingerprint

    def close(self) -> None:
        os.close(self.fd)


class _PartReader:
    """A part of the file as a seekable stream, read by offset: no buffer of the part's size.

    ``read`` may return up to ``read_size`` bytes whatever smaller size is asked for:
    http.client asks for 16 KiB at a time, and fewer, larger reads cost less CPU.
    """

    def __init__(self, source: _Source, offset: int, length: int, read_size: int) -> None:
        self.source, self.offset, self.length, self.read_size = source, offset, length, read_size
        self.position = 0

    def __len__(self) -> int:
        return self.length

    def read(self, size: int | None = -1) -> bytes:
        left = self.length - self.position
        if left <= 0:
            return b""
        want = left if size is None or size < 0 else min(left, max(size, self.read_size))
        data = os.pread(self.source.fd, want, self.offset + self.position)
        self.position += len(data)
        return data

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.length}[whence]
        self.position = max(0, min(self.length, base + position))
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


@dataclass(frozen=True)
class S3Result:
    size: int
    checksum: str
    algorithm: str


def s3_transfer(
    remote: S3Storage,
    name: str,
    path: str,
    *,
    multipart_threshold: int,
    part_size: int,
    max_concurrency: int,
    read_size: int,
    checksum: str = "crc32",
    progress: Callable[[int, int], None] | None = None,
    resume: Resume | None = None,
    checkpoint: Checkpoint | None = None,
    client: S3Client | None = None,
) -> S3Result:
    """Upload *path* to *remote* as *name* and verify it; see the module docstring."""
    client = client or s3_client(remote, max_concurrency)
    params = dict(remote._get_write_parameters(s3_key(remote, name)))
    sse_c = {k: params[k] for k in SSE_C if k in params}
    encrypted = bool(sse_c) or params.get("ServerSideEncryption") == "aws:kms"
    report = progress or (lambda done, total: None)
    source = _Source(path)
    # A single PUT is always checked by its ETag: the server computes it from the bytes on
    # any S3 server, and below the threshold its MD5 costs next to nothing.
    checks = CHECKS[checksum] if source.size >= multipart_threshold else CHECKS["md5"]
    # An MD5 ETag does not survive SSE-KMS or SSE-C; S3's CRC32 checksums do.
    opaque = checks.name == "md5" and encrypted
    job = _Job(
        client, remote.bucket_name, s3_key(remote, name), name, params, sse_c, checks, opaque
    )
    try:
        if source.size < multipart_threshold:
            result = job.single(source)
            report(source.size, source.size)
        else:
            result = job.multipart(
                source,
                choose_part_size(source.size, part_size),
                max_concurrency,
                min(read_size, MiB),  # per read: ~1 MiB of memory a part in flight
                report,
                resume,
                checkpoint or _NoCheckpoint(),
            )
        if not source.unchanged():
            job.delete()
            raise ChecksumMismatch(
                f"The local file {name!r} changed while it was transferred; the remote copy "
                "was deleted and the transfer will be retried once the file stays put.",
                name=name,
            )
        if opaque:
            result = job.read_back(source, read_size)
        return result
    finally:
        source.close()


def _taken(name: str) -> PermanentTransferError:
    return PermanentTransferError(
        f"The remote storage already holds a different object named {name!r}; nothing was "
        "overwritten. Delete or rename that object, then retry with storage.transfer(name).",
        name=name,
    )


def answered(response: Mapping[str, Any], field: str, operation: str) -> Any:
    """*field* of the body of S3's answer to *operation*. A body cut off before its first
    byte (S3, or the way to it, went away as it answered) parses as an empty answer without a
    botocore error: a failure of the connection, retried as an outage, not one about the
    file."""
    value = response.get(field)
    if not value:
        raise ConnectionError(
            f"S3's answer to {operation} came without its body ({field} missing): the "
            "connection was cut as it answered"
        )
    return value


def _list_parts(
    client: S3Client, bucket: str, key: str, upload_id: str
) -> dict[int, tuple[str, int]]:
    found: dict[int, tuple[str, int]] = {}
    kwargs: ListPartsRequestTypeDef = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
    while True:
        page = client.list_parts(**kwargs)
        answered(page, "UploadId", "ListParts")
        for p in page.get("Parts", []):
            found[p["PartNumber"]] = (p["ETag"].strip('"'), p["Size"])
        if not page.get("IsTruncated"):
            return found
        kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]


@dataclass(frozen=True)
class _Job:
    """One object's upload: where it goes, with which parameters, verified how."""

    client: S3Client
    bucket: str
    key: str
    name: str
    params: dict[str, Any]
    sse_c: dict[str, Any]
    checks: Md5Checks
    opaque: bool  # the server's checksum cannot be compared (MD5 ETag under encryption)

    def delete(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def ours(self, expected: str, size: int) -> bool:
        """Whether the object already at the key is the one we are sending (a retry's)."""
        if self.opaque:
            return False
        head = self.client.head_object(
            Bucket=self.bucket, Key=self.key, **self.sse_c, **self.checks.head_args
        )
        return head["ContentLength"] == size and self.checks.same(
            self.checks.received(head), expected
        )

    def mismatch(self, what: str, server: str, ours: str) -> Exception:
        if not server:
            return self.unsupported(what)
        return ChecksumMismatch(
            f"The server's {self.checks.name} of {what} of {self.name!r} is {server}, the bytes "
            f"sent have {ours}; it will be sent again.",
            name=self.name,
        )

    def unsupported(self, what: str) -> PermanentTransferError:
        return PermanentTransferError(
            f"The remote server returned no {self.checks.name} for {what} of {self.name!r}, so "
            "the transfer cannot be verified: it does not support S3 checksums. Set "
            "QUEUED_STORAGE_CHECKSUM = 'md5' (verification by ETag) and retry.",
            name=self.name,
        )

    def single(self, source: _Source) -> S3Result:
        data = source.read(0, source.size)
        digest = self.checks.new()
        digest.update(data)
        expected = self.checks.encode(digest)
        try:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=data,
                IfNoneMatch="*",
                **self.checks.send(digest),
                **self.params,
            )
        except ClientError as err:
            if error_code(err) != "PreconditionFailed":
                raise
            if not self.ours(expected, len(data)):
                raise _taken(self.name) from err
            return S3Result(size=len(data), checksum=expected, algorithm=self.checks.whole)
        received = self.checks.received(response)
        if not self.opaque and received != expected:
            self.delete()
            raise self.mismatch("the object", received, expected)
        return S3Result(size=len(data), checksum=expected, algorithm=self.checks.whole)

    def multipart(
        self,
        source: _Source,
        part_size: int,
        max_concurrency: int,
        piece: int,
        report: Callable[[int, int], None],
        resume: Resume | None,
        checkpoint: Checkpoint,
    ) -> S3Result:
        client, bucket, key = self.client, self.bucket, self.key
        size = source.size
        fingerprint = f"{self.checks.name}:{source.fingerprint}"
        done: dict[int, Part] = {}
        upload_id = ""
        if resume is not None and resume.upload_id:
            usable = resume.source == fingerprint and resume.part_size >= MIN_PART
            if usable and math.ceil(size / resume.part_size) <= MAX_PARTS:
                try:
                    on_server = _list_parts(client, bucket, key, resume.upload_id)
                except ClientError as err:
                    if error_code(err) != "NoSuchUpload":
                        raise
                else:
                    upload_id, part_size = resume.upload_id, resume.part_size
                    for part in resume.parts:
                        if on_server.get(part.number) == (part.etag, part.size):
                            done[part.number] = part
            if not upload_id:
                abort_upload(client, bucket, key, resume.upload_id)
        if not upload_id:
            opened = client.create_multipart_upload(
                Bucket=bucket, Key=key, **self.params, **self.checks.create_args
            )
            upload_id = answered(opened, "UploadId", "CreateMultipartUpload")
            checkpoint.begin(upload_id, part_size, fingerprint)
        count = math.ceil(size / part_size)
        sent = sum(p.size for p in done.values())
        report(sent, size)

        def upload(number: int) -> Part:
            offset = (number - 1) * part_size
            length = min(part_size, size - offset)
            # The checksum is read first (it travels in a header), then the part is streamed
            # from the page cache; the server's own checksum of what it received must match.
            digest = source.digest(self.checks.new, offset, length, piece)
            response = client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                # botocore streams any object with read, seek and tell.
                Body=cast("IO[bytes]", _PartReader(source, offset, length, piece)),
                ContentLength=length,
                **self.checks.send(digest),
                **self.sse_c,
            )
            expected = self.checks.encode(digest)
            received = self.checks.received(response)
            if not self.opaque and received != expected:
                raise self.mismatch(f"part {number}", received, expected)
            etag = response["ETag"].strip('"')
            return Part(number=number, etag=etag, digest=expected, size=length)

        missing = [n for n in range(1, count + 1) if n not in done]
        with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="qs-part") as pool:
            running: set[Future[Part]] = set()
            try:
                for number in missing:
                    running.add(pool.submit(upload, number))
                    if len(running) < max_concurrency:
                        continue
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    sent += _collect(finished, done, checkpoint)
                    report(sent, size)
                while running:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    sent += _collect(finished, done, checkpoint)
                    report(sent, size)
            except BaseException:
                for future in running:
                    future.cancel()
                raise

        parts = [done[n] for n in range(1, count + 1)]
        expected = self.checks.combine([p.digest for p in parts])
        try:
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [self.checks.complete_entry(p) for p in parts]},
                IfNoneMatch="*",
                **self.sse_c,
            )
        except ClientError as err:
            if error_code(err) != "PreconditionFailed":
                raise
            abort_upload(client, bucket, key, upload_id)
            checkpoint.end()
            if not self.ours(expected, size):
                raise _taken(self.name) from err
            return S3Result(size=size, checksum=expected, algorithm=self.checks.composite)
        checkpoint.end()
        head = client.head_object(Bucket=bucket, Key=key, **self.sse_c, **self.checks.head_args)
        received = self.checks.received(head)
        remote_size = head["ContentLength"]
        if remote_size == size and not self.opaque and not received:
            self.delete()
            raise self.unsupported("the object")
        if remote_size != size or (not self.opaque and not self.checks.same(received, expected)):
            self.delete()
            raise ChecksumMismatch(
                f"The remote copy of {self.name!r} ({remote_size} bytes, {self.checks.name} "
                f"{received}) does not match the parts sent ({size} bytes, {expected}); it was "
                "deleted and the transfer will be retried.",
                name=self.name,
            )
        return S3Result(size=size, checksum=expected, algorithm=self.checks.composite)

    def read_back(self, source: _Source, read_size: int) -> S3Result:
        """Compare by SHA-256 where the server's checksum cannot be compared (encryption)."""
        local = source.digest(hashlib.sha256, 0, source.size, read_size)
        body = self.client.get_object(Bucket=self.bucket, Key=self.key, **self.sse_c)["Body"]
        remote = hashlib.sha256()
        try:
            for chunk in iter(lambda: body.read(read_size), b""):
                remote.update(chunk)
        finally:
            body.close()
        if remote.digest() != local.digest():
            self.delete()
            raise ChecksumMismatch(
                f"The remote copy of {self.name!r} does not match the local file (sha256); it "
                "was deleted and the transfer will be retried.",
                name=self.name,
            )
        return S3Result(size=source.size, checksum=local.digest().hex(), algorithm="sha256")


def _collect(finished: set[Future[Part]], done: dict[int, Part], checkpoint: Checkpoint) -> int:
    added = 0
    for future in finished:
        part = future.result()
        done[part.number] = part
        checkpoint.part(part)
        added += part.size
    return added
