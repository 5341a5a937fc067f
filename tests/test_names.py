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
    PART_BYTES_MAX,
    SPOOL_DIRNAME,
    UPLOAD_NAME_LENGTH,
    check_length,
    checked_name,
    control_characters,
    valid_name,
)


def test_the_ledger_column_is_the_name_limit() -> None:
    assert StoredFile._meta.get_field("name").max_length == LEDGER_NAME_LENGTH
    # An alternative name chosen on a clash adds "_" and 7 characters.
    assert UPLOAD_NAME_LENGTH + 8 <= LEDGER_NAME_LENGTH


def test_the_spool_directory_is_one_of_the_apps_own() -> None:
    assert SPOOL_DIRNAME.startswith(OWN_DIRECTORY_PREFIX)


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
