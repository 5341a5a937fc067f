"""System checks of the upload views' settings (E005, E008, E009, E012-E015, W002) and of the
tus uploads' (E022)."""

from __future__ import annotations

from collections.abc import Sequence

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from queued_storage.checks.common import positive_int, positive_number, queued_aliases, setting
from queued_storage.conf import DEFAULTS

__all__ = ["check_tus_settings", "check_upload_settings"]

# -- upload views (queued_storage.views): E005, E008, E009, E012-E015, W002 --------------------
_AUTHORIZER_HINT = (
    "Give the dotted path of a function authorize(request, name, action) that raises "
    "PermissionDenied to refuse (e.g. 'myapp.uploads.authorize'), or remove the setting to use "
    "the permission settings."
)


@register(Tags.compatibility)
def check_upload_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[CheckMessage]:
    """E005, E008, E009, E012-E015, W002: the settings of the upload views (checked where set)."""
    messages: list[CheckMessage] = []
    alias = getattr(django_settings, "QUEUED_STORAGE_UPLOAD_STORAGE", None)
    if alias is not None and alias not in queued_aliases():
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
        if not positive_int(value := setting(name))
    ]
    idle = setting("UPLOAD_IDLE_TIMEOUT")
    if idle is not None and not positive_number(idle):
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
    authorizer = setting("UPLOAD_AUTHORIZER")
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
        value = setting(name)
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
    upload_dir = setting("NGINX_UPLOAD_DIR")
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
    secret = setting("NGINX_SECRET")
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


# -- tus resumable uploads (queued_storage.tus): E022 ------------------------------------------
@register(Tags.compatibility)
def check_tus_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[CheckMessage]:
    """E022: how long an unfinished tus upload lives."""
    expiry = setting("TUS_EXPIRY")
    if positive_number(expiry):
        return []
    return [
        Error(
            f"QUEUED_STORAGE_TUS_EXPIRY must be a positive number of seconds, got {expiry!r}.",
            hint="Set how long an unfinished tus upload may wait for its next chunk (the "
            "default is 86400, a day).",
            id="queued_storage.E022",
        )
    ]


# -- direct uploads (queued_storage.direct): E024 ------------------------------------------------
#: S3's smallest part but the last, and the longest a presigned URL may live (SigV4: 7 days).
_MIN_PART = 5 * 1024 * 1024
_MAX_URL_EXPIRY = 7 * 24 * 3600


@register(Tags.compatibility)
def check_direct_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[CheckMessage]:
    """E024: the direct uploads' expiry, part size and presigned URLs' lifetime."""
    expiry, part, urls = (
        setting("DIRECT_EXPIRY"),
        setting("DIRECT_PART_SIZE"),
        setting("DIRECT_URL_EXPIRY"),
    )
    wrong = []
    if not positive_number(expiry):
        wrong.append(
            f"QUEUED_STORAGE_DIRECT_EXPIRY must be a positive number of seconds, got {expiry!r}"
        )
    if not isinstance(part, int) or isinstance(part, bool) or part < _MIN_PART:
        wrong.append(
            f"QUEUED_STORAGE_DIRECT_PART_SIZE must be an integer of at least {_MIN_PART} "
            f"(S3's smallest part), got {part!r}"
        )
    if not isinstance(urls, int) or isinstance(urls, bool) or not 1 <= urls <= _MAX_URL_EXPIRY:
        wrong.append(
            f"QUEUED_STORAGE_DIRECT_URL_EXPIRY must be an integer from 1 to {_MAX_URL_EXPIRY} "
            f"seconds (7 days, the most a presigned URL lives), got {urls!r}"
        )
    return [
        Error(
            f"{text}.",
            hint='Remove the setting for its default (the "Direct uploads" page of the '
            "docs lists them).",
            id="queued_storage.E024",
        )
        for text in wrong
    ]
