"""Where a big file's time goes: cProfile of the S3 engine (every thread) in each checksum mode.

``python benchmarks/profile_big.py [--size-mib 1024] [--modes crc32,md5] [--rounds 1] [--top 25]``
starts its own Redis, moto S3 server and PostgreSQL (``tests/harness/services.py``), makes one
file of SIZE MiB, and in this one process, with the benchmark settings (the engine's production
defaults), runs ``s3_transfer`` once per mode per round, interleaved, first unprofiled (wall, this
process's CPU, moto's CPU) and then, with ``--profile``, under cProfile in the calling thread and
in every part thread (``threading.setprofile`` starts a profiler in each new thread), the
threads' profiles merged. Prints the timings and the top entries by own time per mode.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._django import django_on  # noqa: E402
from benchmarks.bench import make_file  # noqa: E402
from tests.harness.services import ServiceStack  # noqa: E402

BUCKET = "bench-bucket"
MiB = 1024 * 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class AllThreads:
    """cProfile in the calling thread and in every thread started while it is on."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()

    def _start_in_thread(self, *args: Any) -> None:
        profile = cProfile.Profile()
        with self.lock:
            self.profiles.append(profile)
        profile.enable()  # replaces this hook in this thread

    def __enter__(self) -> AllThreads:
        threading.setprofile(self._start_in_thread)
        self._start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]
        self.profiles[0].disable()

    def stats(self, stream: io.StringIO) -> pstats.Stats:
        stats = pstats.Stats(self.profiles[0], stream=stream)
        for profile in self.profiles[1:]:
            stats.add(profile)
        return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--modes", default="crc32,md5")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also one profiled run per mode")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    stack = ServiceStack(BUCKET, strict=True, services=["redis", "moto", "postgres"]).start()
    tmp = Path(tempfile.mkdtemp(prefix="qs-profile-"))
    try:
        import psutil

        django_on(stack)
        from django.core.files.storage import storages

        from queued_storage._s3.client import s3_client
        from queued_storage._s3.upload import s3_transfer
        from queued_storage.transfer import EngineConfig

        assert stack.moto is not None and stack.moto.pid is not None
        moto = psutil.Process(stack.moto.pid)
        config = EngineConfig.from_settings()
        remote = storages["s3"]
        client = s3_client(remote, config.max_concurrency)
        path = make_file(tmp / "big.bin", args.size_mib * MiB)
        modes = args.modes.split(",")

        def once(mode: str, key: str) -> tuple[float, float, float]:
            m0 = sum(moto.cpu_times()[:2])
            cpu, start = _cpu(), time.perf_counter()
            s3_transfer(
                remote,
                key,
                str(path),
                multipart_threshold=config.multipart_threshold,
                part_size=config.multipart_chunksize,
                max_concurrency=config.max_concurrency,
                read_size=config.chunk_size,
                checksum=mode,
            )
            wall, cpu = time.perf_counter() - start, _cpu() - cpu
            moto_cpu = sum(moto.cpu_times()[:2]) - m0
            client.delete_object(Bucket=BUCKET, Key=key)
            return wall, cpu, moto_cpu

        once(modes[0], "warm.bin")
        results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
        for i in range(args.rounds):
            for mode in modes:
                r = once(mode, f"{mode}-{i}.bin")
                results[mode].append(r)
                print(
                    f"round {i} {mode:>5}: wall {r[0]:6.2f}s  client CPU {r[1]:5.2f}s  "
                    f"moto CPU {r[2]:5.2f}s  load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        for mode in modes:
            walls, cpus, motos = zip(*results[mode], strict=True)
            print(
                f"median {mode:>5}: wall {statistics.median(walls):6.2f}s  client CPU "
                f"{statistics.median(cpus):5.2f}s  moto CPU {statistics.median(motos):5.2f}s"
            )
        if args.profile:
            for mode in modes:
                with AllThreads() as profiled:
                    r = once(mode, f"profiled-{mode}.bin")
                out = io.StringIO()
                stats = profiled.stats(out)
                print(
                    f"\n== {mode}: profiled run, wall {r[0]:.2f}s, client CPU {r[1]:.2f}s, "
                    f"moto CPU {r[2]:.2f}s; {len(profiled.profiles)} threads' profiles merged"
                )
                stats.sort_stats("tottime").print_stats(args.top)
                print(out.getvalue())
    finally:
        stack.stop()
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
