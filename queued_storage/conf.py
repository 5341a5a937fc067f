"""Settings of queued_storage, read lazily at each access.

Every ``QUEUED_STORAGE_*`` setting is a property of :data:`settings` that reads
``django.conf.settings`` when it is accessed, never at import, so ``override_settings`` works
and nothing is frozen at start-up. docs/configuration.md lists each one with its type,
default and effect.
"""

from __future__ import annotations

import socket
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["DEFAULTS", "SENDFILE_MODES", "settings"]

MiB = 1024 * 1024


#: The default of every ``QUEUED_STORAGE_<NAME>`` setting, by ``<NAME>`` (the system checks
#: read them here too).
DEFAULTS: dict[str, Any] = {
    "CACHE": "default",
    "CACHE_PREFIX": "queued_storage",
    "CACHE_TIMEOUT": 7 * 24 * 3600,
    "RETRIES": 5,
    "RETRY_DELAY": 60,
    "RETRY_MAX_DELAY": 3600,
    "RETRY_FOR": 24 * 3600,
    "DATABASE": None,
    "LEASE_TIMEOUT": 120,
    "HOST": None,
    "REMOTE_CHECK_TIMEOUT": None,
    "MULTIPART_THRESHOLD": 16 * MiB,
    "MULTIPART_CHUNKSIZE": 16 * MiB,
    "MAX_CONCURRENCY": 4,
    "BATCH_FILES": 16,
    "BATCH_FILE_BYTES": 1 * MiB,
    "CHUNK_SIZE": 8 * MiB,
    "RECONCILE_AFTER": None,
    "DISPATCH_WAIT": 0.25,
    "RECONCILE_BATCH": 500,
    "RECONCILE_ON_START": 500,
    "WATCH_INTERVAL": 5,
    "RECONCILE_VERIFY_SAMPLE": 100,
    "STAGING_BUDGET": None,
    "FSYNC": True,
    "UPLOAD_STORAGE": "default",
    "UPLOAD_MAX_BYTES": 5 * 1024 * MiB,
    "UPLOAD_CHUNK_SIZE": 256 * 1024,
    "UPLOAD_IDLE_TIMEOUT": 30,
    "UPLOAD_AUTHORIZER": None,
    "UPLOAD_PERMISSION": "queued_storage.add_storedfile",
    "STATUS_PERMISSION": "queued_storage.view_storedfile",
    "NGINX_UPLOAD_DIR": None,
    "NGINX_SECRET": None,
    "CHECKSUM": "crc32",
    "METRICS": False,
    "METRICS_TOKEN": None,
    "CLEANUP_LOCAL_AFTER": 7 * 24 * 3600,
    "CLEANUP_SPOOL_AFTER": 24 * 3600,
    "CLEANUP_UPLOADS_AFTER": 24 * 3600,
    "SERVE_STAGED": None,
    "READ_PERMISSION": None,
    "SENDFILE": None,
    "SENDFILE_PREFIX": "/_queued_storage_staged/",
    "TUS_EXPIRY": 24 * 3600,
    "DIRECT_EXPIRY": 24 * 3600,
    "DIRECT_PART_SIZE": 16 * MiB,
    "DIRECT_URL_EXPIRY": 3600,
    "SERVE_UNPROCESSED": "owner",
    "QUARANTINE": "keep",
}

#: The values of ``QUEUED_STORAGE_SERVE_UNPROCESSED``: who may read, through the staged-file
#: view, a waiting file that its storage's processors have not passed yet.
SERVE_UNPROCESSED_MODES = ("owner", "all", "none")
#: The values of ``QUEUED_STORAGE_QUARANTINE`` besides an absolute directory path.
QUARANTINE_MODES = ("keep", "delete")

#: The values of ``QUEUED_STORAGE_SENDFILE`` besides ``None`` (Django streams the file).
SENDFILE_MODES = ("x-accel-redirect", "x-sendfile")


class Settings:
    """Typed accessors for the ``QUEUED_STORAGE_*`` settings (defaults in one place)."""

    def _get(self, name: str) -> Any:
        return getattr(django_settings, f"QUEUED_STORAGE_{name}", DEFAULTS[name])

    def __getattr__(self, attribute: str) -> Any:
        """django-queued-storage's spelling: ``settings.QUEUED_STORAGE_RETRIES`` is
        ``settings.RETRIES``."""
        short = attribute.removeprefix("QUEUED_STORAGE_")
        if short != attribute and short in DEFAULTS:
            return getattr(self, short)
        raise AttributeError(f"queued_storage has no setting {attribute!r}")

    # --- state cache ---------------------------------------------------------------------
    @property
    def CACHE(self) -> str:
        """Alias in ``CACHES`` of the cache that holds the fast copy of each file's state."""
        return str(self._get("CACHE"))

    @property
    def CACHE_PREFIX(self) -> str:
        """Prefix of the state cache keys (kept from django-queued-storage)."""
        return str(self._get("CACHE_PREFIX"))

    @property
    def CACHE_TIMEOUT(self) -> int:
        """Seconds a state stays in the cache (it is rewritten at every state change)."""
        return int(self._get("CACHE_TIMEOUT"))

    # --- retry policy --------------------------------------------------------------------
    @property
    def RETRIES(self) -> int:
        """Retries after a file's first error about the file itself (a checksum mismatch, a
        hook asking to retry, an unknown error) before the next one makes it ``failed``.
        Failures of the infrastructure are bounded by :attr:`RETRY_FOR` instead."""
        return int(self._get("RETRIES"))

    @property
    def RETRY_DELAY(self) -> float:
        """Base delay in seconds of the exponential backoff between attempts."""
        return float(self._get("RETRY_DELAY"))

    @property
    def RETRY_MAX_DELAY(self) -> float:
        """Upper bound in seconds of one backoff delay."""
        return float(self._get("RETRY_MAX_DELAY"))

    @property
    def RETRY_FOR(self) -> float:
        """Seconds a run of infrastructure failures of one file (connection errors, timeouts,
        5xx, throttling, lost workers, lost messages) is retried, counted from its first
        failure; the first such failure after it makes the file ``failed``."""
        return float(self._get("RETRY_FOR"))

    # --- ledger --------------------------------------------------------------------------
    @property
    def DATABASE(self) -> str | None:
        """Database alias of the ledger; ``None`` lets Django's routers decide."""
        value = self._get("DATABASE")
        return None if value is None else str(value)

    @property
    def LEASE_TIMEOUT(self) -> float:
        """Seconds a worker's lease on a file lasts without renewal (renewed during a transfer)."""
        return float(self._get("LEASE_TIMEOUT"))

    @property
    def HOST(self) -> str:
        """Name recorded in the ledger as the host that holds the local copy."""
        return str(self._get("HOST") or socket.gethostname())

    @property
    def REMOTE_CHECK_TIMEOUT(self) -> float | None:
        """Seconds ``save()`` may spend asking the remote whether a name is taken; ``None``
        (the default): it never asks, the ledger alone decides (a request never waits on S3)."""
        value = self._get("REMOTE_CHECK_TIMEOUT")
        return None if value is None else float(value)

    # --- transfer engine -----------------------------------------------------------------
    @property
    def MULTIPART_THRESHOLD(self) -> int:
        """Files of at least this many bytes go to S3 as a multipart upload."""
        return int(self._get("MULTIPART_THRESHOLD"))

    @property
    def MULTIPART_CHUNKSIZE(self) -> int:
        """Part size in bytes (raised automatically to stay under S3's 10,000 parts)."""
        return int(self._get("MULTIPART_CHUNKSIZE"))

    @property
    def MAX_CONCURRENCY(self) -> int:
        """Parts in flight at once for one file; memory is about this times the part size."""
        return int(self._get("MAX_CONCURRENCY"))

    @property
    def BATCH_FILES(self) -> int:
        """Most files one worker's task sends at once when its own file is small: it leases
        up to this many small ``pending`` files of its storage and host in one statement and
        sends them in parallel (``MAX_CONCURRENCY`` at a time); 1 sends each file alone."""
        return int(self._get("BATCH_FILES"))

    @property
    def BATCH_FILE_BYTES(self) -> int:
        """Largest file (bytes) that joins a batch, and that starts one (always below the
        multipart threshold): a big file is never held up by a batch."""
        return int(self._get("BATCH_FILE_BYTES"))

    @property
    def CHUNK_SIZE(self) -> int:
        """Read size in bytes of the generic (non-S3) copy and of checksum passes."""
        return int(self._get("CHUNK_SIZE"))

    # --- reconcile pass and staging budget (queued_storage.reconcile) ----------------------
    @property
    def RECONCILE_AFTER(self) -> float:
        """Seconds a ``pending`` file may wait (beyond its retry backoff) before it is re-queued;
        ``None`` (the default): :attr:`LEASE_TIMEOUT`, the time a worker has to show it is
        working on a file before another may take it over."""
        value = self._get("RECONCILE_AFTER")
        return self.LEASE_TIMEOUT if value is None else float(value)

    @property
    def DISPATCH_WAIT(self) -> float:
        """Seconds the publisher thread's attempt to send a save's transfer message may last
        before the broker counts as stuck: later saves then mark their rows refused at once
        (for the next pass or starting worker) until it takes a message again. No request
        waits for the broker."""
        return float(self._get("DISPATCH_WAIT"))

    @property
    def RECONCILE_BATCH(self) -> int:
        """Most rows one reconcile pass handles per storage and kind of work."""
        return int(self._get("RECONCILE_BATCH"))

    @property
    def RECONCILE_ON_START(self) -> int:
        """Most files a worker re-queues when it starts (its host's expired leases and overdue
        transfers, looked for at start-up and once more when the leases of a worker that died
        before it have expired); ``0`` turns this off."""
        return int(self._get("RECONCILE_ON_START"))

    @property
    def WATCH_INTERVAL(self) -> float:
        """Seconds between two looks of a worker's watch at its host's ledger rows: the retries
        that are due, refused and overdue transfers, expired leases (``reconcile.watch``);
        ``0`` turns it off (the scheduled reconcile pass then sends retries, less promptly)."""
        return float(self._get("WATCH_INTERVAL"))

    @property
    def RECONCILE_VERIFY_SAMPLE(self) -> int:
        """Remote files each reconcile pass verifies (a HEAD each, the next ones in a rotation
        over the ledger); ``0``: none."""
        return max(0, int(self._get("RECONCILE_VERIFY_SAMPLE") or 0))

    @property
    def FSYNC(self) -> bool:
        """Whether ``save()`` flushes the staged file and its folders to disk before its row
        commits (a committed ``pending`` row then survives a power cut); ``False`` for
        disposable staging."""
        return bool(self._get("FSYNC"))

    @property
    def STAGING_BUDGET(self) -> int | None:
        """Most bytes that may wait on this host for their transfer; ``None``: no limit."""
        value = self._get("STAGING_BUDGET")
        return None if value is None else int(value)

    # --- tus resumable uploads (queued_storage.tus) ---------------------------------------
    @property
    def TUS_EXPIRY(self) -> float:
        """Seconds an unfinished tus upload lives after its creation or its last append; then
        it answers 410 and ``manage.py queued_storage cleanup`` removes its bytes."""
        return float(self._get("TUS_EXPIRY"))

    # --- direct uploads (queued_storage.direct) --------------------------------------------
    @property
    def DIRECT_EXPIRY(self) -> float:
        """Seconds a direct upload lives after its start or its client's last request; then the
        reconcile pass aborts its multipart upload and releases its name."""
        return float(self._get("DIRECT_EXPIRY"))

    @property
    def DIRECT_PART_SIZE(self) -> int:
        """Bytes per part of a direct upload (at least S3's 5 MiB; more where 10,000 parts
        would not hold the file)."""
        return int(self._get("DIRECT_PART_SIZE"))

    @property
    def DIRECT_URL_EXPIRY(self) -> int:
        """Seconds a presigned part URL of a direct upload stays valid."""
        return int(self._get("DIRECT_URL_EXPIRY"))

    # --- upload views (queued_storage.views) ---------------------------------------------
    @property
    def UPLOAD_STORAGE(self) -> str:
        """Alias in ``STORAGES`` of the ``QueuedStorage`` the upload views save into."""
        return str(self._get("UPLOAD_STORAGE"))

    @property
    def UPLOAD_MAX_BYTES(self) -> int:
        """Largest upload body in bytes; a larger ``Content-Length`` is refused unread."""
        return int(self._get("UPLOAD_MAX_BYTES"))

    @property
    def UPLOAD_CHUNK_SIZE(self) -> int:
        """Read size in bytes of the upload views: one upload holds about one chunk."""
        return int(self._get("UPLOAD_CHUNK_SIZE"))

    @property
    def UPLOAD_IDLE_TIMEOUT(self) -> float | None:
        """Seconds the upload view waits for the next bytes of a body before it answers 408
        and keeps nothing (each read, not the whole upload); ``None``: the view sets no limit,
        the server's own applies. Applied under gunicorn and ``queued_storage.asgi`` only."""
        value = self._get("UPLOAD_IDLE_TIMEOUT")
        return None if value is None else float(value)

    @property
    def UPLOAD_AUTHORIZER(self) -> str | None:
        """Dotted path of ``authorize(request, name, action)``; ``None``: Django permissions."""
        value = self._get("UPLOAD_AUTHORIZER")
        return None if value is None else str(value)

    @property
    def UPLOAD_PERMISSION(self) -> str | None:
        """Permission the default authorizer requires to upload; ``None``: any signed-in user."""
        value = self._get("UPLOAD_PERMISSION")
        return None if value is None else str(value)

    @property
    def STATUS_PERMISSION(self) -> str | None:
        """Permission the default authorizer requires to read an upload's status."""
        value = self._get("STATUS_PERMISSION")
        return None if value is None else str(value)

    @property
    def NGINX_UPLOAD_DIR(self) -> str | None:
        """Directory nginx writes request bodies to (``client_body_temp_path``); ``None``: off."""
        value = self._get("NGINX_UPLOAD_DIR")
        return None if value is None else str(value)

    @property
    def NGINX_SECRET(self) -> str | None:
        """Secret nginx sends in ``X-Queued-Storage-Secret``; ``None``: not required."""
        value = self._get("NGINX_SECRET")
        return None if value is None else str(value)

    @property
    def CHECKSUM(self) -> str:
        """How multipart S3 transfers are verified: ``"crc32"`` (S3's checksums) or ``"md5"``."""
        value = str(self._get("CHECKSUM")).lower()
        if value not in ("md5", "crc32"):
            raise ImproperlyConfigured(
                f"QUEUED_STORAGE_CHECKSUM is {value!r}; use 'md5' (verified by the ETag any "
                "S3 server computes) or 'crc32' (cheaper, verified by S3's own checksum check)."
            )
        return value

    # --- monitoring (queued_storage.metrics) ---------------------------------------------
    @property
    def METRICS(self) -> bool:
        """Register the Prometheus metrics in prometheus-client's default registry at start-up
        (``queued_storage.metrics.register()``); needs the ``metrics`` extra."""
        return bool(self._get("METRICS"))

    @property
    def METRICS_TOKEN(self) -> str | None:
        """Bearer token that opens ``queued_storage.metrics.metrics_view`` to a scraper;
        ``None``: staff users only."""
        value = self._get("METRICS_TOKEN")
        return None if value is None else str(value)

    # --- manage.py queued_storage cleanup ----------------------------------------------------
    @property
    def CLEANUP_LOCAL_AFTER(self) -> float | None:
        """Seconds after its verified transfer that ``cleanup`` deletes a file's local copy
        (once the remote copy verifies again); ``None``: local copies are kept."""
        value = self._get("CLEANUP_LOCAL_AFTER")
        return None if value is None else float(value)

    @property
    def CLEANUP_SPOOL_AFTER(self) -> float:
        """Seconds unchanged after which ``cleanup`` removes an upload view's spool file that
        no process holds open (left by a killed web process)."""
        return float(self._get("CLEANUP_SPOOL_AFTER"))

    @property
    def CLEANUP_UPLOADS_AFTER(self) -> float:
        """Age in seconds after which ``cleanup`` aborts an S3 multipart upload that no ledger
        row records."""
        return float(self._get("CLEANUP_UPLOADS_AFTER"))

    # --- serving waiting files (queued_storage.views.StagedFileView) ----------------------
    @property
    def SERVE_STAGED(self) -> str | dict[str, str] | None:
        """Where ``url()`` of a waiting file points: ``None`` (the local storage's own URL),
        a URL name or a path prefix (for the storage ``UPLOAD_STORAGE`` names), or a dict of
        them by ``STORAGES`` alias."""
        value = self._get("SERVE_STAGED")
        if value is None or isinstance(value, dict):
            return value
        return str(value)

    def serve_staged_for(self, alias: str) -> str | None:
        """The URL name or path prefix that serves the waiting files of the storage *alias*;
        ``None``: they are served at the local storage's own URL (and the view answers 404)."""
        value = self.SERVE_STAGED
        if isinstance(value, dict):
            found = value.get(alias)
            return None if found is None else str(found)
        return value if value is not None and alias == self.UPLOAD_STORAGE else None

    @property
    def SERVE_UNPROCESSED(self) -> str:
        """Who may read a waiting file its storage's processors have not passed yet (through
        the staged-file view): ``"owner"`` (its owner and staff), ``"all"`` (as any waiting
        file), ``"none"`` (no one until it passed)."""
        return str(self._get("SERVE_UNPROCESSED")).lower()

    @property
    def QUARANTINE(self) -> str:
        """The fate of a rejected file's local copy: ``"keep"`` (where it is, never served),
        ``"delete"``, or an absolute directory it is moved into (``<dir>/<alias>/<name>``)."""
        return str(self._get("QUARANTINE"))

    @property
    def READ_PERMISSION(self) -> str | None:
        """Permission that lets the default authorizer give a signed-in user every waiting
        file; ``None``: only its owner and staff may read it through the view."""
        value = self._get("READ_PERMISSION")
        return None if value is None else str(value)

    @property
    def SENDFILE(self) -> str | None:
        """How the view hands a waiting file to the web server: ``None`` (Django streams it),
        ``"x-accel-redirect"`` (nginx) or ``"x-sendfile"`` (Apache's mod_xsendfile, lighttpd)."""
        value = self._get("SENDFILE")
        if value is None:
            return None
        value = str(value).lower()
        if value not in SENDFILE_MODES:
            raise ImproperlyConfigured(
                f"QUEUED_STORAGE_SENDFILE is {value!r}; use None, 'x-accel-redirect' or "
                "'x-sendfile'."
            )
        return value

    @property
    def SENDFILE_PREFIX(self) -> str:
        """nginx's ``internal`` location whose ``alias`` is the staging root (X-Accel-Redirect)."""
        return str(self._get("SENDFILE_PREFIX"))


settings = Settings()
