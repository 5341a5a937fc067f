"""Reading an upload's request body in bounded memory, and refusing it.

One concern: what arrives from the client before it is written anywhere.

* :class:`UploadRefused`: an upload that cannot be accepted, with the HTTP status the views
  answer (the one error of the ingest modules);
* :func:`body_idle_timeout` makes each read of a body give up when the client stops sending
  (``QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT``), where the server lets the view set that;
  :func:`idle_timed_out` and :func:`idle_refusal` recognise and answer it (408);
* :class:`BodyReader`: a body, a chunk at a time, never more than declared or allowed, saying
  why it stopped early (:data:`CLIENT_GONE`: the client went away).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import RequestAborted
from django.http import UnreadablePostError

from queued_storage.asgi import BODY_STREAM
from queued_storage.exceptions import QueuedStorageError

__all__ = [
    "CLIENT_GONE",
    "GUNICORN_SOCKET",
    "BodyReader",
    "UploadRefused",
    "body_idle_timeout",
    "idle_refusal",
    "idle_timed_out",
]

logger = logging.getLogger(__name__)


class UploadRefused(QueuedStorageError):
    """The upload cannot be accepted; ``status`` is the HTTP status the views answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


#: What a body stream raises when the client went away mid-body (WSGI servers raise OSError
#: subclasses; Django raises UnreadablePostError / RequestAborted).
CLIENT_GONE = (OSError, UnreadablePostError, RequestAborted)

#: The client's socket in a gunicorn ``environ`` (every worker class sets it).
GUNICORN_SOCKET = "gunicorn.socket"


@contextlib.contextmanager
def body_idle_timeout(meta: Mapping[str, Any], seconds: float | None) -> Iterator[bool]:
    """Within the block, a read of the request body waits at most *seconds* for a byte.

    A read that waits longer raises a ``TimeoutError`` (Django wraps it in
    ``UnreadablePostError``; ``queued_storage.asgi`` raises ``RequestAborted`` from it), which
    :func:`spool_stream` and the form view answer with 408. It is a limit per read, not per
    upload: a slow client that keeps sending is never cut off. Yields whether it applies:

    * gunicorn, HTTP/1.x (sync, gthread, gevent workers): ``environ["gunicorn.socket"]`` is
      the client's socket. Its timeout is set for the block and put back afterwards, so the
      response is written as gunicorn would write it. (Over HTTP/2, gunicorn bounds each body
      read by its own ``--timeout`` and the socket is shared: it is left alone.)
    * ``queued_storage.asgi``: its body stream's wait for the next ASGI message.
    * Django's own ``ASGIHandler`` has the whole body before the view runs: nothing to do.
    * Other WSGI servers (``runserver``, uWSGI, mod_wsgi) do not expose their socket; their
      own limits apply, and that is logged once per server software.

    ``None`` changes nothing: the server's limits apply (the streaming ASGI handler's is
    ``StreamingASGIHandler.body_timeout``, 60 s).
    """
    if seconds is None:
        yield False
        return
    stream = meta.get(BODY_STREAM)
    if stream is not None:
        stream.timeout = seconds
        yield True
        return
    sock = meta.get(GUNICORN_SOCKET)
    http1 = str(meta.get("SERVER_PROTOCOL", "")).startswith("HTTP/1")
    if sock is None or not http1 or not hasattr(sock, "settimeout"):
        if "wsgi.input" in meta and http1:
            _log_no_idle_timeout(str(meta.get("SERVER_SOFTWARE", "an unknown WSGI server")))
        yield False
        return
    previous = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        yield True
    except BaseException as err:
        if idle_timed_out(err):
            # The rest of the body will not be read: no more reads on this connection, so
            # gunicorn closes it after the 408 (some releases would keep it alive, waiting).
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
        raise
    finally:
        with contextlib.suppress(OSError):  # the socket may be closed by now
            sock.settimeout(previous)


@functools.cache
def _log_no_idle_timeout(server: str) -> None:
    logger.warning(
        "QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT cannot be applied under %s (only under gunicorn and "
        "queued_storage.asgi): a client that stops sending holds its thread as long as the "
        "server allows. Put nginx in front or serve through queued_storage.asgi (docs/uploads.md, "
        "Slow clients).",
        server,
    )


def idle_timed_out(err: BaseException) -> bool:
    """Whether a body read failed because the client sent nothing for the idle timeout."""
    seen: BaseException | None = err
    for _ in range(8):  # e.g. UploadRefused from UnreadablePostError from TimeoutError
        if seen is None:
            return False
        if isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def idle_refusal(seconds: float | None, kept: str = "nothing was kept") -> UploadRefused:
    """The 408 for a client that stopped sending (``seconds``: the idle timeout, if known;
    ``kept``: what the server did with the bytes that arrived)."""
    waited = f"for {seconds:g} s" if seconds is not None else "for too long"
    return UploadRefused(408, f"No bytes of the body arrived {waited}; {kept}.")


@dataclass
class BodyReader:
    """A request body, ``chunk_size`` bytes at a time, never more than ``limit`` bytes.

    ``declared`` is the ``Content-Length`` (``None`` for a chunked body; then ``limit`` bounds
    it and ``too_long`` is the 413's message). A body longer than either raises
    :class:`UploadRefused`. One that stops early (the client went away, stalled for the idle
    timeout, or sent less than it declared) ends :meth:`chunks`, with ``cut`` saying why:
    the caller decides what becomes of the bytes that arrived, and ``kept`` says it in the
    refusal (the raw upload view removes them, a tus chunk keeps them).
    """

    read: Callable[[int], bytes]
    declared: int | None
    limit: int
    chunk_size: int
    too_long: str
    kept: str
    idle_timeout: float | None = None
    received: int = 0
    cut: UploadRefused | None = None

    def chunks(self) -> Iterator[bytes]:
        limit = self.declared if self.declared is not None else self.limit
        while True:
            want = self.chunk_size
            if self.declared is not None:
                want = min(want, limit - self.received)
                if want <= 0:
                    break
            try:
                chunk = self.read(want)
            except CLIENT_GONE as err:
                if idle_timed_out(err):
                    self.cut = idle_refusal(self.idle_timeout, self.kept)
                else:
                    self.cut = UploadRefused(
                        400,
                        f"The client stopped sending after {self.received} bytes ({err!r}); "
                        f"{self.kept}.",
                    )
                self.cut.__cause__ = err
                return
            if not chunk:
                break
            self.received += len(chunk)
            if self.received > limit:
                if self.declared is None:
                    raise UploadRefused(413, self.too_long)
                raise UploadRefused(
                    400, f"The body is longer than its Content-Length ({self.declared})."
                )
            yield chunk
        if self.declared is None:
            return
        if self.received < self.declared:
            self.cut = UploadRefused(
                400,
                f"The body ended after {self.received} of {self.declared} bytes (the client "
                f"disconnected?); {self.kept}.",
            )
            return
        # A stream that is not bounded by the server (Django's ASGI request reads whatever
        # the body file holds) must not have more than was declared.
        try:
            extra = self.read(1)
        except CLIENT_GONE:
            extra = b""
        if extra:
            raise UploadRefused(
                400, f"The body is longer than its Content-Length ({self.declared})."
            )
