"""Interleaved A/B of the S3 engine: this tree's against another commit's, in one process.

``python benchmarks/probes/ab_engine.py [--size-mib 1024] [--rounds 4] [--checksum md5] COMMIT``
starts its own Redis, moto and PostgreSQL, loads ``queued_storage/_s3/upload.py`` and
``checksums.py`` of COMMIT (``git show``) beside this tree's, and runs ``s3_transfer`` of one
file with each, alternating which goes first, printing each run's wall time, this process's
CPU and moto's CPU, then the medians. Both use this tree's other modules (client, errors, objects).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._django import django_on  # noqa: E402
from benchmarks.bench import make_file  # noqa: E402
from tests.harness.services import ServiceStack  # noqa: E402

BUCKET = "bench-bucket"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("commit")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--checksum", default="md5")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qs-ab-"))
    for module in ("upload", "checksums"):
        source = subprocess.run(
            ["git", "show", f"{args.commit}:queued_storage/_s3/{module}.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (tmp / f"other_{module}.py").write_text(source)
    stack = ServiceStack(BUCKET, strict=True, services=["redis", "moto", "postgres"]).start()
    try:
        import psutil

        django_on(stack)
        from django.core.files.storage import storages

        from queued_storage._s3 import upload as this
        from queued_storage._s3.client import s3_client
        from queued_storage.transfer import EngineConfig

        def load(name: str) -> Any:
            spec = importlib.util.spec_from_file_location(name, tmp / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses look their module up
            spec.loader.exec_module(module)
            return module

        other = load("other_upload")
        other.CHECKS = load("other_checksums").CHECKS  # the commit's checks with its engine
        config = EngineConfig.from_settings()
        remote = storages["s3"]
        client = s3_client(remote, config.max_concurrency)
        assert stack.moto is not None and stack.moto.pid is not None
        moto = psutil.Process(stack.moto.pid)
        path = make_file(tmp / "ab.bin", args.size_mib * 1024 * 1024)
        engines = {args.commit: other, "this tree": this}
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in engines}
        for i in range(args.rounds):
            order = list(engines) if i % 2 == 0 else list(reversed(engines))
            for name in order:
                key = f"ab-{i}-{len(results[name])}-{name.replace(' ', '-')}.bin"
                m0, c0, t0 = sum(moto.cpu_times()[:2]), _cpu(), time.perf_counter()
                engines[name].s3_transfer(
                    remote,
                    key,
                    str(path),
                    multipart_threshold=config.multipart_threshold,
                    part_size=config.multipart_chunksize,
                    max_concurrency=config.max_concurrency,
                    read_size=config.chunk_size,
                    checksum=args.checksum,
                )
                r = (time.perf_counter() - t0, _cpu() - c0, sum(moto.cpu_times()[:2]) - m0)
                client.delete_object(Bucket=BUCKET, Key=key)
                results[name].append(r)
                print(
                    f"round {i} {name}: wall {r[0]:.2f}s client CPU {r[1]:.2f}s moto CPU "
                    f"{r[2]:.2f}s load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        for name, runs in results.items():
            walls, cpus, motos = zip(*runs, strict=True)
            print(
                f"median {name}: wall {statistics.median(walls):.2f}s client CPU "
                f"{statistics.median(cpus):.2f}s moto CPU {statistics.median(motos):.2f}s"
            )
    finally:
        stack.stop()
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
