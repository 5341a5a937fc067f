"""Settings of queued_storage, read lazily at each access.

Every ``QUEUED_STORAGE_*`` setting is a property of :data:`settings` that reads
``django.conf.settings`` when it is accessed, never at import, so ``override_settings`` works
and nothing is frozen at start-up. The README lists each one with its type, default and effect.
"""

from __future__ import annotations

import socket
from typing import Any

from django.conf import settings as django_settings

__all__ = ["settings"]

MiB = 1024 * 1024


class Settings:
    """Typed accessors for the ``QUEUED_STORAGE_*`` settings (defaults in one place)."""

    def _get(self, name: str, default: Any) -> Any:
        return getattr(django_settings, f"QUEUED_STORAGE_{name}", default)

    # --- state cache ---------------------------------------------------------------------
    @property
    def CACHE(self) -> str:
        """Alias in ``CACHES`` of the cache that holds the fast copy of each file's state."""
        return str(self._get("CACHE", "default"))

    @property
    def CACHE_PREFIX(self) -> str:
        """Prefix of the state cache keys (kept from django-queued-storage)."""
        return str(self._get("CACHE_PREFIX", "queued_storage"))

    @property
    def CACHE_TIMEOUT(self) -> int:
        """Seconds a state stays in the cache (it is rewritten at every state change)."""
        return int(self._get("CACHE_TIMEOUT", 7 * 24 * 3600))

    # --- retry policy --------------------------------------------------------------------
    @property
    def RETRIES(self) -> int:
        """Retries after the first attempt before a transient failure becomes ``failed``."""
        return int(self._get("RETRIES", 5))

    @property
    def RETRY_DELAY(self) -> float:
        """Base delay in seconds of the exponential backoff between attempts."""
        return float(self._get("RETRY_DELAY", 60))

    @property
    def RETRY_MAX_DELAY(self) -> float:
        """Upper bound in seconds of one backoff delay."""
        return float(self._get("RETRY_MAX_DELAY", 3600))

    # --- ledger --------------------------------------------------------------------------
    @property
    def DATABASE(self) -> str | None:
        """Database alias of the ledger; ``None`` lets Django's routers decide."""
        value = self._get("DATABASE", None)
        return None if value is None else str(value)

    @property
    def LEASE_TIMEOUT(self) -> float:
        """Seconds a worker's lease on a file lasts without renewal (renewed during a transfer)."""
        return float(self._get("LEASE_TIMEOUT", 120))

    @property
    def HOST(self) -> str:
        """Name recorded in the ledger as the host that holds the local copy."""
        return str(self._get("HOST", None) or socket.gethostname())

    # --- transfer engine -----------------------------------------------------------------
    @property
    def MULTIPART_THRESHOLD(self) -> int:
        """Files of at least this many bytes go to S3 as a multipart upload."""
        return int(self._get("MULTIPART_THRESHOLD", 16 * MiB))

    @property
    def MULTIPART_CHUNKSIZE(self) -> int:
        """Part size in bytes (raised automatically to stay under S3's 10,000 parts)."""
        return int(self._get("MULTIPART_CHUNKSIZE", 16 * MiB))

    @property
    def MAX_CONCURRENCY(self) -> int:
        """Parts in flight at once for one file; memory is about this times the part size."""
        return int(self._get("MAX_CONCURRENCY", 4))

    @property
    def CHUNK_SIZE(self) -> int:
        """Read size in bytes of the generic (non-S3) copy and of checksum passes."""
        return int(self._get("CHUNK_SIZE", 8 * MiB))


settings = Settings()
