"""Where a small file's time goes: cProfile of ``run_transfer`` and of ``QueuedStorage.save()``.

``python benchmarks/profile_paths.py [--count 200] [--top 30]`` starts its own Redis, moto S3
server and PostgreSQL (``tests/harness/services.py``), and in this one process, with the benchmark
settings (ledger on PostgreSQL):

* ``save``: profiles ``storages["default"].save()`` of COUNT files of 16 KiB in autocommit (the
  transfer dispatched to Redis at once, as in row 6; no worker runs);
* ``transfer``: saves COUNT files through ``queued_delayed`` (nothing dispatched), then profiles
  ``tasks.run_transfer(alias, name)`` over them, the whole policy a Celery worker runs per file
  (lease, engine, ledger, cache), without Celery itself; with ``--close``, every database
  connection of the thread is closed before and after each transfer, as Celery's Django fixup
  does around every task;
* ``worker``: a real worker (``benchmarks.celery_app``, prefork, ``--concurrency``) transfers
  COUNT files saved through ``default``, each of its processes under cProfile with a CPU clock
  (``BENCH_PROFILE_DIR``, see ``benchmarks/celery_app.py``); prints the CPU time per file of
  the main process and of the pool processes (``/proc``, around the COUNT files) and their
  profiles (the pool's merged).

Prints the wall and CPU time per file and the top entries by cumulative and by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._django import django_on  # noqa: E402
from tests.harness.services import ServiceStack  # noqa: E402

BUCKET = "bench-bucket"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _report(title: str, profile: cProfile.Profile, count: int, wall: float, cpu: float, top: int):
    print(
        f"\n== {title}: {count} files, {wall / count * 1000:.2f} ms wall and "
        f"{cpu / count * 1000:.2f} ms CPU per file (profiled: slower than unprofiled)"
    )
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(max(10, top // 2))
    print(out.getvalue())


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process *pid* so far, from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _profile_worker(args: argparse.Namespace, env: dict[str, str]) -> None:
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    from queued_storage.models import State, StoredFile
    from tests.harness.workers import CeleryWorker

    storage = storages["default"]
    data = os.urandom(16 * 1024)
    workdir = Path(tempfile.mkdtemp(prefix="qs-profile-"))

    def wait_remote(prefix: str, expected: int) -> None:
        deadline = time.monotonic() + 300
        while True:
            done = StoredFile.objects.filter(
                alias=storage.alias, state=State.REMOTE, name__startswith=prefix
            ).count()
            if done >= expected:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{done} of {expected} files arrived in 300 s")
            time.sleep(0.02)

    worker = CeleryWorker(
        "benchmarks.celery_app",
        env={**env, "BENCH_PROFILE_DIR": str(workdir)},
        logfile=workdir / "worker.log",
        concurrency=args.concurrency,
        name="profile",
    ).start(timeout=60)
    try:
        for i in range(4 * args.concurrency):
            storage.save(f"profile/warm/{i}.bin", ContentFile(data))
        wait_remote("profile/warm/", 4 * args.concurrency)
        pids = worker.pids()
        before = {pid: _process_cpu(pid) for pid in pids}
        start = time.perf_counter()
        for i in range(args.count):
            storage.save(f"profile/run/{i}.bin", ContentFile(data))
        wait_remote("profile/run/", args.count)
        wall = time.perf_counter() - start
        after = {pid: _process_cpu(pid) for pid in pids}
    finally:
        worker.stop()
    main_ms = (after[pids[0]] - before[pids[0]]) / args.count * 1000
    pool_ms = sum(after[p] - before[p] for p in pids[1:]) / args.count * 1000
    print(
        f"\n== worker (prefork, concurrency {args.concurrency}): {args.count} files of 16 KiB in "
        f"{wall:.2f} s ({args.count / wall:.0f} files/s, profiled: slower than unprofiled); "
        f"CPU per file from /proc: main process {main_ms:.2f} ms, pool {pool_ms:.2f} ms"
    )
    for kind in ("pool", "main"):
        files = sorted(str(p) for p in workdir.glob(f"{kind}-*.pstats"))
        if not files:
            print(f"\n-- {kind}: no profile written (see {workdir / 'worker.log'})")
            continue
        out = io.StringIO()
        stats = pstats.Stats(*files, stream=out)
        print(
            f"\n-- {kind} process(es), cProfile with a CPU clock, {len(files)} process(es), "
            f"{args.count} files and the {4 * args.concurrency} warm-up files --"
        )
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
        if args.dump:
            stats.dump_stats(f"{args.dump}-worker-{kind}.pstats")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--what", default="save,transfer")
    parser.add_argument("--dump", help="also write each profile to DUMP-<what>.pstats")
    parser.add_argument(
        "--close",
        action="store_true",
        help="transfer: close the connections around each transfer, as Celery's fixup does",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="save, transfer: cProfile's clock (cpu: this process's CPU time)",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="worker: pool processes")
    args = parser.parse_args()
    stack = ServiceStack(BUCKET, strict=True, services=["redis", "moto", "postgres"]).start()
    try:
        django_on(stack)
        from django.core.files.base import ContentFile
        from django.core.files.storage import storages
        from django.core.management import call_command
        from django.db import connections

        import benchmarks.celery_app
        from queued_storage.worker import run_transfer

        call_command("migrate", verbosity=0)
        data = os.urandom(16 * 1024)
        what = set(args.what.split(","))
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        if "save" in what:
            storage = storages["default"]
            for i in range(20):  # connections, clients
                storage.save(f"warm/save-{i}.bin", ContentFile(data))
            profile = cProfile.Profile(clock)
            cpu, start = _cpu(), time.perf_counter()
            profile.enable()
            for i in range(args.count):
                storage.save(f"save/{i}.bin", ContentFile(data))
            profile.disable()
            wall, cpu = time.perf_counter() - start, _cpu() - cpu
            benchmarks.celery_app.app.control.purge()
            _report("QueuedStorage.save", profile, args.count, wall, cpu, args.top)
            if args.dump:
                profile.dump_stats(f"{args.dump}-save.pstats")
        if "transfer" in what:
            storage = storages["queued_delayed"]
            names = [
                storage.save(f"transfer/{i}.bin", ContentFile(data)) for i in range(args.count + 10)
            ]
            for name in names[:10]:  # the S3 client, the connections
                run_transfer(storage.alias, name)
            profile = cProfile.Profile(clock)
            cpu, start = _cpu(), time.perf_counter()
            profile.enable()
            for name in names[10:]:
                if args.close:
                    connections.close_all()
                run_transfer(storage.alias, name)
                if args.close:
                    connections.close_all()
            profile.disable()
            wall, cpu = time.perf_counter() - start, _cpu() - cpu
            title = "run_transfer, connections closed around each" if args.close else "run_transfer"
            _report(title, profile, args.count, wall, cpu, args.top)
            if args.dump:
                profile.dump_stats(f"{args.dump}-transfer.pstats")
        if "worker" in what:
            _profile_worker(args, dict(os.environ))
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
