"""The README and the docs pages: the README stays short and every relative link in it resolves
(files and anchors); every setting and every system check is documented on the configuration
page, and no check's hint names a file of the repository. Offline and fast: files only (the
site itself is built by ``make docs``, ``mkdocs build --strict``)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from queued_storage.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
#: The system checks' package: one module per topic.
CHECKS = ROOT / "queued_storage" / "checks"
README_MAX_BYTES = 12_500

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_HTML_ID = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def _prose(text: str) -> str:
    """*text* without fenced code blocks (a ``#`` comment there is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """The anchor GitHub (and MkDocs' default ``toc`` slugify) gives a heading."""
    text = _HTML_ID.sub("", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _prose(path.read_text(encoding="utf-8"))
    found = set(_HTML_ID.findall(text))
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            found.add(_slug(match.group(1)))
    return found


def _relative_links(path: Path) -> list[str]:
    return [
        link
        for link in _LINK.findall(_prose(path.read_text(encoding="utf-8")))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", link)  # http:, https:, mailto:
    ]


def test_readme_is_at_most_12500_bytes() -> None:
    assert README.stat().st_size <= README_MAX_BYTES


def test_readme_has_relative_links() -> None:
    assert len(_relative_links(README)) >= 10


@pytest.mark.parametrize("link", _relative_links(README))
def test_every_relative_link_of_the_readme_resolves(link: str) -> None:
    target, _, anchor = link.partition("#")
    path = (README.parent / unquote(target)).resolve() if target else README
    assert path.exists(), f"README links {link!r}: {path} does not exist"
    if anchor:
        assert path.suffix == ".md", f"README links {link!r}: an anchor into a non-Markdown file"
        assert anchor in _anchors(path), f"README links {link!r}: no such anchor in {path.name}"


def test_the_readme_names_no_test_node_ids() -> None:
    assert "::" not in README.read_text(encoding="utf-8")


def test_every_setting_is_on_the_configuration_page() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    missing = [name for name in DEFAULTS if f"`QUEUED_STORAGE_{name}`" not in text]
    assert missing == []


def _check_sources() -> list[str]:
    """The source of every module of the checks' package."""
    sources = [path.read_text(encoding="utf-8") for path in sorted(CHECKS.glob("*.py"))]
    assert len(sources) >= 2
    return sources


def _check_ids() -> list[str]:
    source = "\n".join(_check_sources())
    ids = set(re.findall(r"queued_storage\.([EW]\d{3})", source))
    ids |= set(re.findall(r"\"([EW]\d{3})\"", source))  # the ids given as (problem, "E009")
    return sorted(ids)


def test_every_check_id_has_an_entry_on_the_configuration_page() -> None:
    ids = _check_ids()
    assert len(ids) >= 25
    anchors = _anchors(CONFIGURATION)
    text = CONFIGURATION.read_text(encoding="utf-8")
    for check_id in ids:
        assert f"queued_storage.{check_id}" in text
        assert f"queued_storage-{check_id.lower()}" in anchors


def test_every_check_hint_is_written_out_and_names_no_repository_path() -> None:
    """Every ``Error``/``Warning`` in the checks' modules passes ``hint=``, and no string of
    them names a file of the repository (``docs/``, a ``.md`` page, ``nginx.conf``): the
    installed package has none of them. ``tests/test_checks.py`` walks the hints the checks
    give."""
    sources = _check_sources()
    messages = [
        message
        for source in sources
        for message in re.findall(r"\b(?:Error|Warning)\((.*?)\bid=", source, flags=re.S)
    ]
    assert len(messages) >= 15
    for message in messages:
        assert "hint=" in message, message
    for source in sources:
        code = source.split('"""', 2)[2]  # past the module docstring, which may say why
        assert re.findall(r"\bdocs/|\.md\b|\bnginx\.conf\b", code) == []
