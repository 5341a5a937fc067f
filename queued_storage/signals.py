"""Signals of queued_storage.

``file_state_changed`` is sent by the ledger (``ledger.py``) for every transition of a file's
row: its creation, each change of its state, its deletion. Arguments: ``alias`` (the queued
storage), ``name``, ``old_state`` (``None`` for a new row), ``new_state`` (``None`` for a
deleted row) and ``transition``, the name of the :class:`~queued_storage.ledger.Ledger` method
that made it (``saved``, ``reserve``, ``seed_remote``, ``lease``, ``remote``, ``retry_later``,
``fail``, ``retry``, ``retry_failed``, ``take_back``, ``lost``, ``remote_lost``,
``drop_reservation``, ``forget``); ``sender`` is the ``Ledger`` class. Each is sent once per
row, only when the conditional write matched, and after the change commits: inside a
transaction at its commit (never, if it rolls back), otherwise at once. It is sent in the
process that made the change: the web process for a save or a delete, the worker process for
a transfer, the process that ran the reconcile pass or ``verify()``. A receiver that raises is
logged and does not disturb the transition (``send_robust``). ``old_state == new_state`` where
a transition keeps the state: a lease taken over from a worker whose lease expired
(``transferring``), ``retry`` of a ``pending`` file, ``lost`` of a ``failed`` one.

``file_transferred`` keeps django-queued-storage's arguments (``name``, ``local``, ``remote``)
and adds ``alias``, ``size``, ``checksum``, ``algorithm`` and ``duration`` (seconds from the
lease to the verified copy being recorded). It is sent after ``remote`` is committed to the
ledger and the cache, and before the local copy is deleted.

``transfer_failed`` is sent when a file reaches the ``failed`` state, with ``name``, ``alias``,
``local``, ``remote``, ``error`` (the exception) and ``reason`` (its text).

``file_rejected`` is sent when one of a storage's processors rejects a file (``rejected``, in
the worker process, after the state is committed and the local copy has met its
``QUEUED_STORAGE_QUARANTINE`` fate), with ``name``, ``alias``, ``owner`` (who uploaded it,
``""`` if unknown), ``reason`` (the processor's words) and ``processor`` (its dotted name).
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["file_rejected", "file_state_changed", "file_transferred", "transfer_failed"]

file_rejected = Signal()
file_state_changed = Signal()
file_transferred = Signal()
transfer_failed = Signal()
