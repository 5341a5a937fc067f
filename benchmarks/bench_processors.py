"""The added cost of processors (issue 25): a ClamAV scan before the transfer, per GiB and per
small file, against the transfer alone.

``python benchmarks/bench_processors.py [--quick] [--rounds N] [--json PATH]`` starts its own
Redis, moto S3 server and PostgreSQL on loopback (``tests/harness/services.py``), a private
``clamd`` (the harness's ``ClamdServer``: Debian's clamav-daemon with a signature database the
harness writes, the EICAR test file's MD5 and nothing else) and one Celery worker (prefork,
concurrency 2) with the benchmark settings (``benchmarks/settings.py``: the package's
production defaults, ledger on PostgreSQL, S3 reached directly). The configurations are queued
storages with the same local (``staging``) and remote (``s3``) that differ only in processors:

* ``default``, the baseline: no processors, what a user of the package runs otherwise;
* ``type_checked``: ``ContentTypeCheck()`` (reads 512 bytes: the cost of processing itself);
* ``scanned``: ``ClamAV(<this run's clamd>)`` with its defaults (256 KiB chunks, 30 s while
  sending; for clamd's verdict, which comes only once it has scanned the whole stream, 30 s
  plus a second per 4 MiB of the file). A scan that timed out would be retried after
  ``QUEUED_STORAGE_RETRY_DELAY``, and clamd, having finished the scan anyway, would answer the
  retry from its cache: the time would be the retry's, not the scan's. A row that took more
  than one attempt stops the run.

Workloads, each in rounds that interleave the configurations (A, B, C; A, B, C; ...). Reported:
the median wall time, and the median of each round's difference and ratio to the baseline's
time in the same round (a load that changes during the run weighs on both of a round).

1. ``large``: one file of 1 GiB (``--quick``: 128 MiB) saved by this process, baseline and
   ``scanned``; timed from ``save()`` returning (the transfer's message is sent on commit, at the
   end of the save) until the ledger row is ``remote`` (polled every 20 ms). Reported: the
   added seconds per GiB and the ratio to the baseline.
2. ``small``: 500 files of 64 KiB (``--quick``: 100), every configuration, saved in one
   transaction (a view that takes many files at once, an import): their transfers' messages
   are sent together at its commit and the worker meets a backlog. Timed from the commit
   until the last row is ``remote``: the transfers alone, the saves before it left out (their
   time is kept too). Reported: the added milliseconds per file (wall time over the files, the
   worker running two at a time) and the ratio. A storage with processors sends every file
   alone (the worker leases no batch of small files for it), so the difference between the
   baseline and ``type_checked`` is processing's own cost plus any batching the baseline used;
   the difference between ``type_checked`` and ``scanned`` is the scan's.
3. ``clamd alone``: no worker, ledger or S3. The large file sent through ``INSTREAM`` from
   this process in 256 KiB chunks: the time to send it (clamd writes the stream to a temporary
   file as it comes) and the time from the last byte to clamd's answer (its scan). The ClamAV
   processor called here on each small file (held in memory): a ``VERSION`` round trip, then
   ``INSTREAM``. With it, the docs can tell clamd's time from ours. The large file is also sent
   to a second clamd with its default size limits (``MaxFileSize`` 100M, ``MaxScanSize``
   400M), which takes the stream and does not scan a file over them.

The run's clamd has its ``StreamMaxLength``, ``MaxFileSize`` and ``MaxScanSize`` raised to the
large file's size, so that the whole file is scanned; its database has one signature. A clamd
with the official databases (millions of signatures) spends more time per byte: the figures
here are a floor for the scan and an exact figure for what this package adds around it. Every
file's content is distinct (clamd skips a file whose MD5 it has found clean before). moto keeps
objects in memory: the bucket is emptied, and the ledger rows and staged files removed, after
every measurement. Nothing here asserts a time. Writes ``benchmarks/results-processors.json``
(``--json`` to change).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._run import RunClock  # noqa: E402
from benchmarks.bench import make_file, tree_cpu  # noqa: E402
from tests.harness.services import ClamdServer, ServiceStack  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BUCKET = "bench-processors"
CONCURRENCY = 2
#: The ClamAV processor's timeout here: its default (the wait for the verdict adds a second per
#: 4 MiB of the file to it).
TIMEOUT = 30.0
#: The socket timeout of the benchmark's own INSTREAM (clamd alone): longer than any scan here.
ALONE_TIMEOUT = 600.0
#: The processor's default chunk size, for the INSTREAM measured here.
CHUNK = 256 * KiB
#: The configurations: STORAGES alias -> what it runs.
CONFIGS = {
    "default": "no processors (baseline)",
    "type_checked": "ContentTypeCheck()",
    "scanned": "ClamAV(clamd) (its defaults: 256 KiB chunks, 30 s timeout + 1 s per 4 MiB)",
}
BASELINE = (
    "QueuedStorage without processors (STORAGES 'default': local 'staging', remote 's3', the "
    "package's defaults), the same worker (prefork, concurrency 2), moto and ledger"
)
DATABASE_NOTE = (
    "clamd here has the test harness's database (one MD5 signature, EICAR), not the official "
    "ones; a clamd with those spends more time per byte, so the scan's figures are a floor"
)


class BenchClamd(ClamdServer):
    """The harness's clamd with its size limits raised to *limit* bytes (``StreamMaxLength``
    always; ``MaxFileSize`` and ``MaxScanSize`` unless *default_limits*: then a file over
    clamd's defaults, 100M and 400M, is taken over the socket and left unscanned)."""

    def __init__(self, workdir: Path, limit: int, *, default_limits: bool = False) -> None:
        super().__init__(workdir, stream_max=limit)
        self.limit, self.default_limits = limit, default_limits

    def _argv(self) -> list[str]:
        argv = super()._argv()
        if not self.default_limits:
            megabytes = -(-self.limit // MiB)
            with (self.workdir / "clamd.conf").open("a") as conf:
                conf.write(f"MaxFileSize {megabytes}M\nMaxScanSize {megabytes}M\n")
        return argv


@dataclass
class Measure:
    wall: float
    worker_cpu: float
    clamd_cpu: float
    save: float = 0.0


@dataclass
class Result:
    workload: str
    config: str
    processors: str
    size_bytes: int
    files: int
    rounds: int
    wall_s: float
    worker_cpu_s: float
    clamd_cpu_s: float
    added_s: float = 0.0
    ratio: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


def cpu_of(pid: int | None) -> float:
    """CPU seconds (user + sys) of process *pid* itself."""
    import psutil

    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def print_round(r: int, measures: dict[str, list[Measure]]) -> None:
    """One line per interleaved round: each configuration's wall time, and the load."""
    print(
        f"  round {r + 1}: "
        + ", ".join(f"{a} {m[-1].wall:.2f}s" for a, m in measures.items())
        + f" (load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def instream(address: str, chunks: Iterator[bytes]) -> tuple[float, float, str]:
    """Send *chunks* to clamd at *address* through ``INSTREAM`` (the processor's own
    functions): the seconds until the last byte is sent, the seconds from there until clamd
    answers, and its answer."""
    from queued_storage.processors.clamav import ClamAV, read_answer, send_stream

    with ClamAV(address, timeout=ALONE_TIMEOUT).connect() as sock:
        start = time.perf_counter()
        send_stream(sock, chunks)
        sent = time.perf_counter()
        answer = read_answer(sock)
        return sent - start, time.perf_counter() - sent, answer


def unique(path: Path, tag: str) -> None:
    """Make *path*'s content one no scan has seen: its first 32 bytes from *tag*."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, tag.encode().ljust(32, b"\0")[:32], 0)
    finally:
        os.close(fd)


class Bench:
    def __init__(self, quick: bool, rounds: int) -> None:
        self.quick, self.rounds = quick, rounds
        self.large = 128 * MiB if quick else GiB
        self.count = 100 if quick else 500
        self.small = 64 * KiB
        self.base = os.urandom(self.small)  # the small files' bytes, but for their first 24
        self.tmp = Path(tempfile.mkdtemp(prefix="qs-bench-processors-"))
        self.large_source = self.tmp / "large.bin"
        self.stack = ServiceStack(
            BUCKET, strict=True, services=["redis", "moto", "postgres"]
        ).start()
        limit = self.large + 16 * MiB
        self.clamd = BenchClamd(self.tmp / "clamd", limit)
        self.clamd_defaults = BenchClamd(self.tmp / "clamd-defaults", limit, default_limits=True)
        self.clamd.start()
        self.clamd_defaults.start()
        self.stack.create_database("bench")
        self.env = {
            **self.stack.env(),
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
            "PYTHONPATH": str(ROOT),
            "BENCH_CLAMD": self.clamd.address,
            "BENCH_CLAMD_TIMEOUT": str(TIMEOUT),
        }
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        import benchmarks.celery_app  # noqa: F401  (the producer side: saves dispatch through it)

        call_command("migrate", verbosity=0)
        self.results: list[Result] = []
        self.worker: Any = None

    # -- helpers --------------------------------------------------------------------------
    def start_worker(self) -> None:
        from tests.harness.workers import CeleryWorker

        self.worker = CeleryWorker(
            "benchmarks.celery_app",
            env=self.env,
            logfile=self.tmp / "worker.log",
            concurrency=CONCURRENCY,
            name="bench-processors",
        ).start(timeout=60)

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the worker's process tree and of the run's clamd."""
        main, below = tree_cpu(self.worker.pid)
        return main + below, cpu_of(self.clamd.pid)

    def clean(self, prefix: str) -> None:
        """Empty the bucket, and remove the ledger rows and staged files under *prefix*."""
        from django.conf import settings

        from queued_storage.models import StoredFile

        assert self.stack.moto is not None
        self.stack.moto.reset()
        self.stack.moto.create_bucket(BUCKET)
        StoredFile.objects.filter(name__startswith=prefix).delete()
        shutil.rmtree(Path(settings.STAGING_ROOT) / prefix, ignore_errors=True)

    def wait_remote(self, alias: str, prefix: str, expected: int, limit: float = 600) -> None:
        """Until the ledger has *expected* rows of *alias* under *prefix* ``remote``; fails
        at once on a row that is ``failed`` or ``rejected``, with its reason."""
        from queued_storage.models import State, StoredFile

        rows = StoredFile.objects.filter(alias=alias, name__startswith=prefix)
        since = time.perf_counter()
        while rows.filter(state=State.REMOTE).count() < expected:
            bad = rows.filter(state__in=[State.FAILED, State.REJECTED]).first()
            if bad is not None:
                raise RuntimeError(f"{bad.name} is {bad.state}: {bad.last_error}")
            if time.perf_counter() - since > limit:
                raise RuntimeError(
                    f"{alias}: only {rows.filter(state=State.REMOTE).count()} of {expected} "
                    f"files remote after {limit:.0f}s (worker log: {self.tmp / 'worker.log'})"
                )
            time.sleep(0.02)

    def check(self, alias: str, prefix: str) -> int:
        """Every row of *alias* under *prefix* went through in one attempt (a scan that timed
        out is retried after ``QUEUED_STORAGE_RETRY_DELAY``: the time would not be the scan's),
        and the scan did run (``scanned`` rows keep clamd's version); the most attempts."""
        from queued_storage.models import StoredFile

        most = 0
        for row in StoredFile.objects.filter(alias=alias, name__startswith=prefix):
            most = max(most, row.attempts)
            if row.attempts > 1:
                raise RuntimeError(
                    f"{row.name} took {row.attempts} attempts (last error: {row.last_error!r})"
                )
            if alias == "scanned":
                scan = (row.metadata or {}).get("scan", {})
                assert row.processed is not None and scan.get("engine") == "clamav", row.metadata
        return most

    def files(self, config: int, r: int) -> list[bytes]:
        """The small files of configuration *config* in round *r*: distinct contents."""
        base = self.base
        return [struct.pack("<QQQ", config, r, i) + base[24:] for i in range(self.count)]

    # -- workloads ----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Every process warm (connections, clients, the pool's children, clamd's engine)
        before the rounds: a site's worker and clamd are running already."""
        from django.core.files.base import ContentFile
        from django.core.files.storage import storages

        for n, alias in enumerate(CONFIGS):
            prefix = f"warm/{alias}/"
            for i in range(4 * CONCURRENCY):
                data = struct.pack("<QQQ", 99, n, i) + self.base[24:]
                storages[alias].save(f"{prefix}{i}.bin", ContentFile(data))
            self.wait_remote(alias, prefix, 4 * CONCURRENCY, 120)
            self.check(alias, prefix)
        self.clean("warm/")

    def large_file(self) -> None:
        from django.core.files import File
        from django.core.files.storage import storages

        configs = ["default", "scanned"]
        print(
            f"large: one file of {self.large // MiB} MiB, {self.rounds} interleaved rounds "
            f"({', '.join(configs)}); from save() returning to the row remote",
            flush=True,
        )
        source = make_file(self.large_source, self.large)
        measures: dict[str, list[Measure]] = {alias: [] for alias in configs}
        for r in range(self.rounds):
            for alias in configs:
                prefix = f"large/{alias}/{r}/"
                unique(source, f"large {alias} {r}")
                with source.open("rb") as fh:
                    start = time.perf_counter()
                    name = storages[alias].save(f"{prefix}large.bin", File(fh, "large.bin"))
                saved = time.perf_counter()
                worker, clamd = self.cpu()
                self.wait_remote(alias, prefix, 1)
                wall = time.perf_counter() - saved
                worker_after, clamd_after = self.cpu()
                self.check(alias, prefix)
                assert name.startswith(prefix)
                measures[alias].append(
                    Measure(wall, worker_after - worker, clamd_after - clamd, saved - start)
                )
                self.clean(prefix)
            print_round(r, measures)
        self.add("large", measures, self.large, 1)

    def small_files(self) -> None:
        from django.core.files.base import ContentFile
        from django.core.files.storage import storages
        from django.db import transaction

        configs = list(CONFIGS)
        print(
            f"small: {self.count} files of {self.small // KiB} KiB, {self.rounds} interleaved "
            f"rounds ({', '.join(configs)}); saved in one transaction, from its commit (the "
            "messages sent) to the last row remote",
            flush=True,
        )
        measures: dict[str, list[Measure]] = {alias: [] for alias in configs}
        for r in range(self.rounds):
            for n, alias in enumerate(configs):
                prefix = f"small/{alias}/{r}/"
                contents = self.files(n, r)
                storage = storages[alias]
                # One transaction: the transfers' messages are sent at its commit, together, so
                # that the worker meets a backlog and the time is the transfers' alone.
                with transaction.atomic():
                    begun = time.perf_counter()
                    for i, data in enumerate(contents):
                        storage.save(f"{prefix}{i}.bin", ContentFile(data))
                    worker, clamd = self.cpu()
                    start = time.perf_counter()
                saved = start - begun
                self.wait_remote(alias, prefix, self.count)
                wall = time.perf_counter() - start
                worker_after, clamd_after = self.cpu()
                self.check(alias, prefix)
                measures[alias].append(
                    Measure(wall, worker_after - worker, clamd_after - clamd, saved)
                )
                self.clean(prefix)
            print_round(r, measures)
        self.add("small", measures, self.small, self.count)

    def clamd_alone(self) -> dict[str, Any]:
        """clamd's share, without worker, ledger or S3: the large file through ``INSTREAM``
        here (the time to send it, and the silence until clamd answers, which the processor's
        timeout must cover), and the ClamAV processor called on each small file."""
        from queued_storage.processors import Passed, Staged
        from queued_storage.processors.clamav import ClamAV

        print("clamd alone: INSTREAM from this process, no worker, ledger or S3", flush=True)
        source = self.large_source

        def large(server: BenchClamd, tag: str) -> tuple[float, float, float]:
            unique(source, tag)
            cpu = cpu_of(server.pid)
            with source.open("rb") as fh:
                sent, waited, answer = instream(server.address, iter(lambda: fh.read(CHUNK), b""))
            assert answer.endswith("OK"), answer
            return sent, waited, cpu_of(server.pid) - cpu

        raised = [large(self.clamd, f"alone {r}") for r in range(self.rounds)]
        defaults = [large(self.clamd_defaults, f"defaults {r}") for r in range(self.rounds)]
        scanner = ClamAV(self.clamd.address, timeout=TIMEOUT)
        per_file: list[float] = []
        version: list[float] = []
        cpu_small: list[float] = []
        for r in range(self.rounds):
            contents = self.files(7, r)
            cpu = cpu_of(self.clamd.pid)
            start = time.perf_counter()
            for i, data in enumerate(contents):

                def opener(data: bytes = data) -> io.BytesIO:
                    return io.BytesIO(data)

                outcome = scanner(Staged(f"{i}.bin", len(data), "", "", opener))
                assert isinstance(outcome, Passed), outcome
            per_file.append((time.perf_counter() - start) / self.count)
            cpu_small.append((cpu_of(self.clamd.pid) - cpu) / self.count)
            start = time.perf_counter()
            for _ in range(self.count):
                scanner.version()
            version.append((time.perf_counter() - start) / self.count)
        gib = self.large / GiB

        def per_gib(values: list[tuple[float, float, float]], index: int) -> float:
            return round(statistics.median(v[index] for v in values) / gib, 3)

        send, wait = per_gib(raised, 0), per_gib(raised, 1)
        alone = {
            "large_s_per_gib": round(send + wait, 3),
            "large_send_s_per_gib": send,
            "large_answer_wait_s_per_gib": wait,
            "large_clamd_cpu_s_per_gib": per_gib(raised, 2),
            # The processor's verdict wait allows 30 s + 256 s per GiB: how many times this
            # clamd's own wait per GiB that is.
            "verdict_allowance_over_wait": round(256 / wait, 1) if wait else None,
            "large_default_limits_s_per_gib": round(per_gib(defaults, 0) + per_gib(defaults, 1), 3),
            "small_ms_per_file": round(statistics.median(per_file) * 1000, 3),
            "small_clamd_cpu_ms_per_file": round(statistics.median(cpu_small) * 1000, 3),
            "version_ms_per_call": round(statistics.median(version) * 1000, 3),
            "large_rounds_send_wait_s": [[round(s, 3), round(w, 3)] for s, w, _ in raised],
            "large_default_limits_rounds_send_wait_s": [
                [round(s, 3), round(w, 3)] for s, w, _ in defaults
            ],
            "note": (
                "large: INSTREAM in 256 KiB chunks (the processor's default), the file read "
                "from the page cache; 'send' until the last chunk is written to the socket "
                "(clamd writes the stream to a temporary file as it comes), 'answer wait' from "
                "there to clamd's answer (its scan; the processor's timeout, 30 s by default, "
                "must cover it); 'default limits': a clamd with MaxFileSize 100M and "
                "MaxScanSize 400M, which takes a larger file's stream and does not scan it. "
                "small: the processor's call per file (a VERSION round trip, then INSTREAM)"
            ),
        }
        print(
            f"  {self.large // MiB} MiB: {alone['large_s_per_gib']:.2f} s/GiB (sending "
            f"{send:.2f}, then clamd's answer after {wait:.2f}; clamd CPU "
            f"{alone['large_clamd_cpu_s_per_gib']:.2f} s/GiB); with clamd's default size limits "
            f"(not scanned, only streamed) {alone['large_default_limits_s_per_gib']:.2f} s/GiB",
            flush=True,
        )
        print(
            f"  {self.small // KiB} KiB: {alone['small_ms_per_file']:.2f} ms per file (clamd CPU "
            f"{alone['small_clamd_cpu_ms_per_file']:.2f} ms), of which the VERSION round trip "
            f"{alone['version_ms_per_call']:.2f} ms",
            flush=True,
        )
        return alone

    def add(self, workload: str, measures: dict[str, list[Measure]], size: int, files: int) -> None:
        def med(alias: str, key: str) -> float:
            return statistics.median(float(getattr(m, key)) for m in measures[alias])

        # Each round's difference and ratio to the baseline of the same round (the rounds
        # interleave, so a load that changes during the run weighs on both), then the median.
        base_walls = [m.wall for m in measures["default"]]
        for alias in measures:
            wall = med(alias, "wall")
            walls = [m.wall for m in measures[alias]]
            added = statistics.median(w - b for w, b in zip(walls, base_walls, strict=True))
            ratio = statistics.median(w / b for w, b in zip(walls, base_walls, strict=True))
            result = Result(
                workload,
                alias,
                CONFIGS[alias],
                size,
                files,
                len(measures[alias]),
                round(wall, 3),
                round(med(alias, "worker_cpu"), 3),
                round(med(alias, "clamd_cpu"), 3),
                round(added, 3),
                round(ratio, 2),
                {
                    "walls_s": [round(w, 3) for w in walls],
                    "added_by_round_s": [
                        round(w - b, 3) for w, b in zip(walls, base_walls, strict=True)
                    ],
                    "save_s": round(med(alias, "save"), 3),
                },
            )
            e = result.extra
            if workload == "large":
                gib = size / GiB
                e["added_s_per_gib"] = round(added / gib, 3)
                e["worker_cpu_s_per_gib"] = round(result.worker_cpu_s / gib, 3)
                e["clamd_cpu_s_per_gib"] = round(result.clamd_cpu_s / gib, 3)
            else:
                e["files_per_s"] = round(files / wall, 1)
                e["added_ms_per_file"] = round(added / files * 1000, 3)
                e["worker_cpu_ms_per_file"] = round(result.worker_cpu_s / files * 1000, 3)
                e["clamd_cpu_ms_per_file"] = round(result.clamd_cpu_s / files * 1000, 3)
            self.results.append(result)

    def close(self) -> None:
        from django.core.files.storage import storages

        for alias in CONFIGS:  # the saves' last AsyncResults, freed while Celery is whole
            storages[alias].result = None  # type: ignore[attr-defined]
        if self.worker is not None:
            self.worker.stop()
        self.clamd.stop()
        self.clamd_defaults.stop()
        self.stack.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def table(results: list[Result]) -> str:
    out = [
        "| workload | configuration | wall s (median) | added (median) | ratio (median) "
        "| worker CPU | clamd CPU |",
        "|" + "---|" * 7,
    ]
    for r in results:
        e = r.extra
        if r.workload == "large":
            what = f"1 file of {r.size_bytes // MiB} MiB"
            added = f"{e['added_s_per_gib']:+.2f} s/GiB"
            worker = f"{e['worker_cpu_s_per_gib']:.2f} s/GiB"
            clamd = f"{e['clamd_cpu_s_per_gib']:.2f} s/GiB"
        else:
            what = f"{r.files} files of {r.size_bytes // KiB} KiB"
            added = f"{e['added_ms_per_file']:+.2f} ms/file"
            worker = f"{e['worker_cpu_ms_per_file']:.2f} ms/file"
            clamd = f"{e['clamd_cpu_ms_per_file']:.2f} ms/file"
        label = f"{r.config}: {r.processors}"
        out.append(
            f"| {what} | {label} | {r.wall_s:.3f} | {added} | {r.ratio:.2f} | {worker} | {clamd} |"
        )
    return "\n".join(out)


def summary(results: list[Result], alone: dict[str, Any]) -> list[str]:
    by = {(r.workload, r.config): r for r in results}
    lines = [f"baseline: {BASELINE}"]
    large = by.get(("large", "scanned"))
    if large is not None:
        base = by[("large", "default")]
        added = large.extra["added_s_per_gib"]
        rest = added - alone["large_s_per_gib"]
        lines.append(
            f"large file ({large.size_bytes // MiB} MiB): the ClamAV scan adds {added:.2f} s per "
            f"GiB to the transfer alone (medians {base.wall_s:.2f}s without, {large.wall_s:.2f}s "
            f"with; each round's difference {large.extra['added_by_round_s']} s): "
            f"{large.ratio:.2f}x the baseline; clamd alone (INSTREAM from this process) takes "
            f"{alone['large_s_per_gib']:.2f} s/GiB, "
            + (
                f"the rest (the worker's part) {rest:.2f} s/GiB"
                if rest > 0
                else "no less than the scan adds in the worker: nothing else measurable"
            )
        )
    for config in ("type_checked", "scanned"):
        small = by.get(("small", config))
        if small is None:
            continue
        base = by[("small", "default")]
        line = (
            f"small files ({small.files} x {small.size_bytes // KiB} KiB), {small.processors}: "
            f"{small.extra['added_ms_per_file']:+.2f} ms per file "
            f"({base.extra['files_per_s']:.0f} -> {small.extra['files_per_s']:.0f} files/s): "
            f"{small.ratio:.2f}x the baseline"
        )
        if config == "scanned":
            line += (
                f"; the processor called alone takes {alone['small_ms_per_file']:.2f} ms per "
                f"file (its VERSION round trip {alone['version_ms_per_call']:.2f} ms)"
            )
        lines.append(line)
    wait = alone["large_answer_wait_s_per_gib"]
    lines.append(
        f"timeout: clamd answers only once it has scanned the whole stream, {wait:.2f} s per GiB "
        "after the last byte here; the ClamAV processor waits for that verdict 30 s plus 256 s "
        f"per GiB by default, {alone['verdict_allowance_over_wait']}x this clamd's wait (the "
        "official databases scan slower per byte: raise timeout or lower scan_rate if a scan "
        "ends in Later)"
    )
    lines.append(
        f"clamd with its default size limits (MaxFileSize 100M, MaxScanSize 400M) does not scan "
        f"the large file, only takes its stream: {alone['large_default_limits_s_per_gib']:.2f} "
        "s/GiB"
    )
    lines.append("note: " + DATABASE_NOTE)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="128 MiB and 100 small files")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results-processors.json"))
    args = parser.parse_args()
    if ClamdServer.binary() is None:
        parser.error("clamd is not installed (apt-get install clamav-daemon)")
    run = RunClock()
    bench = Bench(args.quick, args.rounds)
    try:
        from queued_storage.processors.clamav import ClamAV

        version = ClamAV(bench.clamd.address).version()
        print(f"clamd: {version} at {bench.clamd.address}; {DATABASE_NOTE}", flush=True)
        bench.start_worker()
        bench.warm_up()
        bench.large_file()
        bench.small_files()
        alone = bench.clamd_alone()
    finally:
        bench.close()
    lines = summary(bench.results, alone)
    print()
    print(table(bench.results))
    print()
    for line in lines:
        print(line)
    figures = run.finish(args.quick)
    Path(args.json).write_text(
        json.dumps(
            {
                **figures,
                "baseline": BASELINE,
                "clamd": {
                    "version": version,
                    "database": DATABASE_NOTE,
                    "limits": "StreamMaxLength, MaxFileSize and MaxScanSize raised to the large "
                    "file's size plus 16 MiB",
                },
                "results": [asdict(r) for r in bench.results],
                "clamd_alone": alone,
                "summary": lines,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
