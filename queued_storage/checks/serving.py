"""System checks of how a file waiting for its transfer is served: where ``url()`` points,
how the view sends the bytes, and who reads a file its processors have not passed (E019-E021,
E025, W020, W021)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.urls import NoReverseMatch, URLResolver, get_resolver, reverse

from queued_storage.checks.common import queued_aliases, setting
from queued_storage.conf import (
    DEFAULTS,
    QUARANTINE_MODES,
    SENDFILE_MODES,
    SERVE_UNPROCESSED_MODES,
    settings,
)
from queued_storage.construction import queued_entries

__all__ = ["INCLUDE_URLS", "check_serving_settings"]

#: The line that makes ``"queued_storage:file"`` (and the upload views) reversible.
INCLUDE_URLS = 'path("uploads/", include("queued_storage.urls"))'

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
def check_serving_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[CheckMessage]:
    """E019-E021, W020: where ``url()`` of a waiting file points, and how the view sends it.

    A URL name the URLconf does not have (``queued_storage.urls`` not included yet) is a
    warning, W020: it breaks only ``url()`` of a waiting file, and an error would stop every
    ``manage.py`` command, ``queued_storage doctor`` too. A malformed value (E019), or a URL
    that exists but does not take a ``name`` (E020), is an error.
    """
    problems: list[tuple[str, str, str]] = []
    messages: list[CheckMessage] = []
    serve = setting("SERVE_STAGED")
    queued = queued_aliases()
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
    mode = setting("SENDFILE")
    if mode is not None and (not isinstance(mode, str) or mode.lower() not in SENDFILE_MODES):
        problems.append(
            (
                f"QUEUED_STORAGE_SENDFILE must be None, 'x-accel-redirect' or 'x-sendfile', got "
                f"{mode!r}",
                "E021",
                _SENDFILE_HINT,
            )
        )
    prefix = setting("SENDFILE_PREFIX")
    if not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.endswith("/"):
        problems.append(
            (
                "QUEUED_STORAGE_SENDFILE_PREFIX must be nginx's internal location, a path "
                f"starting and ending with '/', got {prefix!r}",
                "E021",
                _SENDFILE_HINT,
            )
        )
    problems.extend(_processing_problems())
    messages.extend(_unscanned_in_public())
    errors: list[CheckMessage] = [
        Error(f"{problem}.", hint=hint, id=f"queued_storage.{check_id}")
        for problem, check_id, hint in problems
    ]
    return errors + messages


def _processing_problems() -> list[tuple[str, str, str]]:
    """E025: ``SERVE_UNPROCESSED`` and ``QUARANTINE`` are values they can take."""
    problems: list[tuple[str, str, str]] = []
    serve = setting("SERVE_UNPROCESSED")
    if not isinstance(serve, str) or serve.lower() not in SERVE_UNPROCESSED_MODES:
        problems.append(
            (
                f"QUEUED_STORAGE_SERVE_UNPROCESSED must be 'owner', 'all' or 'none', got {serve!r}",
                "E025",
                "Set 'owner' (its owner and staff read a file its processors have not passed "
                "yet: the default), 'all' (as any waiting file) or 'none' (no one until it "
                "passed).",
            )
        )
    fate = setting("QUARANTINE")
    if not isinstance(fate, str) or (fate not in QUARANTINE_MODES and not os.path.isabs(fate)):
        problems.append(
            (
                "QUEUED_STORAGE_QUARANTINE must be 'keep', 'delete' or an absolute directory "
                f"path, got {fate!r}",
                "E025",
                "Set 'keep' (a rejected file's local copy stays where it is, never served: the "
                "default), 'delete', or an absolute directory outside the staging storage "
                "that rejected files are moved into.",
            )
        )
    return problems


def _unscanned_in_public() -> list[CheckMessage]:
    """W021: a storage with processors whose waiting files are served at the staging
    storage's own URL, which no check of the processors or the owner guards."""
    found: list[CheckMessage] = []
    for alias, options, backend in queued_entries():
        if not (options.get("processors") or getattr(backend, "processor_specs", ())):
            continue
        try:
            target = settings.serve_staged_for(alias)
        except Exception:  # a malformed SERVE_STAGED is E019's
            continue
        if target is None:
            found.append(
                Warning(
                    f"The QueuedStorage {alias!r} has processors, but url() of its waiting "
                    "files is the staging storage's own URL: a web server serving that "
                    "directory serves files before they are scanned, and rejected ones.",
                    hint=(
                        f"Set QUEUED_STORAGE_SERVE_STAGED = {{{alias!r}: 'queued_storage:file'}}"
                        f" (with {INCLUDE_URLS} in your urlpatterns) and do not serve the "
                        "staging directory itself; the view then applies "
                        "QUEUED_STORAGE_SERVE_UNPROCESSED."
                    ),
                    id="queued_storage.W021",
                )
            )
    return found
