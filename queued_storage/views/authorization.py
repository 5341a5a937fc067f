"""Who may act on a file: the authorizer hook, its default, and the view base that asks it.

Authorisation is one hook, ``authorize(request, name, action) -> bool | HttpResponse``
(``action`` is ``"upload"``, ``"status"`` or ``"read"``): the setting
``QUEUED_STORAGE_UPLOAD_AUTHORIZER`` names it, or a subclass overrides
:meth:`QueuedStorageView.authorize`. The default asks Django's permission system
(``QUEUED_STORAGE_UPLOAD_PERMISSION``, ``QUEUED_STORAGE_STATUS_PERMISSION``): anonymous users
get 401, users without the permission 403; a file's status, and a waiting file's bytes, are
shown to its owner (:func:`owner_of`) and to staff only, anyone else gets the 404 of a name
that does not exist.

A file uploaded by a signed-in user records ``str(request.user.pk)`` as its owner, in the
ledger row's single INSERT (:func:`queued_storage.storage.owned_by`).

:class:`QueuedStorageView` lives here, beside the hook, because the two need each other: the
view asks the hook, and :func:`owner_of` finds the storage of the view a request was routed to.
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import storages
from django.http import (
    HttpRequest,
    HttpResponse,
    QueryDict,
)
from django.urls import NoReverseMatch, ResolverMatch, reverse
from django.utils.module_loading import import_string
from django.views import View

from queued_storage.conf import settings
from queued_storage.storage import QueuedStorage
from queued_storage.uploads import (
    UploadRefused,
    validate_upload_name,
    validate_url_name,
)
from queued_storage.views.common import error, not_found

#: The authorisation hook: ``(request, name, action) -> bool | HttpResponse``.
Authorizer = Callable[[HttpRequest, str, str], "bool | HttpResponse"]

#: What :func:`default_authorize` tells an anonymous client, by action.
SIGN_IN = {
    "upload": "Sign in to upload files.",
    "status": "Sign in to see this file's status.",
    "read": "Sign in to read this file.",
}


# -- authorisation --------------------------------------------------------------------------------
def default_authorize(request: HttpRequest, name: str, action: str) -> bool | HttpResponse:
    """Django's permission system: 401 for anonymous users (the message names the action:
    :data:`SIGN_IN`), 403 without the permission; a file's status only for its owner and staff.

    The permission is ``QUEUED_STORAGE_UPLOAD_PERMISSION`` for ``action="upload"`` and
    ``QUEUED_STORAGE_STATUS_PERMISSION`` for ``action="status"``; ``None`` lets every
    signed-in user through. With the permission, ``"status"`` is allowed to staff
    (``is_staff`` or ``is_superuser``) and to the user who uploaded the file
    (:func:`owner_of`); anyone else gets :func:`not_found`, the answer for a name that does
    not exist, so that the status endpoint does not tell which names exist. Files saved
    without an owner (from code) are shown to staff only. Needs ``AuthenticationMiddleware``
    (``request.user``).

    ``action="read"`` (:class:`StagedFileView`, a waiting file's bytes): staff, users with
    ``QUEUED_STORAGE_READ_PERMISSION`` (``None`` by default: no one by permission) and the
    file's owner; anyone else signed in gets :func:`not_found`, anonymous users 401.
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return error(401, SIGN_IN.get(action, "Sign in first."))
    staff = getattr(user, "is_staff", False) or getattr(user, "is_superuser", False)
    if action == "read":
        permission = settings.READ_PERMISSION
        if staff or (permission is not None and user.has_perm(permission)):
            return True
        owner = owner_of(request, name)
        return True if owner and owner == str(user.pk) else not_found(name)
    permission = settings.UPLOAD_PERMISSION if action == "upload" else settings.STATUS_PERMISSION
    if permission is not None and not user.has_perm(permission):
        return False
    if action != "status" or staff:
        return True
    owner = owner_of(request, name)
    return True if owner and owner == str(user.pk) else not_found(name)


def owner_of(where: HttpRequest | QueuedStorage, name: str) -> str | None:
    """Who uploaded *name*: the ``str(pk)`` of the user who uploaded it through the upload
    views, ``""`` when unknown (saved from code, or by a client that was not a signed-in
    user), ``None`` when the storage holds no file of that name.

    *where* is the ``QueuedStorage``, or the request an authorizer was given: then the storage
    is the one of the upload or status view the URLconf routed it to (not available for
    :class:`NginxAuthView`'s request, which is routed to the auth view: pass the storage).
    One query of the ledger row.
    """
    if isinstance(where, QueuedStorage):
        return where.get_owner(name)
    match = where.resolver_match
    view = routed_view(where, match) if match is not None else None
    if view is None:
        raise ImproperlyConfigured(
            "owner_of(request, name) needs a request the URLconf routed to a queued_storage "
            f"upload or status view; this one was routed to {match!r}. Pass the storage: "
            "owner_of(storages[alias], name)."
        )
    return view.get_storage().get_owner(name)


def uploader(request: HttpRequest) -> str:
    """The owner to record for what *request* uploads: the signed-in user's pk, else ``""``."""
    user = getattr(request, "user", None)
    return str(user.pk) if user is not None and user.is_authenticated else ""


def get_authorizer() -> Authorizer:
    """The hook named by ``QUEUED_STORAGE_UPLOAD_AUTHORIZER``, or :func:`default_authorize`."""
    path = settings.UPLOAD_AUTHORIZER
    if path is None:
        return default_authorize
    try:
        hook: Authorizer = import_string(path)
    except ImportError as err:
        raise ImproperlyConfigured(
            f"QUEUED_STORAGE_UPLOAD_AUTHORIZER is {path!r}, which cannot be imported ({err})."
        ) from err
    return hook


def as_response(verdict: bool | HttpResponse) -> HttpResponse | None:
    """``None`` to go on, else the response that refuses the request."""
    if isinstance(verdict, HttpResponse):
        return None if 200 <= verdict.status_code < 300 else verdict
    if verdict is True:
        return None
    return error(403, "You may not upload or read this file.")


class QueuedStorageView(View):
    """What the upload and status views share: the storage, the name and the hook.

    Class attributes (also ``as_view(...)`` keyword arguments):

    ``storage_alias``
        ``STORAGES`` alias of the ``QueuedStorage``; ``None`` uses
        ``QUEUED_STORAGE_UPLOAD_STORAGE``. A URL keyword argument ``storage_alias`` (set by
        the project's ``urls.py``, never by the client) wins over both.
    ``prefix``
        prepended to every client-given name (for example ``"incoming/"``).
    """

    storage_alias: str | None = None
    prefix: str = ""
    action = "upload"

    def authorize(self, request: HttpRequest, name: str) -> bool | HttpResponse:
        """Whether *request* may act on *name*; override it, or set the authorizer setting.

        It runs before the request body is read, so it must not touch ``request.body``,
        ``request.POST`` or ``request.FILES``. ``name`` is the validated, prefixed name the
        client asked for (for a form upload without one, ``""``).
        """
        return get_authorizer()(request, name, self.action)

    def get_storage(self) -> QueuedStorage:
        alias = self.kwargs.get("storage_alias") or self.storage_alias or settings.UPLOAD_STORAGE
        storage = storages[alias]
        if not isinstance(storage, QueuedStorage):
            raise ImproperlyConfigured(
                f"The upload views need a QueuedStorage; STORAGES[{alias!r}] is a "
                f"{type(storage).__name__} (see check queued_storage.E008)."
            )
        return storage

    def requested_name(self, request: HttpRequest, *, required: bool = True) -> str:
        """The client's name (URL path, else ``?name=``), validated and prefixed."""
        return self.client_name(self.kwargs.get("name"), request.GET, required=required)

    def authorised_name(self, request: HttpRequest) -> str | HttpResponse:
        """The requested name once the authorizer allows it, else the answer that refuses it
        (400 for a name the rules refuse, the authorizer's own refusal otherwise)."""
        try:
            name = self.requested_name(request)
        except UploadRefused as refusal:
            return error(refusal.status, refusal.message)
        refused = as_response(self.authorize(request, name))
        return name if refused is None else refused

    def client_name(self, path_name: str | None, query: QueryDict, *, required: bool = True) -> str:
        """The name a client asks for, from the URL Django decoded: *path_name* (the URL's
        ``<name>``), else the ``name`` of *query*; validated and prefixed.

        The one rule for both steps of an nginx upload: :class:`NginxAuthView` calls it with
        the original request's path and query decoded as Django's handlers decode them, so the
        authorizer sees the same name before the body as the upload view after it. Refused
        (:class:`UploadRefused`, 400) is every name :func:`validate_url_name` refuses, and a
        query with ``name`` more than once (``QueryDict.get`` takes the last, others the
        first).
        """
        names = query.getlist("name")
        if len(names) > 1:
            raise UploadRefused(400, "Give the file name once (?name= appears more than once).")
        raw = path_name or (names[0] if names else "")
        if not raw and not required:
            return ""
        return validate_upload_name(self.prefix + validate_url_name(raw))

    def status_url(self, request: HttpRequest, name: str) -> str | None:
        """The status endpoint of *name* in the namespace these views were included under."""
        return self.url_of(request, "status", name)

    def url_of(self, request: HttpRequest, url_name: str, name: str) -> str | None:
        """The URL named *url_name* of file *name* (without the views' prefix), in the
        namespace these views were included under; ``None`` where the URLconf has none."""
        match = request.resolver_match
        namespace = match.namespace if match is not None and match.namespace else "queued_storage"
        name = name.removeprefix(self.prefix) if self.prefix else name
        try:
            return reverse(f"{namespace}:{url_name}", kwargs={"name": name})
        except NoReverseMatch:
            return None


def routed_view(request: HttpRequest, match: ResolverMatch) -> QueuedStorageView | None:
    """The upload or status view *match* routes to, set up for *request*; else ``None``."""
    view_class = getattr(match.func, "view_class", None)
    if view_class is None or not issubclass(view_class, QueuedStorageView):
        return None
    view: QueuedStorageView = view_class(**getattr(match.func, "view_initkwargs", {}))
    view.setup(request, *match.args, **match.kwargs)
    return view
