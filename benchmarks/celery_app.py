"""The benchmark's Celery app (the test project's, with the benchmark settings).

With ``BENCH_PROFILE_DIR`` set (``benchmarks/profile_paths.py --what worker``), every process
of the worker runs under cProfile with a CPU clock (``time.process_time``): the main process
from ``worker_ready``, each pool process from its start; each writes
``<dir>/<main|pool>-<pid>.pstats`` when it shuts down.
"""

from __future__ import annotations

import cProfile
import os
import time
from pathlib import Path

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready
from celery.signals import worker_shutdown as main_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")

app = Celery("benchmarks")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["queued_storage"])

PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")
_profile = cProfile.Profile(time.process_time)


def _start(**kwargs: object) -> None:
    _profile.enable()


def _dump(kind: str) -> None:
    _profile.disable()
    assert PROFILE_DIR is not None
    _profile.dump_stats(str(Path(PROFILE_DIR) / f"{kind}-{os.getpid()}.pstats"))


if PROFILE_DIR:
    worker_ready.connect(_start, weak=False)
    worker_process_init.connect(_start, weak=False)
    main_shutdown.connect(lambda **kwargs: _dump("main"), weak=False)
    worker_process_shutdown.connect(lambda **kwargs: _dump("pool"), weak=False)
