"""One version everywhere: the package, its metadata, CITATION.cff and CHANGELOG.md.

The version is written once, as ``companion.__version__``; pyproject.toml reads it (a dynamic
version), CITATION.cff and the newest section of CHANGELOG.md must repeat it, and the site shows
it (tests/test_site.py checks the built pages, the book's build stops on a CITATION.cff that
disagrees).
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import yaml
from setuptools.config.pyprojecttoml import read_configuration

import companion

ROOT = Path(__file__).resolve().parents[1]
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
# Keep a Changelog 1.1.0: "## [1.2.3] - 2026-12-07" or "## [Unreleased]", then "### Added"...
RELEASE = re.compile(r"^## \[(?P<version>[^\]]+)\](?: - (?P<date>\d{4}-\d{2}-\d{2}))?$")
KINDS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def citation() -> dict[str, object]:
    data = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def releases() -> list[tuple[str, datetime.date | None]]:
    """(version, date) of every section of CHANGELOG.md, newest first."""
    out = []
    for line in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            match = RELEASE.match(line)
            assert match, f"CHANGELOG.md: {line!r} is not '## [x.y.z] - YYYY-MM-DD'"
            day = match["date"]
            out.append((match["version"], datetime.date.fromisoformat(day) if day else None))
        elif line.startswith("### "):
            assert line[4:].strip() in KINDS, f"CHANGELOG.md: {line!r} is not one of {KINDS}"
    return out


def test_the_version_is_semantic_and_pyproject_reads_it_from_the_package() -> None:
    assert SEMVER.match(companion.__version__), companion.__version__
    project = read_configuration(ROOT / "pyproject.toml")["project"]
    assert project["version"] == companion.__version__


def test_citation_cff_is_valid_and_cites_this_version() -> None:
    cff = citation()
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors", "version", "date-released", "license"):
        assert key in cff, f"CITATION.cff has no {key}"
    assert cff["title"] == "Losses, Derived"
    assert cff.get("type", "software") in {"software", "dataset"}
    assert str(cff["version"]) == companion.__version__
    assert isinstance(cff["date-released"], datetime.date)  # YAML reads YYYY-MM-DD as a date
    assert cff["license"] == "MIT"
    authors = cff["authors"]
    assert isinstance(authors, list) and authors
    for author in authors:
        assert "name" in author or "family-names" in author, author


def test_changelog_has_a_section_for_this_version_dated_as_the_citation() -> None:
    sections = releases()
    assert sections, "CHANGELOG.md has no '## [x.y.z] - date' section"
    released = [(v, d) for v, d in sections if v != "Unreleased"]
    assert all(SEMVER.match(v) and d is not None for v, d in released), released
    assert released[0][0] == companion.__version__, (
        f"the newest section of CHANGELOG.md is {released[0][0]}, the package is "
        f"{companion.__version__}"
    )
    assert released[0][1] == citation()["date-released"]
    order = [tuple(map(int, v.split("."))) for v, _ in released]
    assert order == sorted(order, reverse=True) and len(set(order)) == len(order), order
