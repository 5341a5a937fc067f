"""Signals sent by the transfer task.

``file_transferred`` keeps django-queued-storage's arguments (``name``, ``local``, ``remote``)
and adds ``alias``, ``size`` and ``checksum``. It is sent after ``remote`` is committed to the
ledger and the cache, and before the local copy is deleted.

``transfer_failed`` is sent when a file reaches the ``failed`` state, with ``name``, ``alias``,
``local``, ``remote``, ``error`` (the exception) and ``reason`` (its text).
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["file_transferred", "transfer_failed"]

file_transferred = Signal()
transfer_failed = Signal()
