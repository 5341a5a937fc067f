"""Digests a client announces for what it sends, checked as the bytes arrive.

One concern: parsing a digest header (a malformed one is refused before the body is read) and
comparing it with the digest of what arrived.

* :class:`ExpectedChecksums`: a whole body's ``Content-MD5`` and ``X-Checksum-SHA256`` (the raw
  upload view, the nginx view);
* :class:`ChunkChecksum`: one tus chunk's ``Upload-Checksum`` (the tus checksum extension),
  with the algorithms it accepts, :data:`CHECKSUM_ALGORITHMS`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from queued_storage.bodies import UploadRefused

if TYPE_CHECKING:
    from _hashlib import HASH

__all__ = ["CHECKSUM_ALGORITHMS", "ChunkChecksum", "ExpectedChecksums"]


@dataclass
class ExpectedChecksums:
    """Digests a client announced (``Content-MD5``, ``X-Checksum-SHA256``), checked on arrival."""

    md5: bytes | None = None
    sha256: bytes | None = None
    _hashers: dict[str, HASH] = field(default_factory=dict, repr=False)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> ExpectedChecksums:
        """Parse the headers; a malformed value is refused (400) before the body is read."""
        found = cls()
        md5 = headers.get("Content-MD5")
        if md5:
            try:
                found.md5 = base64.b64decode(md5.strip(), validate=True)
            except (binascii.Error, ValueError):
                found.md5 = None
            if found.md5 is None or len(found.md5) != 16:
                raise UploadRefused(400, "Content-MD5 must be the base64 of a 16-byte MD5.")
        sha256 = headers.get("X-Checksum-SHA256")
        if sha256:
            try:
                found.sha256 = bytes.fromhex(sha256.strip())
            except ValueError:
                found.sha256 = None
            if found.sha256 is None or len(found.sha256) != 32:
                raise UploadRefused(400, "X-Checksum-SHA256 must be 64 hexadecimal digits.")
        if found.md5 is not None:
            found._hashers["md5"] = hashlib.md5(usedforsecurity=False)
        if found.sha256 is not None:
            found._hashers["sha256"] = hashlib.sha256()
        return found

    def update(self, chunk: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(chunk)

    def verify(self) -> None:
        """Raise :class:`UploadRefused` (400) when a digest of what arrived differs."""
        if self.md5 is not None and self._hashers["md5"].digest() != self.md5:
            raise UploadRefused(400, "Content-MD5 does not match the received body; not kept.")
        if self.sha256 is not None and self._hashers["sha256"].digest() != self.sha256:
            raise UploadRefused(
                400, "X-Checksum-SHA256 does not match the received body; not kept."
            )

    def verify_file(self, path: str, chunk_size: int) -> None:
        """Hash a file already on disk (the nginx path) and verify it."""
        if not self._hashers:
            return
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_size):
                self.update(chunk)
        self.verify()


CHECKSUM_ALGORITHMS: dict[str, Callable[[], HASH]] = {
    "sha1": lambda: hashlib.sha1(usedforsecurity=False),
    "md5": lambda: hashlib.md5(usedforsecurity=False),
    "sha256": hashlib.sha256,
}


@dataclass
class ChunkChecksum:
    """The digest a tus client announced for one chunk (``Upload-Checksum: <algo> <base64>``)."""

    algorithm: str
    digest: bytes

    @classmethod
    def from_header(cls, value: str | None) -> ChunkChecksum | None:
        """Parse the header; an unknown algorithm or a malformed digest is a 400, unread."""
        if not value:
            return None
        algorithm, _, encoded = value.strip().partition(" ")
        factory = CHECKSUM_ALGORITHMS.get(algorithm.lower())
        if factory is None:
            known = ", ".join(CHECKSUM_ALGORITHMS)
            raise UploadRefused(
                400, f"Upload-Checksum algorithm {algorithm!r} is not supported; use {known}."
            )
        try:
            digest = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != factory().digest_size:
            raise UploadRefused(400, f"Upload-Checksum is not the base64 of a {algorithm} digest.")
        return cls(algorithm.lower(), digest)

    def hasher(self) -> HASH:
        return CHECKSUM_ALGORITHMS[self.algorithm]()
