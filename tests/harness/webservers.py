"""Real web servers for the upload tests and benchmarks: gunicorn, uvicorn and nginx.

Each runs as a subprocess on a loopback port with its output in a log file
(:class:`tests.harness.services.ServerProcess`: start, wait until it answers, stop; ``with
server:`` starts it and stops it afterwards, also after an error). The
Django servers serve ``tests.webapp`` with the environment they are given (the test run's
``QS_TEST_*`` variables, so they share its database, cache, broker and staging directory).

:class:`Nginx` runs Debian's ``nginx`` binary without a daemon, with a prefix, pid file, logs
and temporary paths in its own directory, and the server block of ``docs/nginx.conf`` with
only the lines marked ``test:`` changed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from qs_dev.processes import LOOPBACK, http_status
from tests.harness.services import ServerProcess, ServiceUnavailable

__all__ = ["DOCS_NGINX_CONF", "DjangoServer", "Nginx", "peak_rss_kib", "peak_rss_reset", "rss_kib"]

ROOT = Path(__file__).resolve().parents[2]
DOCS_NGINX_CONF = ROOT / "docs" / "nginx.conf"


def gunicorn_argv(app: str, bind: str, *, threads: int, graceful_timeout: int = 5) -> list[str]:
    """gunicorn as the suite runs it: one gthread worker of *threads* threads on *bind*,
    serving *app*, its access log on stdout."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "gthread",
        "--workers",
        "1",
        "--threads",
        str(threads),
        "--bind",
        bind,
        "--timeout",
        "120",
        "--graceful-timeout",
        str(graceful_timeout),
        "--no-control-socket",
        "--access-logfile",
        "-",
        app,
    ]


class DjangoServer(ServerProcess):
    """``gunicorn`` (WSGI, ``tests.webapp:wsgi``) or ``uvicorn`` (ASGI) serving the test project.

    ``kind`` is ``"gunicorn"``, ``"uvicorn"`` (queued_storage's streaming ASGI handler) or
    ``"uvicorn-django"`` (Django's own ``ASGIHandler``).
    """

    APPS = {
        "gunicorn": "tests.webapp:wsgi",
        "uvicorn": "tests.webapp:asgi",
        "uvicorn-django": "tests.webapp:asgi_django",
    }

    def __init__(
        self,
        kind: str,
        workdir: Path,
        env: Mapping[str, str],
        *,
        threads: int = 8,
        port: int | None = None,
    ) -> None:
        if kind not in self.APPS:
            raise ValueError(f"unknown server {kind!r}; choose from {sorted(self.APPS)}")
        self.name = kind
        self.kind = kind
        self.threads = threads
        self._child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self._child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), self._child_env.get("PYTHONPATH", "")) if p
        )
        super().__init__(workdir, port)

    def _argv(self) -> list[str]:
        app = self.APPS[self.kind]
        if self.kind == "gunicorn":
            return gunicorn_argv(app, f"{LOOPBACK}:{self.port}", threads=self.threads)
        return [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--lifespan",
            "off",
            "--timeout-graceful-shutdown",
            "5",
        ]

    def _env(self) -> dict[str, str]:
        return self._child_env

    def _ready(self) -> bool:
        return http_status(self.port, "/uploads/status/ready-probe") is not None

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def app_pid(self) -> int:
        """The process that runs Django (gunicorn's worker, not its master)."""
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"{self.kind} is not running")
        if self.kind != "gunicorn":
            return pid
        import psutil

        children = psutil.Process(pid).children()
        if len(children) != 1:
            raise RuntimeError(f"gunicorn {pid} has {len(children)} workers, expected 1")
        return int(children[0].pid)


class Nginx(ServerProcess):
    """nginx with the server block of ``docs/nginx.conf``, proxying to ``upstream_port``."""

    name = "nginx"

    def __init__(
        self,
        workdir: Path,
        *,
        upstream_port: int,
        body_dir: Path,
        secret: str,
        port: int | None = None,
        staging_dir: Path | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.upstream_port = upstream_port
        self.body_dir = Path(body_dir)
        self.secret = secret
        #: The staging root nginx sends waiting files from (X-Accel-Redirect); ``None``: the
        #: documented /srv/staging/, unused.
        self.staging_dir = staging_dir
        self.conf_path = self.workdir / "nginx.conf"
        self.error_log = self.workdir / "error.log"

    @staticmethod
    def binary() -> str:
        found = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
            None,
        )
        if found is None:
            raise ServiceUnavailable(
                "nginx", "no nginx binary (install Debian's package: apt-get install nginx)"
            )
        return found

    def server_block(self) -> str:
        """``docs/nginx.conf`` with the values marked ``test:`` replaced."""
        text = DOCS_NGINX_CONF.read_text()
        replacements = [
            (r"server 127\.0\.0\.1:8000;", f"server {LOOPBACK}:{self.upstream_port};"),
            (r"listen 80;", f"listen {LOOPBACK}:{self.port};"),
            (
                r"client_body_temp_path /srv/nginx-uploads;",
                f"client_body_temp_path {self.body_dir};",
            ),
            (r'"change-me";', f'"{self.secret}";'),
        ]
        if self.staging_dir is not None:
            replacements.append((r"alias /srv/staging/;", f"alias {self.staging_dir}/;"))
        for pattern, value in replacements:
            text, count = re.subn(pattern + r"(?=\s*#\s*test:)", value, text)
            if count == 0:
                raise AssertionError(f"docs/nginx.conf has no line {pattern!r} marked 'test:'")
        return text

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.body_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / sub).mkdir(exist_ok=True)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        w = self.workdir
        self.conf_path.write_text(
            f"{user}daemon off;\nmaster_process on;\nworker_processes 1;\n"
            f"pid {w}/nginx.pid;\nerror_log {self.error_log} info;\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            f"  access_log {w}/access.log;\n"
            f"  client_body_temp_path {w}/client_body;\n  proxy_temp_path {w}/proxy;\n"
            f"  fastcgi_temp_path {w}/fastcgi;\n  uwsgi_temp_path {w}/uwsgi;\n"
            f"  scgi_temp_path {w}/scgi;\n" + self.server_block() + "\n}\n"
        )

    def _argv(self) -> list[str]:
        self.write_config()
        return [
            self.binary(),
            "-p",
            f"{self.workdir}/",
            "-c",
            str(self.conf_path),
            "-e",
            str(self.error_log),
        ]

    def _ready(self) -> bool:
        return http_status(self.port, "/nginx-ready-probe") is not None

    def _listening(self, pid: int) -> bool:
        return True  # the worker process listens, not the master; _ready() asks over HTTP

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def rss_kib(pid: int) -> int:
    """``VmRSS`` of a process: its resident set size now, in KiB."""
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """``VmHWM`` of a process: the peak resident set size, in KiB."""
    return _status_kib(pid, "VmHWM")


def peak_rss_reset(pid: int) -> bool:
    """Reset the peak RSS of a process to its current RSS (Linux ``clear_refs`` 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
