"""Processors: what a worker runs on a file's local copy before it reaches the remote.

A processor is a callable taking a :class:`Staged` file and answering one of:

* :class:`Passed`, optionally with metadata to keep in the ledger (a detected content type,
  dimensions, the scanner and its signatures' version);
* :class:`Rejected`, with a reason the uploader may read: the file never reaches the remote
  and is never served;
* :class:`Later`, with a reason: the processor could not decide now (its scanner is down);
  the file waits, on the outage budget of a transfer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO

__all__ = ["Later", "Outcome", "Passed", "Processor", "Rejected", "Staged"]


@dataclass(frozen=True)
class Staged:
    """The file a processor looks at: its stored name, size, the content type its uploader
    declared (``""`` if none), its owner (``""`` if none), how to read it, and the alias of
    the queued storage it is saved in (a processor that makes derivatives saves them there:
    ``get_queued_storage(staged.alias)``)."""

    name: str
    size: int
    content_type: str
    owner: str
    open: Callable[[], IO[bytes]]
    alias: str = ""


@dataclass(frozen=True)
class Passed:
    metadata: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    reason: str


@dataclass(frozen=True)
class Later:
    reason: str


Outcome = Passed | Rejected | Later

#: What a queued storage's ``processors`` option names (dotted paths).
Processor = Callable[[Staged], Outcome]
