"""Transfer tasks written as django-queued-storage users wrote them: subclasses of ``Transfer``
overriding ``transfer(name, local, remote)``. Celery's ``autodiscover_tasks`` imports this."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import Storage

from queued_storage.tasks import Transfer


class CopyByHand(Transfer):
    """Copies through the Storage API and says it is done."""

    def transfer(self, name: str, local: Storage, remote: Storage, **kwargs: Any) -> bool:
        with local.open(name, "rb") as fh:
            remote.save(name, fh)
        return True


class NotYet(Transfer):
    """Never manages it: asks to be retried."""

    def transfer(self, name: str, local: Storage, remote: Storage, **kwargs: Any) -> bool:
        return False


class SaysNothing(Transfer):
    """Returns neither True nor False."""

    def transfer(self, name: str, local: Storage, remote: Storage, **kwargs: Any) -> Any:
        return None


class ClaimsDone(Transfer):
    """Says True without copying anything."""

    def transfer(self, name: str, local: Storage, remote: Storage, **kwargs: Any) -> bool:
        return True


def not_a_task(alias: str, name: str) -> None:
    """A plain function: not a Celery task."""


def has_delay(alias: str, name: str) -> None:
    """A plain function with a ``delay`` attribute, as a hand-rolled "task" might have: still
    not a Celery task (no ``apply_async``, no name)."""


has_delay.delay = has_delay  # type: ignore[attr-defined]
