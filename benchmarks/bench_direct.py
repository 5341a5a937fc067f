"""Direct uploads to S3 against the proxied ways in: the web host's CPU, and the time to ``remote``.

``python benchmarks/bench_direct.py [--quick] [--size-mib N] [--rounds N]`` starts its own Redis,
moto S3 server and PostgreSQL (``tests/harness/services.py``), one gunicorn (one gthread worker,
8 threads, ``tests/harness/webservers.py``) serving the test project with the benchmark settings
(``benchmarks/settings.py``: the package's production defaults, ledger on PostgreSQL, S3 reached
directly) and one Celery worker (prefork, concurrency 2), and sends one file of 1 GiB
(``--quick``: 128 MiB) as a signed-in superuser (the default authorizer) three ways:

1. ``direct``: the JSON flow of ``docs/direct.md`` driven by a client here, as a browser
   would: ``POST uploads/direct/``; each batch of ``--batch`` parts (16) has its CRC32s computed
   (zlib) and declared in one ``POST`` to ``parts_url``; the parts are ``PUT`` to their presigned
   URLs ``--parallel`` (4) at a time while the next batch is read; then ``POST complete_url``.
   Part size: the package's default (``QUEUED_STORAGE_DIRECT_PART_SIZE``, 16 MiB).
2. ``tus``: the same file through ``uploads/tus/`` (``tuspy``, 64 MiB chunks, ``--quick``:
   16 MiB, as ``bench_uploads.py``), then the worker's transfer to S3.
3. ``raw PUT`` (the baseline: what a user of this package runs by default): one ``PUT`` of the
   body to ``uploads/put/<name>``, then the worker's transfer to S3.

For each: the wall time from the first byte the client sends to the ledger row ``remote``
(polled in the database every 20 ms), the CPU seconds (user + sys, from ``/proc/<pid>/stat``,
read before and after) of gunicorn's worker process, of the Celery worker's process tree, and of
this process (the client, its ledger polling included). Rounds interleave the modes (direct,
tus, raw; direct, tus, raw; ...) after one small warm-up upload per mode; the table reports
medians. moto keeps objects in memory: every object (and any unfinished multipart upload) is
deleted after each upload, and the staging directory emptied. Nothing here asserts a time; the
target (the web host spends under 1 % of the CPU of a proxied upload) is printed. Writes
``benchmarks/results-direct.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import make_file, self_cpu, tree_cpu  # noqa: E402
from tests.harness.services import ServiceStack  # noqa: E402
from tests.harness.webservers import DjangoServer  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
BUCKET = "bench-direct"
MODES = ("direct", "tus", "raw")
BASELINE = "raw"
LABEL = {
    "direct": "direct to S3 (presigned parts)",
    "tus": "tus + worker transfer",
    "raw": "raw PUT + worker transfer",
}
BASELINE_NOTE = (
    "baseline: raw PUT to uploads/put/<name>, then the worker's transfer to S3 "
    "(what a user of this package runs by default)"
)
#: The share of a proxied upload's web CPU a direct upload may cost (the issue's target).
TARGET = 0.01
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + sys) process *pid* has used, all its threads, from ``/proc``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def crc32_b64(data: bytes) -> str:
    """The part checksum the API asks for: base64 of the big-endian 4-byte CRC32."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@dataclass
class Sample:
    wall: float
    web_cpu: float
    worker_cpu: float
    client_cpu: float
    #: direct only: the web CPU of each step (start, the parts requests, complete)
    steps: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    mode: str
    label: str
    size_mib: float
    rounds: int
    wall_s: float
    web_cpu_s: float
    worker_cpu_s: float
    client_cpu_s: float
    wall_vs_baseline: float = 0.0
    web_cpu_vs_baseline: float = 0.0
    web_cpu_by_step_s: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)


class Bench:
    def __init__(self, size: int, chunk: int, parallel: int, batch: int) -> None:
        self.size = size
        self.chunk = chunk
        self.parallel = parallel
        self.batch = batch
        self.tmp = Path(tempfile.mkdtemp(prefix="qs-bench-direct-"))
        self.stack = ServiceStack(
            BUCKET, strict=True, services=["redis", "moto", "postgres"]
        ).start()
        self.stack.create_database("bench")
        self.env = {
            **self.stack.env(),
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        self.s3 = self.stack.s3_client(direct=True)
        self.cookies = self.sign_in()
        self.server: DjangoServer | None = None
        self.worker: Any = None
        self.local = threading.local()
        self.steps: dict[str, float] = {}

    def sign_in(self) -> dict[str, str]:
        """A superuser's session cookie: the default authorizer lets it upload."""
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.test import Client

        user = get_user_model().objects.create_superuser("bench", "bench@example.com", "bench")
        client = Client()
        client.force_login(user)
        return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}

    def start(self) -> None:
        from tests.harness.workers import CeleryWorker

        self.server = DjangoServer("gunicorn", self.tmp / "web", self.env, threads=8)
        self.server.start()
        self.worker = CeleryWorker(
            "benchmarks.celery_app",
            env=self.env,
            logfile=self.tmp / "worker.log",
            concurrency=2,
            name="bench-direct",
        ).start(timeout=60)

    def web_cpu(self) -> float:
        """CPU seconds of gunicorn's worker process so far."""
        assert self.server is not None
        return proc_cpu(self.server.app_pid)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def session(self) -> Any:
        """This thread's ``requests`` session (one connection pool per thread)."""
        import requests

        if getattr(self.local, "session", None) is None:
            self.local.session = requests.Session()
            self.local.session.cookies.update(self.cookies)
        return self.local.session

    # -- the three clients ------------------------------------------------------------------
    def direct(self, source: Path, name: str) -> None:
        http = self.session()
        size = source.stat().st_size
        steps = self.steps = {"start": 0.0, "parts": 0.0, "complete": 0.0}
        web = self.web_cpu
        before = web()
        started = http.post(
            f"{self.url}/uploads/direct/",
            json={"name": name, "size": size, "content_type": "application/octet-stream"},
            timeout=60,
        )
        if started.status_code != 201:
            raise RuntimeError(f"start: {started.status_code} {started.text}")
        steps["start"] = web() - before
        info = started.json()
        part_size, count = int(info["part_size"]), int(info["parts"])
        fd = os.open(source, os.O_RDONLY)
        try:

            def put(part: dict[str, Any]) -> None:
                number = int(part["number"])
                offset = (number - 1) * part_size
                body = os.pread(fd, min(part_size, size - offset), offset)
                answer = self.session().put(
                    part["url"], data=body, headers=part["headers"], timeout=300
                )
                if answer.status_code != 200:
                    raise RuntimeError(f"part {number}: {answer.status_code} {answer.text}")

            with ThreadPoolExecutor(self.parallel) as pool:
                sent: list[Future[None]] = []
                for first in range(1, count + 1, self.batch):
                    declared = []
                    for number in range(first, min(first + self.batch, count + 1)):
                        offset = (number - 1) * part_size
                        data = os.pread(fd, min(part_size, size - offset), offset)
                        declared.append({"number": number, "checksum": crc32_b64(data)})
                    before = web()
                    signed = http.post(
                        f"{self.url}{info['parts_url']}", json={"parts": declared}, timeout=60
                    )
                    steps["parts"] += web() - before
                    if signed.status_code != 200:
                        raise RuntimeError(f"parts: {signed.status_code} {signed.text}")
                    sent += [pool.submit(put, part) for part in signed.json()["parts"]]
                for future in sent:
                    future.result()
        finally:
            os.close(fd)
        before = web()
        done = http.post(f"{self.url}{info['complete_url']}", json={}, timeout=300)
        steps["complete"] = web() - before
        if done.status_code != 201 or done.json().get("state") != "remote":
            raise RuntimeError(f"complete: {done.status_code} {done.text}")

    def tus(self, source: Path, name: str) -> None:
        from tusclient.client import TusClient

        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        client = TusClient(f"{self.url}/uploads/tus/", headers={"Cookie": cookie})
        uploader = client.uploader(
            file_path=str(source), chunk_size=self.chunk, metadata={"filename": name}
        )
        uploader.upload()
        if uploader.offset != source.stat().st_size:
            raise RuntimeError(f"tus: offset {uploader.offset} of {source.stat().st_size}")

    def raw(self, source: Path, name: str) -> None:
        with source.open("rb") as body:
            answer = self.session().put(f"{self.url}/uploads/put/{name}", data=body, timeout=600)
        if answer.status_code != 201:
            raise RuntimeError(f"raw PUT: {answer.status_code} {answer.text}")

    # -- measuring ----------------------------------------------------------------------------
    def wait_remote(self, token: str, since: float, limit: float = 600.0) -> None:
        from queued_storage.models import State, StoredFile

        while True:
            row = StoredFile.objects.filter(name__endswith=token).only("state", "last_error")
            found = row.first()
            if found is not None and found.state == State.REMOTE:
                return
            if found is not None and found.state == State.FAILED:
                raise RuntimeError(f"{token}: failed ({found.last_error})")
            if time.perf_counter() - since > limit:
                state = found.state if found is not None else "no row"
                raise RuntimeError(f"{token}: not remote after {limit:.0f}s ({state})")
            time.sleep(0.02)

    def measure(self, mode: str, source: Path, token: str) -> Sample:
        assert self.server is not None and self.worker is not None
        web_pid = self.server.app_pid
        web = proc_cpu(web_pid)
        main, pool = tree_cpu(self.worker.pid)
        client = self_cpu()
        began = time.perf_counter()
        self.steps = {}
        getattr(self, mode)(source, f"bench-{token}")
        self.wait_remote(token, began)
        wall = time.perf_counter() - began
        client = self_cpu() - client
        main_after, pool_after = tree_cpu(self.worker.pid)
        sample = Sample(
            wall=wall,
            web_cpu=proc_cpu(web_pid) - web,
            worker_cpu=main_after - main + pool_after - pool,
            client_cpu=client,
            steps=dict(self.steps),
        )
        self.clean()
        return sample

    def clean(self) -> None:
        """Free moto's memory and the staging disk: every object and unfinished upload goes."""
        listed = self.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        for obj in listed:
            self.s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
        uploads = self.s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        for upload in uploads:
            self.s3.abort_multipart_upload(
                Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        staging = self.stack.workdir / "staging"
        if staging.exists():
            for child in staging.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    def run(self, rounds: int) -> list[Row]:
        source = make_file(self.tmp / "big.bin", self.size)
        warm = make_file(self.tmp / "warm.bin", 1 * MiB)
        self.start()
        for mode in MODES:  # connections, S3 clients, imports: a site's processes are warm
            self.measure(mode, warm, f"warm-{mode}.bin")
        results: dict[str, list[Sample]] = {mode: [] for mode in MODES}
        for r in range(rounds):
            for mode in MODES:
                results[mode].append(self.measure(mode, source, f"r{r}-{mode}.bin"))
            print(
                f"  round {r + 1}: "
                + ", ".join(
                    f"{mode} {results[mode][-1].wall:.2f}s "
                    f"(web CPU {results[mode][-1].web_cpu:.2f}s)"
                    for mode in MODES
                )
                + f" (load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        rows = []
        for mode in MODES:
            samples = results[mode]
            rows.append(
                Row(
                    mode=mode,
                    label=LABEL[mode],
                    size_mib=self.size / MiB,
                    rounds=rounds,
                    wall_s=round(statistics.median(s.wall for s in samples), 3),
                    web_cpu_s=round(statistics.median(s.web_cpu for s in samples), 3),
                    worker_cpu_s=round(statistics.median(s.worker_cpu for s in samples), 3),
                    client_cpu_s=round(statistics.median(s.client_cpu for s in samples), 3),
                    web_cpu_by_step_s={
                        step: round(statistics.median(s.steps[step] for s in samples), 3)
                        for step in samples[0].steps
                    },
                    samples=[
                        {
                            "wall": round(s.wall, 3),
                            "web_cpu": round(s.web_cpu, 3),
                            "worker_cpu": round(s.worker_cpu, 3),
                            "client_cpu": round(s.client_cpu, 3),
                            **{f"web_cpu_{k}": round(v, 3) for k, v in s.steps.items()},
                        }
                        for s in samples
                    ],
                )
            )
        base = next(r for r in rows if r.mode == BASELINE)
        for row in rows:
            row.wall_vs_baseline = round(row.wall_s / base.wall_s, 3)
            row.web_cpu_vs_baseline = round(row.web_cpu_s / base.web_cpu_s, 4)
        return rows

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.server is not None:
            self.server.stop()
        self.stack.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def table(rows: list[Row]) -> str:
    head = (
        f"{'mode':<32}{'wall s':>8}{'x base':>8}{'web CPU s':>11}{'x base':>9}"
        f"{'worker CPU s':>14}{'client CPU s':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.label:<32}{r.wall_s:>8.2f}{r.wall_vs_baseline:>8.2f}{r.web_cpu_s:>11.3f}"
            f"{r.web_cpu_vs_baseline:>9.4f}{r.worker_cpu_s:>14.3f}{r.client_cpu_s:>14.3f}"
        )
    lines.append(f"x base: against the {BASELINE_NOTE}, measured in the same run.")
    lines.append(
        "wall: first byte sent to the ledger row 'remote'; web CPU: gunicorn's worker process "
        "(user + sys); worker CPU: the Celery worker's process tree; client CPU: this process "
        "(the client and its ledger polling). Medians of the rounds."
    )
    by = {r.mode: r for r in rows}
    steps = by["direct"].web_cpu_by_step_s
    if steps:
        lines.append(
            "direct web CPU by step (medians): "
            + ", ".join(f"{step} {value:.3f}s" for step, value in steps.items())
            + " (the total also counts gunicorn's own loop while the parts go to S3)"
        )
    for other in ("raw", "tus"):
        share = by["direct"].web_cpu_s / by[other].web_cpu_s if by[other].web_cpu_s else 0.0
        verdict = "met" if share < TARGET else "not met"
        lines.append(
            f"direct web CPU / {LABEL[other]} web CPU = {share * 100:.2f} % "
            f"[target < {TARGET * 100:.0f} %: {verdict}]"
        )
    return "\n".join(lines)


def git_commit() -> str:
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return found.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="128 MiB per upload")
    parser.add_argument("--size-mib", type=int, help="the file's size (default 1024; quick 128)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--parallel", type=int, default=4, help="direct parts PUT at a time")
    parser.add_argument("--batch", type=int, default=16, help="direct parts signed per request")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results-direct.json"))
    args = parser.parse_args()
    size = (args.size_mib or (128 if args.quick else 1024)) * MiB
    chunk = 16 * MiB if args.quick else 64 * MiB
    began = time.monotonic()
    print(
        f"direct uploads: {size // MiB} MiB, {args.rounds} interleaved rounds; direct parts "
        f"{args.parallel} at a time, {args.batch} signed per request; tus chunks "
        f"{chunk // MiB} MiB; {BASELINE_NOTE}",
        flush=True,
    )
    bench = Bench(size, chunk, args.parallel, args.batch)
    try:
        rows = bench.run(args.rounds)
    finally:
        bench.close()
    elapsed = time.monotonic() - began
    print(table(rows))
    result = {
        "quick": args.quick,
        "size_mib": size // MiB,
        "rounds": args.rounds,
        "parallel": args.parallel,
        "batch": args.batch,
        "tus_chunk_mib": chunk // MiB,
        "baseline": BASELINE_NOTE,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(elapsed, 1),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "rows": [asdict(r) for r in rows],
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json} ({elapsed:.0f} s on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
