"""A message of kombu's filesystem transport written whole before a worker can see it.

kombu's ``Channel._put`` creates the message file in the queue folder and then writes it; a
worker polling the folder can move and read it in between, find it empty and die on
``JSONDecodeError`` (seen once in CI's demo run). Here the message is written under a name the
worker skips (a leading dot: its queue part does not match) and renamed into place, which is
atomic on one filesystem. The demo's default broker only; a site runs Redis or RabbitMQ.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

__all__ = ["install"]


def _put(self: Any, queue: str, payload: Any, **kwargs: Any) -> None:
    name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
    partial = os.path.join(self.data_folder_out, f".{name}.part")
    try:
        with open(partial, "wb") as out:
            out.write(str_to_bytes(dumps(payload)))
        os.replace(partial, os.path.join(self.data_folder_out, name))
    except OSError as exc:
        raise filesystem.ChannelError(f"Cannot add file {name!r} to directory") from exc


def install() -> None:
    """Replace the filesystem transport's ``_put`` by :func:`_put` (idempotent)."""
    filesystem.Channel._put = _put
