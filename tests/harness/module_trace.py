"""Which ``queued_storage`` modules one test passes through, in order (a measuring tool).

``python -m tests.harness.module_trace NODE_ID [pytest options]`` runs the test *NODE_ID* in
this process with a ``sys.setprofile`` hook on its call phase (setup and teardown left out)
and records, for each thread, the sequence of ``queued_storage`` modules whose functions are
entered; calls into other code (Django, boto3, the test) are not recorded, and consecutive
calls within one module count once. What runs while a module is imported (its body and what
it calls) is left out unless ``--imports`` is given: a first request imports the views lazily.
It prints, per thread: the distinct modules passed through, the number of module switches,
how many times the sequence came back to a module it had left, and the sequence itself, with
repeated runs folded (``[a > b] x3``).

Only what runs in the pytest process is seen: a test that talks to a web server or a Celery
worker in another process shows its own side only.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

import pytest

__all__ = ["ModuleTrace", "fold", "main"]

PACKAGE = "queued_storage"


@dataclass
class ModuleTrace:
    """The modules of :data:`PACKAGE` entered, per thread name, consecutive repeats merged."""

    sequences: dict[str, list[str]] = field(default_factory=dict)
    #: Record what runs while a module is imported (its body, and what it calls) too.
    imports: bool = False
    #: Modules not recorded (short names: ``conf``), as if they were outside the package.
    skip: frozenset[str] = frozenset()

    def enter(self, module: str) -> None:
        if module in self.skip:
            return
        sequence = self.sequences.setdefault(threading.current_thread().name, [])
        if not sequence or sequence[-1] != module:
            sequence.append(module)

    def profiler(self) -> Callable[[FrameType, str, object], None]:
        prefix = PACKAGE + "."
        importing = threading.local()  # how many module bodies this thread is running

        def profile(frame: FrameType, event: str, arg: object) -> None:
            if event not in ("call", "return"):
                return
            depth: int = getattr(importing, "depth", 0)
            if not self.imports and frame.f_code.co_name == "<module>":
                importing.depth = depth + 1 if event == "call" else max(0, depth - 1)
                return
            if event != "call" or depth:
                return
            module = frame.f_globals.get("__name__", "")
            if isinstance(module, str) and (module == PACKAGE or module.startswith(prefix)):
                self.enter(module.removeprefix(prefix))

        return profile

    @contextmanager
    def recording(self) -> Iterator[None]:
        profile = self.profiler()
        threading.setprofile(profile)
        sys.setprofile(profile)
        try:
            yield
        finally:
            sys.setprofile(None)
            threading.setprofile(None)


def switches(sequence: Sequence[str]) -> int:
    """Moves from one module to another."""
    return max(0, len(sequence) - 1)


def returns(sequence: Sequence[str]) -> int:
    """Entries into a module the sequence had already passed through (and left)."""
    seen: set[str] = set()
    count = 0
    for module in sequence:
        count += module in seen
        seen.add(module)
    return count


def fold(sequence: Sequence[str], longest: int = 8) -> list[str]:
    """*sequence* with each run of a repeated block written once: ``[a > b] x3``."""
    out: list[str] = []
    i = 0
    while i < len(sequence):
        best_size, best_times = 1, 1
        for size in range(1, longest + 1):
            block = list(sequence[i : i + size])
            if len(block) < size:
                break
            times = 1
            while list(sequence[i + times * size : i + (times + 1) * size]) == block:
                times += 1
            if times > 1 and size * times > best_size * best_times:
                best_size, best_times = size, times
        if best_times > 1:
            body = " > ".join(sequence[i : i + best_size])
            out.append(f"[{body}] x{best_times}" if best_size > 1 else f"{body} x{best_times}")
        else:
            out.append(sequence[i])
        i += best_size * best_times
    return out


class _Plugin:
    """Records the call phase of every test pytest runs."""

    def __init__(self, trace: ModuleTrace) -> None:
        self.trace = trace

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        with self.trace.recording():
            yield


def report(trace: ModuleTrace) -> str:
    lines: list[str] = []
    threads = sorted(trace.sequences, key=lambda name: (name != "MainThread", name))
    for thread in threads:
        sequence = trace.sequences[thread]
        lines += [
            f"thread {thread}:",
            f"  distinct modules ({len(set(sequence))}): {', '.join(sorted(set(sequence)))}",
            f"  module switches: {switches(sequence)}",
            f"  returns to a module already left: {returns(sequence)}",
            f"  sequence: {' > '.join(fold(sequence))}",
        ]
    return "\n".join(lines) if lines else f"no {PACKAGE} module was entered"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("node_id", help="the pytest node id of one test")
    parser.add_argument(
        "--imports", action="store_true", help="also record what runs while a module is imported"
    )
    parser.add_argument(
        "--skip", default="", help="modules to leave out, comma-separated short names: conf,models"
    )
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="more pytest options")
    args = parser.parse_args(argv)
    skip = frozenset(name.strip() for name in args.skip.split(",") if name.strip())
    trace = ModuleTrace(imports=args.imports, skip=skip)
    status = pytest.main([args.node_id, "-q", *args.pytest_args], plugins=[_Plugin(trace)])
    print(report(trace))
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
