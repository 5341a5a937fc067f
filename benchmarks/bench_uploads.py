"""Upload views under load: memory of the web process, and many clients at once.

``python benchmarks/bench_uploads.py [--quick]`` starts its own Redis, moto S3 server and
PostgreSQL (``tests/harness/services.py``), the web servers (``tests/harness/webservers.py``:
gunicorn with gthread workers, uvicorn with queued_storage's streaming ASGI handler, and uvicorn
with Django's own ``ASGIHandler`` for comparison) serving the test project on PostgreSQL, and
measures, without asserting anything:

1. ``big``: one raw ``PUT`` of 1 GiB (``--quick``: 128 MiB) per server. Idle RSS of the web
   process (after one small warm-up upload) and its peak RSS (``VmHWM``, reset before the
   upload) while receiving; the target is a growth within 64 MiB.
2. ``tus``: the same file as a tus upload (``tuspy``, 64 MiB chunks; ``--quick``: 16 MiB)
   against a raw ``PUT`` of it, on gunicorn and on uvicorn: ``--rounds`` (3) interleaved
   rounds, each upload on a fresh server after the same warm-up (a small raw ``PUT`` and a
   small complete tus upload, so that either way's first save and dispatch are not measured);
   medians of the wall time, of the web process's CPU seconds (``/proc``) and of its RSS growth,
   and their ratios and differences (``extra``). Then an upload whose connection is closed at
   50 % and resumed by tuspy from the server's offset (``extra.resent_mib``: bytes sent twice).
3. ``concurrent``: 100 clients (``--quick``: 20) each ``PUT`` 8 MiB (``--quick``: 2 MiB) at the
   same time, through uvicorn and through gunicorn: how many succeeded, wall time, peak RSS.

Every upload goes through ``QueuedStorage.save()`` of the ``default`` storage (staging on the
local disk, S3 on moto; the save itself sends S3 nothing, as in production). No
Celery worker runs: the transfer is not what is measured. Prints a table and writes
``benchmarks/results-uploads.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from tusclient.client import TusClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import make_file  # noqa: E402
from benchmarks.bench_direct import proc_cpu  # noqa: E402
from tests.harness.services import ServiceStack  # noqa: E402
from tests.harness.webservers import (  # noqa: E402
    DjangoServer,
    peak_rss_kib,
    peak_rss_reset,
    rss_kib,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
BUCKET = "bench-uploads"

#: Settings of the web processes: the test project's, on PostgreSQL, S3 reached directly,
#: every upload allowed (authorisation is not what is measured).
SETTINGS = """
from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, ENV, S3_OPTIONS, STORAGES

DATABASES = {"default": {**DATABASES["postgres"], "NAME": "postgres"}}
STORAGES = {
    **STORAGES,
    "s3": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {**S3_OPTIONS, "endpoint_url": ENV["QS_TEST_S3_DIRECT_ENDPOINT"]},
    },
}
CELERY_BROKER_URL = ENV["QS_TEST_REDIS_URL"] + "/0"
QUEUED_STORAGE_UPLOAD_AUTHORIZER = "bench_upload_settings.allow"
QUEUED_STORAGE_UPLOAD_MAX_BYTES = 8 * 1024**3
LOGGING = {"version": 1, "disable_existing_loggers": False}


def allow(request, name, action):
    return True
"""


@dataclass
class Row:
    row: str
    server: str
    clients: int
    size_mib: float
    ok: int
    wall_s: float
    mib_s: float
    idle_rss_mib: float
    peak_rss_mib: float
    growth_mib: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One upload of the tus row's rounds (a raw ``PUT`` or a tus upload)."""

    way: str
    ok: bool
    wall_s: float
    web_cpu_s: float
    growth_mib: float
    idle_rss_mib: float
    peak_rss_mib: float
    load: float


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.rows: list[Row] = []
        self.stack = ServiceStack(BUCKET, strict=True, services=["redis", "moto", "postgres"])
        self.stack.start()
        self.tmp = Path(tempfile.mkdtemp(prefix="qs-bench-uploads-"))
        (self.tmp / "bench_upload_settings.py").write_text(SETTINGS)
        self.env = {
            **self.stack.env(),
            "DJANGO_SETTINGS_MODULE": "bench_upload_settings",
            "PYTHONPATH": os.pathsep.join([str(self.tmp), str(ROOT)]),
        }
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "-v0"],
            env={**os.environ, **self.env},
            cwd=ROOT,
            check=True,
        )

    def server(self, kind: str, threads: int = 8) -> DjangoServer:
        server = DjangoServer(kind, self.tmp / f"web-{kind}", self.env, threads=threads)
        server.start()
        return server

    def put(self, url: str, name: str, data: Any, prefix: str = "/uploads/put/") -> int:
        response = requests.put(f"{url}{prefix}{name}", data=data, timeout=600)
        return response.status_code

    def big(self, kind: str) -> None:
        size = 128 * MiB if self.quick else GiB
        source = self.tmp / "big.bin"
        if not source.exists():
            make_file(source, size)
        server = self.server(kind)
        try:
            pid = server.app_pid
            assert self.put(server.url, f"warm-{kind}.bin", b"w" * 1024) == 201
            idle = rss_kib(pid)
            peak_rss_reset(pid)
            began = time.monotonic()
            with source.open("rb") as body:
                response = requests.put(
                    f"{server.url}/uploads/put/big-{kind}.bin", data=body, timeout=600
                )
            wall = time.monotonic() - began
            peak = peak_rss_kib(pid)
        finally:
            server.stop()
        self.rows.append(
            Row(
                row="big",
                server=kind,
                clients=1,
                size_mib=size / MiB,
                ok=int(response.status_code == 201),
                wall_s=round(wall, 2),
                mib_s=round(size / MiB / wall, 1),
                idle_rss_mib=round(idle / 1024, 1),
                peak_rss_mib=round(peak / 1024, 1),
                growth_mib=round((peak - idle) / 1024, 1),
            )
        )
        self.clean_staging()

    def warm(self, server: DjangoServer) -> None:
        """One small raw ``PUT`` and one small complete tus upload: every code path either way
        runs (a save, its dispatch) before the measured upload, whichever way that is."""
        assert self.put(server.url, "warm.bin", b"w" * 1024) == 201
        warm = TusClient(f"{server.url}/uploads/tus/").uploader(
            file_stream=io.BytesIO(b"w" * 1024), metadata={"filename": "tus-warm.bin"}
        )
        warm.upload()
        assert warm.offset == 1024

    def one(self, kind: str, way: str, source: Path, chunk: int) -> Sample:
        """One upload of *source* on a fresh server, after :meth:`warm`: a raw ``PUT``
        (*way* ``"put"``) or a tus upload in *chunk* bytes (``"tus"``)."""
        size = source.stat().st_size
        server = self.server(kind)
        try:
            pid = server.app_pid
            self.warm(server)
            idle = rss_kib(pid)
            peak_rss_reset(pid)
            cpu = proc_cpu(pid)
            began = time.monotonic()
            with source.open("rb") as stream:
                if way == "put":
                    ok = self.put(server.url, f"big-{kind}.bin", stream) == 201
                else:
                    uploader = TusClient(f"{server.url}/uploads/tus/").uploader(
                        file_stream=stream,
                        chunk_size=chunk,
                        metadata={"filename": f"tus-{kind}.bin"},
                    )
                    uploader.upload()
                    ok = uploader.offset == size
            wall = time.monotonic() - began
            cpu = proc_cpu(pid) - cpu
            peak = peak_rss_kib(pid)
        finally:
            server.stop()
        self.clean_staging()
        return Sample(
            way=way,
            ok=ok,
            wall_s=round(wall, 2),
            web_cpu_s=round(cpu, 2),
            growth_mib=round((peak - idle) / 1024, 1),
            idle_rss_mib=round(idle / 1024, 1),
            peak_rss_mib=round(peak / 1024, 1),
            load=round(os.getloadavg()[0], 2),
        )

    def tus(self, kinds: list[str], rounds: int) -> None:
        """The tus row: per server, *rounds* interleaved rounds of one raw ``PUT`` and one tus
        upload of the same file, each on a fresh server after the same warm-up (the order
        alternates: put, tus; tus, put; ...); medians. Then the resume after a cut."""
        size = 128 * MiB if self.quick else GiB
        chunk = 16 * MiB if self.quick else 64 * MiB
        source = self.tmp / "big.bin"
        if not source.exists():
            make_file(source, size)
        samples: dict[str, dict[str, list[Sample]]] = {k: {"put": [], "tus": []} for k in kinds}
        for number in range(rounds):
            for kind in kinds:
                for way in ("put", "tus") if number % 2 == 0 else ("tus", "put"):
                    samples[kind][way].append(self.one(kind, way, source, chunk))
        for kind in kinds:
            put, tus = samples[kind]["put"], samples[kind]["tus"]

            def median(of: list[Sample], key: str) -> float:
                return round(statistics.median(getattr(s, key) for s in of), 2)

            kept, resent_ok = self.resume(kind, source, chunk)
            self.rows.append(
                Row(
                    row="tus",
                    server=kind,
                    clients=1,
                    size_mib=size / MiB,
                    ok=int(all(s.ok for s in put + tus) and resent_ok),
                    wall_s=median(tus, "wall_s"),
                    mib_s=round(size / MiB / median(tus, "wall_s"), 1),
                    idle_rss_mib=median(tus, "idle_rss_mib"),
                    peak_rss_mib=median(tus, "peak_rss_mib"),
                    growth_mib=median(tus, "growth_mib"),
                    extra={
                        "chunk_mib": chunk // MiB,
                        "rounds": rounds,
                        "put_wall_s": median(put, "wall_s"),
                        "wall_ratio_vs_put": round(
                            median(tus, "wall_s") / median(put, "wall_s"), 2
                        ),
                        "tus_web_cpu_s": median(tus, "web_cpu_s"),
                        "put_web_cpu_s": median(put, "web_cpu_s"),
                        "cpu_ratio_vs_put": round(
                            median(tus, "web_cpu_s") / median(put, "web_cpu_s"), 2
                        ),
                        "put_growth_mib": median(put, "growth_mib"),
                        "growth_minus_put_mib": round(
                            median(tus, "growth_mib") - median(put, "growth_mib"), 1
                        ),
                        "sent_before_cut_mib": size // 2 // MiB,
                        "kept_by_server_mib": round(kept / MiB, 1),
                        "resent_mib": round((size // 2 - kept) / MiB, 1),
                        "samples": {
                            "put": [asdict(s) for s in put],
                            "tus": [asdict(s) for s in tus],
                        },
                    },
                )
            )

    def resume(self, kind: str, source: Path, chunk: int) -> tuple[int, bool]:
        """A tus upload whose connection is closed at 50 % (a ``PATCH`` of the whole file),
        resumed by ``tuspy`` from the server's offset: the bytes the server kept, and whether
        the upload then completed."""
        size = source.stat().st_size
        server = self.server(kind)
        try:
            client = TusClient(f"{server.url}/uploads/tus/")
            with source.open("rb") as stream:
                cut = client.uploader(file_stream=stream, metadata={"filename": f"cut-{kind}.bin"})
                cut.set_url(cut.create_url())
                raw = socket.create_connection(("127.0.0.1", server.port), timeout=60)
                head_lines = [
                    f"PATCH {cut.url.removeprefix(server.url)} HTTP/1.1",
                    "Host: bench",
                    "Tus-Resumable: 1.0.0",
                    "Upload-Offset: 0",
                    "Content-Type: application/offset+octet-stream",
                    f"Content-Length: {size}",
                ]
                raw.sendall(("\r\n".join(head_lines) + "\r\n\r\n").encode())
                stream.seek(0)
                for _ in range(size // 2 // MiB):
                    raw.sendall(stream.read(MiB))
                raw.close()
                time.sleep(1)
                resumed = client.uploader(file_stream=stream, url=cut.url, chunk_size=chunk)
                kept = resumed.offset
                resumed.upload()
            head = requests.head(cut.url, headers={"Tus-Resumable": "1.0.0"}, timeout=30)
        finally:
            server.stop()
        self.clean_staging()
        return kept, head.headers.get("Upload-Offset") == str(size)

    def concurrent(self, kind: str, prefix: str = "/uploads/put/") -> None:
        clients = 20 if self.quick else 100
        size = 2 * MiB if self.quick else 8 * MiB
        payload = os.urandom(size)
        threads = 32
        server = self.server(kind, threads=threads)
        try:
            pid = server.app_pid
            assert self.put(server.url, f"warm-c-{kind}.bin", b"w" * 1024) == 201
            idle = rss_kib(pid)
            peak_rss_reset(pid)
            began = time.monotonic()
            with ThreadPoolExecutor(clients) as pool:
                statuses = list(
                    pool.map(
                        lambda i: self._safe_put(server.url, f"c/{kind}-{i}.bin", payload, prefix),
                        range(clients),
                    )
                )
            wall = time.monotonic() - began
            peak = peak_rss_kib(pid)
        finally:
            server.stop()
        ok = sum(1 for s in statuses if s == 201)
        self.rows.append(
            Row(
                row="concurrent" if prefix == "/uploads/put/" else "conc-no-s3",
                server=kind,
                clients=clients,
                size_mib=size / MiB,
                ok=ok,
                wall_s=round(wall, 2),
                mib_s=round(clients * size / MiB / wall, 1),
                idle_rss_mib=round(idle / 1024, 1),
                peak_rss_mib=round(peak / 1024, 1),
                growth_mib=round((peak - idle) / 1024, 1),
                extra={
                    "failures": sorted({str(s) for s in statuses if s != 201}),
                    "server_threads": threads if kind == "gunicorn" else "one per request",
                },
            )
        )
        self.clean_staging()

    def _safe_put(self, url: str, name: str, data: bytes, prefix: str) -> int | str:
        try:
            return self.put(url, name, data, prefix)
        except Exception as err:  # reported, not raised: "all succeed" is what is measured
            return f"{type(err).__name__}"

    def clean_staging(self) -> None:
        import shutil

        shutil.rmtree(self.stack.workdir / "staging", ignore_errors=True)

    def close(self) -> None:
        import shutil

        self.stack.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def table(rows: list[Row]) -> str:
    head = (
        f"{'row':<11}{'server':<16}{'clients':>8}{'MiB each':>9}{'ok':>5}{'wall s':>8}"
        f"{'MiB/s':>8}{'idle RSS':>10}{'peak RSS':>10}{'growth':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.row:<11}{r.server:<16}{r.clients:>8}{r.size_mib:>9g}{r.ok:>5}{r.wall_s:>8}"
            f"{r.mib_s:>8}{r.idle_rss_mib:>10}{r.peak_rss_mib:>10}{r.growth_mib:>8}"
        )
    lines.append("RSS in MiB of the process running Django (gunicorn's worker, uvicorn itself).")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results-uploads.json"))
    parser.add_argument(
        "--only", choices=["big", "tus", "concurrent"], help="one kind of row (tus: with big)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the tus row (default 3)"
    )
    args = parser.parse_args()
    load = os.getloadavg()
    began = time.monotonic()
    bench = Bench(args.quick)
    try:
        for kind in ("gunicorn", "uvicorn", "uvicorn-django"):
            if args.only in (None, "big", "tus"):
                bench.big(kind)
        if args.only in (None, "tus"):
            bench.tus(["gunicorn", "uvicorn"], args.rounds)
        for kind in ("uvicorn", "gunicorn"):
            if args.only in (None, "concurrent"):
                bench.concurrent(kind)
        # The same through a storage whose remote is a directory (tests/urls.py "fs/"): what
        # the S3 client each new thread builds (for the name check) costs, by difference.
        for kind in ("uvicorn", "gunicorn"):
            if args.only in (None, "concurrent"):
                bench.concurrent(kind, prefix="/fs/")
    finally:
        bench.close()
    print(table(bench.rows))
    for r in bench.rows:
        if r.row == "tus":
            e = r.extra
            print(
                f"tus on {r.server}: medians of {e['rounds']} interleaved rounds, {e['chunk_mib']} "
                f"MiB chunks: wall {r.wall_s} s against the raw PUT's {e['put_wall_s']} s = "
                f"{e['wall_ratio_vs_put']}x (target <= 1.15x); web CPU {e['tus_web_cpu_s']} s "
                f"against {e['put_web_cpu_s']} s = {e['cpu_ratio_vs_put']}x; RSS growth "
                f"{r.growth_mib} MiB against {e['put_growth_mib']} MiB "
                f"({e['growth_minus_put_mib']:+} MiB, target within 2)"
            )
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min)")
    result = {
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "seconds": round(time.monotonic() - began, 1),
        "python": sys.version.split()[0],
        "rows": [asdict(r) for r in bench.rows],
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
