"""Image metadata kept in the ledger: format, dimensions, and the EXIF orientation (Pillow).

A file whose name or declared type says it is an image is opened with Pillow (the header
only: ``Image.open`` does not decode the pixels); its format, width, height and EXIF
orientation (tag 274, 1 when absent) pass into the ledger's metadata as ``image``. An image
Pillow cannot read is rejected with the reason; any other file passes with nothing. Needs
Pillow (``pip install Pillow``): without it every file passes, and the system check says so.
"""

from __future__ import annotations

import mimetypes

from queued_storage.processors import Outcome, Passed, Rejected, Staged

__all__ = ["ImageInfo"]

#: EXIF's orientation tag.
ORIENTATION = 274


class ImageInfo:
    def __call__(self, staged: Staged) -> Outcome:
        claimed = staged.content_type or mimetypes.guess_type(staged.name)[0] or ""
        if not claimed.startswith("image/") or claimed == "image/svg+xml":
            return Passed()
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            return Passed()
        try:
            with staged.open() as source, Image.open(source) as image:
                info = {
                    "format": image.format,
                    "width": image.width,
                    "height": image.height,
                    "orientation": int(image.getexif().get(ORIENTATION, 1)),
                }
        except FileNotFoundError:
            raise  # the local copy is gone: the worker's LocalFileMissing, not a bad image
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            return Rejected(f"{staged.name!r} is not a readable image ({err}).")
        return Passed({"image": info})
