"""Adopting local files: the files on the staging disk that no ledger row knows (saved before the
app was installed, or by a crashed process) get a row and their transfer is queued, unless the
remote already holds the name (nothing is ever overwritten). Step 5 of the reconcile pass
(``reconcile(adopt=True)``); every row change through the ledger."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator

from django.core.exceptions import SuspiciousFileOperation
from django.core.files.utils import validate_file_name

from queued_storage.conf import settings
from queued_storage.dispatch import Sender
from queued_storage.models import StoredFile
from queued_storage.names import OWN_DIRECTORY_PREFIX, checked_name
from queued_storage.report import Report
from queued_storage.storage import QueuedStorage, queued_storages
from queued_storage.transfer import remote_exists

__all__ = ["adopt_all"]


def adopt_all(
    selected: dict[str, QueuedStorage],
    report: Report,
    sender: Sender,
    *,
    now: datetime.datetime,
    after: float,
    batch: int,
) -> None:
    """Adopt the unknown local files of each staging directory of the *selected* storages
    (step 5 of the pass); a directory that more than one selected storage stages in is left
    alone, with an error in the report asking for the one that owns its files."""
    sharing: dict[str, set[str]] = {}
    for storage in [*queued_storages(), *selected.values()]:
        root = _local_root(storage)
        if root is not None:
            sharing.setdefault(root, set()).add(storage.alias)
    for root, aliases in sorted(sharing.items()):
        chosen = sorted(aliases & set(selected))
        if not chosen:
            continue
        if len(chosen) > 1:
            report.errors.append(
                f"cannot adopt the files in {root}: the storages {', '.join(chosen)} stage "
                "there; name the one that owns them with --storage"
            )
            continue
        if os.path.isdir(root):
            _adopt(selected[chosen[0]], root, report, sender, now=now, after=after, batch=batch)


def _local_root(storage: QueuedStorage) -> str | None:
    try:
        return os.path.realpath(storage.local.path(""))
    except Exception:
        return None


def _walk(root: str) -> Iterator[tuple[str, list[str]]]:
    """``(directory, files)`` below *root*, sorted, never following symbolic links."""
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(OWN_DIRECTORY_PREFIX))
        yield directory, sorted(files)


def _adopt(
    storage: QueuedStorage,
    root: str,
    report: Report,
    sender: Sender,
    *,
    now: datetime.datetime,
    after: float,
    batch: int,
) -> None:
    """Give a row to each local file no ledger row knows, and queue its transfer."""
    cutoff = (now - datetime.timedelta(seconds=after)).timestamp()
    adopted = 0
    for directory, files in _walk(root):
        candidates: dict[str, os.stat_result] = {}
        for filename in files:
            path = os.path.join(directory, filename)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if not os.path.isfile(path) or os.path.islink(path) or info.st_mtime > cutoff:
                continue  # symbolic links and files still being written are left alone
            candidates[os.path.relpath(path, root).replace(os.sep, "/")] = info
        if not candidates:
            continue
        known = StoredFile.all_rows().named(candidates).names()
        for name, info in candidates.items():
            if name in known:
                continue
            if adopted >= batch:
                return
            try:
                if checked_name(name) != name:
                    raise SuspiciousFileOperation("its name is not in Unicode NFC form")
                validate_file_name(name, allow_relative_path=True)
            except SuspiciousFileOperation as err:
                report.skipped.append(f"{storage.alias}:{name}: not adopted: {err}")
                continue
            try:
                held = remote_exists(storage.remote, name)
            except Exception as err:
                report.skipped.append(
                    f"{storage.alias}:{name}: not adopted: the remote storage could not say "
                    f"whether it holds the name ({type(err).__name__}); next pass"
                )
                continue
            if held:
                report.skipped.append(
                    f"{storage.alias}:{name}: not adopted: the remote storage already holds "
                    "this name and nothing is overwritten; compare the two copies and delete "
                    "the local one by hand"
                )
                continue
            if not storage.ledger.saved(name, settings.HOST, int(info.st_size)):
                continue  # another pass adopted it (or a save took the name) meanwhile
            adopted += 1
            label = f"{storage.alias}:{name}"
            if sender.send_or_mark(storage, name, settings.HOST):
                report.adopted.append(label)
            else:
                report.not_queued.append(label)
