"""The ClamAV processor against a real ``clamd`` (Debian's ``clamav-daemon``, started here on
loopback with a signature database this module writes: the EICAR test file and a marker of
its own). No database download, no network."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queued_storage.processors import Later, Passed, Rejected, Staged
from queued_storage.processors.clamav import ClamAV
from tests.harness.services import EICAR, ClamdServer
from tests.harness.suite import need_tool

MARKER = b"queued_storage test marker: not a virus, a signature of this test module\n" * 3


def staged(name: str, data: bytes) -> Staged:
    return Staged(name, len(data), "", "", lambda: io.BytesIO(data))


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    need_tool("clamd", ClamdServer.binary() is not None, "apt-get install clamav-daemon")
    server = ClamdServer(
        tmp_path_factory.mktemp("clamd"),
        signatures={"Test.QueuedStorage.Marker": MARKER},
        stream_max=1024 * 1024,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_eicar_test_file_is_rejected_with_the_signatures_name(clamd: ClamdServer) -> None:
    found = ClamAV(clamd.address)(staged("up/eicar.com", EICAR))
    assert isinstance(found, Rejected)
    assert "Test.EICAR" in found.reason and "'up/eicar.com'" in found.reason


def test_a_file_of_the_tests_own_signature_is_rejected(clamd: ClamdServer) -> None:
    found = ClamAV(clamd.address)(staged("marker.bin", MARKER))
    assert isinstance(found, Rejected) and "Test.QueuedStorage.Marker" in found.reason


def test_a_clean_file_passes_with_the_scanners_version(clamd: ClamdServer) -> None:
    data = os.urandom(300_000)  # more than one chunk
    found = ClamAV(clamd.address, chunk_size=64 * 1024)(staged("clean.bin", data))
    assert isinstance(found, Passed)
    scan = found.metadata["scan"]
    assert isinstance(scan, dict) and scan["engine"] == "clamav"
    assert str(scan["version"]).startswith("ClamAV ")


def test_a_file_over_the_daemons_stream_limit_waits_with_the_fix(clamd: ClamdServer) -> None:
    found = ClamAV(clamd.address)(staged("big.bin", b"x" * (2 * 1024 * 1024)))
    assert isinstance(found, Later)
    assert "StreamMaxLength" in found.reason


def test_a_daemon_that_is_down_makes_the_file_wait(clamd: ClamdServer, tmp_path: Path) -> None:
    clamd.stop()
    try:
        found = ClamAV(clamd.address, timeout=2)(staged("while-down.txt", b"hello"))
        assert isinstance(found, Later) and "while-down.txt" in found.reason
    finally:
        clamd.start()
    assert isinstance(ClamAV(clamd.address)(staged("after.txt", b"hello")), Passed)


class SlowClamd:
    """A stand-in for clamd that takes *delay* seconds to answer a stream, as a real clamd
    scanning a large file does (it answers only once the whole stream is scanned; a real
    one cannot be made slow on demand). Loopback, one thread."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                command = conn.recv(10)
                if command.startswith(b"zVERSION"):
                    conn.sendall(b"ClamAV 0.0-slow\0")
                    continue
                while True:  # chunks until the zero length
                    (length,) = struct.unpack("!I", _exactly(conn, 4))
                    if length == 0:
                        break
                    _exactly(conn, length)
                time.sleep(self.delay)
                with contextlib.suppress(OSError):
                    conn.sendall(b"stream: OK\0")

    def close(self) -> None:
        self.listener.close()


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = conn.recv(size - len(data))
        if not piece:
            raise ConnectionError("closed")
        data += piece
    return data


def test_the_wait_for_clamds_answer_grows_with_the_files_size() -> None:
    """clamd is silent while it scans the stream it received: a large file's answer comes
    after the send's timeout, and must not be taken for a clamd that is down."""
    data = b"x" * (1024 * 1024)
    slow = SlowClamd(delay=1.5)
    try:
        # A second per 0.5 MiB: 2 s more than the 0.5 s timeout for this 1 MiB file.
        waits = ClamAV(slow.address, timeout=0.5, scan_rate=512 * 1024)
        assert isinstance(waits(staged("large.bin", data)), Passed)
        # Without that allowance the same answer comes too late: the file waits (Later).
        hurried = ClamAV(slow.address, timeout=0.5, scan_rate=1024**4)
        assert isinstance(hurried(staged("large.bin", data)), Later)
    finally:
        slow.close()
