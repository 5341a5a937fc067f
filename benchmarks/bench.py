"""``make bench``: queued_storage against what a user would otherwise run, on one S3 server.

Starts its own Redis, moto S3 server and PostgreSQL on loopback (the test harness,
``tests/harness/``; its processes and ports through ``qs_dev.processes``), makes its files in a
temporary directory, and measures every row against baselines in the same run on the same server;
every ratio names its baseline's configuration. Where a row has rounds, each round runs every tool
once, in turn (A, B, C; A, B, C; ...), and the row reports medians. Each transfer of row 1 runs in
a process of its own; wall time and CPU seconds of a Python transfer are taken inside that process
around the transfer itself (imports excluded), peak RSS is the process's (``os.wait4``). moto keeps
objects in memory, so every object is deleted after its run and the server is reset between rows
and tools. Nothing here asserts a time: targets are printed.

Rows, and each baseline's configuration:

1. 1 GiB (``--quick``: 64 MiB), median of 3 interleaved rounds, "signed" (every storage and
   client with botocore's defaults over plain HTTP: boto3 and ``S3Storage`` sign the payload;
   the engine's own client sends ``UNSIGNED-PAYLOAD`` there by default, its bodies carrying
   checksums) and "unsigned" (``payload_signing_enabled=False`` for every client, as HTTPS
   gives): the engine (default
   ``crc32`` verification, and ``md5``) vs boto3 ``upload_file`` (boto3's defaults), the CRT
   client (``s3transfer.crt.CRTTransferManager`` with its defaults: boto3's own
   ``upload_file`` with ``preferred_transfer_client="crt"`` ignores the endpoint, see the note
   it prints), ``S3Storage.save(name, open_file)`` (``file_overwrite=False``, the old app's
   way) and s5cmd (its defaults). Targets: engine <= 1.10x the fastest, <= 1.0 CPU-s/GiB;
   ``md5`` mode <= 1.15x the fastest and <= 1.3x the ``crc32`` mode's CPU (issue 24).
   ``--tools`` and ``--signing`` run part of the row (the fastest client is then the fastest
   of those run).
2. Peak RSS of the engine at 256 MiB and at 2 GiB (no baseline: a bound).
3. Resume: a 512 MiB transfer killed halfway (``kill -9``) and retried: bytes re-sent.
4. 500 files of 16 KiB (``--quick``: 150) saved by this process through ``QueuedStorage``
   (ledger on PostgreSQL) while one Celery worker (prefork, concurrency 2) transfers them, end
   to end, vs two plain loops in one process: ``S3Storage.save()`` with django-storages'
   defaults (``file_overwrite=True``: one PUT per file) and with ``file_overwrite=False`` (HEAD
   + PUT). Median of 3 interleaved rounds; files/s, the worker's CPU per file (whole process
   tree), the producer's CPU per save, the loops' CPU per file. Targets (issue 24): >= 1.5x the
   ``file_overwrite=True`` loop, worker CPU <= 4 ms per file. ``--s3-latency 10`` runs the
   row (every tool) with S3 behind ``benchmarks/latency_proxy.py``, 10 ms each way: S3
   farther than loopback, where the queue's parallel PUTs (small files in batches) show;
   ``make bench`` runs it after the main run (``benchmarks/results-latency.json``).
   ``BENCH_BATCH_FILES`` sets ``QUEUED_STORAGE_BATCH_FILES`` for an A/B.
5. The request path: ``QueuedStorage.save()`` of a 100 MiB upload vs ``S3Storage.save()``
   (``file_overwrite=False``).
6. ``QueuedStorage.save()`` latency of 16 KiB in autocommit (transfer dispatched to Redis at once,
   no worker), p50/p99 of 300 saves (``--quick``: 100) after 20 warm-up saves, ledger on SQLite and
   on PostgreSQL x S3 healthy (moto), refusing connections, black-holed (the tests' HTTP fault
   proxy in front of moto: accepts, never answers); one child process per configuration, 3
   interleaved rounds, each child stopped after ``--save-timeout`` seconds (a timed-out row reports
   what completed). Baseline: ``S3Storage.save()`` with django-storages' defaults
   (``file_overwrite=True``) against healthy moto. Targets: p50 <= 3 ms, p99 <= 15 ms everywhere,
   no difference between S3 states.

``--quick`` runs every row on smaller sizes. Prints a table and a summary against the targets,
and writes ``benchmarks/results.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._run import RunClock  # noqa: E402
from qs_dev.processes import LOOPBACK, ManagedProcess, free_port  # noqa: E402
from tests.harness.faults import HttpFaultProxy  # noqa: E402
from tests.harness.services import ServiceStack  # noqa: E402
from tests.harness.webservers import peak_rss_kib  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
KiB = 1024
BUCKET = "bench-bucket"
#: What each baseline is, printed beside every ratio to it.
DEFAULT_LOOP = "S3Storage.save loop, django-storages defaults (file_overwrite=True: PUT)"
NO_OVERWRITE_LOOP = "S3Storage.save loop, file_overwrite=False (HEAD + PUT)"
SHORT = {DEFAULT_LOOP: "PUT loop", NO_OVERWRITE_LOOP: "HEAD+PUT loop", "ours": "ours"}
SAVE_BASELINE = "S3Storage.save, django-storages defaults (file_overwrite=True), healthy moto"


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mib: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    row: str
    tool: str
    mode: str
    size_mib: float
    runs: int
    wall_s: float
    cpu_s: float
    cpu_s_per_gib: float
    rss_mib: float
    extra: dict[str, Any] = field(default_factory=dict)


def make_file(path: Path, size: int) -> Path:
    with path.open("wb") as fh:
        left = size
        block = os.urandom(8 * MiB)
        counter = 0
        while left:
            chunk = block[: min(left, len(block))]
            # Vary each block so that no two parts are equal.
            fh.write(counter.to_bytes(8, "little") + chunk[8:] if len(chunk) > 8 else chunk)
            counter += 1
            left -= len(chunk)
    return path


def run_child(argv: list[str], env: dict[str, str], *, inside: bool = True) -> Sample:
    """Run one measured transfer; *inside*: the child reports its own wall/CPU (Python)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    # A non-Python child reports nothing itself: sample its VmHWM (peak RSS since exec, which
    # unlike ru_maxrss does not include the forked parent's memory) until it exits.
    peak = 0.0
    if inside:
        out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
    else:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(OSError, RuntimeError):  # exiting: no /proc entry
                peak = max(peak, peak_rss_kib(proc.pid) / 1024)
            time.sleep(0.005)
        out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    info: dict[str, Any] = {}
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if lines:
        info = json.loads(lines[-1])
    if inside:
        return Sample(info.pop("wall"), info.pop("cpu"), info.pop("rss"), info)
    return Sample(wall, usage.ru_utime + usage.ru_stime, peak, info)


def percentile(values: list[float], pct: float) -> float:
    """The *pct* percentile (nearest rank) of *values*."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def tree_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + sys) of process *pid* itself, and of all its descendants (alive, or
    reaped by it)."""
    import psutil

    try:
        root = psutil.Process(pid)
        children = root.children(recursive=True)
        times = root.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    below = times.children_user + times.children_system  # children it has reaped
    for member in children:
        try:
            own = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        below += own.user + own.system
    return times.user + times.system, below


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LatencyChild:
    """One ``benchmarks._save_latency`` process: it saves when told, reports every save at once.

    The time the parent spends waiting on the child (set-up, warm-up, every round; not the
    time it spends idle while the others run) has one budget of *budget* seconds; a child that
    has not finished a step by then is killed and keeps what it reported.
    """

    def __init__(
        self, label: str, argv: list[str], env: dict[str, str], log: Path, budget: float
    ) -> None:
        self.label = label
        self.log = log
        self.budget = budget
        self.used = 0.0  # seconds spent waiting on this child so far
        self.last = time.monotonic()  # when the child last reported (or was told to go on)
        self.warm: list[float] = []
        self.times: list[float] = []
        self.round_p50: list[float] = []
        self.info: dict[str, Any] = {}
        self.status = "ok"
        self.waiting_s = 0.0  # how long the save in progress had been running when stopped
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
            )
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.status == "ok"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.messages.put(json.loads(line))
        self.messages.put(None)

    def wait_for(self, marker: str) -> bool:
        """Collect reports until one carries *marker*; ``False`` if the child failed first."""
        while True:
            start = time.monotonic()
            try:
                message = self.messages.get(timeout=max(0.0, self.budget - self.used))
            except queue.Empty:
                self.used += time.monotonic() - start
                self.stop(f"timed out after {self.budget:.0f}s")
                return False
            self.last = time.monotonic()
            self.used += self.last - start
            if message is None:
                self.stop(f"exited ({self.proc.wait()})")
                return False
            if "warm" in message:
                self.warm.append(float(message["warm"]))
            elif "t" in message:
                self.times.append(float(message["t"]))
            elif "ready" in message:
                self.info.update(message)
            if marker in message:
                return True

    def run(self, count: int) -> None:
        if not self.alive:
            return
        assert self.proc.stdin is not None
        before = len(self.times)
        self.last = time.monotonic()
        self.proc.stdin.write(f"run {count}\n")
        self.proc.stdin.flush()
        if self.wait_for("done"):
            self.round_p50.append(statistics.median(self.times[before:]))

    def stop(self, status: str = "ok") -> None:
        if status != "ok":
            self.waiting_s = time.monotonic() - self.last
            self.status = status
        if self.proc.poll() is None:
            if status == "ok" and self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.splitlines()[-lines:])


#: Row 1's tools, in the order each round runs them.
ROW1_TOOLS = ("engine", "engine-md5", "boto3", "crt", "storages", "s5cmd")


class Bench:
    def __init__(
        self,
        quick: bool,
        save_timeout: float | None = None,
        tools: tuple[str, ...] = ROW1_TOOLS,
        signing: tuple[str, ...] = ("signed", "unsigned"),
        s3_latency_ms: float = 0.0,
    ) -> None:
        self.quick = quick
        self.s3_latency_ms = s3_latency_ms
        self.latency_proxy: subprocess.Popen[str] | None = None
        self.tools, self.signing = tools, signing
        self.save_timeout = save_timeout or (40.0 if quick else 200.0)
        self.tmp = Path(tempfile.mkdtemp(prefix="qs-bench-"))
        self.stack = ServiceStack(
            BUCKET, strict=True, services=["redis", "moto", "postgres"]
        ).start()
        self.stack.create_database("bench")
        self.env = {
            **os.environ,
            **self.stack.env(),
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
            "PYTHONPATH": str(ROOT),
        }
        if s3_latency_ms > 0:
            self.env["BENCH_S3_ENDPOINT"] = self.start_latency_proxy(s3_latency_ms)
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        import benchmarks.celery_app  # noqa: F401  (the producer side: saves dispatch through it)

        call_command("migrate", verbosity=0)
        self.client = self.stack.s3_client(direct=True)
        self.rows: list[Row] = []

    # -- helpers --------------------------------------------------------------------------
    def start_latency_proxy(self, delay_ms: float) -> str:
        """``benchmarks/latency_proxy.py`` in front of moto (every storage, client and worker
        of the run goes through it): each request's round trip gains twice *delay_ms*."""
        moto = urllib.parse.urlsplit(self.stack.env()["QS_TEST_S3_DIRECT_ENDPOINT"])
        port = free_port()
        self.latency_proxy = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "latency_proxy.py"),
                str(port),
                moto.hostname or "127.0.0.1",
                str(moto.port),
                str(delay_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.latency_proxy.stdout is not None
        if self.latency_proxy.stdout.readline().strip() != "ready":
            raise RuntimeError("the latency proxy did not start")
        print(
            f"S3 through benchmarks/latency_proxy.py: +{delay_ms:g} ms each way "
            f"(+{2 * delay_ms:g} ms per round trip), for every tool of the run",
            flush=True,
        )
        return f"http://127.0.0.1:{port}"

    def reset_s3(self) -> None:
        assert self.stack.moto is not None
        self.stack.moto.reset()
        self.stack.moto.create_bucket(BUCKET)

    def drop(self, key: str) -> int:
        size = int(self.client.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
        self.client.delete_object(Bucket=BUCKET, Key=key)
        return size

    def child(self, mode: str, *args: str, unsigned: bool = False, **env: str) -> Sample:
        environ = {**self.env, "BENCH_UNSIGNED": "1" if unsigned else "0", **env}
        argv = [sys.executable, "-m", "benchmarks._timed", mode, *args]
        return run_child(argv, environ)

    def s5cmd(self, path: Path, key: str) -> Sample:
        binary = Path(sys.executable).with_name("s5cmd")
        env = {
            **self.env,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_REGION": "us-east-1",
        }
        argv = [
            str(binary),
            "--endpoint-url",
            self.env["QS_TEST_S3_DIRECT_ENDPOINT"],
            "cp",
            str(path),
            f"s3://{BUCKET}/{key}",
        ]
        return run_child(argv, env, inside=False)

    def add(
        self, row: str, tool: str, mode: str, size: int, samples: list[Sample], **extra: Any
    ) -> Row:
        wall = statistics.median(s.wall for s in samples)
        cpu = statistics.median(s.cpu for s in samples)
        rss = max(s.rss_mib for s in samples)
        result = Row(
            row,
            tool,
            mode,
            round(size / MiB, 1),
            len(samples),
            round(wall, 3),
            round(cpu, 3),
            round(cpu / (size / GiB), 3) if size else 0.0,
            round(rss, 1),
            extra,
        )
        self.rows.append(result)
        print(
            f"  {row:<10} {tool:<22} {mode:<9} {result.size_mib:>8.0f} MiB  wall {wall:7.2f}s  "
            f"cpu {cpu:6.2f}s ({result.cpu_s_per_gib:5.2f}/GiB)  rss {rss:6.1f} MiB",
            flush=True,
        )
        return result

    # -- rows ---------------------------------------------------------------------------------
    def crt_available(self) -> bool:
        """Whether the CRT baseline can run against this endpoint; prints why when it cannot."""
        try:
            import awscrt  # noqa: F401
        except ImportError:
            print("  note: crt left out: awscrt is not installed (pip install 'boto3[crt]')")
            return False
        probe = self.child("crt-probe").info
        endpoint = self.env["QS_TEST_S3_DIRECT_ENDPOINT"]
        print(
            "  note: boto3 upload_file(Config=TransferConfig(preferred_transfer_client='crt')) "
            f"gets a {probe['manager']}, but boto3/crt.py builds that CRT client with "
            "use_ssl=True and its request serializer with endpoint_url=None, so its requests "
            f"would go to {probe['crt_endpoint']} (TLS), not to the client's endpoint "
            f"{probe['client_endpoint']}: not run. The 'crt' row is the same CRT client "
            "(s3transfer.crt.CRTTransferManager, its defaults) built for "
            f"{endpoint} with use_ssl=False; CRT signs its own way (SigV4, CRC32 trailer) "
            "in both modes.",
            flush=True,
        )
        return True

    def row1_throughput(self) -> None:
        size = 64 * MiB if self.quick else GiB
        runs = 3
        path = make_file(self.tmp / "row1.bin", size)
        print(f"row 1: {size // MiB} MiB, median of {runs} interleaved rounds", flush=True)
        tools = [t for t in ROW1_TOOLS if t in self.tools]
        if "crt" in tools and not self.crt_available():
            tools.remove("crt")
        for mode, unsigned in (("signed", False), ("unsigned", True)):
            if mode not in self.signing:
                continue
            self.reset_s3()
            samples: dict[str, list[Sample]] = {tool: [] for tool in tools}
            for i in range(runs):
                for tool in tools:
                    key = f"row1/{tool}-{mode}-{i}.bin"
                    if tool == "s5cmd":
                        sample = self.s5cmd(path, key)
                    else:
                        sample = self.child(tool, str(path), key, unsigned=unsigned)
                    if tool == "crt":
                        assert sample.info["manager"] == "s3transfer.crt.CRTTransferManager"
                    assert self.drop(key) == size, f"{tool} stored a wrong size"
                    samples[tool].append(sample)
            for tool in tools:
                extra: dict[str, Any] = {"walls": [round(x.wall, 3) for x in samples[tool]]}
                if tool == "crt":
                    extra["client"] = samples[tool][0].info["manager"]
                    extra["awscrt"] = samples[tool][0].info["awscrt"]
                self.add("1-transfer", tool, mode, size, samples[tool], **extra)
        path.unlink()

    def row2_memory(self) -> None:
        sizes = (32 * MiB, 256 * MiB) if self.quick else (256 * MiB, 2 * GiB)
        print("row 2: peak RSS of the engine by file size", flush=True)
        self.reset_s3()
        rss = []
        for size in sizes:
            path = make_file(self.tmp / f"row2-{size}.bin", size)
            sample = self.child("engine", str(path), f"row2/{size}.bin")
            self.drop(f"row2/{size}.bin")
            path.unlink()
            rss.append(self.add("2-memory", "engine", "signed", size, [sample]).rss_mib)
        self.rows[-1].extra["growth_mib"] = round(rss[1] - rss[0], 1)
        print(
            f"  growth from {sizes[0] // MiB} MiB to {sizes[1] // MiB} MiB: "
            f"{rss[1] - rss[0]:.1f} MiB"
        )

    def row3_resume(self) -> None:
        from django.core.files import File
        from django.core.files.storage import storages

        from queued_storage.conf import settings as qs
        from queued_storage.models import StoredFile

        size = 96 * MiB if self.quick else 512 * MiB
        print(f"row 3: resume a {size // MiB} MiB transfer killed halfway", flush=True)
        self.reset_s3()
        storage = storages["queued_delayed"]  # in STORAGES, so the child process finds it
        path = make_file(self.tmp / "row3.bin", size)
        with path.open("rb") as fh:
            name = storage.save("row3.bin", File(fh, "row3.bin"))
        path.unlink()
        env = {**self.env, "BENCH_LEASE_TIMEOUT": "2"}
        argv = [sys.executable, "-m", "benchmarks._timed", "run_transfer", storage.alias, name]
        proc = ManagedProcess("row3-transfer", log_path=self.tmp / "row3.log", cwd=ROOT)
        proc.start(argv, env=env)
        part = qs.MULTIPART_CHUNKSIZE
        parts = -(-size // part)
        deadline = time.monotonic() + 300
        row = None
        while time.monotonic() < deadline:
            row = StoredFile.get_row(storage.alias, name)
            if row is not None and len(row.parts) >= parts // 2:
                break
            time.sleep(0.01)
        proc.kill()
        row = StoredFile.get_row(storage.alias, name)
        assert row is not None and row.upload_id, "the transfer did not start a multipart upload"
        listed = self.client.list_parts(Bucket=BUCKET, Key=name, UploadId=row.upload_id)
        on_server = sum(int(p["Size"]) for p in listed.get("Parts", []))
        time.sleep(2.2)  # the killed worker's lease expires
        sample = self.child("run_transfer", storage.alias, name, BENCH_LEASE_TIMEOUT="2")
        assert sample.info["outcome"] == "transferred", sample.info
        sent_again = size - sample.info["resumed_bytes"]
        resent = sent_again - (size - on_server)
        in_flight = qs.MAX_CONCURRENCY
        result = self.add(
            "3-resume",
            "engine+ledger",
            "signed",
            size,
            [sample],
            parts=parts,
            part_mib=part // MiB,
            parts_on_server_at_kill=len(listed.get("Parts", [])),
            parts_recorded_at_kill=len(row.parts),
            bytes_sent_on_retry=sent_again,
            bytes_resent=resent,
            limit_bytes=part + in_flight * part,
        )
        print(
            f"  parts on the server at the kill: {result.extra['parts_on_server_at_kill']}, "
            f"recorded in the ledger: {len(row.parts)}; sent on retry: {sent_again / MiB:.0f} MiB; "
            f"re-sent: {resent / MiB:.1f} MiB (limit: one part + {in_flight} in flight = "
            f"{(part + in_flight * part) / MiB:.0f} MiB)"
        )
        storage.delete(name)

    def row4_small_files(self) -> None:
        from django.core.files.base import ContentFile
        from django.core.files.storage import storages

        from queued_storage.models import State, StoredFile
        from tests.harness.workers import CeleryWorker

        count = 150 if self.quick else 500
        rounds = 3
        concurrency = 2
        data = os.urandom(16 * KiB)
        print(
            f"row 4: {count} files of 16 KiB, median of {rounds} interleaved rounds; ours: "
            f"QueuedStorage (ledger on PostgreSQL) + one worker (prefork, concurrency "
            f"{concurrency}), end to end"
            + (f"; S3 +{self.s3_latency_ms:g} ms each way" if self.s3_latency_ms else ""),
            flush=True,
        )
        queued = storages["default"]
        loops = {DEFAULT_LOOP: storages["s3_default"], NO_OVERWRITE_LOOP: storages["s3"]}
        staging = Path(queued.local.location)

        def clean() -> None:
            self.reset_s3()
            StoredFile.objects.filter(alias=queued.alias).delete()
            for path in sorted((staging / "row4").rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()

        def arrived(prefix: str) -> int:
            return StoredFile.objects.filter(
                alias=queued.alias, state=State.REMOTE, name__startswith=prefix
            ).count()

        def wait_remote(prefix: str, expected: int, since: float) -> None:
            while arrived(prefix) < expected:
                if time.perf_counter() - since > 300:
                    raise RuntimeError(
                        f"only {arrived(prefix)} of {expected} files arrived in 300s "
                        f"(worker log: {self.tmp / 'worker.log'})"
                    )
                time.sleep(0.02)

        worker = CeleryWorker(
            "benchmarks.celery_app",
            env=self.env,
            logfile=self.tmp / "worker.log",
            concurrency=concurrency,
            name="bench",
        ).start(timeout=60)
        assert worker.pid is not None
        results: dict[str, list[dict[str, float]]] = {
            DEFAULT_LOOP: [],
            NO_OVERWRITE_LOOP: [],
            "ours": [],
        }
        try:
            # Warm every process up (connections, clients, the pool's children) outside the
            # rounds: a site's worker and web processes are running already.
            clean()
            for storage in loops.values():
                storage.save("row4/warm/base.bin", ContentFile(data))
            start = time.perf_counter()
            for i in range(4 * concurrency):
                queued.save(f"row4/warm/{i}.bin", ContentFile(data))
            wait_remote("row4/warm/", 4 * concurrency, start)
            for r in range(rounds):
                for label, storage in loops.items():
                    clean()
                    cpu = self_cpu()
                    start = time.perf_counter()
                    for i in range(count):
                        storage.save(f"row4/base/{r}/{i}.bin", ContentFile(data))
                    wall = time.perf_counter() - start
                    results[label].append({"wall": wall, "cpu": self_cpu() - cpu})
                clean()
                prefix = f"row4/q/{r}/"
                main_cpu, pool_cpu = tree_cpu(worker.pid)
                cpu = self_cpu()
                start = time.perf_counter()
                for i in range(count):
                    queued.save(f"{prefix}{i}.bin", ContentFile(data))
                saved = time.perf_counter() - start
                producer = self_cpu() - cpu
                wait_remote(prefix, count, start)
                wall = time.perf_counter() - start
                main_after, pool_after = tree_cpu(worker.pid)
                results["ours"].append(
                    {
                        "wall": wall,
                        "saves": saved,
                        "cpu": producer,
                        "worker_cpu": main_after - main_cpu + pool_after - pool_cpu,
                        "worker_main_cpu": main_after - main_cpu,
                        "worker_pool_cpu": pool_after - pool_cpu,
                    }
                )
                print(
                    f"  round {r + 1}: "
                    + ", ".join(
                        f"{SHORT[key]} {values[-1]['wall']:.2f}s" for key, values in results.items()
                    )
                    + f" (load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        finally:
            worker.stop()
            clean()

        def med(label: str, key: str) -> float:
            return statistics.median(x[key] for x in results[label])

        base_fps = {label: count / med(label, "wall") for label in loops}
        for label in loops:
            self.rows.append(
                Row(
                    "4-small",
                    label,
                    "signed",
                    16 / 1024,
                    rounds,
                    round(med(label, "wall"), 3),
                    round(med(label, "cpu"), 3),
                    0.0,
                    0.0,
                    {
                        "files": count,
                        "files_per_s": round(base_fps[label], 1),
                        "cpu_ms_per_file": round(med(label, "cpu") / count * 1000, 2),
                        "walls": [round(x["wall"], 3) for x in results[label]],
                    },
                )
            )
        ours = count / med("ours", "wall")
        worker_ms = med("ours", "worker_cpu") / count * 1000
        main_ms = med("ours", "worker_main_cpu") / count * 1000
        pool_ms = med("ours", "worker_pool_cpu") / count * 1000
        producer_ms = med("ours", "cpu") / count * 1000
        self.rows.append(
            Row(
                "4-small",
                f"QueuedStorage+worker (prefork, c={concurrency})",
                "signed",
                16 / 1024,
                rounds,
                round(med("ours", "wall"), 3),
                round(med("ours", "worker_cpu"), 3),
                0.0,
                0.0,
                {
                    "files": count,
                    "files_per_s": round(ours, 1),
                    "save_loop_s": round(med("ours", "saves"), 3),
                    "ratio_vs_default_loop": round(ours / base_fps[DEFAULT_LOOP], 2),
                    "ratio_vs_no_overwrite_loop": round(ours / base_fps[NO_OVERWRITE_LOOP], 2),
                    "worker_cpu_ms_per_file": round(worker_ms, 2),
                    "worker_main_cpu_ms_per_file": round(main_ms, 2),
                    "worker_pool_cpu_ms_per_file": round(pool_ms, 2),
                    "producer_cpu_ms_per_save": round(producer_ms, 2),
                    "worker_concurrency": concurrency,
                    "s3_latency_ms_each_way": self.s3_latency_ms,
                    "walls": [round(x["wall"], 3) for x in results["ours"]],
                },
            )
        )
        for label in loops:
            print(
                f"  {label}: {base_fps[label]:.0f} files/s, "
                f"CPU {med(label, 'cpu') / count * 1000:.2f} ms/file"
            )
        print(
            f"  QueuedStorage end to end: {ours:.0f} files/s = "
            f"{ours / base_fps[DEFAULT_LOOP]:.2f}x the {DEFAULT_LOOP} [target >= 1.5], "
            f"{ours / base_fps[NO_OVERWRITE_LOOP]:.2f}x the {NO_OVERWRITE_LOOP}; the saves "
            f"alone took {med('ours', 'saves'):.2f}s"
        )
        print(
            f"  CPU per file: worker {worker_ms:.2f} ms (whole process tree: main {main_ms:.2f}, "
            f"pool {pool_ms:.2f}) [target <= 4 ms], "
            f"producer {producer_ms:.2f} ms per save; the loops' "
            f"{med(DEFAULT_LOOP, 'cpu') / count * 1000:.2f} ms (file_overwrite=True) and "
            f"{med(NO_OVERWRITE_LOOP, 'cpu') / count * 1000:.2f} ms (file_overwrite=False) "
            "per file as the reference",
            flush=True,
        )

    def row5_request_path(self) -> None:
        from django.core.files.storage import storages
        from django.core.files.uploadedfile import TemporaryUploadedFile
        from django.test import override_settings

        size = 16 * MiB if self.quick else 100 * MiB
        print(f"row 5: the request path, save() of a {size // MiB} MiB upload")
        self.reset_s3()
        payload = os.urandom(size)
        # QueuedStorage.save with its default QUEUED_STORAGE_FSYNC = True (the staged file and
        # its folders flushed before the row commits), and with it off, against S3Storage.save.
        labels = ("QueuedStorage.save", "QueuedStorage.save, FSYNC=False", "S3Storage.save")
        timings: dict[str, list[float]] = {label: [] for label in labels}
        for i in range(3):
            for label in labels:
                storage = storages["s3" if label == "S3Storage.save" else "queued_delayed"]
                upload = TemporaryUploadedFile(f"up{i}.bin", "application/octet-stream", size, None)
                upload.write(payload)
                upload.flush()
                upload.seek(0)
                with override_settings(QUEUED_STORAGE_FSYNC="FSYNC=False" not in label):
                    start = time.perf_counter()
                    storage.save(f"row5/{label}-{i}.bin", upload)
                    timings[label].append(time.perf_counter() - start)
                upload.close()
        medians = {label: statistics.median(values) for label, values in timings.items()}
        for label in labels:
            self.rows.append(
                Row(
                    "5-request",
                    label,
                    "signed",
                    size / MiB,
                    3,
                    round(medians[label], 4),
                    0.0,
                    0.0,
                    0.0,
                    {},
                )
            )
        q, quick, s = (medians[label] for label in labels)
        self.rows[-3].extra["speedup_vs_s3storage"] = round(s / q, 1)
        print(
            f"  QueuedStorage.save {q * 1000:.1f} ms (fsync of the staged file included; "
            f"{quick * 1000:.1f} ms with QUEUED_STORAGE_FSYNC = False), S3Storage.save "
            f"{s * 1000:.1f} ms: {s / q:.0f}x faster"
        )

    def row6_save_latency(self) -> None:
        from django.core.files.storage import storages

        from benchmarks.celery_app import app
        from queued_storage.models import StoredFile

        total = 100 if self.quick else 300
        rounds, warmup, size = 3, 20, 16 * KiB
        per_round = -(-total // rounds)
        budget = self.save_timeout
        print(
            f"row 6: save() latency of 16 KiB in autocommit, {per_round * rounds} saves per "
            f"configuration after {warmup} warm-up saves, {rounds} interleaved rounds, each "
            f"child stopped after {budget:.0f}s; baseline: {SAVE_BASELINE}",
            flush=True,
        )
        self.reset_s3()
        assert self.stack.moto is not None
        # The tests' HTTP fault proxy in front of moto, black-holed: it accepts connections and
        # never answers.
        hole = HttpFaultProxy((LOOPBACK, self.stack.moto.port), name="bench-black-hole")
        hole.start()
        hole.black_hole()
        endpoints = {
            "healthy": self.env["QS_TEST_S3_DIRECT_ENDPOINT"],
            "refused": f"http://{LOOPBACK}:{free_port()}",
            "black-holed": hole.endpoint_url,
        }
        sqlite = self.tmp / "row6-ledger.sqlite3"
        configs: list[tuple[str, str, str, str]] = [
            ("baseline", "s3_default", "postgres", "healthy")
        ]
        configs += [
            (f"{db}/{s3}", "default", db, s3)
            for db in ("sqlite", "postgres")
            for s3 in ("healthy", "refused", "black-holed")
        ]
        children: dict[str, LatencyChild] = {}
        try:
            for label, alias, db, s3 in configs:
                env = {
                    **self.env,
                    "BENCH_DB": db,
                    "BENCH_SQLITE": str(sqlite),
                    "BENCH_S3_ENDPOINT": endpoints[s3],
                }
                tag = label.replace("/", "-")
                argv = [
                    sys.executable,
                    "-m",
                    "benchmarks._save_latency",
                    alias,
                    f"row6/{tag}",
                    str(warmup),
                    str(size),
                ]
                log = self.tmp / f"row6-{tag}.log"
                child = children[label] = LatencyChild(label, argv, env, log, budget)
                # One child at a time sets up and warms up, so that none slows another down.
                if child.wait_for("ready"):
                    child.wait_for("warmed")
            for _ in range(rounds):
                for child in children.values():
                    child.run(per_round)
        finally:
            for child in children.values():
                if child.alive:
                    child.stop()
            hole.stop()
            app.control.purge()  # the dispatched transfers: no worker is meant to run them
            StoredFile.objects.filter(name__startswith="row6/").delete()
            staging = Path(storages["default"].local.location) / "row6"
            for path in sorted(staging.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            if staging.exists():
                staging.rmdir()
        base = children["baseline"]
        base_p50 = statistics.median(base.times) if base.times else 0.0
        for label, _alias, db, s3 in configs:
            child = children[label]
            done = child.times
            p50 = statistics.median(done) if done else None
            p99 = percentile(done, 99) if done else None
            ratio = p50 / base_p50 if p50 is not None and base_p50 else None
            extra: dict[str, Any] = {
                "db": db,
                "s3": s3,
                "endpoint": endpoints[s3],
                "status": child.status,
                "saves": len(done),
                "saves_wanted": per_round * rounds,
                "warmup_done": len(child.warm),
                "warmup_wanted": warmup,
                "warmup_max_s": round(max(child.warm), 3) if child.warm else None,
                "p50_ms": round(p50 * 1000, 3) if p50 is not None else None,
                "p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
                "round_p50_ms": [round(x * 1000, 3) for x in child.round_p50],
                "ratio_p50_vs_baseline": round(ratio, 2) if ratio is not None else None,
                "baseline": SAVE_BASELINE,
            }
            if not child.alive:
                extra["waiting_s"] = round(child.waiting_s, 1)
                extra["log_tail"] = child.log_tail()
            tool = "S3Storage.save (defaults)" if label == "baseline" else "QueuedStorage.save"
            mode = "healthy" if label == "baseline" else label
            self.rows.append(
                Row(
                    "6-save-latency",
                    tool,
                    mode,
                    size / MiB,
                    len(done),
                    round(p50, 6) if p50 is not None else 0.0,
                    0.0,
                    0.0,
                    0.0,
                    extra,
                )
            )
            print("  " + latency_line(self.rows[-1]), flush=True)
            if not child.alive and extra["log_tail"]:
                print(f"      child's last log lines: {extra['log_tail'][:300]}")

    def close(self) -> None:
        if self.latency_proxy is not None:
            self.latency_proxy.terminate()
            self.latency_proxy.wait(10)
        self.stack.stop()
        for path in sorted(self.tmp.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        self.tmp.rmdir()


def latency_line(r: Row) -> str:
    """One configuration of row 6: its p50/p99 beside the targets, or what it got through."""
    e = r.extra
    label = f"{r.tool} [{r.mode}]"
    if e["status"] == "ok":
        text = f"{label:<42} p50 {e['p50_ms']:7.2f} ms  p99 {e['p99_ms']:7.2f} ms"
        if r.tool.startswith("QueuedStorage"):
            text += (
                f"  p50 = {e['ratio_p50_vs_baseline']:.2f}x the baseline's "
                "[targets: p50 <= 3 ms, p99 <= 15 ms]"
            )
        return text
    warm = f"{e['warmup_done']} of {e['warmup_wanted']} warm-up saves done"
    if e["warmup_done"]:
        warm += f" (slowest {e['warmup_max_s']:.1f}s)"
    timed = f"{e['saves']} of {e['saves_wanted']} measured saves"
    if e["saves"]:
        timed += f" (p50 {e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms)"
    return (
        f"{label:<42} FAILED: {e['status']}; {warm}, {timed}; the save in progress had "
        f"waited {e['waiting_s']:.1f}s [targets: p50 <= 3 ms, p99 <= 15 ms]"
    )


def summary(rows: list[Row]) -> list[str]:
    lines = []
    for mode in ("signed", "unsigned"):
        transfer = [r for r in rows if r.row == "1-transfer" and r.mode == mode]
        if not transfer:
            continue
        clients = [r for r in transfer if not r.tool.startswith("engine")]
        if not clients:
            continue
        best = min(clients, key=lambda r: r.wall_s)
        crc32 = next((r for r in transfer if r.tool == "engine"), None)
        for engine in (r for r in transfer if r.tool.startswith("engine")):
            ratio = engine.wall_s / best.wall_s
            engine.extra["wall_ratio_vs_best_baseline"] = round(ratio, 2)
            line = (
                f"transfer ({mode}): {engine.tool} {engine.wall_s:.2f}s = {ratio:.2f}x the fastest "
                f"client ({best.tool}, its defaults, {best.wall_s:.2f}s) "
            )
            if engine.tool == "engine-md5":
                line += "[target <= 1.15]"
                if crc32 is not None and crc32.cpu_s:
                    cpu_ratio = engine.cpu_s / crc32.cpu_s
                    engine.extra["cpu_ratio_vs_crc32"] = round(cpu_ratio, 2)
                    line += (
                        f"; client CPU {engine.cpu_s_per_gib:.2f} s/GiB = {cpu_ratio:.2f}x the "
                        "crc32 mode's [target <= 1.3]"
                    )
            else:
                line += (
                    f"[target <= 1.10]; client CPU {engine.cpu_s_per_gib:.2f} s/GiB [target <= 1.0]"
                )
            lines.append(line)
        for r in transfer:
            r.extra.setdefault("wall_ratio_vs_best_baseline", round(r.wall_s / best.wall_s, 2))
    memory = [r for r in rows if r.row == "2-memory"]
    if memory:
        lines.append(
            f"memory: peak RSS {memory[-1].rss_mib:.0f} MiB at {memory[-1].size_mib:.0f} MiB "
            f"[target < 120], growth {memory[-1].extra['growth_mib']:.1f} MiB [target < 16]"
        )
    resume = [r for r in rows if r.row == "3-resume"]
    if resume:
        e = resume[0].extra
        lines.append(
            f"resume: re-sent {e['bytes_resent'] / MiB:.1f} MiB "
            f"[target < {e['limit_bytes'] / MiB:.0f}]"
        )
    small = [r for r in rows if r.row == "4-small" and "ratio_vs_default_loop" in r.extra]
    if small:
        e = small[0].extra
        lines.append(
            f"small files: {e['files_per_s']:.0f} files/s end to end = "
            f"{e['ratio_vs_default_loop']:.2f}x the {DEFAULT_LOOP} [target >= 1.5], "
            f"{e['ratio_vs_no_overwrite_loop']:.2f}x the {NO_OVERWRITE_LOOP}"
        )
        loops = {
            r.tool: r.extra["cpu_ms_per_file"]
            for r in rows
            if r.row == "4-small" and "cpu_ms_per_file" in r.extra
        }
        lines.append(
            f"small files CPU: worker {e['worker_cpu_ms_per_file']:.2f} ms/file [target <= 4], "
            f"producer {e['producer_cpu_ms_per_save']:.2f} ms/save; reference: the "
            f"file_overwrite=True loop {loops.get(DEFAULT_LOOP, 0):.2f} ms/file, the "
            f"file_overwrite=False loop {loops.get(NO_OVERWRITE_LOOP, 0):.2f} ms/file"
        )
    request = [r for r in rows if r.row == "5-request" and "speedup_vs_s3storage" in r.extra]
    if request:
        lines.append(
            f"request path: {request[0].extra['speedup_vs_s3storage']:.0f}x faster than "
            "S3Storage.save [target >= 5]"
        )
    latency = [r for r in rows if r.row == "6-save-latency"]
    if latency:
        base = latency[0]
        if base.extra["status"] == "ok":
            lines.append(
                f"save latency baseline: {SAVE_BASELINE}: p50 {base.extra['p50_ms']:.2f} ms, "
                f"p99 {base.extra['p99_ms']:.2f} ms"
            )
        for r in latency[1:]:
            lines.append("save latency: " + latency_line(r))
        for db in ("sqlite", "postgres"):
            by_s3 = {r.extra["s3"]: r for r in latency[1:] if r.extra["db"] == db}
            healthy = by_s3.get("healthy")
            if healthy is None or healthy.extra["status"] != "ok":
                continue
            parts = []
            for s3 in ("refused", "black-holed"):
                other = by_s3.get(s3)
                if other is None:
                    continue
                if other.extra["status"] != "ok":
                    parts.append(f"{s3} FAILED ({other.extra['status']})")
                    continue
                parts.append(
                    f"{s3} p50 {other.extra['p50_ms'] / healthy.extra['p50_ms']:.2f}x, "
                    f"p99 {other.extra['p99_ms'] / healthy.extra['p99_ms']:.2f}x"
                )
            lines.append(
                f"save latency ({db} ledger) vs healthy S3: {'; '.join(parts)} "
                "[target: no difference]"
            )
    return lines


def table(rows: list[Row]) -> str:
    head = (
        "| row | tool | mode | size MiB | runs | wall s | ratio | CPU s | CPU s/GiB "
        "| peak RSS MiB |"
    )
    out = [head, "|" + "---|" * 10]
    for r in rows:
        ratio = r.extra.get("wall_ratio_vs_best_baseline", "")
        if r.row == "4-small":
            e = r.extra
            if "ratio_vs_default_loop" in e:
                ratio = (
                    f"{e['ratio_vs_default_loop']} (vs file_overwrite=True loop), "
                    f"{e['ratio_vs_no_overwrite_loop']} (vs file_overwrite=False loop)"
                )
                cpu = (
                    f"worker {e['worker_cpu_ms_per_file']} ms/file, producer "
                    f"{e['producer_cpu_ms_per_save']} ms/save"
                )
            else:
                ratio, cpu = "", f"{e['cpu_ms_per_file']} ms/file"
            out.append(
                f"| {r.row} | {r.tool} | {r.mode} | 16 KiB x {e['files']} | {r.runs} | "
                f"{r.wall_s:.2f} ({e['files_per_s']} files/s) | {ratio} | {cpu} | | |"
            )
            continue
        if r.row == "6-save-latency":
            e = r.extra
            if e["status"] == "ok":
                wall = f"p50 {e['p50_ms']} ms, p99 {e['p99_ms']} ms"
            else:
                wall = f"FAILED ({e['status']}): {r.runs} saves"
                if r.runs:
                    wall += f", p50 {e['p50_ms']} ms, p99 {e['p99_ms']} ms"
            ratio = e["ratio_p50_vs_baseline"] if r.tool.startswith("Queued") else "baseline"
            out.append(
                f"| {r.row} | {r.tool} | {r.mode} | 16 KiB | {r.runs} | {wall} | "
                f"{'' if ratio is None else ratio} | | | |"
            )
            continue
        out.append(
            f"| {r.row} | {r.tool} | {r.mode} | {r.size_mib:.0f} | {r.runs} | {r.wall_s:.3f} | "
            f"{ratio} | {r.cpu_s or ''} | {r.cpu_s_per_gib or ''} | {r.rss_mib or ''} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, about three minutes")
    parser.add_argument("--rows", default="1,2,3,4,5,6", help="comma-separated rows to run")
    parser.add_argument(
        "--save-timeout",
        type=float,
        default=None,
        help="row 6: seconds each configuration's child may take in all (default 200, quick 40)",
    )
    parser.add_argument(
        "--tools",
        default=",".join(ROW1_TOOLS),
        help=f"row 1: the tools to run (default: all, {','.join(ROW1_TOOLS)})",
    )
    parser.add_argument(
        "--signing", default="signed,unsigned", help="row 1: signed, unsigned or both (default)"
    )
    parser.add_argument(
        "--s3-latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="put benchmarks/latency_proxy.py in front of S3 for the whole run: every tool's "
        "requests gain MS each way (row 4 with an S3 farther than loopback)",
    )
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results.json"))
    args = parser.parse_args()
    wanted = {int(r) for r in args.rows.split(",")}
    tools = tuple(args.tools.split(","))
    signing = tuple(args.signing.split(","))
    unknown = (set(tools) - set(ROW1_TOOLS)) | (set(signing) - {"signed", "unsigned"})
    if unknown:
        parser.error(f"unknown --tools or --signing value(s): {', '.join(sorted(unknown))}")
    run = RunClock()
    bench = Bench(args.quick, args.save_timeout, tools, signing, args.s3_latency)
    try:
        for number, method in (
            (1, bench.row1_throughput),
            (2, bench.row2_memory),
            (3, bench.row3_resume),
            (4, bench.row4_small_files),
            (5, bench.row5_request_path),
            (6, bench.row6_save_latency),
        ):
            if number in wanted:
                method()
    finally:
        bench.close()
    lines = summary(bench.rows)
    print()
    print(table(bench.rows))
    print()
    for line in lines:
        print(line)
    figures = run.finish(args.quick)
    Path(args.json).write_text(
        json.dumps(
            {
                **figures,
                "rows": [asdict(r) for r in bench.rows],
                "summary": lines,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
