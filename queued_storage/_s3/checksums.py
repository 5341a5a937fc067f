"""How the engine proves a body arrived intact: the checksum it sends, and what it compares.

Two strategies (``QUEUED_STORAGE_CHECKSUM``), both relying on the server's own computation:
:class:`Md5Checks` compares the ETag (the MD5 the server computes), :class:`Crc32Checks` S3's
CRC32 checksums. See :mod:`queued_storage._s3.upload` for where each is used.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, TypedDict

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from queued_storage._s3.upload import Part

__all__ = ["CHECKS", "BodyArgs", "Crc32Checks", "CreateArgs", "Digest", "HeadArgs", "Md5Checks"]


class BodyArgs(TypedDict, total=False):
    """The checksum a body's request carries (``PutObject``, ``UploadPart``)."""

    ContentMD5: str
    ChecksumAlgorithm: Literal["CRC32"]
    ChecksumCRC32: str


class CreateArgs(TypedDict, total=False):
    """How a multipart upload is opened (``CreateMultipartUpload``)."""

    ChecksumAlgorithm: Literal["CRC32"]


class HeadArgs(TypedDict, total=False):
    """What a ``HeadObject`` asks for besides the object's size and ETag."""

    ChecksumMode: Literal["ENABLED"]


class Digest(Protocol):
    """A running checksum (``hashlib``'s objects, :class:`_Crc32Digest`)."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class _Crc32Digest:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


class Md5Checks:
    """Verification by the ETag the server computes: the MD5 of a part or plain object.

    Proves the bytes against S3 and against servers that do not check checksum headers (moto):
    the ETag is computed by the server from what it received. Costs an MD5 of every byte
    (about 1.3 CPU-seconds per GiB here).
    """

    name = "md5"
    whole = "md5"
    composite = "s3-multipart-etag"
    create_args: ClassVar[CreateArgs] = {}
    head_args: ClassVar[HeadArgs] = {}

    def new(self) -> Digest:
        return hashlib.md5(usedforsecurity=False)

    def encode(self, digest: Digest) -> str:
        return digest.digest().hex()

    def send(self, digest: Digest) -> BodyArgs:
        return {"ContentMD5": b64(digest.digest())}

    def received(self, response: Mapping[str, object]) -> str:
        return str(response.get("ETag", "")).strip('"')

    def combine(self, values: list[str]) -> str:
        joined = b"".join(bytes.fromhex(v) for v in values)
        return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(values)}"

    def complete_entry(self, part: Part) -> CompletedPartTypeDef:
        return {"PartNumber": part.number, "ETag": f'"{part.etag}"'}

    def same(self, received: str, expected: str) -> bool:
        return received == expected


class Crc32Checks(Md5Checks):
    """Verification by S3's CRC32 checksums (``x-amz-checksum-crc32``): about 0.2 s per GiB.

    S3 computes the CRC32 of what it receives and refuses a request whose header disagrees;
    the stored part and composite checksums are then S3's own. A server that stores the header
    without checking it (moto does) makes this an echo: use ``md5`` against such servers.
    """

    name = "crc32"
    whole = "crc32"
    composite = "s3-composite-crc32"
    create_args: ClassVar[CreateArgs] = {"ChecksumAlgorithm": "CRC32"}
    head_args: ClassVar[HeadArgs] = {"ChecksumMode": "ENABLED"}

    def new(self) -> Digest:
        return _Crc32Digest()

    def encode(self, digest: Digest) -> str:
        return b64(digest.digest())

    def send(self, digest: Digest) -> BodyArgs:
        return {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": b64(digest.digest())}

    def received(self, response: Mapping[str, object]) -> str:
        return str(response.get("ChecksumCRC32") or "")

    def combine(self, values: list[str]) -> str:
        joined = b"".join(base64.b64decode(v) for v in values)
        return f"{b64(zlib.crc32(joined).to_bytes(4, 'big'))}-{len(values)}"

    def complete_entry(self, part: Part) -> CompletedPartTypeDef:
        return {**super().complete_entry(part), "ChecksumCRC32": part.digest}

    def same(self, received: str, expected: str) -> bool:
        # S3 reports a composite as "<crc>-<parts>"; moto leaves the part count out.
        base, _, count = received.partition("-")
        want_base, _, want_count = expected.partition("-")
        return base == want_base and count in ("", want_count)


CHECKS: dict[str, Md5Checks] = {"md5": Md5Checks(), "crc32": Crc32Checks()}
