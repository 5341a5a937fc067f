from __future__ import annotations

import os
import tempfile

from django.db import models

from queued_storage.backends import QueuedFileSystemStorage
from queued_storage.fields import QueuedFileField, QueuedImageField
from queued_storage.storage import QueuedStorage
from tests.testapp import receivers  # noqa: F401  (connects the recording receiver)

#: Built in code with django-queued-storage's constructor: the worker finds it by digest.
legacy_storage = QueuedFileSystemStorage(
    remote="storages.backends.s3.S3Storage",
    local_options={
        "location": os.path.join(os.environ.get("QS_TEST_WORKDIR", tempfile.gettempdir()), "legacy")
    },
    task="queued_storage.tasks.TransferAndDelete",
)

#: A storage whose transfers run a django-queued-storage ``Transfer`` subclass's own hook.
hook_storage = QueuedStorage(
    local="staging",
    remote="fs_remote",
    task="tests.testapp.tasks.CopyByHand",
    alias="old-api-hook",
)


class Document(models.Model):
    title = models.CharField(max_length=100, blank=True)
    file = QueuedFileField(upload_to="docs")

    class Meta:
        app_label = "testapp"


class Picture(models.Model):
    image = QueuedImageField(upload_to="pictures", blank=True)

    class Meta:
        app_label = "testapp"


class LegacyDocument(models.Model):
    file = QueuedFileField(storage=legacy_storage, upload_to="legacy")

    class Meta:
        app_label = "testapp"


#: A storage whose ``Transfer`` subclass's hook returns neither True nor False.
says_nothing_storage = QueuedStorage(
    local="staging",
    remote="fs_remote",
    task="tests.testapp.tasks.SaysNothing",
    alias="old-api-says-nothing",
    delayed=True,
)
