"""A ClamAV scan through ``clamd``'s ``INSTREAM`` command, in bounded memory.

The file is streamed over the daemon's socket in chunks of :attr:`ClamAV.chunk_size` bytes
(memory: one chunk), within :attr:`ClamAV.timeout` seconds of silence. ``FOUND``: rejected,
with the signature's name. A daemon that cannot be reached, does not answer in time, or
refuses the stream (``INSTREAM size limit exceeded``: the file is larger than its
``StreamMaxLength``) cannot decide: :class:`~queued_storage.processors.Later`, with a reason
that says what to fix. The signatures' version (``zVERSION``) is kept with a pass.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

from queued_storage.processors import Later, Outcome, Passed, Rejected, Staged

__all__ = ["ClamAV", "read_answer", "send_stream"]


class ClamAV:
    """``ClamAV("127.0.0.1:3310")`` or ``ClamAV("/run/clamav/clamd.ctl")`` (a Unix socket).

    *timeout* bounds each wait while the file is sent. clamd answers only once it has scanned
    the whole stream, so the wait for its answer is *timeout* plus a second per *scan_rate*
    bytes of the file (a 1 GiB file: 30 s + 256 s with the defaults): a large file is not
    taken for a clamd that is down."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 30.0,
        chunk_size: int = 256 * 1024,
        scan_rate: int = 4 * 1024 * 1024,
    ) -> None:
        self.address, self.timeout, self.chunk_size = address, timeout, chunk_size
        self.scan_rate = scan_rate

    def connect(self) -> socket.socket:
        """A socket to clamd, each wait on it bounded by :attr:`timeout`."""
        if self.address.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(self.address)
            return sock
        host, _, port = self.address.rpartition(":")
        return socket.create_connection((host or "127.0.0.1", int(port)), timeout=self.timeout)

    def _command(self, command: bytes) -> str:
        with self.connect() as sock:
            sock.sendall(b"z" + command + b"\0")
            return read_answer(sock)

    def version(self) -> str:
        """The engine's and its signatures' version (``ClamAV 1.4.6/27000/...``)."""
        return self._command(b"VERSION")

    def __call__(self, staged: Staged) -> Outcome:
        try:
            version = self.version()
            with self.connect() as sock, staged.open() as source:
                send_stream(sock, iter(lambda: source.read(self.chunk_size), b""))
                sock.settimeout(self.timeout + staged.size / self.scan_rate)
                answer = read_answer(sock)
        except (OSError, ValueError) as err:  # refused, reset, timed out, bad address
            return Later(
                f"ClamAV at {self.address} could not scan {staged.name!r} "
                f"({type(err).__name__}: {err}); it waits until the scanner answers."
            )
        verdict = answer.removeprefix("stream:").strip()
        if verdict == "OK":
            return Passed({"scan": {"engine": "clamav", "version": version}})
        if verdict.endswith(" FOUND"):
            signature = verdict.removesuffix(" FOUND")
            return Rejected(f"ClamAV found {signature} in {staged.name!r}.")
        if "size limit exceeded" in verdict.lower():
            return Later(
                f"ClamAV at {self.address} refused {staged.name!r} ({staged.size} bytes): "
                "larger than its StreamMaxLength. Raise StreamMaxLength in clamd.conf (and "
                "restart clamd); the file waits until then."
            )
        return Later(f"ClamAV at {self.address} answered {answer!r} for {staged.name!r}.")


def send_stream(sock: socket.socket, chunks: Iterable[bytes]) -> None:
    """``INSTREAM`` *chunks* to clamd: each chunk after its length, then a zero length."""
    sock.sendall(b"zINSTREAM\0")
    for chunk in chunks:
        sock.sendall(struct.pack("!I", len(chunk)) + chunk)
    sock.sendall(struct.pack("!I", 0))


def read_answer(sock: socket.socket) -> str:
    """clamd's answer to a ``z`` command: bytes up to the terminating NUL."""
    data = b""
    while not data.endswith(b"\0"):
        piece = sock.recv(4096)
        if not piece:
            break
        data += piece
    return data.rstrip(b"\0").decode("utf-8", "replace")
