"""tus 1.0.0 resumable uploads (https://tus.io/protocols/resumable-upload) as Django views.

:class:`TusUploadView` speaks the core protocol (``OPTIONS``, ``HEAD``, ``PATCH``) and the
extensions ``creation``, ``creation-with-upload``, ``creation-defer-length``, ``expiration``,
``checksum`` (``sha1``, ``md5``, ``sha256``; a chunk that does not match is discarded, 460) and
``termination``. ``docs/tus.md`` is the user's page.

Why it is built this way:

* The state of an upload is its :class:`~queued_storage.models.TusUpload` row, read at every
  request: any web process (any host sharing the staging volume) continues any upload.
* Its bytes are a file of its own, ``<staging root>/.queued_storage-tus/<id>``, on the staging
  filesystem, so the last byte ends in ``QueuedStorage.save()`` moving it into place with a
  rename (no copy), as the raw upload view's spool file is.
* Appends to one upload are serialised by its lock (:mod:`queued_storage.tus_lock`: a
  ``flock`` on its file plus a per-process set; whoever finds it held gets 409), which a web
  process killed mid-append does not keep. The offset moves with one conditional UPDATE from
  the offset the append started at (``ledger.py``).
* The version check, the owner check, the authorizer hook (``action="upload"``) and the
  limits all run before a byte of the body is read (an id of someone else's upload gets
  the 404 of an unknown id, never the authorizer's answer); the body is read with the raw upload
  view's reader and idle timeout, one ``QUEUED_STORAGE_UPLOAD_CHUNK_SIZE`` at a time.
* An upload whose length is deferred (``Upload-Defer-Length: 1``) keeps the limits per chunk:
  each chunk needs a ``Content-Length``, the offset plus it must fit the size limit, and it
  is held in the staging budget while it arrives (then the upload reserves what it
  received); the ``Upload-Length`` a later ``PATCH`` sends is checked like one sent at
  creation, and set once.
* The offset only counts bytes that are on disk (``fsync``, unless ``QUEUED_STORAGE_FSYNC`` is
  off); bytes a killed process wrote past it are cut off by the next append.

Requests other than ``OPTIONS`` need ``Tus-Resumable: 1.0.0`` (412 otherwise); the protocol's
headers are read and answers framed by :mod:`queued_storage.tus_protocol`. A browser cannot
send that header cross-site without a CORS preflight, which is why the views are exempt from
CSRF, like the raw upload view.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import uuid
from typing import TYPE_CHECKING
from urllib.parse import quote

from django.core.exceptions import SuspiciousFileOperation
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt

from queued_storage.asgi import BODY_STREAM
from queued_storage.conf import settings
from queued_storage.exceptions import StagingFull
from queued_storage.ledger import (
    ledger_database,
    tus_advance,
    tus_complete,
    tus_create,
    tus_forget,
    tus_named,
    tus_set_length,
    tus_upload,
)
from queued_storage.names import LEDGER_NAME_LENGTH
from queued_storage.storage import QueuedStorage, owned_by
from queued_storage.tus_lock import Busy, exclusive, settled
from queued_storage.tus_protocol import (
    EXTENSIONS,
    NAME_HEADER,
    OFFSET_CONTENT_TYPE,
    STATUS_HEADER,
    TUS_VERSION,
    answer,
    creation,
    expires_header,
    parse_metadata,
)
from queued_storage.uploads import (
    CHECKSUM_ALGORITHMS,
    ChunkChecksum,
    StagedFile,
    UploadRefused,
    append_stream,
    body_idle_timeout,
    byte_count,
    tus_dir,
)
from queued_storage.views.authorization import as_response, uploader
from queued_storage.views.common import STAGING_FULL
from queued_storage.views.upload import UploadView, budget_reserved

if TYPE_CHECKING:  # views import no model at run time (DESIGN.md, "ingest")
    from queued_storage.models import TusUpload

__all__ = ["TUS_VERSION", "TusUploadView", "parse_metadata"]

logger = logging.getLogger(__name__)


def _elsewhere(row: TusUpload) -> bool:
    """Whether *row*'s bytes were received by another host than this one."""
    return bool(row.host) and row.host != settings.HOST


def _on_another_host(row: TusUpload) -> HttpResponse:
    """503 for a request that reached a host without the upload's bytes: a staging volume
    that is not shared, and routing that is not sticky. The client retries (tus clients retry
    a 5xx), and nothing is lost; the hosts' names are logged, not sent."""
    logger.warning(
        "tus upload %s: its bytes are on host %r, this request reached host %r, whose staging "
        "directory does not have them; share the staging volume or route an upload's requests "
        "to one host (docs/tus.md)",
        row.id,
        row.host,
        settings.HOST,
    )
    return answer(
        503,
        "This upload's bytes are on another web host; retry (the request must reach that host).",
        Retry_After="5",
    )


@method_decorator(csrf_exempt, name="dispatch")
class TusUploadView(UploadView):
    """The tus endpoint: ``POST`` creates an upload (URL without ``upload_id``); ``HEAD``,
    ``PATCH`` and ``DELETE`` act on one (URL with ``upload_id``); ``OPTIONS`` on either.

    Class attributes (and ``as_view()`` arguments) as :class:`~queued_storage.views.UploadView`:
    ``storage_alias``, ``prefix``, ``max_bytes``, ``idle_timeout``; and ``head_wait``.
    """

    http_method_names = ["options", "head", "post", "patch", "delete"]
    #: Seconds a ``HEAD`` waits for a chunk being received to end, so that it answers the
    #: offset the next ``PATCH`` is held to (``0``: answer at once).
    head_wait: float = 10.0

    # -- protocol frame ------------------------------------------------------------------------
    def dispatch(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponseBase:
        method = (request.method or "").lower()
        if method != "options" and request.headers.get("Tus-Resumable") != TUS_VERSION:
            return answer(412, f"Send Tus-Resumable: {TUS_VERSION}.", Tus_Version=TUS_VERSION)
        with_id = "upload_id" in kwargs
        if method in ("head", "patch", "delete") and not with_id:
            return answer(
                405, "Create an upload with POST; then use its URL.", Allow="OPTIONS, POST"
            )
        if method == "post" and with_id:
            return answer(405, "POST creates uploads at the endpoint URL.")
        try:
            return super().dispatch(request, *args, **kwargs)
        except UploadRefused as refusal:
            if refusal.status >= 500:
                logger.warning("tus upload refused: %s", refusal.message)
            response = answer(refusal.status, refusal.message)
            if refusal.status == 408 and BODY_STREAM in request.META:
                response["Connection"] = "close"
            return response

    def options(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        return answer(
            204,
            Tus_Version=TUS_VERSION,
            Tus_Extension=EXTENSIONS,
            Tus_Max_Size=str(self.get_max_bytes()),
            Tus_Checksum_Algorithm=",".join(CHECKSUM_ALGORITHMS),
        )

    def _refused(self, request: HttpRequest, name: str) -> HttpResponse | None:
        refused = as_response(self.authorize(request, name))
        if refused is not None:
            refused["Tus-Resumable"] = TUS_VERSION
        return refused

    def _own_upload(self, request: HttpRequest) -> TusUpload | HttpResponse:
        """The upload of the URL, after the owner check and the authorizer; 410 when it
        expired: either the row or the answer that refuses the request.

        A malformed or unknown id, an upload of another storage and an upload of another
        client all get the same 404, byte for byte (status, body, headers: the requester is
        read first in every case, so each 404 carries the ``Vary: Cookie`` of the session it
        read). The authorizer is asked only about the client's own upload: its 401 or 403
        for someone else's id would tell that the id exists.
        """
        client = uploader(request)
        upload_id = str(self.kwargs["upload_id"])
        try:
            uuid.UUID(upload_id)
        except ValueError:
            return answer(404, "No such upload.")
        row = tus_upload(upload_id)
        if row is None or row.alias != self.get_storage().alias or row.owner != client:
            return answer(404, "No such upload.")
        refused = self._refused(request, row.name)
        if refused is not None:
            return refused
        if row.expires <= timezone.now():
            return answer(410, "This upload expired; start a new one.")
        return row

    def _upload_url(self, request: HttpRequest, upload_id: str) -> str:
        match = request.resolver_match
        namespace = match.namespace if match is not None and match.namespace else "queued_storage"
        return reverse(f"{namespace}:tus-upload", kwargs={"upload_id": upload_id})

    def _status_url(self, request: HttpRequest, name: str) -> str | None:
        try:
            return self.status_url(request, name)
        except NoReverseMatch:
            return None

    def _finished_headers(self, request: HttpRequest, stored: str) -> dict[str, str]:
        headers = {NAME_HEADER: quote(stored, safe="/")}
        status = self._status_url(request, stored)
        if status:
            headers[STATUS_HEADER] = status
        return headers

    # -- core ----------------------------------------------------------------------------------
    def head(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        """The offset the next ``PATCH`` will be held to.

        A chunk still being received (a client that resumes at once after a dropped
        connection often asks while the server is still writing what arrived) is waited for,
        at most :attr:`head_wait` seconds; then the offset it committed is answered. After
        that wait (a chunk that keeps arriving), the committed offset is answered as it is.
        """
        row = self._own_upload(request)
        if isinstance(row, HttpResponse):
            return row
        if row.completed is None and self.head_wait > 0:
            upload_id = str(row.id)
            path = os.path.join(tus_dir(self.get_storage().local), upload_id)
            if settled(upload_id, path, self.head_wait):
                fresh = tus_upload(upload_id)
                if fresh is None:  # deleted meanwhile
                    return answer(404, "No such upload.")
                row = fresh
        response = answer(
            200,
            Upload_Offset=str(row.offset),
            Upload_Expires=expires_header(row.expires),
            Cache_Control="no-store",
        )
        if row.length is None:
            response["Upload-Defer-Length"] = "1"
        else:
            response["Upload-Length"] = str(row.length)
        if row.metadata:
            response["Upload-Metadata"] = row.metadata
        if row.stored_name:
            for key, value in self._finished_headers(request, row.stored_name).items():
                response[key] = value
        return response

    def patch(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        row = self._own_upload(request)
        if isinstance(row, HttpResponse):
            return row
        if request.content_type != OFFSET_CONTENT_TYPE:
            return answer(415, f"Send the chunk as Content-Type: {OFFSET_CONTENT_TYPE}.")
        offset = byte_count("Upload-Offset", request.headers.get("Upload-Offset"))
        if offset is None:
            return answer(400, "Send Upload-Offset: the offset this chunk starts at.")
        if offset != row.offset or row.completed is not None:
            return answer(
                409,
                f"The upload is at offset {row.offset}, not {offset}.",
                Upload_Offset=str(row.offset),
            )
        raw_length = request.headers.get("Upload-Length")
        if raw_length is not None:
            row = self._settle_length(row, raw_length)
        return self._append(request, row)

    def _settle_length(self, row: TusUpload, raw: str) -> TusUpload:
        """The upload with the ``Upload-Length`` a ``PATCH`` sent: recorded once if it was
        deferred (after the size limit and the staging budget), else the same as before."""
        length = byte_count("Upload-Length", raw)
        if length is None:
            raise UploadRefused(400, "Send Upload-Length: the size of the whole file in bytes.")
        if row.length is not None:
            if length != row.length:
                raise UploadRefused(
                    400, f"The upload's length is {row.length}; it cannot change to {length}."
                )
            return row
        if length < row.offset:
            raise UploadRefused(
                400, f"Upload-Length {length} is less than the {row.offset} bytes received."
            )
        self.check_length(length)
        more = length - row.offset if length > row.offset else None  # none: nothing to check
        with budget_reserved(self.get_storage(), row.name, more):  # until the row holds it
            settled = tus_set_length(row.id, length)
        if not settled:
            fresh = tus_upload(row.id)
            if fresh is None:
                raise UploadRefused(404, "No such upload.")
            if fresh.length != length:
                raise UploadRefused(
                    409,
                    f"The upload changed meanwhile (length {fresh.length}, offset "
                    f"{fresh.offset}); ask with HEAD.",
                )
        row.length = length
        return row

    def delete(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        row = self._own_upload(request)
        if isinstance(row, HttpResponse):
            return row
        if row.completed is not None:
            return answer(409, "This upload is finished; delete the stored file instead.")
        path = os.path.join(tus_dir(self.get_storage().local), str(row.id))
        try:
            with exclusive(str(row.id), path):
                os.unlink(path)
        except Busy:
            return answer(409, "A chunk of this upload is being received; try again.")
        except FileNotFoundError:
            if _elsewhere(row):
                return _on_another_host(row)
        tus_forget(row.id)
        return answer(204)

    # -- creation ------------------------------------------------------------------------------
    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        asked = creation(request.headers, self.prefix)  # dispatch() answers a refusal
        length, name = asked.length, asked.name
        refused = self._refused(request, name)
        if refused is not None:
            return refused
        if length is not None:
            self.check_length(length)  # dispatch() answers the refusal
        with_body = request.content_type == OFFSET_CONTENT_TYPE
        declared = (
            self._declared_length(request, chunked_ok=length is not None) if with_body else None
        )
        if with_body and declared is not None and length is not None and declared > length:
            return answer(400, f"The body is longer than Upload-Length ({length}).")
        ChunkChecksum.from_header(request.headers.get("Upload-Checksum"))  # 400 before the body
        storage = self.get_storage()
        with contextlib.ExitStack() as reservation:
            try:
                # The bytes are held in the budget from the check on: the whole length until
                # the row holds it; a deferred length's first chunk until it is received.
                reservation.enter_context(
                    budget_reserved(storage, name, length if length is not None else declared)
                )
            except UploadRefused as refusal:
                return answer(refusal.status, refusal.message)
            upload_id = str(uuid.uuid4())
            path = os.path.join(tus_dir(storage.local), upload_id)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            try:
                row = tus_create(
                    id=upload_id,
                    alias=storage.alias,
                    name=name,
                    content_type=asked.content_type[:255],
                    metadata=asked.metadata,
                    owner=uploader(request),
                    host=settings.HOST,
                    length=length,
                    expires=timezone.now() + datetime.timedelta(seconds=settings.TUS_EXPIRY),
                )
            except BaseException:
                os.unlink(path)
                raise
            if length is not None:
                reservation.close()  # the row holds the length from now on
            location = self._upload_url(request, upload_id)
            if with_body or length == 0:
                response = self._append(request, row, checked=True)
                if response.status_code != 204:
                    response["Location"] = location
                    return response
                response.status_code = 201
            else:
                response = answer(201, Upload_Offset="0")
        response["Location"] = location
        response["Upload-Expires"] = expires_header(row.expires)
        return response

    # -- appending -----------------------------------------------------------------------------
    def _append(
        self, request: HttpRequest, row: TusUpload, *, checked: bool = False
    ) -> HttpResponse:
        """Receive one chunk at ``row.offset``; finish the upload with its last byte.

        While the length is deferred the chunk's ``Content-Length`` is required, the offset
        plus it must fit the size limit, and it must fit the staging budget (unless the
        creation *checked* it already).
        """
        with_body = request.content_type == OFFSET_CONTENT_TYPE
        deferred = row.length is None
        declared = self._declared_length(request, chunked_ok=not deferred) if with_body else 0
        if row.length is None:
            assert declared is not None  # _declared_length answers 411 for a chunked body
            remaining = self.get_max_bytes() - row.offset
            if declared > remaining:
                return answer(
                    413,
                    f"The chunk has {declared} bytes; after the {row.offset} received the "
                    f"limit of {self.get_max_bytes()} leaves {remaining}.",
                )
        else:
            remaining = row.length - row.offset
            if declared is not None and declared > remaining:
                return answer(413, f"The chunk has {declared} bytes; the upload lacks {remaining}.")
        storage = self.get_storage()
        # A chunk of deferred length is held in the budget while it arrives (the row holds it
        # once its offset moved); a known length is held by the row already.
        reserved = declared if deferred and declared and not checked else None
        with budget_reserved(storage, row.name, reserved):
            checksum = ChunkChecksum.from_header(request.headers.get("Upload-Checksum"))
            return self._receive(request, storage, row, declared, remaining, checksum)

    def _receive(
        self,
        request: HttpRequest,
        storage: QueuedStorage,
        row: TusUpload,
        declared: int | None,
        remaining: int,
        checksum: ChunkChecksum | None,
    ) -> HttpResponse:
        """The chunk of :meth:`_append` once its limits are checked: appended under the
        upload's lock, its offset committed, the upload finished with its last byte."""
        with_body = request.content_type == OFFSET_CONTENT_TYPE
        upload_id = str(row.id)
        path = os.path.join(tus_dir(storage.local), upload_id)
        try:
            with exclusive(upload_id, path) as fd:
                fresh = tus_upload(upload_id)  # another append may have ended meanwhile
                if fresh is None:
                    return answer(404, "No such upload.")
                if fresh.offset != row.offset or fresh.completed is not None:
                    return answer(
                        409,
                        f"The upload is at offset {fresh.offset}, not {row.offset}.",
                        Upload_Offset=str(fresh.offset),
                    )
                idle_timeout = self.get_idle_timeout()
                if with_body:
                    with body_idle_timeout(request.META, idle_timeout):
                        appended = append_stream(
                            self._body_reader(request, declared),
                            fd,
                            offset=row.offset,
                            declared=declared,
                            remaining=remaining,
                            chunk_size=settings.UPLOAD_CHUNK_SIZE,
                            checksum=checksum,
                            idle_timeout=idle_timeout,
                            fsync=settings.FSYNC,
                        )
                    received, refusal = appended.received, appended.refusal
                else:
                    received, refusal = 0, None
                offset = row.offset + received
                expires = timezone.now() + datetime.timedelta(seconds=settings.TUS_EXPIRY)
                if offset == row.length and refusal is None:
                    return self._finish(request, storage, row, path, expires)
                if received and not tus_advance(upload_id, row.offset, offset, expires):
                    return answer(409, "The upload changed while this chunk arrived.")
                if refusal is not None:
                    raise refusal
                return answer(
                    204, Upload_Offset=str(offset), Upload_Expires=expires_header(expires)
                )
        except Busy:
            return answer(
                409,
                "Another request is sending a chunk of this upload.",
                Upload_Offset=str(row.offset),
            )
        except FileNotFoundError:
            if _elsewhere(row):
                return _on_another_host(row)
            return answer(410, "The bytes of this upload are gone; start a new one.")

    def _finish(
        self,
        request: HttpRequest,
        storage: QueuedStorage,
        row: TusUpload,
        path: str,
        expires: datetime.datetime,
    ) -> HttpResponse:
        """Save the complete file through ``QueuedStorage.save()`` (a rename out of the tus
        directory): the offset, the end of the upload's budget reservation, the saved file's
        row and its transfer (dispatched on commit) are one transaction."""
        assert row.length is not None  # the last byte arrived: the length is known
        staged = StagedFile(path, row.name, row.length, content_type=row.content_type)
        try:
            with transaction.atomic(using=ledger_database()), owned_by(row.owner):
                if not tus_advance(row.id, row.offset, row.length, expires) or not tus_complete(
                    row.id, timezone.now()
                ):
                    return answer(409, "The upload changed while this chunk arrived.")
                stored = storage.save(row.name, staged, max_length=LEDGER_NAME_LENGTH)
                tus_named(row.id, stored)
        except SuspiciousFileOperation as err:
            return answer(400, str(err))
        except StagingFull as err:
            logger.warning("tus upload %s of %r refused: %s", row.id, row.name, err)
            return answer(507, STAGING_FULL)
        finally:
            staged.close()
        return answer(
            204,
            Upload_Offset=str(row.length),
            Upload_Expires=expires_header(expires),
            **{k.replace("-", "_"): v for k, v in self._finished_headers(request, stored).items()},
        )
