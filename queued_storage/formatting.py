"""How the operator layer shows numbers as text: sizes (:func:`human_bytes`) and ages
(:func:`human_age`), for the command's output and the doctor's lines."""

from __future__ import annotations

__all__ = ["human_age", "human_bytes"]


def human_bytes(size: int | float | None) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units, as disks and S3 count)."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float | None) -> str:
    """``130`` -> ``"2 min"``: the largest whole unit."""
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:.0f} s"
