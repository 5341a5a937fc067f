"""Where a tus upload's server time goes, beside the raw ``PUT``'s: cProfile of each request.

``python benchmarks/profile_tus.py [--size-mib 1024] [--chunk-mib 64] [--server gunicorn] [--top
25]`` starts its own Redis, moto S3 server and PostgreSQL (``tests/harness/services.py``) and
one web server per upload (``tests/harness/webservers.py``: gunicorn with one gthread worker, or
uvicorn with ``queued_storage.asgi``) serving the test project with the settings of
``benchmarks/bench_uploads.py``, plus an outermost middleware that runs each request under
``cProfile`` (in the thread that runs the view, so it works under both servers) and writes its
profile to a file (``--clock cpu``: the thread's CPU time, not the wall clock). Each server is
warmed up with a small raw ``PUT`` and a small complete tus upload; then it receives one file of
``--size-mib`` as a raw ``PUT`` (one server) or by ``tuspy`` in ``--chunk-mib`` chunks
(another). Prints, per way, the client's wall time, the web process's CPU seconds (``/proc``),
the summed time of its requests' profiles, and the top entries by cumulative and by own
time (with the wall clock a blocked ``fsync`` or body read counts). Nothing is asserted; profiled
requests run slower than unprofiled ones.
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from tusclient.client import TusClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import make_file  # noqa: E402
from benchmarks.bench_direct import proc_cpu  # noqa: E402
from benchmarks.bench_uploads import SETTINGS  # noqa: E402
from tests.harness.services import ServiceStack  # noqa: E402
from tests.harness.webservers import DjangoServer  # noqa: E402

MiB = 1024 * 1024

PROFILED_SETTINGS = """
from bench_upload_settings import *  # noqa: F403
from bench_upload_settings import MIDDLEWARE

MIDDLEWARE = ["profiled_requests.profiled", *MIDDLEWARE]
"""

MIDDLEWARE = '''
import cProfile
import itertools
import os
import time

_count = itertools.count()


def profiled(get_response):
    """Each request under cProfile (the thread's CPU time with QS_PROFILE_CLOCK=cpu, else
    the wall clock); its profile in $QS_PROFILE_DIR/<n>-<method>.prof."""

    def middleware(request):
        cpu = os.environ.get("QS_PROFILE_CLOCK") == "cpu"
        profile = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
        profile.enable()
        try:
            return get_response(request)
        finally:
            profile.disable()
            out = os.environ["QS_PROFILE_DIR"]
            profile.dump_stats(os.path.join(out, f"{next(_count):05d}-{request.method}.prof"))

    return middleware
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=64)
    parser.add_argument("--server", choices=["gunicorn", "uvicorn"], default="gunicorn")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--ways", default="put,tus")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what the profiles count: wall time (a blocked fsync or read counts) or the "
        "thread's CPU time (steadier on a shared machine)",
    )
    parser.add_argument("--dump", help="also write each way's merged profile to DUMP-<way>.pstats")
    args = parser.parse_args()

    stack = ServiceStack("bench-uploads", strict=True, services=["redis", "moto", "postgres"])
    stack.start()
    tmp = Path(tempfile.mkdtemp(prefix="qs-profile-tus-"))
    try:
        (tmp / "bench_upload_settings.py").write_text(SETTINGS)
        (tmp / "profiled_settings.py").write_text(PROFILED_SETTINGS)
        (tmp / "profiled_requests.py").write_text(MIDDLEWARE)
        profiles = tmp / "profiles"
        profiles.mkdir()
        env = {
            **stack.env(),
            "DJANGO_SETTINGS_MODULE": "profiled_settings",
            "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT)]),
            "QS_PROFILE_DIR": str(profiles),
            "QS_PROFILE_CLOCK": args.clock,
        }
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "-v0"],
            env={**os.environ, **env},
            cwd=ROOT,
            check=True,
        )
        source = tmp / "big.bin"
        make_file(source, args.size_mib * MiB)
        for way in args.ways.split(","):
            server = DjangoServer(args.server, tmp / f"web-{way}", env)
            server.start()
            try:
                client = TusClient(f"{server.url}/uploads/tus/")
                warm = requests.put(f"{server.url}/uploads/put/warm.bin", data=b"w" * 1024)
                assert warm.status_code == 201, warm.text
                client.uploader(
                    file_stream=io.BytesIO(b"w" * 1024), metadata={"filename": "warm-tus.bin"}
                ).upload()
                for old in profiles.iterdir():
                    old.unlink()
                pid = server.app_pid
                cpu = proc_cpu(pid)
                began = time.monotonic()
                with source.open("rb") as stream:
                    if way == "put":
                        answer = requests.put(
                            f"{server.url}/uploads/put/big.bin", data=stream, timeout=600
                        )
                        assert answer.status_code == 201, answer.text
                    else:
                        uploader = client.uploader(
                            file_stream=stream,
                            chunk_size=args.chunk_mib * MiB,
                            metadata={"filename": "big-tus.bin"},
                        )
                        uploader.upload()
                        assert uploader.offset == args.size_mib * MiB
                wall = time.monotonic() - began
                cpu = proc_cpu(pid) - cpu
            finally:
                server.stop()
            files = sorted(profiles.iterdir())
            stats = pstats.Stats(*(str(f) for f in files), stream=(out := io.StringIO()))
            print(
                f"\n== {way} on {args.server}: {args.size_mib} MiB, wall {wall:.2f} s, web "
                f"process CPU {cpu:.2f} s, {len(files)} requests profiled, "
                f"{stats.total_tt:.2f} s ({args.clock}) in them (load {os.getloadavg()[0]:.2f})"
            )
            stats.sort_stats("cumulative").print_stats(args.top)
            stats.sort_stats("tottime").print_stats(args.top)
            print(out.getvalue())
            if args.dump:
                stats.dump_stats(f"{args.dump}-{way}.pstats")
            for old in profiles.iterdir():
                old.unlink()
            shutil.rmtree(stack.workdir / "staging", ignore_errors=True)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
