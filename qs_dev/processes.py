"""Child processes and loopback ports: the one life cycle of every process the tools start.

Development tooling, not part of the package (``setup.cfg`` ships ``queued_storage`` only). The
test harness (``tests/harness/``: servers, Celery workers, web servers), the benchmarks and the
example's launcher (``example_project/demo.py``, which must not import test code) start their
processes with :class:`ManagedProcess` and pick ports with :func:`free_port`. Standard library
only (``psutil`` is used when installed), so the demo runs it on a fresh clone.

The life cycle of a :class:`ManagedProcess`:

* ``start(argv)``: the child runs in a session (process group) of its own, so that Ctrl-C in a
  terminal reaches only the parent and a kill takes the child's own children with it; its
  output goes to a log file (with ``echo``, also to the terminal, each line prefixed with the
  name); ``log_text()`` is the output of the current start.
* ``wait_ready(probe, timeout)``: poll until the child answers; if it exits first or is not
  ready in time, it is killed and :class:`ProcessError` says so, with the tail of its log.
* ``stop(timeout)``: SIGTERM to the child (a Celery worker finishes its task, a server closes
  its connections), SIGKILL to its whole group after ``timeout`` seconds; ``kill()``: SIGKILL to
  the whole group at once (a crashed machine). Either way the rest of the group is killed too
  and waited for, while the group id is still reserved by the unreaped child, so no signal can
  reach an unrelated process. A child still running when the interpreter exits is stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

__all__ = [
    "LOOPBACK",
    "ManagedProcess",
    "ProcessError",
    "StartStop",
    "free_port",
    "group_pids",
    "http_status",
    "pid_alive",
    "port_is_free",
    "wait_pids_gone",
]

LOOPBACK = "127.0.0.1"

# os.waitid (wait for an exit *without reaping*) is missing on macOS before Python 3.13.
_HAS_WAITID = hasattr(os, "waitid")


# --- ports ---------------------------------------------------------------------------------------
def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_is_free(port: int) -> bool:
    """Whether a TCP socket can bind ``127.0.0.1:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Ports are picked *outside* the kernel's ephemeral range when possible: the services are
    stopped and restarted on the same port in outage tests, and a port from the ephemeral range
    could meanwhile be handed out as the local port of some outgoing connection.
    """
    low, high = _ephemeral_port_range()
    ranges = [r for r in ((15000, low - 1), (high + 1, 65535)) if r[1] - r[0] >= 500]
    rng = random.SystemRandom()
    for _ in range(50 if ranges else 0):
        start, end = rng.choice(ranges)
        port = rng.randint(start, end)
        if port_is_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http_status(
    port: int, path: str = "/", timeout: float = 2.0, *, host: str = LOOPBACK
) -> int | None:
    """The status of ``GET path`` on *host*'s *port* (the loopback's by default), or ``None``
    if nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return int(response.status)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# --- process ids ---------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (dead, waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # "pid (comm) state ...": comm may contain spaces and parentheses.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def wait_pids_gone(pids: Collection[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive (see :func:`pid_alive`); return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def group_pids(pgid: int) -> list[int]:
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
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:  # no psutil and no /proc: nothing to look at
        return result
    for entry in entries:
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


# --- the life cycle ------------------------------------------------------------------------------
_T = TypeVar("_T", bound="StartStop")


class StartStop:
    """``with x:`` for anything with ``start()`` and ``stop()``: started on entry, stopped on
    exit (also after an error)."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ProcessError(RuntimeError):
    """A child exited during start-up, was not ready in time, or left processes that survived
    SIGKILL. ``exit_status`` is its status when it exited by itself; ``log_tail`` the last lines
    of its output."""

    def __init__(self, message: str, *, exit_status: int | None = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.log_tail = log_tail


class ManagedProcess:
    """One child process in its own session, its output in ``log_path`` (see the module).

    ``append=False`` truncates the log at each start (else a restart appends, and
    :meth:`log_text` still shows only the current start). ``stop_timeout`` is the default wait
    between SIGTERM and SIGKILL. The object can be started again after it stopped.
    """

    def __init__(
        self,
        name: str,
        *,
        log_path: Path,
        cwd: Path | None = None,
        echo: bool = False,
        append: bool = True,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.echo = echo
        self.append = append
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._echo_log: IO[bytes] | None = None
        self._pump: threading.Thread | None = None
        self._last_status: int | None = None
        self._owner_pid = os.getpid()

    # -- start --------------------------------------------------------------------------------
    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        """Start ``argv`` (``env``: the whole environment, default this process's); an
        ``OSError`` of the exec (no such program) is raised as it is. A child that exited by
        itself is reaped first; one still running is an error."""
        if self._proc is not None:
            if self.running:
                raise RuntimeError(f"{self.name} already started")
            self._finish()  # it exited by itself: reap it and what is left of its group
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab" if self.append else "wb")
        self._log_offset = log.tell()
        try:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.echo else log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,  # own process group: away from ^C, killed as a whole
            )
        except BaseException:
            log.close()
            raise
        self._last_status = None
        if self.echo:
            self._echo_log = log
            self._pump = threading.Thread(
                target=self._copy_output, name=f"{self.name}-echo", daemon=True
            )
            self._pump.start()
        else:
            log.close()
        atexit.register(self._atexit_stop)  # registering the same bound method again is harmless

    def _copy_output(self) -> None:
        proc, log = self._proc, self._echo_log
        assert proc is not None and proc.stdout is not None and log is not None
        prefix = f"{self.name:>6} | "
        for line in iter(proc.stdout.readline, b""):
            with contextlib.suppress(ValueError, OSError):  # closed by stop()
                log.write(line)
                log.flush()
                sys.stdout.write(prefix + line.decode("utf-8", "replace"))
                sys.stdout.flush()

    def wait_ready(
        self, probe: Callable[[], object], timeout: float, interval: float = 0.05
    ) -> None:
        """Poll ``probe`` until it returns a true value. If the child exits first, or is not
        ready after ``timeout`` seconds, kill it and raise :class:`ProcessError`."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                status = self.kill()
                raise ProcessError(
                    f"{self.name} exited with status {status} during start-up",
                    exit_status=status,
                    log_tail=self.tail(),
                )
            if probe():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ProcessError(
                    f"{self.name} not ready after {timeout:.0f}s", log_tail=self.tail()
                )
            time.sleep(interval)

    # -- state --------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child has not exited (it is not reaped: its group id stays reserved)."""
        return self._proc is not None and self._exit_status(self._proc) is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited (negative: killed by that signal)."""
        if self._proc is None:
            return self._last_status
        return self._exit_status(self._proc)

    @staticmethod
    def _exit_status(proc: subprocess.Popen[bytes]) -> int | None:
        if proc.returncode is not None:
            return proc.returncode
        if not _HAS_WAITID:
            return proc.poll()  # reaps: the group sweep of _finish() is then best effort
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere
            return proc.poll() if proc.returncode is None else proc.returncode
        if info is None or info.si_pid != proc.pid:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def log_text(self) -> str:
        """The output of the current (or last) start."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- stop ---------------------------------------------------------------------------------
    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM to the child, SIGKILL to its group after ``timeout`` seconds (default
        :attr:`stop_timeout`). Returns the exit status (``None`` if not started); idempotent."""
        proc = self._proc
        if proc is None:
            return None
        if self._exit_status(proc) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
            while self._exit_status(proc) is None and time.monotonic() < deadline:
                time.sleep(0.02)
        return self._finish()

    def kill(self) -> int | None:
        """SIGKILL the child and its whole group at once (no shutdown handler runs)."""
        if self._proc is None:
            return None
        return self._finish()

    def _finish(self) -> int:
        proc = self._proc
        assert proc is not None
        # Until the child is reaped its process group id cannot be reused: kill the group now.
        members = group_pids(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        status = proc.wait()
        self._proc = None
        self._last_status = status
        atexit.unregister(self._atexit_stop)
        if self._pump is not None:
            self._pump.join(timeout=5)
            self._pump = None
        if proc.stdout is not None:
            proc.stdout.close()
        if self._echo_log is not None:
            self._echo_log.close()
            self._echo_log = None
        # Orphaned members are reaped by init; being zombies they count as gone.
        left = wait_pids_gone(members, 10.0)
        if left:
            raise ProcessError(f"{self.name}: processes {left} survived SIGKILL")
        return status

    def _atexit_stop(self) -> None:
        if os.getpid() == self._owner_pid:  # never from a forked child
            with contextlib.suppress(Exception):
                self.stop()

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid}>"
