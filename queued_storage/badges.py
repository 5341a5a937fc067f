"""The ledger admin's state badges and progress bars (HTML)."""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.safestring import SafeString

from queued_storage.models import State

__all__ = ["progress_html", "state_html"]

_COLOURS = {
    State.PENDING: "#6b6b6b",
    State.TRANSFERRING: "#205ea6",
    State.REMOTE: "#2e7d32",
    State.FAILED: "#ba2121",
    State.UPLOADING: "#8a5a00",
    State.REJECTED: "#6a1b9a",
}
_BADGE = (
    "display:inline-block;padding:1px 7px;border-radius:9px;color:#fff;"
    "font-size:11px;font-weight:bold;white-space:nowrap;background:{}"
)


def progress_html(done: int, total: int) -> SafeString:
    percent = 100.0 if total <= 0 else min(100.0, 100.0 * done / total)
    return format_html(
        '<progress class="qs-progress" value="{}" max="{}">{}</progress> {}',
        done,
        max(total, 0),
        f"{percent:.0f}%",
        f"{percent:.0f}%",
    )


def state_html(state: str | None, done: int = 0, total: int = 0) -> SafeString:
    """A coloured badge of *state*, and a progress bar of *done*/*total* bytes while it is
    ``transferring``; ``None``: a file the ledger does not know."""
    if state is None:
        return format_html('<span class="qs-state qs-state-unknown">{}</span>', "unknown")
    colour = _COLOURS.get(state, "#6b6b6b")
    badge = format_html(
        '<span class="qs-state qs-state-{}" style="{}">{}</span>',
        state,
        format_html(_BADGE, colour),
        state,
    )
    if state == State.TRANSFERRING:
        return format_html("{}<br>{}", badge, progress_html(done, total))
    return badge
