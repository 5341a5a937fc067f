"""Thumbnails made by the worker, an example of a processor that derives files.

:class:`Thumbnail` runs where every processor runs: in the worker, on the leased local copy of
a file, before the file is sent to S3. For an image it writes a JPEG thumbnail and saves it
through the same queued storage (``get_queued_storage(staged.alias)``), so the thumbnail is a
file like any other: ``pending`` and served from the staging disk at once (also while its
source still waits for S3), then sent to S3, verified and ``remote``, through the same
processors (the scan, the type check), under the owner of its source.

* Its name is derived from the source's: ``thumbs/<name>.jpg`` (:func:`thumbnail_name`).
  Files under that prefix are its own thumbnails and are left alone, so it never makes a
  thumbnail of a thumbnail.
* It is idempotent. A processor can run twice on one file: a later processor answered
  ``Later`` (its scanner was down), or the worker died before the ledger recorded the pass.
  ``save()`` never reuses a name the ledger holds (it picks ``thumbs/cat_a1b2c3d.png.jpg``),
  so a second run deletes the first thumbnail (its ledger row, staged copy and S3 object)
  and saves the new one under the same name. Reusing an existing thumbnail instead would
  serve a stale one after its source was deleted and another file saved under its name.
* Put it last in ``processors``: the processors before it decide whether the file is
  accepted at all, and a rejected file should leave no thumbnail behind.

Settings (the example's ``example/settings.py``)::

    "processors": [
        "queued_storage.processors.content_type.ContentTypeCheck",
        "queued_storage.processors.images.ImageInfo",
        {"path": "gallery.processors.Thumbnail", "options": {"size": 256}},
    ]

It needs Pillow (the demo's extra installs it). Deleting a source does not delete its
thumbnail: a project that deletes files deletes ``thumbnail_name(name)`` as well.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes

from django.core.files.base import ContentFile
from PIL import Image, ImageOps

from queued_storage.names import length_problem
from queued_storage.processors import Later, Outcome, Passed, Rejected, Staged
from queued_storage.storage import get_queued_storage, owned_by

__all__ = ["PREFIX", "Thumbnail", "thumbnail_name"]

#: The folder of the thumbnails in the storage.
PREFIX = "thumbs/"


def thumbnail_name(name: str, prefix: str = PREFIX) -> str:
    """The name of *name*'s thumbnail: ``thumbs/<name>.jpg``, or ``thumbs/<hash>.jpg`` when
    that name would be too long for the storage (a part over 255 bytes, or over 1,024 in
    all); the same for the same *name* every time."""
    derived = f"{prefix}{name}.jpg"
    if length_problem(derived) is None:
        return derived
    return f"{prefix}{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()}.jpg"


class Thumbnail:
    """``Thumbnail(size=256, prefix="thumbs/", quality=85)``: a JPEG at most *size* pixels
    wide and high, its orientation taken from the image's EXIF tag."""

    def __init__(self, *, size: int = 256, prefix: str = PREFIX, quality: int = 85) -> None:
        if not prefix.endswith("/"):
            raise ValueError(f"Thumbnail's prefix must be a folder ending in '/', got {prefix!r}.")
        self.size, self.prefix, self.quality = size, prefix, quality

    def __call__(self, staged: Staged) -> Outcome:
        if staged.name.startswith(self.prefix):
            return Passed()  # one of its own thumbnails
        claimed = staged.content_type or mimetypes.guess_type(staged.name)[0] or ""
        if not claimed.startswith("image/") or claimed == "image/svg+xml":
            return Passed()
        try:
            data, width, height = self._render(staged)
        except FileNotFoundError:
            raise  # the local copy is gone: the worker's error, not the image's
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            # Pillow: not an image it reads, truncated, or more pixels than it decodes
            return Rejected(f"{staged.name!r} is not a readable image ({err}).")
        storage = get_queued_storage(staged.alias)
        derived = thumbnail_name(staged.name, self.prefix)
        if storage.exists(derived):
            try:
                storage.delete(derived)  # a second run: replace it under the same name
            except Exception as err:  # S3 down: the old object is still there
                return Later(
                    f"The thumbnail {derived!r} of {staged.name!r} could not be replaced "
                    f"({type(err).__name__}: {err}); it is made again when the storage answers."
                )
        with owned_by(staged.owner):
            saved = storage.save(derived, ContentFile(data))
        if saved != derived:  # another process saved this name since the delete
            storage.delete(saved)
            raise RuntimeError(
                f"the thumbnail of {staged.name!r} was saved as {saved!r}, not {derived!r}"
            )
        return Passed({"thumbnail": derived, "thumbnail_size": [width, height]})

    def _render(self, staged: Staged) -> tuple[bytes, int, int]:
        """The thumbnail's JPEG bytes, width and height. ``thumbnail()`` lets a JPEG decode
        at a reduced scale (``draft``), so a large photo is not decoded whole."""
        with staged.open() as source, Image.open(source) as image:
            image.thumbnail((self.size, self.size))
            small = ImageOps.exif_transpose(image)
        if small.mode in ("RGBA", "LA", "PA") or "transparency" in small.info:
            rgba = small.convert("RGBA")  # JPEG has no alpha: transparent parts turn white
            small = Image.new("RGB", rgba.size, "white")
            small.paste(rgba, mask=rgba.getchannel("A"))
        elif small.mode != "RGB":
            small = small.convert("RGB")  # palettes, greyscale, CMYK, 16-bit
        out = io.BytesIO()
        small.save(out, "JPEG", quality=self.quality)
        return out.getvalue(), small.width, small.height
