"""The S3 side of a direct upload: open it, sign its parts, list them, complete it, check it.

The client sends each part straight to S3 with a presigned ``UploadPart`` URL. What is signed:
the part's number, its ``Content-Length`` and its CRC32 (``x-amz-checksum-crc32``, with
``x-amz-sdk-checksum-algorithm``), so S3 itself refuses a part of another length (the
signature) or whose bytes do not match the declared checksum (``BadDigest``). The upload is
opened with ``ChecksumAlgorithm=CRC32``; completing it never overwrites an object
(``If-None-Match: *``); its composite CRC32 is then compared with the one computed from the
declared parts, which catches wrong bytes also on servers that check nothing at the part
(moto computes the composite from the bytes it holds). ``queued_storage.direct`` drives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storages.backends.s3 import S3Storage

from queued_storage._s3.checksums import CHECKS
from queued_storage._s3.client import is_s3, s3_client, s3_key
from queued_storage._s3.objects import SSE_C, abort_upload
from queued_storage._s3.upload import answered, choose_part_size

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ListPartsRequestTypeDef

__all__ = [
    "ListedPart",
    "abort",
    "choose_part_size",
    "complete",
    "composite",
    "encrypted_by_client",
    "is_s3",
    "list_parts",
    "open_upload",
    "part_url",
    "same_composite",
]

#: Seconds a call made on a web request waits for S3 to connect or answer a read; it is not
#: retried (the client retries the request, and a web request never waits for botocore's
#: backoff against an S3 that is down).
REQUEST_TIMEOUT = 20.0

#: The checks of a CRC32 upload (the composite, how S3 reports it).
_CRC32 = CHECKS["crc32"]

#: The headers the client sends with a part besides ``Content-Length`` (both are signed).
CHECKSUM_HEADER = "x-amz-checksum-crc32"
ALGORITHM_HEADER = "x-amz-sdk-checksum-algorithm"


@dataclass(frozen=True)
class ListedPart:
    """A part S3 holds: its number, size, ETag and (where the server lists it) CRC32."""

    number: int
    size: int
    etag: str
    crc32: str


def _client(remote: S3Storage) -> S3Client:
    return s3_client(remote, timeout=REQUEST_TIMEOUT)


def _where(remote: S3Storage, name: str) -> tuple[str, str]:
    return remote.bucket_name, s3_key(remote, name)


def encrypted_by_client(remote: S3Storage, name: str) -> bool:
    """Whether the storage encrypts *name* with a key of its own (SSE-C): a browser would
    need that key to upload, so direct uploads are refused for such a storage."""
    params = remote.get_object_parameters(s3_key(remote, name))
    return any(k in params for k in SSE_C)


def open_upload(remote: S3Storage, name: str, content_type: str = "") -> str:
    """Open the multipart upload of *name* (CRC32 checksums, the storage's object
    parameters: ACL, cache control, encryption); its upload id."""
    bucket, key = _where(remote, name)
    params: dict[str, Any] = dict(remote._get_write_parameters(key))
    if content_type:
        params["ContentType"] = content_type
    opened = _client(remote).create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32", **params
    )
    upload_id: str = answered(opened, "UploadId", "CreateMultipartUpload")
    return upload_id


def part_url(
    remote: S3Storage,
    name: str,
    upload_id: str,
    number: int,
    *,
    size: int,
    crc32: str,
    expires: int,
) -> tuple[str, dict[str, str]]:
    """A presigned ``UploadPart`` URL of part *number* (*size* bytes whose CRC32 is *crc32*,
    base64) and the headers the client must send with it (besides ``Content-Length``)."""
    bucket, key = _where(remote, name)
    url: str = s3_client(remote).generate_presigned_url(
        "upload_part",
        Params={
            "Bucket": bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "ContentLength": size,
            "ChecksumAlgorithm": "CRC32",
            "ChecksumCRC32": crc32,
        },
        ExpiresIn=expires,
    )
    return url, {CHECKSUM_HEADER: crc32, ALGORITHM_HEADER: "CRC32"}


def list_parts(remote: S3Storage, name: str, upload_id: str) -> dict[int, ListedPart]:
    """The parts S3 holds of the upload, every page (``NoSuchUpload`` propagates)."""
    bucket, key = _where(remote, name)
    client = _client(remote)
    found: dict[int, ListedPart] = {}
    request: ListPartsRequestTypeDef = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
    while True:
        page = client.list_parts(**request)
        answered(page, "UploadId", "ListParts")
        for p in page.get("Parts", []):
            number = int(p["PartNumber"])
            found[number] = ListedPart(
                number=number,
                size=int(p["Size"]),
                etag=str(p["ETag"]).strip('"'),
                crc32=str(p.get("ChecksumCRC32") or ""),
            )
        if not page.get("IsTruncated"):
            return found
        request["PartNumberMarker"] = page["NextPartNumberMarker"]


def complete(
    remote: S3Storage, name: str, upload_id: str, parts: list[tuple[int, str, str]]
) -> None:
    """Complete the upload from ``(number, etag, crc32)`` of each part, never overwriting an
    object (``If-None-Match: *``: S3 answers 412 ``PreconditionFailed`` if one is there)."""
    bucket, key = _where(remote, name)
    _client(remote).complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [
                {"PartNumber": number, "ETag": f'"{etag}"', "ChecksumCRC32": crc32}
                for number, etag, crc32 in parts
            ]
        },
        IfNoneMatch="*",
    )


def abort(remote: S3Storage, name: str, upload_id: str) -> None:
    """Abort the upload (one already gone is not an error)."""
    bucket, key = _where(remote, name)
    abort_upload(_client(remote), bucket, key, upload_id)


def composite(crc32s: list[str]) -> str:
    """The composite CRC32 of an object made of parts with these CRC32s (S3's form,
    ``<base64>-<parts>``)."""
    return _CRC32.combine(crc32s)


def same_composite(received: str, expected: str) -> bool:
    """Whether the object's reported CRC32 is the *expected* composite (S3 says
    ``<crc>-<parts>``; moto leaves the count out)."""
    return _CRC32.same(received, expected)
