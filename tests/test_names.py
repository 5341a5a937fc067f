"""``queued_storage.names``: every file-name rule and limit, defined once."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import SuspiciousFileOperation

from queued_storage.models import StoredFile
from queued_storage.names import (
    LEDGER_NAME_LENGTH,
    NAME_BYTES_MAX,
    OWN_DIRECTORY_PREFIX,
    OWN_DIRNAMES,
    PART_BYTES_MAX,
    SPOOL_DIRNAME,
    UPLOAD_NAME_LENGTH,
    check_length,
    checked_name,
    control_characters,
    reserved_directory,
    stored_name,
    valid_name,
)
from queued_storage.uploads import UploadRefused, validate_upload_name


def test_the_ledger_column_is_the_name_limit() -> None:
    assert StoredFile._meta.get_field("name").max_length == LEDGER_NAME_LENGTH
    # An alternative name chosen on a clash adds "_" and 7 characters.
    assert UPLOAD_NAME_LENGTH + 8 <= LEDGER_NAME_LENGTH


def test_the_spool_directory_is_one_of_the_apps_own() -> None:
    assert SPOOL_DIRNAME.startswith(OWN_DIRECTORY_PREFIX)


def test_every_top_level_name_under_the_apps_prefix_is_reserved_and_only_those() -> None:
    assert {".queued_storage-incoming", ".queued_storage-tus", ".queued_storage-doctor"} == set(
        OWN_DIRNAMES
    )
    for directory in [*OWN_DIRNAMES, ".queued_storage-later", ".queued_storage-doctor-x.txt"]:
        assert directory.startswith(OWN_DIRECTORY_PREFIX)
        name = f"{directory}/x.txt"
        assert reserved_directory(name) == directory
        with pytest.raises(SuspiciousFileOperation) as raised:
            stored_name(name, None)
        assert str(raised.value) == (
            f"QueuedStorage refuses the file name {name!r}: top-level names starting with "
            "'.queued_storage-' are reserved for queued_storage's own files. Choose another "
            "folder or name."
        )
    for free in ["a/.queued_storage-tus/x.txt", ".queued_storage/x.txt", "queued_storage-x.txt"]:
        assert reserved_directory(free) is None
        assert stored_name(free, None) == free


#: 1,024 and 1,025 bytes of UTF-8 in 516 and 517 characters, no part over 255 bytes.
AT_THE_LIMIT = "/".join(["\u00e9" * 127 + "x"] * 3 + ["\u00e9" * 127, "y"])
OVER_THE_LIMIT = "/".join(["\u00e9" * 127 + "x"] * 4 + ["y"])


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        (AT_THE_LIMIT, True),
        (OVER_THE_LIMIT, False),
        ("cafe\u0301.txt", True),  # NFD: stored in NFC
        (".queued_storage-doctor/x.txt", False),
        (".queued_storage-x", False),
        ("a/.queued_storage-tus/b.txt", True),
    ],
    ids=["1024-bytes", "1025-bytes", "nfd", "doctor", "prefix-file", "deeper"],
)
def test_a_name_the_upload_views_accept_is_one_save_stores_unchanged(
    name: str, accepted: bool
) -> None:
    assert [len(n.encode()) for n in (AT_THE_LIMIT, OVER_THE_LIMIT)] == [1024, 1025]
    if not accepted:
        with pytest.raises(UploadRefused):
            validate_upload_name(name)
        with pytest.raises(SuspiciousFileOperation):
            stored_name(name, LEDGER_NAME_LENGTH)
        return
    upload_name = validate_upload_name(name)
    assert stored_name(upload_name, LEDGER_NAME_LENGTH) == upload_name


def test_an_upload_name_over_1024_bytes_in_utf8_is_refused_though_under_1000_characters() -> None:
    name = "/".join(["\u00e9" * 120] * 5)
    assert (len(name), len(name.encode())) == (604, 1204)
    with pytest.raises(UploadRefused) as raised:
        validate_upload_name(name)
    assert raised.value.message == (
        f"The file name {name[:60]!r}... has 1204 bytes in UTF-8; the limit is 1024 bytes "
        "(S3's limit for a key). Shorten it."
    )


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("a\x00b", "U+0000"),
        ("line\nbreak", "U+000A"),
        ("del\x7f", "U+007F"),
        ("c1\x85", "U+0085"),
        ("invoice\u202etxt.exe", "U+202E"),  # shows as "invoiceexe.txt"
        ("a\u202ab.txt", "U+202A"),
        ("a\u2066b\u2069.txt", "U+2066, U+2069"),
    ],
)
def test_control_characters_are_refused_by_code_point(name: str, shown: str) -> None:
    assert control_characters(name)
    with pytest.raises(SuspiciousFileOperation, match=re.escape(f"control characters ({shown})")):
        checked_name(name)


def test_names_are_stored_in_nfc() -> None:
    assert checked_name("cafe\u0301.txt") == "caf\u00e9.txt"
    assert control_characters("caf\u00e9 menu.txt") == []


@pytest.mark.parametrize("bad", ["../x.txt", "a/../../b.txt", "/etc/passwd"])
def test_names_outside_the_root_are_refused(bad: str) -> None:
    with pytest.raises(SuspiciousFileOperation):
        valid_name(bad, None)


def test_backslashes_become_slashes() -> None:
    assert valid_name("a\\b.txt", None) == "a/b.txt"


def test_lengths_are_counted_in_utf8_bytes() -> None:
    check_length("é" * (PART_BYTES_MAX // 2))
    with pytest.raises(SuspiciousFileOperation, match=rf"at most {PART_BYTES_MAX} bytes between"):
        check_length("é" * (PART_BYTES_MAX // 2 + 1))
    with pytest.raises(SuspiciousFileOperation, match=rf"{NAME_BYTES_MAX} bytes in all"):
        check_length("/".join(["d" * 200] * 6))


def test_a_name_a_field_will_truncate_is_not_refused_for_its_length() -> None:
    long_name = "x" * (PART_BYTES_MAX + 10) + ".txt"
    assert valid_name(long_name, max_length=100) == long_name
    with pytest.raises(SuspiciousFileOperation):
        valid_name(long_name, None)
