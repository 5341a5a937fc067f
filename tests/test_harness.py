"""Self-test of the integration-test harness (``tests/harness/``).

Runs without Django: ``python -m pytest -p no:django tests/test_harness.py``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import redis
import requests
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from redis.backoff import NoBackoff
from redis.retry import Retry

from qs_dev.processes import LOOPBACK, free_port, http_status, pid_alive
from tests.harness.faults import HttpFaultProxy, ProxiedRequest, TcpFaultProxy
from tests.harness.services import (
    ENV_BROKER_URL,
    ENV_BUCKET,
    ENV_PG_HOST,
    ENV_PG_PORT,
    ENV_REDIS_URL,
    ENV_S3_DIRECT_ENDPOINT,
    ENV_S3_ENDPOINT,
    ENV_WORKDIR,
    MotoServer,
    PostgresServer,
    RedisServer,
    ServiceStack,
    ServiceUnavailable,
    make_s3_client,
)
from tests.harness.webservers import Nginx
from tests.harness.workers import CeleryWorker

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
BUCKET = "harness"
# NB botocore's retries={"max_attempts": N} means N *retries*; total_max_attempts counts all.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2)


def _no_retry_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )


# -- leak checks ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [
            child
            for child in psutil.Process().children(recursive=True)
            if child.pid not in before and pid_alive(child.pid)
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"processes left behind: {leaked}"


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"threads left behind: {leaked}"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("harness")


@pytest.fixture(scope="module")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir / "redis") as server:
        yield server


@pytest.fixture(scope="module")
def moto_server(workdir: Path) -> Iterator[MotoServer]:
    with MotoServer(workdir / "moto") as server:
        yield server


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    if not moto_server.running:
        moto_server.start()
    moto_server.reset()
    moto_server.create_bucket(BUCKET)
    return BUCKET


@pytest.fixture
def s3_proxy(moto_server: MotoServer) -> Iterator[HttpFaultProxy]:
    with HttpFaultProxy((LOOPBACK, moto_server.port)) as proxy:
        yield proxy


# -- basics --------------------------------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind((LOOPBACK, port))


def test_redis_ping_flushall_and_restart_on_same_port(redis_server: RedisServer) -> None:
    client = _no_retry_redis(redis_server.url(0))
    try:
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        redis_server.flushall()
        assert client.dbsize() == 0

        port = redis_server.port
        redis_server.stop()
        assert not redis_server.running
        with pytest.raises(redis.ConnectionError):
            client.ping()
        redis_server.start()
        assert redis_server.running
        assert redis_server.port == port
        assert redis_server.url(3) == f"redis://127.0.0.1:{port}/3"
        assert client.ping()
    finally:
        client.close()


def test_moto_bucket_put_get_and_restart(moto_server: MotoServer, bucket: str) -> None:
    client = moto_server.client()
    try:
        client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
        assert client.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello"

        port = moto_server.port
        moto_server.stop()
        moto_server.start()
        assert moto_server.port == port
        with pytest.raises(ClientError) as excinfo:  # moto lost its state
            client.head_bucket(Bucket=bucket)
        assert excinfo.value.response["Error"]["Code"] == "404"
        moto_server.create_bucket(bucket)
        client.head_bucket(Bucket=bucket)
    finally:
        client.close()


# -- HttpFaultProxy ------------------------------------------------------------------------------


def test_http_proxy_boto3_multipart_download_head_list_presigned(
    s3_proxy: HttpFaultProxy, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(20 * MiB))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    client = make_s3_client(s3_proxy.endpoint_url)
    try:
        transfer = TransferConfig(
            multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4
        )
        client.upload_file(str(source), bucket, "big/file.bin", Config=transfer)
        log = s3_proxy.requests
        assert ("POST", f"/{bucket}/big/file.bin", "uploads") in log
        parts = [r for r in log if r.method == "PUT" and "partNumber=" in r.query]
        assert len(parts) == 4
        assert any(r.method == "POST" and r.query.startswith("uploadId=") for r in log)

        target = tmp_path / "downloaded.bin"
        client.download_file(bucket, "big/file.bin", str(target), Config=transfer)
        assert hashlib.sha256(target.read_bytes()).hexdigest() == digest

        head = client.head_object(Bucket=bucket, Key="big/file.bin")
        assert head["ContentLength"] == 20 * MiB
        listing = client.list_objects_v2(Bucket=bucket, Prefix="big/")
        assert [obj["Key"] for obj in listing["Contents"]] == ["big/file.bin"]
        assert listing["Contents"][0]["Size"] == 20 * MiB

        client.put_object(Bucket=bucket, Key="small.txt", Body=b"presigned")
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "small.txt"}, ExpiresIn=60
        )
        assert url.startswith(s3_proxy.endpoint_url)
        with requests.Session() as session:
            response = session.get(url, timeout=10)
            assert response.status_code == 200
            assert response.content == b"presigned"
            # keep-alive: a second request over the same client connection
            assert session.get(url, timeout=10).content == b"presigned"
        path, _, query = url[len(s3_proxy.endpoint_url) :].partition("?")
        assert s3_proxy.requests[-1] == ("GET", path, query)
    finally:
        client.close()


def _chunked_put(port: int, path: str, pieces: Iterator[bytes]) -> int:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request("PUT", path, body=pieces, encode_chunked=True)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_http_proxy_streams_chunked_bodies(
    s3_proxy: HttpFaultProxy, moto_server: MotoServer, bucket: str
) -> None:
    total = 32 * MiB
    block = os.urandom(64 * 1024)
    expected = hashlib.sha256(block * (total // len(block))).hexdigest()

    def pieces() -> Iterator[bytes]:
        for _ in range(total // len(block)):
            yield block

    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        status = _chunked_put(s3_proxy.port, f"/{bucket}/chunked.bin", pieces())
        _current, peak = tracemalloc.get_traced_memory()
        peak -= baseline
    finally:
        if not was_tracing:
            tracemalloc.stop()
    assert status == 200
    assert peak < 8 * MiB, f"proxy buffered the body: peak {peak / MiB:.1f} MiB"
    assert ProxiedRequest("PUT", f"/{bucket}/chunked.bin", "") in s3_proxy.requests

    client = moto_server.client()  # read back directly from moto
    try:
        body = client.get_object(Bucket=bucket, Key="chunked.bin")["Body"].read()
    finally:
        client.close()
    assert len(body) == total
    assert hashlib.sha256(body).hexdigest() == expected


def test_http_proxy_fail_next(s3_proxy: HttpFaultProxy, bucket: str) -> None:
    client = make_s3_client(s3_proxy.endpoint_url, config=NO_RETRY)
    try:
        client.put_object(Bucket=bucket, Key="warmup", Body=b"x")
        s3_proxy.clear_log()
        connections = s3_proxy.connections_total

        s3_proxy.fail_next(1)
        with pytest.raises(ClientError) as excinfo:
            client.put_object(Bucket=bucket, Key="k", Body=b"a" * MiB)
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert excinfo.value.response["Error"]["Code"] == "SlowDown"
        client.put_object(Bucket=bucket, Key="k", Body=b"a" * MiB)
        # the refused request's body was drained: the connection was reused
        assert s3_proxy.connections_total == connections
        assert [r.method for r in s3_proxy.requests] == ["PUT", "PUT"]

        s3_proxy.fail_next(2, 500, methods=["HEAD"])
        assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"a" * MiB
        for _ in range(2):
            with pytest.raises(ClientError) as excinfo:
                client.head_object(Bucket=bucket, Key="k")
            assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert s3_proxy.pending_failures == 0
        assert client.head_object(Bucket=bucket, Key="k")["ContentLength"] == MiB

        s3_proxy.fail_next(1, 500)
        with pytest.raises(ClientError) as excinfo:
            client.get_object(Bucket=bucket, Key="k")
        assert excinfo.value.response["Error"]["Code"] == "InternalError"
    finally:
        client.close()

    # retries={"max_attempts": 1}: one retry, so two injected failures make the call fail
    client = make_s3_client(s3_proxy.endpoint_url, config=Config(retries={"max_attempts": 1}))
    try:
        s3_proxy.fail_next(2)
        with pytest.raises(ClientError) as excinfo:
            client.put_object(Bucket=bucket, Key="k2", Body=b"b")
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert excinfo.value.response["ResponseMetadata"]["RetryAttempts"] == 1
        client.put_object(Bucket=bucket, Key="k2", Body=b"b")
    finally:
        client.close()


def test_http_proxy_go_down_and_come_up(
    s3_proxy: HttpFaultProxy, moto_server: MotoServer, bucket: str
) -> None:
    client = make_s3_client(s3_proxy.endpoint_url, config=NO_RETRY)
    try:
        client.head_bucket(Bucket=bucket)  # leaves a keep-alive connection open
        s3_proxy.go_down()
        assert not s3_proxy.is_up
        started = time.monotonic()
        with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
            client.head_bucket(Bucket=bucket)
        assert time.monotonic() - started < 5  # refused at once, no connect timeout
        with pytest.raises(ConnectionRefusedError), socket.create_connection(s3_proxy.address):
            pass
        s3_proxy.come_up()
        client.head_bucket(Bucket=bucket)

        # upstream down -> 502 from the proxy, S3 style
        moto_server.stop()
        with pytest.raises(ClientError) as excinfo:
            client.list_objects_v2(Bucket=bucket)
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502
        moto_server.start()
        moto_server.create_bucket(bucket)
        client.head_bucket(Bucket=bucket)
    finally:
        client.close()


class _CountingHandler(BaseHTTPRequestHandler):
    """Reads a body up to its Content-Length or the end of the stream; answers how much came:
    204 when all of it did, 400 otherwise (as an upload view would)."""

    protocol_version = "HTTP/1.1"
    server: _CountingServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_PATCH(self) -> None:
        length = int(self.headers["Content-Length"])
        received = 0
        while received < length:
            data = self.rfile.read1(min(64 * 1024, length - received))
            if not data:
                break
            received += len(data)
        self.server.received.append(received)
        self.send_response(204 if received == length else 400)
        self.send_header("Received", str(received))
        self.send_header("Content-Length", "0")
        self.end_headers()


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    received: list[int]


@pytest.fixture
def counting_upstream() -> Iterator[_CountingServer]:
    server = _CountingServer((LOOPBACK, 0), _CountingHandler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, name="counting-upstream")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_proxy_interrupt_next_cuts_one_request_mid_body_or_holds_it(
    counting_upstream: _CountingServer,
) -> None:
    proxy = HttpFaultProxy((LOOPBACK, counting_upstream.server_address[1]), keep_alive=False)
    proxy.start()
    url = f"{proxy.endpoint_url}/upload"
    failures: list[BaseException] = []

    def patch(part: str) -> threading.Thread:
        def send() -> None:
            try:
                requests.patch(url, data=b"p" * MiB, headers={"X-Part": part}, timeout=30)
            except requests.ConnectionError as err:
                failures.append(err)

        thread = threading.Thread(target=send, name=f"patch-{part}")
        thread.start()
        return thread

    try:
        cut = proxy.interrupt_next(
            "PATCH", after_bytes=256 * 1024, when=lambda h: h.get("X-Part") == "2"
        )
        first = requests.patch(url, data=b"p" * MiB, headers={"X-Part": "1"}, timeout=30)
        assert (first.status_code, first.headers["Connection"]) == (204, "close")
        assert cut.request is None  # not the request it waits for

        # The upstream gets the head and 256 KiB, then the end of the body, and answers; the
        # client still waits until the release, then its connection drops without an answer.
        second = patch("2")
        assert cut.wait(10)
        assert cut.request == ProxiedRequest("PATCH", "/upload", "")
        assert (cut.forwarded, cut.upstream_status, cut.error) == (256 * 1024, 400, None)
        assert cut.upstream_headers["Received"] == str(256 * 1024)
        assert cut.headers["X-Part"] == "2"
        assert second.is_alive() and not failures
        cut.release()
        second.join(10)
        assert len(failures) == 1

        # A held request: nothing of it reaches the upstream.
        hold = proxy.interrupt_next("PATCH")
        third = patch("3")
        assert hold.wait(10)
        assert (hold.forwarded, hold.upstream_status) == (0, None)
        hold.release()
        third.join(10)
        assert len(failures) == 2
        assert counting_upstream.received == [MiB, 256 * 1024]

        fourth = requests.patch(url, data=b"p" * MiB, headers={"X-Part": "4"}, timeout=30)
        assert fourth.status_code == 204
        assert counting_upstream.received == [MiB, 256 * 1024, MiB]
        assert [r.method for r in proxy.requests] == ["PATCH"] * 4
    finally:
        proxy.stop()


# -- TcpFaultProxy -------------------------------------------------------------------------------


def test_tcp_proxy_redis_down_and_up(redis_server: RedisServer) -> None:
    proxy = TcpFaultProxy((LOOPBACK, redis_server.port))
    proxy.start()
    client = _no_retry_redis(proxy.redis_url(0))
    try:
        assert client.ping()
        assert proxy.connections_total == 1
        proxy.go_down()
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):  # the open connection was cut
            client.ping()
        with pytest.raises(redis.ConnectionError):  # and new ones are refused
            client.ping()
        assert time.monotonic() - started < 5  # no connect timeout involved
        proxy.come_up()
        assert client.ping()
        assert client.set("through-proxy", "1")
        assert proxy.connections_total == 2

        redis_server.stop()  # upstream down: accepted, then closed at once
        with pytest.raises(redis.ConnectionError):
            client.ping()
        redis_server.start()
        assert client.ping()
    finally:
        client.close()
        proxy.stop()
    assert proxy.active_connections == 0


# -- web servers ---------------------------------------------------------------------------------


def test_a_web_server_in_a_with_block_starts_on_entry_and_stops_on_exit_also_after_an_error(
    tmp_path: Path,
) -> None:
    # Nginx and DjangoServer are ServerProcesses: the same start and stop.
    nginx = Nginx(
        tmp_path / "nginx", upstream_port=free_port(), body_dir=tmp_path / "body", secret="s"
    )
    with nginx as entered:
        assert entered is nginx
        assert nginx.running
        assert http_status(nginx.port, "/nginx-ready-probe") is not None
        first, port = nginx.pid, nginx.port
    assert not nginx.running
    assert first is not None and not pid_alive(first)
    pids: list[int | None] = []

    def fail_inside() -> None:
        with nginx:
            pids.append(nginx.pid)
            assert http_status(port, "/nginx-ready-probe") is not None  # the same port
            raise RuntimeError("in the block")

    with pytest.raises(RuntimeError, match=r"^in the block$"):
        fail_inside()
    assert not nginx.running
    assert len(pids) == 1 and pids[0] is not None and not pid_alive(pids[0])


# -- PostgreSQL ----------------------------------------------------------------------------------


def test_postgres_django_settings_select_1(tmp_path: Path) -> None:
    import psycopg

    server = PostgresServer(tmp_path / "pg")
    server.start()
    try:
        pid = server.pid
        assert pid is not None
        assert pid_alive(pid)
        settings = server.django_database("harness")
        assert settings["ENGINE"] == "django.db.backends.postgresql"
        assert settings["TEST"] == {"NAME": "test_harness"}
        assert settings["USER"] == "postgres"
        server.create_database("harness")
        with psycopg.connect(
            host=settings["HOST"],
            port=settings["PORT"],
            user=settings["USER"],
            dbname=settings["NAME"],
        ) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        server.stop()
    assert not server.running
    assert not pid_alive(pid)
    assert not server.pgdata.exists()
    server.stop()  # idempotent


# -- ServiceStack --------------------------------------------------------------------------------


def test_service_stack_start_env_from_env_stop() -> None:
    stack = ServiceStack("stack-bucket", strict=True).start()
    try:
        assert stack.unavailable == {}
        assert stack.redis is not None
        assert stack.moto is not None
        assert stack.postgres is not None
        assert stack.broker_proxy is not None
        assert stack.s3_proxy is not None
        env = stack.env()
        assert env[ENV_BUCKET] == "stack-bucket"
        assert env[ENV_REDIS_URL].startswith("redis://127.0.0.1:")
        assert env[ENV_BROKER_URL] == f"redis://127.0.0.1:{stack.broker_proxy.port}/0"
        assert env[ENV_S3_ENDPOINT] == stack.s3_proxy.endpoint_url
        assert env[ENV_S3_DIRECT_ENDPOINT] == stack.moto.endpoint_url
        assert env[ENV_PG_HOST]
        assert env[ENV_PG_PORT]
        assert Path(env[ENV_WORKDIR]).is_dir()

        child = ServiceStack.from_env(env)
        assert not child.owned
        assert child.unavailable == {}
        assert child.broker_url == stack.broker_url
        assert child.django_database("app") == stack.django_database("app")

        assert child.broker_url is not None
        broker = _no_retry_redis(child.broker_url)
        try:
            assert broker.ping()
        finally:
            broker.close()
        s3 = child.s3_client()
        try:
            s3.put_object(Bucket=child.bucket, Key="k", Body=b"v")
        finally:
            s3.close()
        assert ("PUT", "/stack-bucket/k", "") in stack.s3_proxy.requests
        child.stop()  # no-op for a description

        stack.reset()
        assert stack.s3_proxy.requests == []
        s3 = stack.s3_client(direct=True)
        try:
            assert s3.list_objects_v2(Bucket=stack.bucket)["KeyCount"] == 0
        finally:
            s3.close()
        pids = [stack.redis.pid, stack.moto.pid, stack.postgres.pid]
        workdir = stack.workdir
    finally:
        stack.stop()
    assert all(pid is not None and not pid_alive(pid) for pid in pids)
    assert not workdir.exists()
    stack.stop()  # idempotent


def test_service_stack_unavailable_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RedisServer, "binary", staticmethod(lambda: "/nonexistent/redis-server"))
    with ServiceStack(strict=False, services=["redis", "broker_proxy"]) as stack:
        assert set(stack.unavailable) == {"redis", "broker_proxy"}
        assert "cannot execute /nonexistent/redis-server" in stack.unavailable["redis"]
        env = stack.env()
        assert ENV_REDIS_URL not in env
        assert ENV_BROKER_URL not in env
        child = ServiceStack.from_env(env)
        assert "redis" in child.unavailable
        with pytest.raises(ServiceUnavailable, match="redis"):
            child.require("redis")
    with pytest.raises(ServiceUnavailable, match="redis unavailable"):
        ServiceStack(strict=True, services=["redis"]).start()


# -- CeleryWorker --------------------------------------------------------------------------------


def test_celery_worker_round_trip_stop_and_kill(redis_server: RedisServer, tmp_path: Path) -> None:
    from tests.harness import selftest_app

    redis_server.flushall()
    base_url = f"redis://127.0.0.1:{redis_server.port}"
    broker_proxy = TcpFaultProxy((LOOPBACK, redis_server.port))
    broker_proxy.start()
    # the worker consumes through the fault proxy; this process publishes directly
    env = {
        "QS_TEST_BROKER_URL": broker_proxy.redis_url(0),
        "QS_TEST_REDIS_URL": base_url,
        # tests/conftest.py may have set it; this app must not load the project's settings
        "DJANGO_SETTINGS_MODULE": None,
    }
    selftest_app.configure(redis_server.url(0), base_url)
    worker = CeleryWorker(
        "tests.harness.selftest_app",
        env=env,
        queues=[selftest_app.QUEUE],
        logfile=tmp_path / "worker.log",
    )
    try:
        with worker:
            assert worker.running
            pids = worker.pids()
            assert len(pids) == 2  # main + one prefork child
            assert pids[0] == worker.pid
            assert selftest_app.add.delay(2, 3).get(timeout=20) == 5
            assert selftest_app.getpid.delay().get(timeout=20) == pids[1]
            worker.wait_for_log(r"Task harness\.add\[.*\] succeeded")
        assert not worker.running
        assert worker.pids() == []
        assert "ready." in worker.log_text()

        worker.start()  # a restart appends to the same log file
        pids = worker.pids()
        assert selftest_app.add.delay(1, 1).get(timeout=20) == 2

        broker_proxy.go_down()  # broker outage: the worker loses its connection...
        result = selftest_app.add.delay(20, 22)
        worker.wait_for_log(r"Connection to broker lost")
        broker_proxy.come_up()  # ...and reconnects once it is back
        assert result.get(timeout=30) == 42

        worker.kill()
        assert not any(pid_alive(pid) for pid in pids)
        assert worker.pids() == []
        assert not worker.running
    finally:
        worker.kill()
        broker_proxy.stop()
        selftest_app.app.close()
