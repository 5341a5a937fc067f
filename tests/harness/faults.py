"""Fault-injection proxies on loopback ports, put between the code under test and a service.

:class:`TcpFaultProxy`   byte-level TCP forwarder (put in front of Redis as Celery broker).
:class:`HttpFaultProxy`  HTTP/1.1 reverse proxy (put between boto3 and moto, or a browser and
                         gunicorn) that logs requests, injects S3 error responses, can refuse
                         connections or accept them and never answer
                         (:meth:`HttpFaultProxy.black_hole`), and drops the connection of one
                         chosen request mid-body (:meth:`HttpFaultProxy.interrupt_next`).

Both implement ``go_down()`` by *closing their listening socket* and cutting every open
connection (clients get ``ECONNREFUSED`` at once on connect, and EOF on connections that were
open); ``come_up()`` re-binds the same port. Threads, no subprocess: a proxy belongs to the
process that started it (``tests/conftest.py``'s ``stack`` fixture for the suite's proxies).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import itertools
import logging
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple, TypeVar
from xml.sax.saxutils import escape as xml_escape

from qs_dev.processes import LOOPBACK, StartStop, free_port

__all__ = ["HttpFaultProxy", "Interruption", "ProxiedRequest", "TcpFaultProxy"]

log = logging.getLogger(__name__)

_BUFSIZE = 64 * 1024

_ProxyT = TypeVar("_ProxyT", bound="_FaultProxyBase")


def _shutdown_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class _Listener:
    """Accept loop on 127.0.0.1:port handing each connection to ``handler`` in its own thread.

    ``close()`` closes the listening socket (new connections are refused; connections still in
    the accept backlog are reset), shuts down every tracked socket and joins the threads.
    """

    def __init__(self, name: str, port: int, handler: Callable[[socket.socket], None]) -> None:
        self.name = name
        self.port = port
        self._handler = handler
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._tracked: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._ids = itertools.count(1)
        self.accepted_total = 0

    @property
    def listening(self) -> bool:
        return self._sock is not None

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._threads)

    def track(self, sock: socket.socket) -> None:
        """Register a socket to be shut down by ``close()``/``cut_connections()``."""
        with self._lock:
            self._tracked.add(sock)

    def open(self, timeout: float = 5.0) -> None:
        if self._sock is not None:
            return
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((LOOPBACK, self.port))
                sock.listen(128)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
            break
        wake_r, wake_w = socket.socketpair()
        self._sock, self._wake = sock, (wake_r, wake_w)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(sock, wake_r), name=f"{self.name}-accept", daemon=True
        )
        self._accept_thread.start()

    def close(self, join_timeout: float = 5.0) -> None:
        sock, wake, thread = self._sock, self._wake, self._accept_thread
        self._sock = self._wake = self._accept_thread = None
        if sock is not None and wake is not None and thread is not None:
            with contextlib.suppress(OSError):
                wake[1].send(b"x")
            thread.join(join_timeout)
            sock.close()
            wake[0].close()
            wake[1].close()
        self.cut_connections()
        deadline = time.monotonic() + join_timeout
        with self._lock:
            threads = list(self._threads)
        for conn_thread in threads:
            if conn_thread is threading.current_thread():
                continue
            conn_thread.join(max(0.0, deadline - time.monotonic()))
            if conn_thread.is_alive():
                log.warning("%s: connection thread %s did not finish", self.name, conn_thread.name)

    def cut_connections(self) -> None:
        with self._lock:
            sockets = list(self._tracked)
        for sock in sockets:
            _shutdown_quietly(sock)

    def _accept_loop(self, sock: socket.socket, wake: socket.socket) -> None:
        poller = select.poll()  # not select(): file descriptors may be above FD_SETSIZE
        poller.register(sock, select.POLLIN)
        poller.register(wake, select.POLLIN)
        while True:
            try:
                ready = {fd for fd, _event in poller.poll()}
            except OSError:
                return
            if wake.fileno() in ready:
                return
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            conn.setblocking(True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(
                target=self._run_connection,
                args=(conn,),
                name=f"{self.name}-conn-{next(self._ids)}",
                daemon=True,
            )
            with self._lock:
                self.accepted_total += 1
                self._tracked.add(conn)
                self._threads.add(thread)
            thread.start()

    def _run_connection(self, conn: socket.socket) -> None:
        try:
            self._handler(conn)
        except Exception:
            log.debug("%s: connection handler failed", self.name, exc_info=True)
        finally:
            _close_quietly(conn)
            with self._lock:
                self._threads.discard(threading.current_thread())


class _FaultProxyBase(StartStop):
    def __init__(self, upstream: tuple[str, int], *, port: int | None, name: str) -> None:
        self.name = name
        self.upstream = (upstream[0], int(upstream[1]))
        self._listener = _Listener(name, port if port is not None else free_port(), self._handle)
        self._auto_port = port is None
        self._started = False

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self._listener.port)

    @property
    def is_up(self) -> bool:
        return self._listener.listening

    @property
    def connections_total(self) -> int:
        """Client connections accepted since construction."""
        return self._listener.accepted_total

    @property
    def active_connections(self) -> int:
        return self._listener.active_connections

    def start(self) -> None:
        """Start listening.  Before the first successful start an automatically picked port
        that turns out to be taken is replaced by another free one; later starts keep it."""
        for attempt in range(3):
            try:
                self._listener.open(timeout=0.0 if not self._started else 5.0)
            except OSError as exc:
                retry = self._auto_port and not self._started and exc.errno == errno.EADDRINUSE
                if not retry or attempt == 2:
                    raise
                self._listener.port = free_port()
                continue
            self._started = True
            return

    def stop(self) -> None:
        """Close the listener and every connection, join all threads; idempotent."""
        self._listener.close()

    def go_down(self) -> None:
        """Refuse new connections (listening socket closed) and cut all open ones."""
        self._listener.close()

    def come_up(self) -> None:
        """Listen again on the same port."""
        self._listener.open()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


class TcpFaultProxy(_FaultProxyBase):
    """Thread-based TCP forwarder from 127.0.0.1:``port`` to ``upstream``.

    While down (``go_down()``) the listening socket is closed, so connects fail immediately with
    ``ECONNREFUSED``, and open connections are shut down (clients read EOF, e.g. redis-py raises
    ``ConnectionError: Connection closed by server``).  If the upstream refuses, the client
    connection is closed right after being accepted.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        port: int | None = None,
        name: str = "tcp-fault-proxy",
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(upstream, port=port, name=name)
        self.connect_timeout = connect_timeout
        self._flowing = threading.Event()
        self._flowing.set()

    def freeze(self) -> None:
        """Hang: connections are accepted and kept, but no byte is forwarded either way (a
        peer that stopped answering: a partition, a stalled server) until :meth:`thaw`."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again what was held."""
        self._flowing.set()

    def stop(self) -> None:
        self.thaw()
        super().stop()

    def redis_url(self, db: int = 0) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def _handle(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
        except OSError:
            return
        try:
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._listener.track(upstream)
            peers = {conn.fileno(): (conn, upstream), upstream.fileno(): (upstream, conn)}
            poller = select.poll()
            for fd in peers:
                poller.register(fd, select.POLLIN)
            while True:
                for fd, _event in poller.poll():
                    self._flowing.wait()
                    source, sink = peers[fd]
                    data = source.recv(_BUFSIZE)
                    if not data:
                        return
                    sink.sendall(data)
        except OSError:
            return
        finally:
            _close_quietly(upstream)


class ProxiedRequest(NamedTuple):
    """One request seen by :class:`HttpFaultProxy` (forwarded or answered with a fault)."""

    method: str
    path: str
    query: str


class Interruption:
    """One request :meth:`HttpFaultProxy.interrupt_next` stops, and what became of it.

    ``after_bytes=None`` holds the request: nothing of it reaches the upstream, the client
    waits. ``after_bytes=N`` forwards the head and the first *N* bytes of the body, then ends
    the body (half-close: the upstream reads end-of-file) and reads the upstream's answer,
    which the client never gets. Either way :attr:`reached` is set at that point (the
    upstream is done with the request) and the client's connection is dropped once
    :meth:`release` is called (or the proxy stops), so that a test can look at the server
    in between, while the client still waits.
    """

    def __init__(
        self, method: str, after_bytes: int | None, when: Callable[[Message], bool] | None
    ) -> None:
        if after_bytes is not None and after_bytes < 0:
            raise ValueError(f"after_bytes must be >= 0 or None, not {after_bytes}")
        self.method = method.upper()
        self.after_bytes = after_bytes
        self.when = when
        #: The request it stopped, and its headers (set when one matched).
        self.request: ProxiedRequest | None = None
        self.headers: dict[str, str] = {}
        #: Body bytes the upstream received, its answer's status and headers (``None`` and
        #: ``{}`` for a held request, or when it did not answer); the error, if forwarding
        #: failed.
        self.forwarded = 0
        self.upstream_status: int | None = None
        self.upstream_headers: dict[str, str] = {}
        self.error: BaseException | None = None
        self.reached = threading.Event()
        self._released = threading.Event()

    def matches(self, method: str, headers: Message) -> bool:
        return method.upper() == self.method and (self.when is None or bool(self.when(headers)))

    def wait(self, timeout: float) -> bool:
        """Wait until the request is stopped (see the class); ``False`` on timeout."""
        return self.reached.wait(timeout)

    def release(self) -> None:
        """Drop the client's connection (its request fails without an answer)."""
        self._released.set()


_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)

_S3_ERROR_CODES = {
    400: "BadRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    500: "InternalError",
    502: "BadGateway",
    503: "SlowDown",
    504: "GatewayTimeout",
}


class _ProxyHandler(BaseHTTPRequestHandler):
    """Forwards one client connection (keep-alive) to the upstream HTTP server."""

    protocol_version = "HTTP/1.1"
    timeout = 300  # idle keep-alive connections are cut by go_down()/stop() anyway

    def __init__(self, request: socket.socket, proxy: HttpFaultProxy) -> None:
        self.proxy = proxy
        self._upstream: http.client.HTTPConnection | None = None
        # BaseHTTPRequestHandler never uses ``server``; the proxy has no socketserver.
        super().__init__(request, request.getpeername(), None)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.proxy.name, *args)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def do_GET(self) -> None:
        self._proxy()

    def do_HEAD(self) -> None:
        self._proxy()

    def do_PUT(self) -> None:
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def do_DELETE(self) -> None:
        self._proxy()

    def do_PATCH(self) -> None:
        self._proxy()

    def do_OPTIONS(self) -> None:
        self._proxy()

    # -- request body ------------------------------------------------------------------------

    def _body(self) -> tuple[Iterator[bytes], str | None]:
        """The raw request body as pieces and the framing header to send upstream."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._raw_chunked_body(), None
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return iter(()), None
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length_header)
        except ValueError as exc:
            raise _BadRequest(f"invalid Content-Length {length_header!r}") from exc
        return self._fixed_body(length), str(length)

    def _fixed_body(self, length: int) -> Iterator[bytes]:
        remaining = length
        while remaining > 0:
            data = self.rfile.read1(min(remaining, _BUFSIZE))
            if not data:
                raise ConnectionError("client closed the connection in the request body")
            remaining -= len(data)
            yield data

    def _raw_chunked_body(self) -> Iterator[bytes]:
        """Chunked body passed through verbatim (size lines, data, trailers)."""
        while True:
            line = self.rfile.readline(65537)
            if not line.endswith(b"\n"):
                raise ConnectionError("client closed the connection in a chunked body")
            yield line
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _BadRequest(f"invalid chunk size line {line!r}") from exc
            if size == 0:
                while True:
                    trailer = self.rfile.readline(65537)
                    if not trailer.endswith(b"\n"):
                        raise ConnectionError("client closed the connection in chunk trailers")
                    yield trailer
                    if trailer in (b"\r\n", b"\n"):
                        return
            yield from self._fixed_body(size + 2)  # chunk data and its CRLF

    # -- proxying -----------------------------------------------------------------------------

    def _proxy(self) -> None:
        target = self.path
        if "://" in target.split("?", 1)[0]:  # absolute-form request target
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        request = ProxiedRequest(self.command, path, query)
        failure = self.proxy._record(request)
        if not self.proxy.keep_alive:
            self.close_connection = True
        interruption = self.proxy._interruption_for(request, self.headers)
        if interruption is not None:
            self._interrupt(interruption, target)
            return
        if self.proxy.black_holed:
            self.proxy._hold()  # never answer: the client waits for its own timeout
            self.close_connection = True
            return
        try:
            body, length = self._body()
        except _BadRequest as exc:
            self.close_connection = True
            self._send_s3_error(400, str(exc))
            return
        if failure is not None:
            for _ in body:  # read and discard the body so the connection stays usable
                pass
            self._send_s3_error(failure, "injected")
            return
        self._forward(target, body, length, cut=self.proxy._cut_for(request))

    def _connect_upstream(self) -> http.client.HTTPConnection:
        conn = self._upstream
        if conn is None:
            host, port = self.proxy.upstream
            conn = http.client.HTTPConnection(host, port, timeout=self.proxy.upstream_timeout)
            self._upstream = conn
        if conn.sock is None:
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.proxy._listener.track(conn.sock)
        return conn

    def _send_head(self, conn: http.client.HTTPConnection, target: str, length: str | None) -> None:
        """The request line and headers, hop-by-hop headers replaced by the proxy's own."""
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        drop = set(_HOP_BY_HOP)
        for token in self.headers.get("Connection", "").split(","):
            drop.add(token.strip().lower())
        conn.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
        if "Host" not in self.headers:
            conn.putheader("Host", f"{conn.host}:{conn.port}")
        for name, value in self.headers.items():
            if name.lower() not in drop:
                conn.putheader(name, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif length is not None:
            conn.putheader("Content-Length", length)
        conn.endheaders()

    def _interrupt(self, interruption: Interruption, target: str) -> None:
        """See :class:`Interruption`."""
        self.close_connection = True
        try:
            if interruption.after_bytes is not None:
                body, length = self._body()
                conn = self._connect_upstream()
                self._send_head(conn, target, length)
                for piece in body:
                    piece = piece[: interruption.after_bytes - interruption.forwarded]
                    if piece:
                        conn.send(piece)
                        interruption.forwarded += len(piece)
                    if interruption.forwarded >= interruption.after_bytes:
                        break
                assert conn.sock is not None
                conn.sock.shutdown(socket.SHUT_WR)  # the upstream reads the end of the body
                response = conn.getresponse()
                interruption.upstream_status = response.status
                interruption.upstream_headers = dict(response.getheaders())
                response.read()
                response.close()
        except (OSError, http.client.HTTPException, _BadRequest) as exc:
            interruption.error = exc
        finally:
            if self._upstream is not None:
                self._upstream.close()
                self._upstream = None
            interruption.reached.set()
        interruption._released.wait()
        _shutdown_quietly(self.connection)

    def _forward(
        self, target: str, body: Iterator[bytes], length: str | None, *, cut: bool = False
    ) -> None:
        response: http.client.HTTPResponse | None = None
        try:
            conn = self._connect_upstream()
            self._send_head(conn, target, length)
            try:
                for piece in body:
                    conn.send(piece)
            except (BrokenPipeError, ConnectionResetError):
                # The upstream may have answered early and closed; try to read that answer.
                log.debug("%s: upstream closed while receiving the body", self.proxy.name)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            if self._upstream is not None:
                self._upstream.close()
            for _ in body:  # drain what the client still sends, then answer 502
                pass
            self._send_s3_error(502, f"upstream {self.proxy.upstream} unavailable: {exc}")
            return
        for _ in body:  # upstream answered without reading the whole body
            pass
        try:
            self._relay_response(response, cut=cut)
        finally:
            response.close()

    def _relay_response(self, response: http.client.HTTPResponse, *, cut: bool = False) -> None:
        status = response.status
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        self.send_response_only(status, response.reason)
        content_length: str | None = None
        for name, value in response.getheaders():
            lname = name.lower()
            if lname == "content-length":
                content_length = value
            elif lname not in _HOP_BY_HOP:
                self.send_header(name, value)
        chunked = False
        if content_length is not None:
            self.send_header("Content-Length", content_length)
        elif not no_body:
            if response.chunked:
                chunked = True
                self.send_header("Transfer-Encoding", "chunked")
            else:  # body delimited by the upstream closing the connection
                self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if cut:
            self.close_connection = True
            _shutdown_quietly(self.connection)
            return
        if no_body:
            return
        while True:
            data = response.read1(_BUFSIZE)
            if not data:
                break
            if chunked:
                self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _send_s3_error(self, status: int, message: str) -> None:
        code = _S3_ERROR_CODES.get(status, "InjectedError")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{xml_escape(message)}</Message>"
            "<RequestId>qs-fault-proxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "qs-fault-proxy")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _BadRequest(Exception):
    pass


class HttpFaultProxy(_FaultProxyBase):
    """HTTP/1.1 reverse proxy on 127.0.0.1:``port`` in front of ``upstream`` (moto).

    * Client connections are kept alive; request bodies with ``Content-Length`` or
      ``Transfer-Encoding: chunked`` (relayed verbatim) and response bodies are streamed in
      64 KiB pieces, never buffered whole.  ``Expect: 100-continue`` is answered by the proxy.
    * :attr:`requests` logs ``(method, path, query)`` of every request forwarded or refused.
    * :meth:`fail_next` answers the next ``n`` requests with an S3 XML error (after reading the
      request body), :meth:`go_down` refuses connections, :meth:`come_up` restores,
      :meth:`black_hole` accepts connections and never answers.
    * :meth:`cut_answer_next` relays a chosen request's answer up to its body, then drops the
      connection.
    * :meth:`interrupt_next` holds one chosen request, or lets the upstream have part of its
      body, and then drops the client's connection (:class:`Interruption`).
    * If the upstream cannot be reached the client gets ``502 BadGateway`` (S3 XML error).
    * ``keep_alive=False`` answers every request with ``Connection: close``. A browser resends
      by itself, once, a request that fails on a connection it reused before any answer came
      (Chromium does); on fresh connections a dropped request fails in the page.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        port: int | None = None,
        name: str = "http-fault-proxy",
        upstream_timeout: float = 120.0,
        keep_alive: bool = True,
    ) -> None:
        super().__init__(upstream, port=port, name=name)
        self.upstream_timeout = upstream_timeout
        self.keep_alive = keep_alive
        self._state_lock = threading.Lock()
        self._log: list[ProxiedRequest] = []
        self._interruptions: list[Interruption] = []  # armed, then stopped
        self._fail_remaining = 0
        self._fail_status = 503
        self._fail_methods: frozenset[str] | None = None
        self._fail_when: Callable[[ProxiedRequest], bool] | None = None
        self._cuts: list[Callable[[ProxiedRequest], bool]] = []
        self.injected_total = 0
        self._released = threading.Event()
        self._released.set()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def requests(self) -> list[ProxiedRequest]:
        """A snapshot of the request log."""
        with self._state_lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._state_lock:
            self._log.clear()

    def fail_next(
        self,
        n: int,
        status: int = 503,
        *,
        methods: Collection[str] | None = None,
        when: Callable[[ProxiedRequest], bool] | None = None,
    ) -> None:
        """Answer the next ``n`` requests (optionally only those with one of ``methods``, and
        those *when* accepts) with ``status`` and an S3 error body (503 ``SlowDown``, 500
        ``InternalError``, ...). Replaces any pending failures."""
        with self._state_lock:
            self._fail_remaining = n
            self._fail_status = status
            self._fail_methods = frozenset(m.upper() for m in methods) if methods else None
            self._fail_when = when

    def cut_answer_next(self, when: Callable[[ProxiedRequest], bool]) -> None:
        """Forward the next request that *when* accepts, relay the upstream's status line and
        headers, and drop the connection before the first byte of the body: what a client
        sees when S3 goes away as it answers. Several may be armed."""
        with self._state_lock:
            self._cuts.append(when)

    def _cut_for(self, request: ProxiedRequest) -> bool:
        with self._state_lock:
            for i, when in enumerate(self._cuts):
                if when(request):
                    del self._cuts[i]
                    return True
        return False

    def clear_faults(self) -> None:
        self.fail_next(0)
        with self._state_lock:
            self._cuts.clear()

    @property
    def black_holed(self) -> bool:
        return not self._released.is_set()

    def black_hole(self) -> None:
        """Accept connections and never answer (an overloaded endpoint, a half-open path):
        every request is read and logged, and no byte of an answer is sent.
        :meth:`end_black_hole`, :meth:`go_down` or :meth:`stop` release them."""
        self._released.clear()

    def end_black_hole(self) -> None:
        self._released.set()

    def _hold(self) -> None:
        self._released.wait()

    def interrupt_next(
        self,
        method: str,
        *,
        after_bytes: int | None = None,
        when: Callable[[Message], bool] | None = None,
    ) -> Interruption:
        """Stop the next request with *method* (and whose headers *when* accepts): hold it
        (``after_bytes=None``) or let the upstream have its first *after_bytes* body bytes;
        then drop the client's connection on :meth:`Interruption.release`. Several may be
        armed; the first that matches a request takes it. :meth:`go_down` and :meth:`stop`
        release those that took a request and disarm the others."""
        interruption = Interruption(method, after_bytes, when)
        with self._state_lock:
            self._interruptions.append(interruption)
        return interruption

    def _interruption_for(self, request: ProxiedRequest, headers: Message) -> Interruption | None:
        with self._state_lock:
            for interruption in self._interruptions:
                if interruption.request is None and interruption.matches(request.method, headers):
                    interruption.request = request
                    interruption.headers = dict(headers.items())
                    return interruption
        return None

    def _release_interruptions(self) -> None:
        with self._state_lock:
            interruptions, self._interruptions = self._interruptions, []
        for interruption in interruptions:
            interruption.release()

    def go_down(self) -> None:
        self.end_black_hole()
        self._release_interruptions()
        super().go_down()

    def stop(self) -> None:
        self.end_black_hole()
        self._release_interruptions()
        super().stop()

    @property
    def pending_failures(self) -> int:
        with self._state_lock:
            return self._fail_remaining

    def _record(self, request: ProxiedRequest) -> int | None:
        """Log a request; return the status to inject or ``None`` to forward it."""
        with self._state_lock:
            self._log.append(request)
            if (
                self._fail_remaining > 0
                and (self._fail_methods is None or request.method in self._fail_methods)
                and (self._fail_when is None or self._fail_when(request))
            ):
                self._fail_remaining -= 1
                self.injected_total += 1
                return self._fail_status
        return None

    def _handle(self, conn: socket.socket) -> None:
        _ProxyHandler(conn, self)
