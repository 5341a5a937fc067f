"""System checks (ids ``queued_storage.E00N`` / ``W00N``); none does network I/O.

Every hint states the fix on its own: the installed package has no documentation pages a user
could open (``docs/`` is in the repository, not in the wheel, and there is no published site),
so a hint never points at one. The id is the key of its entry in the docs' configuration page.

| id   | problem |
|------|---------|
| E001 | a QueuedStorage's ``local`` storage is neither a STORAGES alias nor a dotted path |
| E002 | a QueuedStorage's ``remote`` storage is neither a STORAGES alias nor a dotted path |
| E003 | the local storage cannot give a filesystem path |
| E004 | ``QUEUED_STORAGE_RETRIES`` is not a positive integer |
| E005 | a delay, timeout or cleanup age is not a positive number (or ``None`` where allowed) |
| E006 | ``QUEUED_STORAGE_CACHE`` is not an alias in ``CACHES`` |
| E007 | a QueuedStorage in STORAGES has an invalid option |
| W001 | the state cache is not shared between processes while Celery is not eager |
| E010 | ``QUEUED_STORAGE_STAGING_BUDGET`` is neither ``None`` nor a positive integer |
| E011 | ``QUEUED_STORAGE_RECONCILE_AFTER`` (unless ``None``) or ``RECONCILE_BATCH`` not positive |
| W010 | this host's waiting bytes are at 80 % of the staging budget (database check) |
| W011 | the Redis broker's ``visibility_timeout`` is shorter than the longest retry delay |
| E008 | ``QUEUED_STORAGE_UPLOAD_STORAGE`` is not the alias of a QueuedStorage in STORAGES |
| E009 | ``QUEUED_STORAGE_UPLOAD_MAX_BYTES`` / ``UPLOAD_CHUNK_SIZE`` is not a positive integer |
| E012 | ``QUEUED_STORAGE_UPLOAD_AUTHORIZER`` cannot be imported or is not callable |
| E013 | ``QUEUED_STORAGE_UPLOAD_PERMISSION`` / ``STATUS_PERMISSION``: not ``"<app>.<codename>"`` |
| E014 | ``QUEUED_STORAGE_NGINX_UPLOAD_DIR`` is not an absolute path |
| E015 | ``QUEUED_STORAGE_NGINX_SECRET`` is empty or not a string |
| W002 | ``QUEUED_STORAGE_NGINX_UPLOAD_DIR`` is set without ``QUEUED_STORAGE_NGINX_SECRET`` |
| E016 | ``QUEUED_STORAGE_RETRY_FOR`` is not a positive number |
| E017 | ``QUEUED_STORAGE_RECONCILE_ON_START`` is not an integer of 0 or more |
| E018 | ``QUEUED_STORAGE_METRICS_TOKEN`` is neither ``None`` nor a non-empty string |
| E019 | ``QUEUED_STORAGE_SERVE_STAGED`` is not ``None``, a URL name or prefix, or a dict of them |
| E020 | ``QUEUED_STORAGE_SERVE_STAGED`` names a URL that exists but does not take ``name`` |
| W020 | ``QUEUED_STORAGE_SERVE_STAGED`` names a URL the URLconf does not have (not included yet) |
| E021 | ``QUEUED_STORAGE_SENDFILE`` / ``SENDFILE_PREFIX`` is not a valid mode / location |
| E022 | ``QUEUED_STORAGE_TUS_EXPIRY`` is not a positive number of seconds |
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.urls import NoReverseMatch, URLResolver, get_resolver, reverse
from django.utils.module_loading import import_string

from queued_storage.conf import DEFAULTS, SENDFILE_MODES, settings
from queued_storage.construction import queued_entries, storage_spec
from queued_storage.exceptions import QueuedStorageConfigError
from queued_storage.models import StoredFile
from queued_storage.storage import QueuedStorage

__all__ = [
    "check_metrics_settings",
    "check_queued_storages",
    "check_reliability_settings",
    "check_serving_settings",
    "check_settings",
    "check_staging_budget",
    "check_tus_settings",
]

_BACKEND = "queued_storage.storage.QueuedStorage"

#: The line that makes ``"queued_storage:file"`` (and the upload views) reversible.
INCLUDE_URLS = 'path("uploads/", include("queued_storage.urls"))'


def _setting(name: str) -> Any:
    """The raw value of ``QUEUED_STORAGE_<name>`` (unchecked), or its default from ``conf``."""
    return getattr(django_settings, f"QUEUED_STORAGE_{name}", DEFAULTS[name])


def _queued_aliases() -> list[str]:
    return [alias for alias, _options, _backend in queued_entries()]


def _known(spec: object) -> bool:
    """Whether *spec* names a storage: a ``STORAGES`` alias, or a dotted path that imports
    (the storage's own rule, :func:`~queued_storage.construction.storage_spec`)."""
    try:
        storage_spec("local", spec)
    except QueuedStorageConfigError:
        return False
    return True


@register(Tags.compatibility)
def check_queued_storages(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for alias, options, _backend in queued_entries():
        local, remote = options.get("local"), options.get("remote")
        if not _known(local):
            messages.append(
                Error(
                    f"STORAGES[{alias!r}]: the local storage {local!r} is not an alias in "
                    "STORAGES.",
                    hint="Add it to STORAGES (for example a FileSystemStorage on fast disk) or "
                    "name an existing alias in OPTIONS['local'].",
                    id="queued_storage.E001",
                )
            )
        if not _known(remote):
            messages.append(
                Error(
                    f"STORAGES[{alias!r}]: the remote storage {remote!r} is not an alias in "
                    "STORAGES.",
                    hint="Add it to STORAGES (for example storages.backends.s3.S3Storage) or "
                    "name an existing alias in OPTIONS['remote'].",
                    id="queued_storage.E002",
                )
            )
        if not (_known(local) and _known(remote)):
            continue
        try:
            storage = QueuedStorage(**options)
        except ImproperlyConfigured as err:
            messages.append(
                Error(
                    f"STORAGES[{alias!r}]: {err}",
                    hint=f"Fix or remove the option the message names in STORAGES[{alias!r}]"
                    "['OPTIONS'] (QueuedStorage takes local, remote, delete_local, the task "
                    "options and local_options/remote_options for storages built in code).",
                    id="queued_storage.E007",
                )
            )
            continue
        try:
            storage.local.path("queued-storage-check")
        except NotImplementedError:
            messages.append(
                Error(
                    f"STORAGES[{alias!r}]: the local storage {local!r} "
                    f"({type(storage.local).__name__}) cannot give a filesystem path.",
                    hint="The local storage must be on a filesystem the workers can read, "
                    "such as django.core.files.storage.FileSystemStorage.",
                    id="queued_storage.E003",
                )
            )
        except Exception:
            pass
    return messages


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    retries = _setting("RETRIES")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries <= 0:
        messages.append(
            Error(
                f"QUEUED_STORAGE_RETRIES must be a positive integer, got {retries!r}.",
                hint="Set it to the number of retries after a failed attempt, e.g. 5.",
                id="queued_storage.E004",
            )
        )
    delays = ("RETRY_DELAY", "RETRY_MAX_DELAY", "LEASE_TIMEOUT", "CACHE_TIMEOUT")
    cleanup = ("CLEANUP_LOCAL_AFTER", "CLEANUP_SPOOL_AFTER", "CLEANUP_UPLOADS_AFTER")
    for name in delays + cleanup:
        value, default = _setting(name), DEFAULTS[name]
        nullable = name == "CLEANUP_LOCAL_AFTER"  # None: local copies are kept
        if value is None and nullable:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            must = "None or a positive number" if nullable else "a positive number"
            messages.append(
                Error(
                    f"QUEUED_STORAGE_{name} must be {must} of seconds, got {value!r}.",
                    hint=f"Remove the setting to use the default ({default}).",
                    id="queued_storage.E005",
                )
            )
    caches = getattr(django_settings, "CACHES", {})
    alias = settings.CACHE
    if alias not in caches:
        messages.append(
            Error(
                f"QUEUED_STORAGE_CACHE is {alias!r}, which is not an alias in CACHES.",
                hint="Name a cache shared by the web processes and the workers (Redis, "
                "Memcached, database or file-based).",
                id="queued_storage.E006",
            )
        )
    else:
        backend = str(caches[alias].get("BACKEND", ""))
        local_only = backend.endswith(("DummyCache", "LocMemCache"))
        if local_only and not _celery_eager():
            messages.append(
                Warning(
                    f"The state cache {alias!r} ({backend.rsplit('.', 1)[-1]}) is not shared "
                    "between processes, but Celery runs tasks in worker processes.",
                    hint="Web processes will not see the workers' state changes until the "
                    "ledger is read again. Point QUEUED_STORAGE_CACHE at a shared cache "
                    "(Redis, Memcached, database or file-based).",
                    id="queued_storage.W001",
                )
            )
    return messages


def _celery_eager() -> bool:
    if getattr(django_settings, "CELERY_TASK_ALWAYS_EAGER", False):
        return True
    from celery import current_app  # only when the checks run: the package works without it

    return bool(current_app.conf.task_always_eager)


def _positive(value: Any, kind: type) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return False
    return bool(value > 0)


@register(Tags.compatibility)
def check_reliability_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E010, E011, E016, E017, W011: the retry bound, the reconcile pass, the staging budget,
    the broker's redelivery."""
    messages: list[CheckMessage] = []
    budget = _setting("STAGING_BUDGET")
    if budget is not None and not _positive(budget, int):
        messages.append(
            Error(
                f"QUEUED_STORAGE_STAGING_BUDGET must be None or a positive number of bytes, got "
                f"{budget!r}.",
                hint="Set it to the most bytes that may wait for their transfer on one host "
                "(e.g. 50 * 1024**3), or remove it for no limit.",
                id="queued_storage.E010",
            )
        )
    for name, kind in (("RECONCILE_AFTER", float), ("RECONCILE_BATCH", int)):
        value, default = _setting(name), DEFAULTS[name]
        if not _positive(value, kind) and not (name == "RECONCILE_AFTER" and value is None):
            what = "seconds" if kind is float else "rows (an integer)"
            messages.append(
                Error(
                    f"QUEUED_STORAGE_{name} must be a positive number of {what}, got {value!r}.",
                    hint=f"Remove the setting to use the default ({default}).",
                    id="queued_storage.E011",
                )
            )
    retry_for = _setting("RETRY_FOR")
    if not _positive(retry_for, float):
        messages.append(
            Error(
                f"QUEUED_STORAGE_RETRY_FOR must be a positive number of seconds, got "
                f"{retry_for!r}.",
                hint="It is how long a file's transient failures (S3 down, lost workers) are "
                f"retried before it is failed; remove it for the default ({DEFAULTS['RETRY_FOR']}"
                " s, a day).",
                id="queued_storage.E016",
            )
        )
    on_start = _setting("RECONCILE_ON_START")
    if not isinstance(on_start, int) or isinstance(on_start, bool) or on_start < 0:
        messages.append(
            Error(
                "QUEUED_STORAGE_RECONCILE_ON_START must be an integer of 0 or more (files), got "
                f"{on_start!r}.",
                hint="It is the most files a starting worker re-queues; 0 turns that off. "
                f"Remove it for the default ({DEFAULTS['RECONCILE_ON_START']}).",
                id="queued_storage.E017",
            )
        )
    timeout = _redis_visibility_timeout()
    if timeout is not None and timeout < settings.RETRY_MAX_DELAY:
        messages.append(
            Warning(
                f"The Redis broker's visibility_timeout ({timeout:g} s) is shorter than "
                f"QUEUED_STORAGE_RETRY_MAX_DELAY ({settings.RETRY_MAX_DELAY:g} s): Redis "
                "delivers a retry that waits longer again, once per visibility_timeout.",
                hint="Set broker_transport_options={'visibility_timeout': ...} (the Django "
                "setting CELERY_BROKER_TRANSPORT_OPTIONS) above both the longest transfer and "
                "QUEUED_STORAGE_RETRY_MAX_DELAY.",
                id="queued_storage.W011",
            )
        )
    return messages


def _redis_visibility_timeout() -> float | None:
    """The Redis transport's visibility timeout, or ``None`` when the broker is not Redis."""
    from celery import current_app

    conf = current_app.conf
    url = str(conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://", "sentinel://", "redis+socket://")):
        return None
    options = conf.broker_transport_options or {}
    try:
        return float(options.get("visibility_timeout", 3600))
    except (TypeError, ValueError):
        return None


@register(Tags.database)
def check_staging_budget(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """W010: reads the ledger, so it runs with ``check --database`` and ``migrate`` only."""
    raw: Any = _setting("STAGING_BUDGET")
    if not databases or not _positive(raw, int):
        return []  # no budget, or an invalid one (E010)
    budget = int(raw)
    if StoredFile.db() not in databases:
        return []
    try:
        waiting = StoredFile.waiting_bytes(settings.HOST)
    except Exception:  # no ledger table yet (before migrate)
        return []
    if waiting < 0.8 * budget:
        return []
    return [
        Warning(
            f"{waiting} of the {budget} bytes of QUEUED_STORAGE_STAGING_BUDGET wait on host "
            f"{settings.HOST!r} for their transfer; saves fail with StagingFull beyond it.",
            hint="Check that the workers consuming this host's transfers run and that the "
            "remote storage is reachable (manage.py queued_storage_reconcile reports what "
            "waits), or raise the budget.",
            id="queued_storage.W010",
        )
    ]


# -- upload views (queued_storage.views): E005, E008, E009, E012-E015, W002 --------------------
_AUTHORIZER_HINT = (
    "Give the dotted path of a function authorize(request, name, action) that raises "
    "PermissionDenied to refuse (e.g. 'myapp.uploads.authorize'), or remove the setting to use "
    "the permission settings."
)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@register(Tags.compatibility)
def check_upload_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E005, E008, E009, E012-E015, W002: the settings of the upload views (checked where set)."""
    messages: list[CheckMessage] = []
    alias = getattr(django_settings, "QUEUED_STORAGE_UPLOAD_STORAGE", None)
    if alias is not None and alias not in _queued_aliases():
        messages.append(
            Error(
                f"QUEUED_STORAGE_UPLOAD_STORAGE is {alias!r}, which is not the alias of a "
                "QueuedStorage in STORAGES.",
                hint="Name the STORAGES alias whose BACKEND is "
                "queued_storage.storage.QueuedStorage that uploads should be saved into.",
                id="queued_storage.E008",
            )
        )
    problems: list[tuple[str, str, str]] = [
        (
            f"QUEUED_STORAGE_{name} must be a positive integer (bytes), got {value!r}",
            "E009",
            f"Set a number of bytes, or remove the setting for the default ({DEFAULTS[name]}).",
        )
        for name in ("UPLOAD_MAX_BYTES", "UPLOAD_CHUNK_SIZE")
        if not _positive_int(value := _setting(name))
    ]
    idle = _setting("UPLOAD_IDLE_TIMEOUT")
    if idle is not None and not _positive(idle, float):
        problems.append(
            (
                "QUEUED_STORAGE_UPLOAD_IDLE_TIMEOUT must be None or a positive number of seconds, "
                f"got {idle!r}",
                "E005",
                "Set the seconds an upload may send nothing before it is dropped, None to wait "
                "forever, or remove the setting for the default "
                f"({DEFAULTS['UPLOAD_IDLE_TIMEOUT']}).",
            )
        )
    authorizer = _setting("UPLOAD_AUTHORIZER")
    if authorizer is not None:
        try:
            found = import_string(authorizer) if isinstance(authorizer, str) else None
        except ImportError as err:
            problems.append(
                (
                    f"QUEUED_STORAGE_UPLOAD_AUTHORIZER {authorizer!r} cannot be imported ({err})",
                    "E012",
                    _AUTHORIZER_HINT,
                )
            )
        else:
            if not callable(found):
                problems.append(
                    (
                        "QUEUED_STORAGE_UPLOAD_AUTHORIZER must be the dotted path of a function "
                        f"authorize(request, name, action), got {authorizer!r}",
                        "E012",
                        _AUTHORIZER_HINT,
                    )
                )
    for name in ("UPLOAD_PERMISSION", "STATUS_PERMISSION", "READ_PERMISSION"):
        value = _setting(name)
        if value is not None and (not isinstance(value, str) or value.count(".") != 1):
            problems.append(
                (
                    f"QUEUED_STORAGE_{name} must be None or a permission '<app_label>.<codename>', "
                    f"got {value!r}",
                    "E013",
                    "Give a permission as '<app_label>.<codename>' (e.g. "
                    "'queued_storage.add_storedfile'), or None to let any signed-in user in.",
                )
            )
    upload_dir = _setting("NGINX_UPLOAD_DIR")
    if upload_dir is not None and (
        not isinstance(upload_dir, str) or not upload_dir.startswith("/")
    ):
        problems.append(
            (
                "QUEUED_STORAGE_NGINX_UPLOAD_DIR must be None or an absolute path, got "
                f"{upload_dir!r}",
                "E014",
                "Set it to nginx's client_body_temp_path, as an absolute path, or None when "
                "nginx does not offload uploads.",
            )
        )
    secret = _setting("NGINX_SECRET")
    if secret is not None and (not isinstance(secret, str) or not secret):
        problems.append(
            (
                "QUEUED_STORAGE_NGINX_SECRET must be None or a non-empty string",
                "E015",
                "Set a long random string, and the same value in nginx's proxy_set_header "
                "X-Queued-Storage-Secret; or None when nginx does not offload uploads.",
            )
        )
    messages.extend(
        Error(f"{problem}.", hint=hint, id=f"queued_storage.{check_id}")
        for problem, check_id, hint in problems
    )
    if upload_dir is not None and secret is None:
        messages.append(
            Warning(
                "QUEUED_STORAGE_NGINX_UPLOAD_DIR is set but QUEUED_STORAGE_NGINX_SECRET is not: "
                "any client that reaches Django directly can name a file in that directory "
                "in X-File-Path (another client's upload in progress).",
                hint="Set QUEUED_STORAGE_NGINX_SECRET and the same value in nginx's "
                "proxy_set_header X-Queued-Storage-Secret.",
                id="queued_storage.W002",
            )
        )
    return messages


# -- monitoring (queued_storage.metrics): E018 -------------------------------------------------
@register(Tags.compatibility)
def check_metrics_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E018: the token that opens the metrics view."""
    token = _setting("METRICS_TOKEN")
    if token is None or (isinstance(token, str) and token.strip()):
        return []
    return [
        Error(
            f"QUEUED_STORAGE_METRICS_TOKEN must be None or a non-empty string, got {token!r}.",
            hint="Set the bearer token your Prometheus scraper sends (a long random string), "
            "or None to open queued_storage.metrics.metrics_view to staff users only.",
            id="queued_storage.E018",
        )
    ]


# -- serving waiting files (queued_storage.views.StagedFileView): E019-E021, W020 --------------
_SERVE_HINT = (
    "Set it to None (url() of a waiting file is then the local storage's), to a URL name that "
    "takes a 'name' argument such as 'queued_storage:file' (with "
    + INCLUDE_URLS
    + " in your urlpatterns), or to a path prefix ending with '/'."
)
_SENDFILE_HINT = (
    "Set QUEUED_STORAGE_SENDFILE to 'x-accel-redirect' (nginx), 'x-sendfile' (Apache) or None "
    "(Django sends the bytes), and QUEUED_STORAGE_SENDFILE_PREFIX to the internal location "
    "of your web server that maps to the staging directory, such as "
    f"{DEFAULTS['SENDFILE_PREFIX']!r} (its default)."
)


_OWN_VIEW = "path('waiting/<path:name>', queued_storage.views.StagedFileView.as_view(), name=...)"


def _url_name_exists(target: str) -> bool:
    """Whether the URLconf has a URL named *target* (``"ns:name"``), whatever its arguments:
    its namespaces (instance or application) are included, and the last one names it."""
    *namespaces, name = target.split(":")
    resolver: URLResolver = get_resolver()
    for namespace in namespaces:
        if namespace not in resolver.namespace_dict and namespace in resolver.app_dict:
            namespace = resolver.app_dict[namespace][0]  # the application's first instance
        if namespace not in resolver.namespace_dict:
            return False
        resolver = resolver.namespace_dict[namespace][1]
    return name in resolver.reverse_dict


def _missing_url(where: str, target: str) -> Warning:
    """W020: the named URL is not (yet) in the URLconf; only url() of a waiting file fails."""
    if target.split(":", 1)[0] == "queued_storage":
        fix = f"Add {INCLUDE_URLS} to your urlpatterns (ROOT_URLCONF)."
    else:
        fix = (
            f"Add a URL named {target!r} whose pattern takes a 'name' argument (e.g. "
            f"{_OWN_VIEW}), or add "
            f"{INCLUDE_URLS} to your urlpatterns and set {where} = 'queued_storage:file'."
        )
    return Warning(
        f"{where} is {target!r}, but the URLconf has no URL of that name: url() of a file "
        "waiting for its transfer raises NoReverseMatch until it has.",
        hint=fix,
        id="queued_storage.W020",
    )


@register(Tags.compatibility, Tags.urls)
def check_serving_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E019-E021, W020: where ``url()`` of a waiting file points, and how the view sends it.

    A URL name the URLconf does not have (``queued_storage.urls`` not included yet) is a
    warning, W020: it breaks only ``url()`` of a waiting file, and an error would stop every
    ``manage.py`` command, ``queued_storage doctor`` too. A malformed value (E019), or a URL
    that exists but does not take a ``name`` (E020), is an error.
    """
    problems: list[tuple[str, str, str]] = []
    messages: list[CheckMessage] = []
    serve = _setting("SERVE_STAGED")
    queued = _queued_aliases()
    if isinstance(serve, dict):
        targets = serve
        unknown = sorted(str(alias) for alias in serve if alias not in queued)
        if unknown:
            problems.append(
                (
                    "QUEUED_STORAGE_SERVE_STAGED has keys that are not aliases of a "
                    f"QueuedStorage in STORAGES: {', '.join(map(repr, unknown))}",
                    "E019",
                    "Key the dict by the STORAGES aliases of your QueuedStorages (known: "
                    f"{', '.join(map(repr, queued)) or 'none'}), or give one value for all.",
                )
            )
    else:
        targets = {} if serve is None else {"": serve}
    for alias, target in targets.items():
        where = (
            f"QUEUED_STORAGE_SERVE_STAGED[{alias!r}]" if alias else "QUEUED_STORAGE_SERVE_STAGED"
        )
        if not isinstance(target, str) or not target or ("/" in target and target[-1] != "/"):
            problems.append(
                (
                    f"{where} must be a URL name (such as 'queued_storage:file') or a path "
                    f"prefix ending with '/', got {target!r}",
                    "E019",
                    _SERVE_HINT,
                )
            )
        elif "/" not in target:
            try:
                reverse(target, kwargs={"name": "probe/file.txt"})
            except NoReverseMatch as err:
                if not _url_name_exists(target):
                    messages.append(_missing_url(where, target))
                    continue
                problems.append(
                    (
                        f"{where} is {target!r}, which does not reverse with a 'name' argument "
                        f"({type(err).__name__}: {err})",
                        "E020",
                        f"Name a URL whose pattern takes a 'name' argument: 'queued_storage:file'"
                        f" (with {INCLUDE_URLS} in your urlpatterns), or your own "
                        f"{_OWN_VIEW}.",
                    )
                )
            except Exception as err:
                problems.append(
                    (
                        f"{where} is {target!r}, which does not reverse with a 'name' argument "
                        f"({type(err).__name__}: {err})",
                        "E020",
                        "Fix the URLconf error the message names (ROOT_URLCONF).",
                    )
                )
    mode = _setting("SENDFILE")
    if mode is not None and (not isinstance(mode, str) or mode.lower() not in SENDFILE_MODES):
        problems.append(
            (
                f"QUEUED_STORAGE_SENDFILE must be None, 'x-accel-redirect' or 'x-sendfile', got "
                f"{mode!r}",
                "E021",
                _SENDFILE_HINT,
            )
        )
    prefix = _setting("SENDFILE_PREFIX")
    if not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.endswith("/"):
        problems.append(
            (
                "QUEUED_STORAGE_SENDFILE_PREFIX must be nginx's internal location, a path "
                f"starting and ending with '/', got {prefix!r}",
                "E021",
                _SENDFILE_HINT,
            )
        )
    errors: list[CheckMessage] = [
        Error(f"{problem}.", hint=hint, id=f"queued_storage.{check_id}")
        for problem, check_id, hint in problems
    ]
    return errors + messages


# -- tus resumable uploads (queued_storage.tus): E022 ------------------------------------------
@register(Tags.compatibility)
def check_tus_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E022: how long an unfinished tus upload lives."""
    expiry = _setting("TUS_EXPIRY")
    if _positive(expiry, float):
        return []
    return [
        Error(
            f"QUEUED_STORAGE_TUS_EXPIRY must be a positive number of seconds, got {expiry!r}.",
            hint="Set how long an unfinished tus upload may wait for its next chunk (the "
            "default is 86400, a day).",
            id="queued_storage.E022",
        )
    ]
