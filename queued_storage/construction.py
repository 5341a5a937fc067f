"""How a ``QueuedStorage`` is built, and found again by the alias a task message names.

:class:`ConfiguredStorage` is the construction half of :class:`~queued_storage.storage.
QueuedStorage`: its options (``STORAGES`` aliases, or django-queued-storage's dotted paths and
option dicts), the Celery task it sends, and the alias it is known by (its ``STORAGES`` key, or
a digest of its configuration for a storage built in code). Every instance registers itself
under that alias, so that a worker finds it from a message's two plain strings.

The two helpers every part uses to read ``STORAGES`` live here too: :func:`storage_spec` (what
an alias or a dotted path names) and :func:`queued_entries` (the entries whose ``BACKEND`` is a
queued storage).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from django.conf import settings as django_settings
from django.core.files.storage import Storage, storages
from django.utils.functional import SimpleLazyObject
from django.utils.module_loading import import_string

from queued_storage.conf import settings
from queued_storage.exceptions import QueuedStorageConfigError
from queued_storage.ledger import Ledger
from queued_storage.processors import Processor

if TYPE_CHECKING:
    from celery import Task
    from celery.result import AsyncResult

__all__ = [
    "RENAMED_BACKENDS",
    "ConfiguredStorage",
    "StorageOptions",
    "TransferTask",
    "celery_task",
    "is_alias",
    "load_processors",
    "queued_entries",
    "registered",
    "registered_storages",
    "resolve_storage",
    "storage_spec",
]

logger = logging.getLogger(__name__)

#: Storage classes that django-storages removed, mapped to their successors, so that a project
#: written for django-queued-storage runs unchanged.
RENAMED_BACKENDS = {
    "storages.backends.s3boto.S3BotoStorage": "storages.backends.s3.S3Storage",
    "storages.backends.s3boto3.S3Boto3Storage": "storages.backends.s3.S3Storage",
}

TRANSFER_AND_DELETE = "queued_storage.tasks.TransferAndDelete"

#: The keyword arguments a storage class is built with (``OPTIONS`` of a ``STORAGES`` entry).
StorageOptions = dict[str, object]


class TransferTask(Protocol):
    """What a queued storage needs of its Celery task: a name and a way to send a message (a
    ``Task``, a ``Proxy`` of one, or a test's stand-in, ``queued_storage.testing``)."""

    @property
    def name(self) -> str: ...

    def apply_async(
        self,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> AsyncResult | None: ...


_registry: dict[str, ConfiguredStorage] = {}
_registry_lock = threading.Lock()


# -- STORAGES ---------------------------------------------------------------------------------
def is_alias(spec: object) -> bool:
    """Whether *spec* is a key of ``settings.STORAGES``."""
    return isinstance(spec, str) and spec in getattr(django_settings, "STORAGES", {})


def storage_spec(role: str, spec: object) -> str | type[Storage]:
    """What *spec*, the *role* (``"local"``/``"remote"``) storage of a queued storage, names:
    the ``STORAGES`` alias itself, or the storage class its dotted path names (a class
    django-storages removed stands for its successor, :data:`RENAMED_BACKENDS`).

    Raises ``QueuedStorageConfigError`` saying what is wrong and how to fix it.
    """
    spec = _named(role, spec)
    if is_alias(spec):
        return spec
    if "." not in spec:
        raise QueuedStorageConfigError(
            f"QueuedStorage: the {role} storage {spec!r} is not an alias in "
            f"settings.STORAGES. Add STORAGES[{spec!r}] = {{'BACKEND': ...}} or name an "
            "existing alias."
        )
    try:
        found: type[Storage] = import_string(RENAMED_BACKENDS.get(spec, spec))
    except ImportError as err:
        raise QueuedStorageConfigError(
            f"QueuedStorage: the {role} storage class {spec!r} cannot be imported ({err})."
        ) from err
    return found


def resolve_storage(role: str, spec: object, options: StorageOptions | None = None) -> Storage:
    """The storage *spec* names (see :func:`storage_spec`), built at its first use: an alias's
    from ``STORAGES``, a dotted path's class with *options* (which an alias cannot take)."""
    found = storage_spec(role, spec)
    options = options or {}
    if isinstance(found, str):
        if options:
            raise QueuedStorageConfigError(
                f"QueuedStorage: {role}_options can only be given with a dotted path; "
                f"{found!r} is a STORAGES alias, so set its OPTIONS in STORAGES instead."
            )
        return cast(Storage, SimpleLazyObject(lambda: storages[found]))
    if spec in RENAMED_BACKENDS:
        logger.warning(
            "queued_storage: %s no longer exists in django-storages; using %s. Change the "
            "dotted path to silence this warning.",
            spec,
            RENAMED_BACKENDS[str(spec)],
        )
    return cast(Storage, SimpleLazyObject(lambda: found(**options)))


def queued_entries(
    options: StorageOptions | None = None,
) -> Iterator[tuple[str, dict[str, Any], type[ConfiguredStorage]]]:
    """The ``STORAGES`` entries of queued storages: alias, ``OPTIONS`` (keyword arguments for
    the class, passed through as they are) and class; with
    *options*, only the entries with exactly these ``OPTIONS`` (the others' ``BACKEND`` is not
    even imported: a storage built while Django loads the models imports no other backend).
    An entry whose ``BACKEND`` cannot be imported is left out (Django reports it where it is
    used)."""
    for alias, conf in getattr(django_settings, "STORAGES", {}).items():
        entry_options = conf.get("OPTIONS", {})
        if options is not None and entry_options != options:
            continue
        try:
            backend = import_string(conf.get("BACKEND", ""))
        except Exception:
            continue
        if isinstance(backend, type) and issubclass(backend, ConfiguredStorage):
            yield str(alias), entry_options, backend


# -- the registry -----------------------------------------------------------------------------
def registered(alias: str) -> ConfiguredStorage | None:
    """The storage built in this process under *alias*, if any."""
    with _registry_lock:
        return _registry.get(alias)


def registered_storages() -> list[ConfiguredStorage]:
    """Every storage built in this process, in the order they were first built."""
    with _registry_lock:
        return list(_registry.values())


# -- the Celery task --------------------------------------------------------------------------
def celery_task(path: str) -> TransferTask:
    """The Celery task at the dotted *path*: a task, or a task class (django-queued-storage's
    ``Transfer`` subclasses), registered with Celery here. Anything else is refused now, not
    at the first save (where it would leave every file pending)."""
    try:
        found = import_string(path)
    except ImportError as err:
        raise QueuedStorageConfigError(
            f"QueuedStorage option 'task' is {path!r}, which cannot be imported "
            f"({err}). Use 'queued_storage.tasks.Transfer' or "
            "'queued_storage.tasks.TransferAndDelete'."
        ) from err
    from celery import Task  # the storage itself works without importing Celery
    from celery.local import Proxy

    if isinstance(found, type) and issubclass(found, Task):
        # Resolved when a message is sent: by then the project's Celery app is the current one
        # (a storage may be built while Django loads the models, before it is configured).
        return cast(TransferTask, Proxy(lambda: _registered_task(found)))
    if isinstance(found, Task) or (
        callable(getattr(found, "apply_async", None)) and isinstance(getattr(found, "name", 0), str)
    ):
        return cast(TransferTask, found)
    raise QueuedStorageConfigError(
        f"QueuedStorage option 'task' is {path!r}, which is a {type(found).__name__}, not a "
        "Celery task: messages could not be sent. Pass 'queued_storage.tasks.Transfer', "
        "'queued_storage.tasks.TransferAndDelete', or the dotted path of a subclass of "
        "queued_storage.tasks.Transfer (override its transfer(name, local, remote))."
    )


def _registered_task(task_class: type[Task]) -> Task:
    """The current Celery app's instance of *task_class* (a ``queued_storage.tasks.Transfer``
    subclass registers itself when it is defined; another task class is registered here)."""
    from celery import current_app

    name = task_class.name or f"{task_class.__module__}.{task_class.__qualname__}"
    registered = current_app.tasks.get(name)
    if type(registered) is not task_class:
        task_class.name = name
        registered = current_app.register_task(task_class())
    return registered


#: A ``processors`` entry: a dotted path (of a class, built with no arguments, or of a
#: callable), a callable, or ``{"path": "...", "options": {...}}`` (a class built with them).
ProcessorSpec = str | Processor | Mapping[str, Any]


def load_processors(specs: Sequence[ProcessorSpec]) -> tuple[Processor, ...]:
    """The callables the ``processors`` option names, in order; a clear error naming the
    entry and the fix for one that cannot be loaded."""
    if isinstance(specs, (str, bytes)) or not isinstance(specs, Sequence):
        raise QueuedStorageConfigError(
            f"QueuedStorage's processors must be a list, got {specs!r}: e.g. "
            '["queued_storage.processors.content_type.ContentTypeCheck"].'
        )
    loaded: list[Processor] = []
    for spec in specs:
        path: object = spec
        options: dict[str, Any] | None = None
        if isinstance(spec, Mapping):
            path, options = spec.get("path"), dict(spec.get("options") or {})
        if callable(path) and not isinstance(path, type) and options is None:
            loaded.append(path)
            continue
        try:
            found = import_string(path) if isinstance(path, str) else path
            made = found(**(options or {})) if isinstance(found, type) else found
        except Exception as err:
            raise QueuedStorageConfigError(
                f"QueuedStorage cannot load the processor {spec!r} ({type(err).__name__}: "
                f"{err}). Give the dotted path of a class or function, or "
                '{"path": "...", "options": {...}} for a class that takes options.'
            ) from err
        if not callable(made):
            raise QueuedStorageConfigError(
                f"The processor {spec!r} is {made!r}, which cannot be called with the file: "
                "name a function or a class whose instances are callable."
            )
        loaded.append(made)
    return tuple(loaded)


# -- the storage's construction ---------------------------------------------------------------
class ConfiguredStorage(Storage):
    """The options of a queued storage, old style and new; see ``QueuedStorage``."""

    #: Defaults that subclasses may override, as in django-queued-storage.
    #: Subclasses may name the storages here (dotted paths); an instance holds the storages.
    local: Storage = None  # type: ignore[assignment]
    remote: Storage = None  # type: ignore[assignment]
    local_options: StorageOptions | None = None
    remote_options: StorageOptions | None = None
    #: A Celery task, a ``Proxy`` of one, or a test's stand-in (``queued_storage.testing``).
    #: A subclass may name it here (a dotted path); an instance holds the task.
    task: TransferTask = "queued_storage.tasks.Transfer"  # type: ignore[assignment]
    delayed: bool = False
    #: ``None`` here: ``QUEUED_STORAGE_CACHE_PREFIX``; an instance holds the prefix it uses.
    cache_prefix: str = None  # type: ignore[assignment]
    #: The processors a subclass runs on every file (the ``processors`` option's form).
    processor_specs: ClassVar[Sequence[ProcessorSpec]] = ()

    OPTIONS: ClassVar[tuple[str, ...]] = (
        "local",
        "remote",
        "local_options",
        "remote_options",
        "cache_prefix",
        "delayed",
        "task",
        "delete_local",
        "queue",
        "alias",
        "processors",
    )

    def __init__(
        self,
        local: str | None = None,
        remote: str | None = None,
        local_options: StorageOptions | None = None,
        remote_options: StorageOptions | None = None,
        cache_prefix: str | None = None,
        delayed: bool | None = None,
        task: str | None = None,
        *,
        delete_local: bool | None = None,
        queue: str | None = None,
        alias: str | None = None,
        processors: Sequence[ProcessorSpec] | None = None,
        **unknown: object,
    ) -> None:
        if unknown:
            bad = ", ".join(repr(k) for k in sorted(unknown))
            raise QueuedStorageConfigError(
                f"Invalid option {bad} for QueuedStorage. Valid options are: "
                f"{', '.join(self.OPTIONS)}."
            )
        _check_type("local_options", local_options, dict)
        _check_type("remote_options", remote_options, dict)
        _check_type("cache_prefix", cache_prefix, str)
        _check_type("delayed", delayed, bool)
        _check_type("task", task, str)
        _check_type("delete_local", delete_local, bool)
        _check_type("queue", queue, str)
        _check_type("alias", alias, str)

        self.local_path: str = _named("local", local or type(self).local)
        self.remote_path: str = _named("remote", remote or type(self).remote)
        self.local_options = dict(local_options or type(self).local_options or {})
        self.remote_options = dict(remote_options or type(self).remote_options or {})
        self.local = resolve_storage("local", self.local_path, self.local_options)
        self.remote = resolve_storage("remote", self.remote_path, self.remote_options)
        self.task_path: str = task or cast(str, type(self).task)
        self.task = celery_task(self.task_path)
        self._calls = threading.local()
        self.delayed = type(self).delayed if delayed is None else delayed
        self.cache_prefix = cache_prefix or type(self).cache_prefix or settings.CACHE_PREFIX
        self.delete_local: bool = (
            delete_local
            if delete_local is not None
            else bool(getattr(self.task, "delete_local", None))
            or self.task_path == TRANSFER_AND_DELETE
        )
        self.queue = queue
        self.processors: tuple[Processor, ...] = load_processors(
            processors if processors is not None else type(self).processor_specs
        )
        self.alias: str = alias or self._find_alias() or self._digest_alias()
        self.ledger = Ledger(self.alias, self.cache_prefix)
        with _registry_lock:
            _registry[self.alias] = self

    def queue_for(self, host: str | None = None) -> str | None:
        """The Celery queue of transfers of files whose local copy *host* holds.

        ``queue="host"`` routes to ``queued_storage.<host>``, a queue containing ``{host}``
        to that queue with the host's name; *host* defaults to ``QUEUED_STORAGE_HOST``.
        """
        if not self.queue:
            return None
        host = host or settings.HOST
        if self.queue == "host":
            return f"queued_storage.{host}"
        return self.queue.replace("{host}", host)

    @property
    def result(self) -> AsyncResult | None:
        """The ``AsyncResult`` of the transfer this thread's last save dispatched, or ``None``
        (django-queued-storage's attribute; thread-local, so never another request's). As in
        django-queued-storage, only a save of a storage that is not ``delayed`` sets it; a
        :meth:`transfer` returns its own result and leaves this one alone."""
        return getattr(self._calls, "result", None)

    @result.setter
    def result(self, value: AsyncResult | None) -> None:
        self._calls.result = value

    def _find_alias(self) -> str | None:
        """The STORAGES key this instance was built from, if any (Django does not pass it)."""
        args, kwargs = getattr(self, "_constructor_args", ((), {}))
        if args:
            return None
        for key, _options, backend in queued_entries(kwargs):
            if backend is type(self):
                return key
        return None

    def _digest_alias(self) -> str:
        """A stable name for a storage built in code: a digest of what decides its transfers.

        Everything the worker's side depends on is in it (storages, options, task, policy), so
        two storages that would transfer differently never share a name. ``delayed`` is left
        out: it only matters in the process that saves. Pass ``alias=`` for a name that stays
        the same when these options change.
        """
        config = [
            f"{type(self).__module__}.{type(self).__qualname__}",
            self.local_path,
            self.local_options,
            self.remote_path,
            self.remote_options,
            self.task_path,
            self.delete_local,
            self.queue,
            self.cache_prefix,
        ]
        text = json.dumps(config, sort_keys=True, default=_stable)
        return "qs-" + hashlib.sha256(text.encode()).hexdigest()[:20]

    def __getstate__(self) -> dict[str, object]:
        # Never pickle live connections or lazy objects: rebuild from the constructor.
        return {"constructor_args": self._constructor_args}

    def __setstate__(self, state: dict[str, tuple[tuple[object, ...], StorageOptions]]) -> None:
        args, kwargs = state["constructor_args"]
        self._constructor_args = (args, kwargs)
        self.__init__(*args, **kwargs)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<QueuedStorage {self.alias!r}: {self.local_path!r} -> {self.remote_path!r}>"


def _named(role: str, spec: object) -> str:
    """*spec*, checked to be a name (an alias or a dotted path) for the *role* storage."""
    if not isinstance(spec, str) or not spec:
        raise QueuedStorageConfigError(
            f"QueuedStorage needs the {role!r} storage as an alias in settings.STORAGES or "
            f"as a dotted path to a storage class, got {spec!r}."
        )
    return spec


def _check_type(option: str, value: object, expected: type) -> None:
    if value is not None and not isinstance(value, expected):
        raise QueuedStorageConfigError(
            f"QueuedStorage option {option!r} must be a {expected.__name__}, got "
            f"{type(value).__name__} {value!r}."
        )


def _stable(value: object) -> str:
    """A stand-in for values JSON cannot hold, stable across processes (no memory address)."""
    return f"<{type(value).__module__}.{type(value).__qualname__}>"
