"""What every transfer benchmark says of its own run: its time, the machine's cores, its peak
RSS and the load average before and after (anything else running shows there)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field


@dataclass
class RunClock:
    """Started when the run starts; :meth:`finish` prints the run's line and gives the JSON
    fields that every results file carries."""

    started: float = field(default_factory=time.perf_counter)
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])

    def finish(self, quick: bool) -> dict[str, object]:
        elapsed = time.perf_counter() - self.started
        load_after = os.getloadavg()[0]
        print(
            f"\n{'quick' if quick else 'full'} run: {elapsed:.0f}s on {os.cpu_count()} cores; "
            f"self peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
            f"1-min load average {self.load_before:.1f} at the start, {load_after:.1f} at the end "
            "(anything else running on the machine shows here)"
        )
        return {
            "quick": quick,
            "seconds": round(elapsed, 1),
            "cpus": os.cpu_count(),
            "load_average_start_end": [round(self.load_before, 2), round(load_after, 2)],
        }
