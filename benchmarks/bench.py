"""``make bench``: queued_storage's transfer engine against baselines, on one S3 server.

Starts its own Redis and moto S3 server on loopback (``tests/services.py``), makes its files in
a temporary directory, and measures every row in the same run against the same server. Each
transfer runs in a process of its own; wall time and CPU seconds of a Python transfer are taken
inside that process around the transfer itself (imports excluded), peak RSS is the process's
(``os.wait4``). moto keeps objects in memory, so every object is deleted after its run and the
server is reset between rows.

Rows:
1. 1 GiB: the engine (default ``crc32`` verification, and ``md5``) vs boto3 ``upload_file``
   (defaults), s5cmd, and ``S3Storage.save(name, open_file)`` (the old app's way), with
   botocore's defaults and with payload signing off.
2. Peak RSS of the engine at 256 MiB and at 2 GiB.
3. Resume: a 512 MiB transfer killed halfway (``kill -9``) and retried: bytes re-sent.
4. 2,000 files of 16 KiB saved through QueuedStorage and transferred by one Celery worker vs
   ``S3Storage.save()`` in a loop, files per second end to end.
5. The request path: ``QueuedStorage.save()`` of a 100 MiB upload vs ``S3Storage.save()``.

``--quick`` runs every row on smaller sizes (under two minutes). Prints a table and writes
``benchmarks/results.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import ServiceStack  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
BUCKET = "bench-bucket"


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
    status_file = Path(f"/proc/{proc.pid}/status")
    if inside:
        out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
    else:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                for line in status_file.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
            except OSError:
                pass
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


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
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
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        import benchmarks.celery_app  # noqa: F401  (the producer side: saves dispatch through it)

        call_command("migrate", verbosity=0)
        self.client = self.stack.s3_client(direct=True)
        self.rows: list[Row] = []

    # -- helpers --------------------------------------------------------------------------
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
    def row1_throughput(self) -> None:
        size = 64 * MiB if self.quick else GiB
        runs = 3
        path = make_file(self.tmp / "row1.bin", size)
        print(f"row 1: {size // MiB} MiB, median of {runs} runs", flush=True)
        for mode, unsigned in (("signed", False), ("unsigned", True)):
            self.reset_s3()
            for tool in ("engine", "engine-md5", "boto3", "storages", "s5cmd"):
                samples = []
                for i in range(runs):
                    key = f"row1/{tool}-{mode}-{i}.bin"
                    if tool == "s5cmd":
                        sample = self.s5cmd(path, key)
                    else:
                        sample = self.child(tool, str(path), key, unsigned=unsigned)
                    assert self.drop(key) == size, f"{tool} stored a wrong size"
                    samples.append(sample)
                self.add("1-transfer", tool, mode, size, samples)
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
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        part = qs.MULTIPART_CHUNKSIZE
        parts = -(-size // part)
        deadline = time.monotonic() + 300
        row = None
        while time.monotonic() < deadline:
            row = StoredFile.get_row(storage.alias, name)
            if row is not None and len(row.parts) >= parts // 2:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
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

        from queued_storage.models import StoredFile
        from tests.workers import CeleryWorker

        count = 200 if self.quick else 2000
        concurrency = 2
        data = os.urandom(16 * 1024)
        print(f"row 4: {count} files of 16 KiB, one worker (prefork, concurrency {concurrency})")
        self.reset_s3()
        baseline = storages["s3"]
        start = time.perf_counter()
        for i in range(count):
            baseline.save(f"row4-base/{i}.bin", ContentFile(data))
        base_wall = time.perf_counter() - start
        self.reset_s3()
        queued = storages["default"]
        worker = CeleryWorker(
            "benchmarks.celery_app",
            env=self.env,
            logfile=self.tmp / "worker.log",
            concurrency=concurrency,
            name="bench",
        ).start(timeout=60)
        try:
            start = time.perf_counter()
            for i in range(count):
                queued.save(f"row4/{i}.bin", ContentFile(data))
            saved = time.perf_counter() - start
            done = 0
            while done < count:
                done = StoredFile.objects.filter(alias="default", state="remote").count()
                if time.perf_counter() - start > 600:
                    raise RuntimeError(f"only {done} of {count} files arrived")
                time.sleep(0.02)
            wall = time.perf_counter() - start
        finally:
            worker.stop()
        ours, base = count / wall, count / base_wall
        self.rows.append(
            Row(
                "4-small",
                "S3Storage.save loop",
                "signed",
                16 / 1024,
                count,
                round(base_wall, 3),
                0.0,
                0.0,
                0.0,
                {"files_per_s": round(base, 1)},
            )
        )
        self.rows.append(
            Row(
                "4-small",
                "QueuedStorage+worker",
                "signed",
                16 / 1024,
                count,
                round(wall, 3),
                0.0,
                0.0,
                0.0,
                {
                    "files_per_s": round(ours, 1),
                    "save_loop_s": round(saved, 3),
                    "ratio_vs_baseline": round(ours / base, 2),
                    "worker_concurrency": concurrency,
                },
            )
        )
        print(
            f"  S3Storage.save loop: {base:.0f} files/s; QueuedStorage end to end: {ours:.0f} "
            f"files/s ({ours / base:.2f}x; the saves alone took {saved:.2f}s)"
        )

    def row5_request_path(self) -> None:
        from django.core.files.storage import storages
        from django.core.files.uploadedfile import TemporaryUploadedFile

        size = 16 * MiB if self.quick else 100 * MiB
        print(f"row 5: the request path, save() of a {size // MiB} MiB upload")
        self.reset_s3()
        payload = os.urandom(size)
        timings: dict[str, list[float]] = {"QueuedStorage.save": [], "S3Storage.save": []}
        for i in range(3):
            for label, storage in (
                ("QueuedStorage.save", storages["queued_delayed"]),
                ("S3Storage.save", storages["s3"]),
            ):
                upload = TemporaryUploadedFile(f"up{i}.bin", "application/octet-stream", size, None)
                upload.write(payload)
                upload.flush()
                upload.seek(0)
                start = time.perf_counter()
                storage.save(f"row5/{label}-{i}.bin", upload)
                timings[label].append(time.perf_counter() - start)
                upload.close()
        q = statistics.median(timings["QueuedStorage.save"])
        s = statistics.median(timings["S3Storage.save"])
        for label, value in (("QueuedStorage.save", q), ("S3Storage.save", s)):
            self.rows.append(
                Row("5-request", label, "signed", size / MiB, 3, round(value, 4), 0.0, 0.0, 0.0, {})
            )
        self.rows[-2].extra["speedup_vs_s3storage"] = round(s / q, 1)
        print(
            f"  QueuedStorage.save {q * 1000:.1f} ms, S3Storage.save {s * 1000:.1f} ms: "
            f"{s / q:.0f}x faster"
        )

    def close(self) -> None:
        self.stack.stop()
        for path in sorted(self.tmp.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        self.tmp.rmdir()


def summary(rows: list[Row]) -> list[str]:
    lines = []
    for mode in ("signed", "unsigned"):
        transfer = [r for r in rows if r.row == "1-transfer" and r.mode == mode]
        if not transfer:
            continue
        best = min((r for r in transfer if not r.tool.startswith("engine")), key=lambda r: r.wall_s)
        for engine in (r for r in transfer if r.tool.startswith("engine")):
            ratio = engine.wall_s / best.wall_s
            engine.extra["wall_ratio_vs_best_baseline"] = round(ratio, 2)
            lines.append(
                f"transfer ({mode}): {engine.tool} {engine.wall_s:.2f}s = {ratio:.2f}x the best "
                f"baseline ({best.tool}, {best.wall_s:.2f}s) [target <= 1.10]; CPU "
                f"{engine.cpu_s_per_gib:.2f} s/GiB [target <= 1.0]"
            )
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
    small = [r for r in rows if r.row == "4-small" and "ratio_vs_baseline" in r.extra]
    if small:
        lines.append(
            f"small files: {small[0].extra['ratio_vs_baseline']:.2f}x the S3Storage.save "
            "loop [target >= 0.80]"
        )
    request = [r for r in rows if r.row == "5-request" and "speedup_vs_s3storage" in r.extra]
    if request:
        lines.append(
            f"request path: {request[0].extra['speedup_vs_s3storage']:.0f}x faster than "
            "S3Storage.save [target >= 5]"
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
            out.append(
                f"| {r.row} | {r.tool} | {r.mode} | {r.size_mib:.3f} x {r.runs} | 1 | "
                f"{r.wall_s:.2f} | {r.extra.get('ratio_vs_baseline', '')} | | | "
                f"({r.extra['files_per_s']} files/s) |"
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
    parser.add_argument("--quick", action="store_true", help="small sizes, under two minutes")
    parser.add_argument("--rows", default="1,2,3,4,5", help="comma-separated rows to run")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results.json"))
    args = parser.parse_args()
    wanted = {int(r) for r in args.rows.split(",")}
    started = time.perf_counter()
    bench = Bench(args.quick)
    try:
        for number, method in (
            (1, bench.row1_throughput),
            (2, bench.row2_memory),
            (3, bench.row3_resume),
            (4, bench.row4_small_files),
            (5, bench.row5_request_path),
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
    elapsed = time.perf_counter() - started
    print(
        f"\n{'quick' if args.quick else 'full'} run: {elapsed:.0f}s on {os.cpu_count()} cores; "
        f"self peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    Path(args.json).write_text(
        json.dumps(
            {
                "quick": args.quick,
                "seconds": round(elapsed, 1),
                "cpus": os.cpu_count(),
                "rows": [asdict(r) for r in bench.rows],
                "summary": lines,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
