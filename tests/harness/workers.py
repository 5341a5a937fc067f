"""Real Celery worker processes for the integration tests.

:class:`CeleryWorker` runs ``python -m celery -A <app> worker`` with the process life cycle of
:class:`qs_dev.processes.ManagedProcess` (own process group, output in a log file) and waits
until Celery logs ``<name>@<host> ready.``. ``stop()`` asks for a warm shutdown (SIGTERM to the
main process) and SIGKILLs the whole group after a timeout; ``kill()`` SIGKILLs the whole group
at once (a crashed machine).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from qs_dev.processes import ManagedProcess, ProcessError, StartStop, group_pids

__all__ = ["PROJECT_ROOT", "CeleryWorker", "WorkerError"]

#: The repository root: default working directory of workers (so ``tests.*`` is importable).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class WorkerError(ProcessError):
    """A worker failed to start (or exited); the message ends with the tail of its log."""


class CeleryWorker(StartStop):
    """One ``celery worker`` subprocess.

    ``env`` is merged over ``os.environ`` (plus ``PYTHONUNBUFFERED=1``); a value of ``None``
    removes the variable (e.g. ``{"DJANGO_SETTINGS_MODULE": None}``).  ``cwd`` defaults to the
    repository root.  The log file is appended to, so several starts can share one file; readiness
    is only looked for in the output of the current start.
    """

    def __init__(
        self,
        app: str,
        *,
        env: Mapping[str, str | None],
        logfile: Path,
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        pool: str = "prefork",
        name: str = "w1",
        extra_args: Sequence[str] = (),
        loglevel: str = "INFO",
        cwd: Path | None = None,
    ) -> None:
        self.app = app
        self.env = dict(env)
        self.logfile = Path(logfile)
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.pool = pool
        self.name = name
        self.extra_args = list(extra_args)
        self.loglevel = loglevel
        self.cwd = Path(cwd) if cwd is not None else PROJECT_ROOT
        self._process = ManagedProcess(f"celery worker {name}", log_path=self.logfile, cwd=self.cwd)
        self._ready_re = re.compile(rf"{re.escape(name)}@\S+ ready\.")

    # -- process control ----------------------------------------------------------------------

    def command(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            "-l",
            self.loglevel,
            "-P",
            self.pool,
            "-c",
            str(self.concurrency),
            "-n",
            f"{self.name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        if self.queues:
            argv += ["-Q", ",".join(self.queues)]
        return argv + self.extra_args

    def start(self, timeout: float = 30.0) -> CeleryWorker:
        """Start the worker and wait until it is ready; raise :class:`WorkerError` otherwise."""
        if self._process.pid is not None:
            raise RuntimeError(f"worker {self.name} already started")
        env = dict(os.environ)
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env["PYTHONUNBUFFERED"] = "1"
        self._process.start(self.command(), env=env)
        try:
            self._process.wait_ready(lambda: self._ready_re.search(self.log_text()), timeout)
        except ProcessError as exc:
            if exc.exit_status is not None:
                what = f"exited with status {exc.exit_status} during start-up"
            else:
                what = f"not ready after {timeout:.0f}s"
            raise WorkerError(f"celery worker {self.name} {what}\n" + self._tail()) from exc
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """Warm shutdown: SIGTERM the main process, wait ``timeout`` seconds, then SIGKILL the
        whole process group.  Returns the exit status (``None`` if not started); idempotent."""
        return self._process.stop(timeout)

    def kill(self) -> int | None:
        """SIGKILL the worker and its pool children immediately (no shutdown handlers run)."""
        return self._process.kill()

    # -- inspection ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the main process is alive (does not reap it)."""
        return self._process.running

    def pids(self) -> list[int]:
        """Alive processes of this worker: the main process first, then pool children."""
        main = self._process.pid
        if main is None:
            return []
        members = group_pids(main)
        return sorted(members, key=lambda pid: (pid != main, pid))

    def log_text(self) -> str:
        """Output of the current (or last) start."""
        return self._process.log_text()

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until the log of the current start matches the regular expression ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match:
                return match
            if time.monotonic() > deadline:
                raise WorkerError(
                    f"worker {self.name}: {pattern!r} not in log after {timeout:.0f}s\n"
                    + self._tail()
                )
            time.sleep(0.05)

    def _tail(self, lines: int = 40) -> str:
        text = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- last lines of {self.logfile} ---\n{text}"

    def __enter__(self) -> CeleryWorker:
        if self._process.pid is None:
            self.start()
        return self

    def __repr__(self) -> str:
        return f"<CeleryWorker {self.name} app={self.app} pid={self.pid}>"
