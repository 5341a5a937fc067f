"""Forms for direct uploads (:mod:`queued_storage.direct`): a field whose widget sends the file
from the browser straight to S3, and whose value is the name the server reserved for it.

::

    class VideoForm(DirectUploadFormMixin, forms.ModelForm):
        file = DirectFileField()

        class Meta:
            model = Video
            fields = ["title", "file"]

    form = VideoForm(request.POST, request=request)  # or user=request.user

The form never carries the file's bytes: the widget (``uploader.js`` in direct mode) uploads
the file through the direct endpoints and writes the reserved name into the field's hidden
input. That name is the client's claim, so :meth:`DirectFileField.clean` accepts it only when
the ledger row of the field's storage says it is a direct upload that finished (``remote``,
verified by the server, never a local copy) and that the form's user started (``owner``). The
model's file field then gets the name as it is: nothing is saved or copied again.

In the admin, :class:`queued_storage.admin.QueuedFileAdminMixin` passes the request to a form
that uses :class:`DirectUploadFormMixin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, ValidationError
from django.http import HttpRequest
from django.urls import reverse

from queued_storage.conf import settings
from queued_storage.direct import RECORDED_ALGORITHM
from queued_storage.models import State, StoredFile
from queued_storage.names import LEDGER_NAME_LENGTH
from queued_storage.storage import QueuedStorage

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    User = AbstractBaseUser | AnonymousUser

__all__ = [
    "DirectFileField",
    "DirectUploadFormMixin",
    "DirectUploadWidget",
    "finished_upload",
    "with_request",
]


def finished_upload(row: StoredFile | None, owner: str) -> bool:
    """Whether *row* is a direct upload that finished and that *owner* (``str(user.pk)``)
    started: ``remote`` after the server's verification (its composite CRC32), held by no host
    and never a local copy."""
    return (
        row is not None
        and bool(owner)
        and row.owner == owner
        and row.state == State.REMOTE
        and row.checksum_algorithm == RECORDED_ALGORITHM
        and not row.local_exists
        and row.host == ""
    )


class DirectUploadWidget(forms.Widget):
    """The upload widget in direct mode (``data-mode="direct"``, ``data-direct-url``) for one
    file, around the hidden input (``data-qs-name``) that holds the reserved name: the value
    the form posts. ``uploader.js`` and ``uploader.css`` are its media (``{{ form.media }}``;
    the admin adds them)."""

    template_name = "queued_storage/widgets/direct_upload.html"

    class Media:
        css = {"all": ["queued_storage/uploader.css"]}
        js = ["queued_storage/uploader.js"]

    def __init__(
        self,
        attrs: dict[str, Any] | None = None,
        *,
        direct_url: str | None = None,
        poll_interval: int = 500,
    ) -> None:
        super().__init__(attrs)
        self.direct_url = direct_url
        self.poll_interval = poll_interval

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        context["widget"]["direct_url"] = self.direct_url or reverse("queued_storage:direct")
        context["widget"]["poll_interval"] = self.poll_interval
        return context

    def id_for_label(self, id_: str) -> str:
        """A label names the file input (the hidden input holds the name)."""
        return f"{id_}_file" if id_ else id_


class DirectFileField(forms.CharField):
    """The reserved name of a finished direct upload of the form's user (see the module).

    *storage*: the ``STORAGES`` alias the uploads go to (default: the model field's storage
    in a ``ModelForm``, else ``QUEUED_STORAGE_UPLOAD_STORAGE``); *direct_url*: the direct
    endpoint the widget starts uploads at (default: the URL named ``queued_storage:direct``),
    which must upload into that storage. An empty value is no new file (``None``: a
    ``ModelForm`` keeps the instance's file). The instance's own file, posted back unchanged,
    is accepted as it is (it may be another user's, which an editor keeps).
    """

    widget = DirectUploadWidget
    default_error_messages = {
        "not_yours": "%(name)s is not a finished upload of yours.",
    }

    def __init__(
        self, *, storage: str | None = None, direct_url: str | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("widget", DirectUploadWidget(direct_url=direct_url))
        kwargs.setdefault("max_length", LEDGER_NAME_LENGTH)
        kwargs.setdefault("strip", False)  # the name as the ledger holds it
        super().__init__(**kwargs)
        self.storage_alias = storage
        # Set per form by DirectUploadFormMixin (each form deep-copies its fields).
        self.user: User | None = None
        self.bound_to_user = False
        self.kept = ""

    def alias(self) -> str:
        return self.storage_alias or settings.UPLOAD_STORAGE

    def clean(self, value: Any) -> str | None:
        name: str = super().clean(value)
        if not name:
            return None
        if name == self.kept:
            return name
        if not self.bound_to_user:
            raise ImproperlyConfigured(
                "A DirectFileField is checked against the request's user: add "
                "queued_storage.forms.DirectUploadFormMixin to the form's bases and pass "
                "request= (or user=) when you make the form."
            )
        user = self.user
        owner = str(user.pk) if user is not None and user.is_authenticated else ""
        if not finished_upload(StoredFile.get_row(self.alias(), name), owner):
            raise ValidationError(
                self.error_messages["not_yours"], code="not_yours", params={"name": repr(name)}
            )
        return name


class DirectUploadFormMixin:
    """For a form with :class:`DirectFileField`\\ s: takes ``request=`` (its user) or ``user=``
    and gives each such field the user, the storage (a ``ModelForm``'s model field's, unless
    the field names one) and the name the saved instance holds. A bound form without either
    is a programming error (``ImproperlyConfigured``)."""

    fields: dict[str, forms.Field]
    is_bound: bool

    def __init__(
        self,
        *args: Any,
        request: HttpRequest | None = None,
        user: User | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if user is None and request is not None:
            user = getattr(request, "user", None)
        direct = {n: f for n, f in self.fields.items() if isinstance(f, DirectFileField)}
        if direct and self.is_bound and user is None:
            raise ImproperlyConfigured(
                f"{type(self).__name__} has direct upload fields ({', '.join(direct)}), which "
                "need the user: pass request= (or user=) when you make the form."
            )
        for name, field in direct.items():
            field.user, field.bound_to_user = user, user is not None
            field.kept = self._saved_name(name)
            if field.storage_alias is None:
                field.storage_alias = self._model_storage(name)

    def _saved_name(self, name: str) -> str:
        """The name a saved ``ModelForm`` instance holds in *name* (never the form's
        ``initial``, which a query string can fill: ``?file=<someone else's upload>``)."""
        instance = getattr(self, "instance", None)
        if instance is None or instance.pk is None:
            return ""
        held = getattr(instance, name, None)
        return str(getattr(held, "name", held) or "")

    def _model_storage(self, name: str) -> str | None:
        """The alias of the ``ModelForm``'s model field *name*'s queued storage, if any."""
        meta = getattr(self, "_meta", None)
        model = getattr(meta, "model", None)
        if model is None:
            return None
        try:
            storage = getattr(model._meta.get_field(name), "storage", None)
        except FieldDoesNotExist:  # a form field of its own
            return None
        return storage.alias if isinstance(storage, QueuedStorage) else None


def with_request(form_class: type[Any], request: HttpRequest) -> type[Any]:
    """*form_class*, made with ``request=`` *request* unless told otherwise, when it is a
    :class:`DirectUploadFormMixin` (else as it is): for a caller that makes the form itself,
    as the admin does (``QueuedFileAdminMixin.get_form``)."""
    if not (isinstance(form_class, type) and issubclass(form_class, DirectUploadFormMixin)):
        return form_class
    base = form_class

    def __init__(self: DirectUploadFormMixin, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request", request)
        base.__init__(self, *args, **kwargs)

    return type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__})
