"""An ASGI handler that lets the upload views read the request body as it arrives.

Django's ``ASGIHandler`` receives the *whole* request body before it calls any view: it
writes it into a ``SpooledTemporaryFile`` (in memory up to ``FILE_UPLOAD_MAX_MEMORY_SIZE``,
then in an unnamed file in the system temporary directory) and only then builds the request.
Memory stays bounded, but under plain Django ASGI an upload view

* cannot refuse a client (authorisation, ``Content-Length`` over the limit) before the body
  has been received, and
* writes every body to disk twice: once into the handler's spool file (often ``/tmp``, which
  may be RAM-backed ``tmpfs``), then again into the staging storage.

:class:`StreamingASGIHandler` changes exactly that, for views that ask for it (a view class
with ``streams_request_body = True``, as :class:`queued_storage.views.UploadView`): the
request is built with a body stream that pulls ASGI ``http.request`` messages from the server
only when the view reads. The view therefore runs before the body is read, and the body goes
once, chunk by chunk, into the staging disk. Every other request goes through Django's own
``ASGIHandler.handle`` unchanged. Use it in the project's ``asgi.py``::

    from queued_storage.asgi import get_asgi_application

    application = get_asgi_application()

A client that stops sending is given up on after ``timeout`` seconds without a body message
(uvicorn has no such limit of its own): the view's read raises ``RequestAborted`` (caused by a
``TimeoutError``). The stream is ``request.META[BODY_STREAM]``, so a view can set its own
``timeout`` before it reads (``UploadView`` sets ``QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT``).

Only synchronous views can read the stream (they run in a worker thread while the event loop
serves the ``receive`` calls). The URL is resolved with ``ROOT_URLCONF``; a ``request.urlconf``
set by middleware is not seen when choosing the handler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import django
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse
from django.urls import Resolver404, resolve, set_script_prefix

__all__ = ["BODY_STREAM", "ReceiveStream", "StreamingASGIHandler", "get_asgi_application"]

#: The ``request.META`` key of a streaming view's :class:`ReceiveStream`.
BODY_STREAM = "queued_storage.body_stream"

#: An ASGI connection scope: values of every type, read the way Django reads them.
Scope = dict[str, Any]
#: An ASGI message (``type``, ``body``, ``more_body``, ...), received or sent.
Message = Mapping[str, object]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ReceiveStream:
    """A blocking, file-like body that pulls ASGI messages on demand.

    ``read()`` is called from the view's worker thread; each missing piece is fetched with
    ``receive()`` on the server's event loop. It holds at most one ASGI message beyond what was
    asked for. A ``http.disconnect`` (the client went away) raises ``RequestAborted``, once
    the bytes that arrived before it have been read (a read returns them, short, and the
    next one raises); waiting longer than ``timeout`` seconds for the next piece (``None``:
    no limit) raises ``RequestAborted`` caused by a ``TimeoutError`` at once. ``timeout`` may
    be changed between reads.
    """

    def __init__(
        self, receive: Receive, loop: asyncio.AbstractEventLoop, timeout: float | None = 60.0
    ) -> None:
        self._receive = receive
        self._loop = loop
        self.timeout = timeout
        self._buffer = bytearray()
        self._more = True
        self.received = 0  #: bytes taken from the server so far (tests and metrics)
        #: The disconnect seen while bytes were still buffered: raised by the next read.
        self._gone: RequestAborted | None = None

    def _pull(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError(
                "An async view cannot read a streamed upload body synchronously; use a "
                "synchronous view (queued_storage.views.UploadView is one)."
            )
        future = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
        try:
            message = future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._more = False
            waited = f"no request body received for {self.timeout:g} seconds"
            raise RequestAborted(waited) from TimeoutError(waited)
        if message["type"] == "http.disconnect":
            self._more = False
            raise RequestAborted("the client disconnected before the body was complete")
        body = cast(bytes, message.get("body", b""))
        self.received += len(body)
        self._buffer += body
        self._more = bool(message.get("more_body", False))

    def _pull_or_keep(self) -> None:
        """:meth:`_pull`, except that a client that went away with bytes in the buffer gets
        them read first: the read returns what arrived (short, as a socket's read at EOF
        would), the next one raises. A WSGI server's body reads the same way, so a tus chunk
        cut mid-body keeps every byte the application was handed under either server."""
        try:
            self._pull()
        except RequestAborted as err:
            if not self._buffer or isinstance(err.__cause__, TimeoutError):
                raise
            self._gone = err

    async def _next(self) -> Message:
        return await self._receive()

    def _raise_if_gone(self) -> None:
        if self._gone is not None and not self._buffer:
            raise self._gone

    def read(self, size: int = -1) -> bytes:
        self._raise_if_gone()
        while self._more and (size is None or size < 0 or len(self._buffer) < size):
            self._pull_or_keep()
        if size is None or size < 0:
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, size: int = -1) -> bytes:
        self._raise_if_gone()
        while self._more and b"\n" not in self._buffer:
            if size is not None and 0 <= size <= len(self._buffer):
                break
            self._pull_or_keep()
        end = self._buffer.find(b"\n")
        end = len(self._buffer) if end < 0 else end + 1
        if size is not None and size >= 0:
            end = min(end, size)
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data

    def close(self) -> None:
        self._buffer.clear()


def _streams_body(scope: Scope) -> bool:
    """Whether the view at this request's path reads its body as a stream."""
    if scope.get("type") != "http":
        return False
    script_name = get_script_prefix(scope).rstrip("/")
    path = scope.get("path", "")
    if script_name and path.startswith(script_name):
        path = path[len(script_name) :]
    try:
        match = resolve(path or "/")
    except Resolver404:
        return False
    view_class = getattr(match.func, "view_class", None)
    return bool(getattr(view_class, "streams_request_body", False))


class StreamingASGIHandler(ASGIHandler):
    """Django's ``ASGIHandler``, except that streaming views run before the body is read."""

    #: Seconds the body stream waits for the next piece before it gives up (``None``: no
    #: limit); a view may set its own (``request.META[BODY_STREAM].timeout``).
    body_timeout: float | None = 60.0

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        set_script_prefix(get_script_prefix(scope))
        if not _streams_body(scope):
            await super().handle(scope, receive, send)
            return
        body = ReceiveStream(receive, asyncio.get_running_loop(), self.body_timeout)
        await sync_to_async(signals.request_started.send, thread_sensitive=True)(
            sender=self.__class__, scope=scope
        )
        request, error_response = self.create_request(scope, body)  # type: ignore[arg-type]
        if request is None:
            assert error_response is not None
            body.close()
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return
        request.META[BODY_STREAM] = body
        try:
            response = await self.get_response_async(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
            await self.send_response(response, send)
            await sync_to_async(response.close)()
        finally:
            body.close()


def get_asgi_application() -> StreamingASGIHandler:
    """Like ``django.core.asgi.get_asgi_application``, with :class:`StreamingASGIHandler`."""
    django.setup(set_prefix=False)
    return StreamingASGIHandler()
