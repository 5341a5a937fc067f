"""Slow clients: how long a stalled upload holds the server, and whether it still answers.

``python benchmarks/bench_slow_clients.py [--quick]`` starts its own Redis, moto S3 server and
PostgreSQL and the web servers of ``tests/harness/webservers.py`` (gunicorn with one gthread
worker of 8 threads, uvicorn with ``queued_storage.asgi``, nginx with ``docs/nginx.conf`` in
front of gunicorn), as ``benchmarks/bench_uploads.py`` does. For each row, 12 clients each
send the head of a raw ``PUT`` declaring 8 MiB and 64 KiB of its body, then nothing more; one
second later a normal client ``PUT``s 1 KiB. Measured, without asserting anything:

* ``dropped after``: seconds from a stalled client's last byte until the server answered it
  or closed its connection (first and last of the 12); ``> cap`` when it had not by then;
* ``probe answered after``: seconds until the normal client's ``PUT`` was answered.

Rows: ``QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT = None`` (as before the setting) and the default
(30 s) under gunicorn and uvicorn, and nginx in front of gunicorn (stalled clients on
``/uploads/nginx/``, the setting off). ``--quick``: an idle timeout of 3 s and a cap of 15 s.
Prints a table and writes ``benchmarks/results-slow-clients.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_uploads import Bench  # noqa: E402
from qs_dev.processes import LOOPBACK  # noqa: E402
from tests.harness.webservers import DjangoServer, Nginx  # noqa: E402

MiB = 1024 * 1024
STALLED = 12
THREADS = 8
SECRET = "bench-slow-clients"

#: The upload benchmark's settings, with the idle timeout from the environment.
SETTINGS = """
import os

from bench_upload_settings import *  # noqa: F403

_idle = os.environ.get("QS_BENCH_IDLE_TIMEOUT", "")
QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT = float(_idle) if _idle else None
QUEUED_STORAGE_NGINX_UPLOAD_DIR = os.environ["QS_BENCH_NGINX_DIR"]
QUEUED_STORAGE_NGINX_SECRET = os.environ["QS_BENCH_NGINX_SECRET"]
"""


@dataclass
class Row:
    server: str
    idle_timeout: str
    stalled: int
    first_dropped_s: float | str
    last_dropped_s: float | str
    outcomes: list[str]
    probe_answered_s: float | str
    probe_status: int | str


def stall(port: int, path: str, cap: float) -> tuple[float | None, str]:
    """Send a head and 64 KiB of an 8 MiB body, then wait; seconds until answered or closed."""
    sock = socket.create_connection((LOOPBACK, port), timeout=cap)
    try:
        head = (f"PUT {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {8 * MiB}\r\n\r\n").encode()
        sock.sendall(head + b"p" * 65536)
        began = time.monotonic()
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return None, "held"
        except ConnectionResetError:
            return time.monotonic() - began, "reset"
        waited = time.monotonic() - began
        return waited, data.split(b" ", 2)[1].decode() if data else "closed"
    finally:
        sock.close()


def probe(port: int, cap: float) -> tuple[float | None, int | str]:
    import requests

    began = time.monotonic()
    try:
        response = requests.put(
            f"http://{LOOPBACK}:{port}/uploads/put/probe.bin", data=b"x" * 1024, timeout=cap
        )
    except requests.Timeout:
        return None, "no answer"
    return time.monotonic() - began, response.status_code


def measure(label: str, idle: float | None, port: int, path: str, cap: float) -> Row:
    with ThreadPoolExecutor(STALLED) as pool:
        # The stalled clients wait longer than the probe: when a client gives up, its thread
        # is free again, which is not what is measured.
        stalled = [
            pool.submit(stall, port, f"{path}stalled-{i}.bin", cap + 10) for i in range(STALLED)
        ]
        time.sleep(1.0)
        answered, status = probe(port, cap)
        results = [future.result() for future in stalled]
    results = [(w, o) if w is not None and w <= cap else (None, "held") for w, o in results]
    drops = sorted(waited for waited, _ in results if waited is not None)
    held = len(drops) < STALLED

    def shown(value: float | None) -> float | str:
        return round(value, 1) if value is not None else f"> {cap:g}"

    return Row(
        server=label,
        idle_timeout="None" if idle is None else f"{idle:g}",
        stalled=STALLED,
        first_dropped_s=shown(drops[0] if drops else None),
        last_dropped_s=shown(None if held else drops[-1]),
        outcomes=sorted({outcome for _, outcome in results}),
        probe_answered_s=shown(answered),
        probe_status=status,
    )


def run(bench: Bench, kind: str, idle: float | None, cap: float, nginx: bool = False) -> Row:
    env = {
        **bench.env,
        "DJANGO_SETTINGS_MODULE": "bench_slow_settings",
        "QS_BENCH_IDLE_TIMEOUT": "" if idle is None else str(idle),
    }
    server = DjangoServer(kind, bench.tmp / f"web-{kind}", env, threads=THREADS)
    server.start()
    front: Nginx | None = None
    try:
        assert bench.put(server.url, f"warm-{kind}.bin", b"w") == 201
        label = f"{kind} ({THREADS} threads)" if kind == "gunicorn" else f"{kind} (qs asgi)"
        port, path = server.port, "/uploads/put/"
        if nginx:
            front = Nginx(
                bench.tmp / "nginx",
                upstream_port=server.port,
                body_dir=bench.tmp / "nginx-bodies",
                secret=SECRET,
            )
            front.start()
            label, port, path = f"nginx -> {label}", front.port, "/uploads/nginx/"
        return measure(label, idle, port, path, cap)
    finally:
        if front is not None:
            front.stop()
        server.stop()
        bench.clean_staging()


def table(rows: list[Row]) -> str:
    head = (
        f"{'server':<34}{'idle timeout':>13}{'stalled':>8}{'first dropped s':>16}"
        f"{'last dropped s':>15}{'probe answered s':>17}  outcomes"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.server:<34}{r.idle_timeout:>13}{r.stalled:>8}{r.first_dropped_s!s:>16}"
            f"{r.last_dropped_s!s:>15}{r.probe_answered_s!s:>17}  "
            f"{','.join(r.outcomes)} / probe {r.probe_status}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="idle timeout 3 s, cap 15 s")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results-slow-clients.json"))
    args = parser.parse_args()
    idle, cap = (3.0, 15.0) if args.quick else (30.0, 120.0)
    began = time.monotonic()
    bench = Bench(quick=True)  # its services and settings; none of its rows
    (bench.tmp / "bench_slow_settings.py").write_text(SETTINGS)
    bench.env["QS_BENCH_NGINX_DIR"] = str(bench.tmp / "nginx-bodies")
    bench.env["QS_BENCH_NGINX_SECRET"] = SECRET
    rows: list[Row] = []
    try:
        for kind in ("gunicorn", "uvicorn"):
            for timeout in (None, idle):
                rows.append(run(bench, kind, timeout, cap))
        rows.append(run(bench, "gunicorn", None, cap, nginx=True))
    finally:
        bench.close()
    print(table(rows))
    result = {
        "quick": args.quick,
        "seconds": round(time.monotonic() - began, 1),
        "python": sys.version.split()[0],
        "rows": [asdict(r) for r in rows],
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
