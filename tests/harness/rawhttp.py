"""HTTP/1.1 on a plain socket, for the tests that must stop in the middle of a request.

:class:`RawClient` sends a request's head, part of its body, more later, or closes the
connection, and reads the answer (its status alone, or status and body).
:func:`start_tus_patch` is the one way the tests start a tus ``PATCH`` that they cut, hold or
race: its head and the first bytes of its body, on a socket of its own.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["TUS_RESUMABLE", "RawClient", "cookie_header", "start_tus_patch"]

#: The header every tus request carries.
TUS_RESUMABLE = {"Tus-Resumable": "1.0.0"}


def cookie_header(cookies: Mapping[str, str]) -> str:
    """The ``Cookie`` header that sends *cookies*."""
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


class RawClient:
    """An HTTP/1.1 client on a plain socket: send part of a body, read, send more, or close."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)

    def send_head(self, method: str, path: str, headers: Mapping[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: testserver"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def status(self) -> int:
        """The status of the response (its head only: a 204 has no body)."""
        return self._head()[0]

    def response(self) -> tuple[int, bytes]:
        """Status and body of the response (``Content-Length`` or chunked framing)."""
        status, head, rest = self._head()
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        if b"content-length" in headers:
            length = int(headers[b"content-length"])
            while len(rest) < length:
                rest += self._recv()
            return status, rest[:length]
        body = b""
        while True:  # chunked
            while b"\r\n" not in rest:
                rest += self._recv()
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                return status, body
            while len(rest) < size + 2:
                rest += self._recv()
            body, rest = body + rest[:size], rest[size + 2 :]

    def _head(self) -> tuple[int, bytes, bytes]:
        """The status, the head and what arrived after it."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed before a response: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), head, rest

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed in the middle of a response")
        return chunk

    def close(self) -> None:
        self.sock.close()


def start_tus_patch(
    url: str,
    cookies: Mapping[str, str],
    offset: int,
    data: bytes,
    length: int | None,
    **headers: str,
) -> RawClient:
    """Start a tus ``PATCH`` of the upload at *url* (``http://host:port/path``) from *offset*
    that declares *length* bytes (``None``: chunked framing, *data* framed by the caller) and
    send *data* only; the caller sends more, reads the answer, or closes the connection.
    *headers* come last (``Upload-Checksum``...)."""
    parts = urlsplit(url)
    framing = (
        {"Transfer-Encoding": "chunked"} if length is None else {"Content-Length": str(length)}
    )
    client = RawClient(f"{parts.scheme}://{parts.netloc}")
    try:
        client.send_head(
            "PATCH",
            parts.path,
            {
                **TUS_RESUMABLE,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                **framing,
                "Cookie": cookie_header(cookies),
                **headers,
            },
        )
        client.send(data)
    except BaseException:
        client.close()
        raise
    return client
