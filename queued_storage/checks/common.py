"""What the system checks of every topic share: a setting's raw value, the tests of a positive
number, and the aliases of the QueuedStorages in ``STORAGES``."""

from __future__ import annotations

from typing import TypeGuard

from django.conf import settings as django_settings

from queued_storage.conf import DEFAULTS
from queued_storage.construction import queued_entries

__all__ = ["positive_int", "positive_number", "queued_aliases", "setting"]


def setting(name: str) -> object:
    """The raw value of ``QUEUED_STORAGE_<name>`` (unchecked), or its default from ``conf``."""
    return getattr(django_settings, f"QUEUED_STORAGE_{name}", DEFAULTS[name])


def positive_int(value: object) -> TypeGuard[int]:
    """Whether *value* is an integer above 0 (``True`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def positive_number(value: object) -> TypeGuard[float]:
    """Whether *value* is an integer or a float above 0 (``True`` is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def queued_aliases() -> list[str]:
    return [alias for alias, _options, _backend in queued_entries()]
