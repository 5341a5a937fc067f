"""Direct uploads: the client sends a file's bytes straight to S3, under the same ledger.

For files too big for a web host's disk. The server never sees the bytes (so no processor
runs on them); it decides everything else:

1. :func:`start` reserves the name in the ledger as ``save()`` does (the same name rules, no
   overwrite, the owner recorded; the row is ``uploading``, nothing readable), with the
   declared size, and opens the S3 multipart upload. The part size is the server's.
2. :func:`sign_parts` records each part's declared CRC32 (write-once) and answers presigned
   ``UploadPart`` URLs whose signature covers the part's length and CRC32: S3 refuses a part
   of another length or with other bytes.
3. :func:`received` lists the parts S3 holds (``ListParts``), for a client that resumes.
4. :func:`complete` verifies, never trusting the client: every part present, of the size the
   declared size gives it, declared; then ``CompleteMultipartUpload`` with ``If-None-Match:
   *`` (never overwriting); then a ``HEAD``: the object's size and composite CRC32 must be
   the declared ones. Only then is the row ``remote``. A mismatch aborts the upload or deletes
   the object, and releases the name, with the reason.
5. An upload left alone for ``QUEUED_STORAGE_DIRECT_EXPIRY`` seconds is aborted by the
   reconcile pass (:func:`expire`); :func:`cancel` is its owner's abort. Each call that
   changes the row first claims it (``ledger_direct``): two never act on one upload at once.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import math
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import Storage
from django.core.files.utils import validate_file_name

from queued_storage.conf import settings
from queued_storage.models import State, StoredFile
from queued_storage.names import LEDGER_NAME_LENGTH, stored_name
from queued_storage.staging import free_names
from queued_storage.transfer import (
    RemoteObject,
    delete_remote,
    remote_holds,
    remote_object,
    s3_direct,
)

if TYPE_CHECKING:
    from queued_storage.storage import QueuedStorage

__all__ = [
    "CHECKSUM_ALGORITHM",
    "DirectRefused",
    "Started",
    "abort",
    "cancel",
    "complete",
    "cors_configuration",
    "expire",
    "received",
    "sign_parts",
    "start",
]

logger = logging.getLogger(__name__)

#: The one checksum of a direct upload's parts (S3's, which it checks at the part).
CHECKSUM_ALGORITHM = "crc32"
#: How the ledger records a direct upload's checksum (as the engine records a multipart one).
RECORDED_ALGORITHM = "s3-composite-crc32"
#: Seconds a completion (or a cancel, or the expiry) holds its claim: its S3 calls' time.
CLAIM_SECONDS = 300.0
#: Part numbers a client may declare in one request.
MAX_PARTS_PER_REQUEST = 100


class DirectRefused(Exception):
    """A request about a direct upload that is refused: *status* and the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Started:
    """A reserved, opened direct upload."""

    name: str
    #: The S3 multipart upload's id (the part URLs name it too).
    upload_id: str
    size: int
    part_size: int
    parts: int
    expires: datetime.datetime


def cors_configuration(origins: list[str]) -> dict[str, Any]:
    """The bucket's CORS configuration that lets pages of *origins* send a direct upload's
    parts (``PUT`` with the two signed checksum headers): for ``put_bucket_cors``, the one
    ``docs/direct.md`` shows. The client reads no header of S3's answer."""
    return {
        "CORSRules": [
            {
                "AllowedOrigins": list(origins),
                "AllowedMethods": ["PUT"],
                "AllowedHeaders": [
                    "content-type",
                    "x-amz-checksum-crc32",
                    "x-amz-sdk-checksum-algorithm",
                ],
                "MaxAgeSeconds": 3000,
            }
        ]
    }


# -- helpers ------------------------------------------------------------------------------------
def part_count(size: int, part_size: int) -> int:
    return max(1, math.ceil(size / part_size))


def part_length(size: int, part_size: int, number: int) -> int:
    """The length of part *number* (1-based) of *size* bytes in parts of *part_size*."""
    return min(part_size, size - (number - 1) * part_size)


def _remote_down(name: str, err: BaseException) -> DirectRefused:
    logger.warning("direct upload of %r: the remote storage failed (%s)", name, err)
    return DirectRefused(
        503,
        f"The remote storage did not answer for {name!r} ({type(err).__name__}); nothing was "
        "changed. Retry later.",
    )


def _check_remote(storage: QueuedStorage, name: str) -> None:
    if not s3_direct.is_s3(storage.remote):
        raise DirectRefused(
            400,
            f"Direct uploads need an S3 remote storage; the remote of {storage.alias!r} is a "
            f"{type(storage.remote).__name__}. Upload through the other endpoints.",
        )
    if s3_direct.encrypted_by_client(storage.remote, name):
        raise DirectRefused(
            400,
            f"The remote of {storage.alias!r} encrypts with a customer key (SSE-C), which a "
            "client uploading directly would need; upload through the other endpoints.",
        )


def _expires(row: StoredFile) -> datetime.datetime:
    return row.updated + datetime.timedelta(seconds=settings.DIRECT_EXPIRY)


def _own_upload(storage: QueuedStorage, name: str, owner: str) -> StoredFile:
    """The ``uploading`` row of *name* if *owner* started it; else 404 (as for a name that
    does not exist: nobody learns which names others upload)."""
    row = storage.ledger.row(name)
    if row is None or row.state != State.UPLOADING or not owner or row.owner != owner:
        raise DirectRefused(404, f"No direct upload {name!r} of yours is under way.")
    return row


def _claimant() -> str:
    return f"direct:{settings.HOST}:{uuid.uuid4().hex[:12]}"


def _declared(row: StoredFile) -> dict[int, str]:
    """The parts' declared CRC32s, by part number."""
    return {int(part[0]): str(part[2]) for part in row.parts}


# -- 1. start -----------------------------------------------------------------------------------
def start(
    storage: QueuedStorage,
    name: str,
    size: int,
    *,
    owner: str,
    content_type: str = "",
    max_length: int | None = LEDGER_NAME_LENGTH,
) -> Started:
    """Reserve a name for a direct upload of *size* bytes and open its multipart upload.

    The name is chosen as ``save()`` chooses it: Django's name validation, the storage's
    ``get_available_name`` of a subclass, and a free variant when the ledger (or, with
    ``QUEUED_STORAGE_REMOTE_CHECK_TIMEOUT``, the remote) holds it. Nothing is written to the
    staging disk. If the remote does not answer, the reservation is dropped (503).
    """
    if size < 1:
        raise DirectRefused(400, f"Declare the size of {name!r} in bytes (at least 1).")
    if size > settings.UPLOAD_MAX_BYTES:
        raise DirectRefused(
            413,
            f"{name!r} has {size} bytes; the limit is {settings.UPLOAD_MAX_BYTES} "
            "(QUEUED_STORAGE_UPLOAD_MAX_BYTES).",
        )
    try:
        validate_file_name(name, allow_relative_path=True)
        name = stored_name(name, max_length)
        if type(storage).get_available_name is not Storage.get_available_name:
            proposed = storage.get_available_name(name, max_length)
            validate_file_name(proposed, allow_relative_path=True)
            name = stored_name(proposed, max_length)
    except SuspiciousFileOperation as err:
        raise DirectRefused(400, str(err)) from err
    _check_remote(storage, name)
    part_size = s3_direct.choose_part_size(size, settings.DIRECT_PART_SIZE)
    reserved = ""
    for candidate in free_names(name, name, max_length, storage.get_alternative_name):
        if remote_holds(storage.remote, candidate):
            continue
        if storage.ledger.direct_reserve(candidate, size=size, part_size=part_size, owner=owner):
            reserved = candidate
            break
    if not reserved:
        raise DirectRefused(409, f"No free name was found for {name!r}; choose another name.")
    try:
        upload_id = s3_direct.open_upload(storage.remote, reserved, content_type)
    except (BotoCoreError, ClientError, ConnectionError) as err:
        _release(storage, reserved)
        raise _remote_down(reserved, err) from err
    storage.ledger.direct_opened(reserved, upload_id)
    row = storage.ledger.row(reserved)
    assert row is not None
    return Started(
        name=reserved,
        upload_id=upload_id,
        size=size,
        part_size=part_size,
        parts=part_count(size, part_size),
        expires=_expires(row),
    )


def _release(storage: QueuedStorage, name: str) -> None:
    """Claim *name*'s row and end it refused (the row goes, the name is free)."""
    claimant = _claimant()
    if storage.ledger.direct_claim(name, claimant, CLAIM_SECONDS) is not None:
        storage.ledger.direct_refused(name, claimant)


# -- 2. sign the parts --------------------------------------------------------------------------
def _crc32(value: object, number: int, name: str) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        raw = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as err:
        raise DirectRefused(
            400, f"Part {number} of {name!r}: give its CRC32 as 4 bytes of base64."
        ) from err
    if len(raw) != 4:
        raise DirectRefused(400, f"Part {number} of {name!r}: give its CRC32 as 4 bytes of base64.")
    return value


def sign_parts(
    storage: QueuedStorage, name: str, owner: str, parts: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Record the declared CRC32 of each of *parts* (``{"number", "checksum"}``) and answer
    their presigned URLs. A part declared before keeps its checksum: another one is 409."""
    if not parts or len(parts) > MAX_PARTS_PER_REQUEST:
        raise DirectRefused(
            400, f"Ask for 1 to {MAX_PARTS_PER_REQUEST} parts of {name!r} at a time."
        )
    for _ in range(10):
        row = _own_upload(storage, name, owner)
        if not row.upload_id or row.size is None or not row.part_size:
            raise DirectRefused(409, f"The direct upload of {name!r} is not open yet; retry.")
        count = part_count(row.size, row.part_size)
        declared = _declared(row)
        asked: dict[int, str] = {}
        for part in parts:
            number = part.get("number") if isinstance(part, dict) else None
            if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= count:
                raise DirectRefused(
                    400, f"{name!r} has parts 1 to {count}; part {number!r} is not one of them."
                )
            crc = _crc32(part.get("checksum"), number, name)
            if declared.get(number, crc) != crc or asked.get(number, crc) != crc:
                raise DirectRefused(
                    409,
                    f"Part {number} of {name!r} was declared with another checksum: the file "
                    "changed since the upload began. Cancel it and start a new upload.",
                )
            asked[number] = crc
        new = {n: c for n, c in asked.items() if n not in declared}
        if new:
            merged = {**declared, **new}
            recorded: list[list[int | str]] = [
                [n, "", merged[n], part_length(row.size, row.part_size, n)] for n in sorted(merged)
            ]
            if not storage.ledger.direct_declare(row, recorded):
                continue  # another request changed the row: read it again
        break
    else:
        raise DirectRefused(409, f"{name!r} is busy; retry.")
    expires = settings.DIRECT_URL_EXPIRY
    answer = []
    for number in sorted(asked):
        url, headers = s3_direct.part_url(
            storage.remote,
            name,
            row.upload_id,
            number,
            size=part_length(row.size, row.part_size, number),
            crc32=asked[number],
            expires=expires,
        )
        answer.append({"number": number, "url": url, "method": "PUT", "headers": headers})
    return answer


# -- 3. resume ----------------------------------------------------------------------------------
def received(storage: QueuedStorage, name: str, owner: str) -> dict[str, Any]:
    """What a resuming client needs: the upload's figures and the parts S3 holds that count
    (declared, of their size)."""
    row = _own_upload(storage, name, owner)
    assert row.size is not None and row.part_size
    held: list[dict[str, int]] = []
    if row.upload_id:
        try:
            listed = s3_direct.list_parts(storage.remote, name, row.upload_id)
        except ClientError as err:
            if _code(err) != "NoSuchUpload":
                raise _remote_down(name, err) from err
            # Aborted behind the app's back (a lifecycle rule), or completed by a completion
            # that stopped before recording it: completing again tells which.
            raise DirectRefused(
                409,
                f"The remote storage no longer holds the parts of {name!r}; complete it to "
                "have it checked, or cancel it and start again.",
            ) from err
        except (BotoCoreError, ConnectionError) as err:
            raise _remote_down(name, err) from err
        declared = _declared(row)
        for number, part in sorted(listed.items()):
            if number in declared and part.size == part_length(row.size, row.part_size, number):
                held.append({"number": number, "size": part.size})
    return {
        "name": name,
        "state": "uploading",
        "size": row.size,
        "part_size": row.part_size,
        "parts": part_count(row.size, row.part_size),
        "checksum_algorithm": CHECKSUM_ALGORITHM,
        "received": held,
        "expires": _expires(row).isoformat(),
    }


# -- 4. complete --------------------------------------------------------------------------------
def complete(storage: QueuedStorage, name: str, owner: str) -> StoredFile:
    """Verify and complete the upload; the ``remote`` row. See the module for the order."""
    _own_upload(storage, name, owner)
    claimant = _claimant()
    row = storage.ledger.direct_claim(name, claimant, CLAIM_SECONDS)
    if row is None:
        raise DirectRefused(409, f"{name!r} is being completed or cancelled; ask its status.")
    try:
        return _complete(storage, row, claimant)
    except DirectRefused as refused:
        if refused.status >= 500 or refused.status == 409:
            storage.ledger.direct_unclaim(name, claimant)
        raise
    except (BotoCoreError, ClientError, ConnectionError) as err:
        storage.ledger.direct_unclaim(name, claimant)
        raise _remote_down(name, err) from err
    except BaseException:
        storage.ledger.direct_unclaim(name, claimant)
        raise


def _refuse(
    storage: QueuedStorage, name: str, claimant: str, status: int, reason: str
) -> DirectRefused:
    """End the upload refused (its row goes, the name is free) and say why."""
    storage.ledger.direct_refused(name, claimant)
    logger.warning("direct upload of %r refused: %s", name, reason)
    return DirectRefused(status, reason)


def _complete(storage: QueuedStorage, row: StoredFile, claimant: str) -> StoredFile:
    name, remote = row.name, storage.remote
    assert row.size is not None and row.part_size
    size, count = row.size, part_count(row.size, row.part_size)
    declared = _declared(row)
    if not row.upload_id:
        raise _refuse(storage, name, claimant, 409, f"The upload of {name!r} was never opened.")
    completed_now = False
    try:
        listed = s3_direct.list_parts(remote, name, row.upload_id)
    except ClientError as err:
        if _code(err) != "NoSuchUpload":
            raise
        listed = None  # completed by an earlier call that died before recording it, or gone
    if listed is not None:
        missing = [n for n in range(1, count + 1) if n not in listed]
        if missing:
            shown = ", ".join(str(n) for n in missing[:20]) + (", ..." if len(missing) > 20 else "")
            raise DirectRefused(
                409, f"Parts {shown} of {count} of {name!r} are missing; send them, then complete."
            )
        wrong = _wrong_part(row, listed, declared, count)
        if wrong:
            s3_direct.abort(remote, name, row.upload_id)
            raise _refuse(storage, name, claimant, 422, f"{wrong} Nothing was kept.")
        try:
            s3_direct.complete(
                remote,
                name,
                row.upload_id,
                [(n, listed[n].etag, declared[n]) for n in range(1, count + 1)],
            )
        except ClientError as err:
            if _code(err) != "PreconditionFailed":
                raise
            s3_direct.abort(remote, name, row.upload_id)
            raise _refuse(
                storage,
                name,
                claimant,
                409,
                f"The remote storage already holds an object named {name!r}; it was not "
                "overwritten. Upload under another name.",
            ) from err
        completed_now = True
    expected = _declared_composite(row)
    found = remote_object(remote, name, timeout=s3_direct.REQUEST_TIMEOUT)
    if found is None:
        raise _refuse(
            storage, name, claimant, 409, f"The upload of {name!r} is gone from the remote storage."
        )
    if not _is_declared(found, size, expected):
        reason = (
            f"The object {name!r} ({found.size} bytes, crc32 {found.crc32 or 'unknown'}) does "
            f"not match the declared parts ({size} bytes, crc32 {expected or 'undeclared'})"
        )
        if completed_now:
            delete_remote(remote, name)
            reason += "; it was deleted."
        else:
            reason += "; it was left as it is (this request did not write it)."
        raise _refuse(storage, name, claimant, 422, reason)
    if not storage.ledger.direct_remote(
        name, claimant, size=size, checksum=expected, algorithm=RECORDED_ALGORITHM
    ):
        raise DirectRefused(409, f"The upload of {name!r} was cancelled or expired meanwhile.")
    done = storage.ledger.row(name)
    assert done is not None
    logger.info("direct upload of %r finished: %d bytes in %d parts, verified", name, size, count)
    return done


def _wrong_part(
    row: StoredFile, listed: dict[int, s3_direct.ListedPart], declared: dict[int, str], count: int
) -> str:
    """Why the parts S3 holds are not the declared upload (``""``: they are)."""
    assert row.size is not None and row.part_size
    extra = sorted(n for n in listed if n > count)
    if extra:
        return f"{row.name!r} has {count} parts; S3 holds part {extra[0]} too."
    for number in range(1, count + 1):
        part = listed[number]
        want = part_length(row.size, row.part_size, number)
        if part.size != want:
            return (
                f"Part {number} of {row.name!r} is {part.size} bytes; the upload declared "
                f"{row.size} bytes in parts of {row.part_size}, which makes it {want}."
            )
        if number not in declared:
            return f"Part {number} of {row.name!r} was sent without being declared."
        if part.crc32 and part.crc32 != declared[number]:
            return (
                f"Part {number} of {row.name!r} has crc32 {part.crc32}; it was declared "
                f"{declared[number]}."
            )
    return ""


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


# -- 5. cancel and expire -----------------------------------------------------------------------
def cancel(storage: QueuedStorage, name: str, owner: str) -> None:
    """The owner gives the upload up: the multipart upload is aborted (and the object, if a
    completion finished it on S3 and stopped before recording it), the name released."""
    _own_upload(storage, name, owner)
    ended = _abort_and_end(storage, name, cancel=True)
    if ended is None:
        raise DirectRefused(409, f"{name!r} is being completed; ask its status.")


def abort(storage: QueuedStorage, name: str) -> bool | None:
    """Staff give the upload up, whoever started it (the ledger admin's action): as
    :func:`cancel`, without the owner. ``None`` when a completion holds it or it is no longer
    ``uploading`` (nothing changed); a remote that does not answer is a 503
    :class:`DirectRefused` (the upload kept)."""
    done = _abort_and_end(storage, name, cancel=True)
    if done:
        logger.info("aborted the direct upload of %r (storage %r) by hand", name, storage.alias)
    return done


def expire(storage: QueuedStorage, row: StoredFile) -> bool:
    """The reconcile pass: abort an upload left alone too long and release its name (unless
    a claim holds it, or the row changed since the pass read it *row*). An upload that a
    completion finished on S3, and stopped before recording, is recorded ``remote`` instead.
    ``True`` when it expired."""
    ended = _abort_and_end(storage, row.name, cancel=False, as_read=row)
    if ended is True:
        logger.warning(
            "expired the direct upload of %r (storage %r, owner %r): untouched since %s",
            row.name,
            storage.alias,
            row.owner,
            row.updated.isoformat(" ", "seconds"),
        )
    return ended is True


def _declared_composite(row: StoredFile) -> str:
    """The composite CRC32 the row's declared parts make, ``""`` until every part is
    declared."""
    assert row.size is not None and row.part_size
    count = part_count(row.size, row.part_size)
    declared = _declared(row)
    if sorted(declared) != list(range(1, count + 1)):
        return ""
    return s3_direct.composite([declared[n] for n in range(1, count + 1)])


def _is_declared(found: RemoteObject | None, size: int, expected: str) -> bool:
    """Whether the object the remote reports is the declared one: its size, and the composite
    CRC32 *expected* of the declared parts (``""``: not all declared, so it cannot be)."""
    return (
        found is not None
        and bool(expected)
        and found.size == size
        and s3_direct.same_composite(found.crc32, expected)
    )


def _finished_object(storage: QueuedStorage, row: StoredFile) -> str:
    """The composite CRC32 of the object S3 holds under *row*'s name if it is the one the
    row's declared parts make (a completion finished it), else ``""``."""
    expected = _declared_composite(row)
    if not expected:
        return ""
    assert row.size is not None
    found = remote_object(storage.remote, row.name, timeout=s3_direct.REQUEST_TIMEOUT)
    return expected if _is_declared(found, row.size, expected) else ""


def _abort_and_end(
    storage: QueuedStorage, name: str, *, cancel: bool, as_read: StoredFile | None = None
) -> bool | None:
    """Claim, abort the multipart upload, then end the row: cancelled (the object a
    completion may have finished deleted) or expired (such an object recorded ``remote``).
    ``None``: a claim holds it; ``False`` (with *as_read*, the row as the pass read it): the
    row changed since, or a claim holds it, or the remote failed, or it was recorded."""
    claimant = _claimant()
    updated = None if as_read is None else as_read.updated
    row = storage.ledger.direct_claim(name, claimant, CLAIM_SECONDS, updated=updated)
    if row is None:
        return None if as_read is None else False
    try:
        if row.upload_id:
            s3_direct.abort(storage.remote, name, row.upload_id)
        finished = _finished_object(storage, row)
        if finished and cancel:
            delete_remote(storage.remote, name)
    except (BotoCoreError, ClientError, ConnectionError) as err:
        storage.ledger.direct_unclaim(name, claimant)
        if as_read is None:
            raise _remote_down(name, err) from err
        logger.warning("could not abort the direct upload of %r (%s); next pass", name, err)
        return False
    if cancel:
        return storage.ledger.direct_cancel(name, claimant)
    if finished:
        assert row.size is not None
        storage.ledger.direct_remote(
            name, claimant, size=row.size, checksum=finished, algorithm=RECORDED_ALGORITHM
        )
        logger.warning(
            "recorded the direct upload of %r (storage %r) remote: its completion finished it "
            "on the remote and stopped before recording it",
            name,
            storage.alias,
        )
        return False
    return storage.ledger.direct_expired(name, claimant)
