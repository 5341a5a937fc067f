"""Real Celery worker processes for the integration tests.

:class:`CeleryWorker` runs ``python -m celery -A <app> worker`` as a subprocess in its own process
group (session), with output in a log file, and waits until Celery logs ``<name>@<host> ready.``.
``stop()`` asks for a warm shutdown (SIGTERM to the main process) and SIGKILLs the whole group
after a timeout; ``kill()`` SIGKILLs the whole group at once (a crashed machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from tests.harness.services import pid_alive, wait_pids_gone

__all__ = ["PROJECT_ROOT", "CeleryWorker", "WorkerError"]

#: The repository root: default working directory of workers (so ``tests.*`` is importable).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class WorkerError(RuntimeError):
    """A worker failed to start (or exited); the message ends with the tail of its log."""


def _group_pids(pgid: int) -> list[int]:
    """Alive (non-zombie) processes whose process group is ``pgid``."""
    try:
        import psutil
    except ImportError:
        psutil = None
    result: list[int] = []
    if psutil is not None:
        for proc in psutil.process_iter(["status"]):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            with contextlib.suppress(OSError):
                if os.getpgid(proc.pid) == pgid:
                    result.append(proc.pid)
        return result
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state ppid pgrp ...
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            result.append(int(entry.name))
    return result


class CeleryWorker:
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
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
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
        if self._proc is not None:
            raise RuntimeError(f"worker {self.name} already started")
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env["PYTHONUNBUFFERED"] = "1"
        with self.logfile.open("ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                start_new_session=True,  # own process group: kill() takes the pool with it
            )
        deadline = time.monotonic() + timeout
        while not self._ready_re.search(self.log_text()):
            if not self.running:
                code = self._finish(self._proc)
                raise WorkerError(
                    f"celery worker {self.name} exited with status {code} during start-up\n"
                    + self._tail()
                )
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerError(
                    f"celery worker {self.name} not ready after {timeout:.0f}s\n" + self._tail()
                )
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """Warm shutdown: SIGTERM the main process, wait ``timeout`` seconds, then SIGKILL the
        whole process group.  Returns the exit status (``None`` if not started); idempotent."""
        proc = self._proc
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        self._wait_main_exited(timeout)
        return self._finish(proc)

    def kill(self) -> int | None:
        """SIGKILL the worker and its pool children immediately (no shutdown handlers run)."""
        proc = self._proc
        if proc is None:
            return None
        return self._finish(proc)

    def _finish(self, proc: subprocess.Popen[bytes]) -> int:
        # The main process is not reaped yet, so the process group id is still ours.
        members = _group_pids(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        self._proc = None
        # Orphaned pool children are reaped by init; being zombies they count as gone.
        left = wait_pids_gone(members, 10.0)
        if left:
            raise WorkerError(f"worker {self.name}: processes {left} survived SIGKILL")
        return code

    def _wait_main_exited(self, timeout: float) -> bool:
        """Wait for the main process to exit *without reaping it*."""
        assert self._proc is not None
        pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True
            if info is not None and info.si_pid == pid:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # -- inspection ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the main process is alive (does not reap it)."""
        return self._proc is not None and pid_alive(self._proc.pid)

    def pids(self) -> list[int]:
        """Alive processes of this worker: the main process first, then pool children."""
        if self._proc is None:
            return []
        main = self._proc.pid
        members = _group_pids(main)
        return sorted(members, key=lambda pid: (pid != main, pid))

    def log_text(self) -> str:
        """Output of the current (or last) start."""
        try:
            with self.logfile.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

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
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<CeleryWorker {self.name} app={self.app} pid={self.pid}>"
