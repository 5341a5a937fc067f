"""Django on a benchmark's own services, for the profiling scripts and probes."""

from __future__ import annotations

import os
from pathlib import Path

from tests.harness.services import ServiceStack

ROOT = Path(__file__).resolve().parent.parent


def django_on(stack: ServiceStack) -> None:
    """Set Django up with ``benchmarks.settings`` on *stack*'s services (the ledger in its
    PostgreSQL's database ``bench``, made here), in this process and the children it starts."""
    stack.create_database("bench")
    os.environ.update(
        {**stack.env(), "DJANGO_SETTINGS_MODULE": "benchmarks.settings", "PYTHONPATH": str(ROOT)}
    )
    import django

    django.setup()
