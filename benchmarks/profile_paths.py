"""Where a small file's time goes: cProfile of ``run_transfer`` and of ``QueuedStorage.save()``.

``python benchmarks/profile_paths.py [--count 200] [--top 30]`` starts its own Redis, moto S3
server and PostgreSQL (``tests/harness/services.py``), and in this one process, with the benchmark
settings (ledger on PostgreSQL):

* ``save``: profiles ``storages["default"].save()`` of COUNT files of 16 KiB in autocommit (the
  transfer dispatched to Redis at once, as in row 6; no worker runs);
* ``transfer``: saves COUNT files through ``queued_delayed`` (nothing dispatched), then profiles
  ``tasks.run_transfer(alias, name)`` over them, the whole policy a Celery worker runs per file
  (lease, engine, ledger, cache), without Celery itself.

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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--what", default="save,transfer")
    parser.add_argument("--dump", help="also write each profile to DUMP-<what>.pstats")
    args = parser.parse_args()
    stack = ServiceStack(BUCKET, strict=True, services=["redis", "moto", "postgres"]).start()
    try:
        stack.create_database("bench")
        os.environ.update(
            {
                **stack.env(),
                "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
                "PYTHONPATH": str(ROOT),
            }
        )
        import django

        django.setup()
        from django.core.files.base import ContentFile
        from django.core.files.storage import storages
        from django.core.management import call_command

        import benchmarks.celery_app
        from queued_storage.worker import run_transfer

        call_command("migrate", verbosity=0)
        data = os.urandom(16 * 1024)
        what = set(args.what.split(","))
        if "save" in what:
            storage = storages["default"]
            for i in range(20):  # connections, clients
                storage.save(f"warm/save-{i}.bin", ContentFile(data))
            profile = cProfile.Profile()
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
            profile = cProfile.Profile()
            cpu, start = _cpu(), time.perf_counter()
            profile.enable()
            for name in names[10:]:
                run_transfer(storage.alias, name)
            profile.disable()
            wall, cpu = time.perf_counter() - start, _cpu() - cpu
            _report("run_transfer", profile, args.count, wall, cpu, args.top)
            if args.dump:
                profile.dump_stats(f"{args.dump}-transfer.pstats")
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
