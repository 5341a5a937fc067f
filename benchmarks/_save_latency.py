"""Latency of ``storage.save()`` in a process of its own, driven by the parent (row 6).

``python -m benchmarks._save_latency ALIAS PREFIX WARMUP SIZE``: sets Django up (the settings
read ``BENCH_DB`` and ``BENCH_S3_ENDPOINT``; a SQLite ledger is migrated first), then saves
``WARMUP`` files of ``SIZE`` bytes through ``storages[ALIAS]`` in autocommit (as a view without
``ATOMIC_REQUESTS``: a queued storage dispatches its transfer at once), then waits for commands
on stdin: ``run K`` saves K more files, ``quit`` ends. Every completed save is reported at once
as one JSON line on stdout (``{"warm": s}`` or ``{"t": s}``), so that a parent that gives up on
a save that hangs still has every figure before it; ``{"ready": ...}``, ``{"warmed": ...}`` and
``{"done": ...}`` mark the phases.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def _say(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(alias: str, prefix: str, warmup: int, size: int) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    started = time.perf_counter()
    import django

    django.setup()
    from django.conf import settings
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages
    from django.core.management import call_command

    import benchmarks.celery_app  # noqa: F401  (saves dispatch through the benchmark's app)

    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        call_command("migrate", verbosity=0)
    storage = storages[alias]
    data = os.urandom(size)
    _say(
        ready=True,
        setup_s=round(time.perf_counter() - started, 3),
        storage=type(storage).__name__,
        db=settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
        endpoint=settings.S3_ENDPOINT,
    )
    count = 0

    def save(kind: str) -> None:
        nonlocal count
        content = ContentFile(data)
        start = time.perf_counter()
        storage.save(f"{prefix}/{count}.bin", content)
        elapsed = time.perf_counter() - start
        count += 1
        _say(**{kind: round(elapsed, 6)})

    for _ in range(warmup):
        save("warm")
    _say(warmed=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] == "run":
            for _ in range(int(command[1])):
                save("t")
            _say(done=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
