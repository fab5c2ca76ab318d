"""The book's version, its PDF and how to cite it, each taken from the one place it is written.

The version is ``companion.__version__`` (``pyproject.toml`` reads it from there as well); the
title, authors and release date of a citation come from ``CITATION.cff``, whose version must be
the same (the build stops otherwise). This extension

- sets Sphinx's ``version`` and ``release``;
- defines the MyST substitutions ``{{ version }}`` and ``{{ bibtex }}`` (a BibTeX entry, as a
  code block) for the introduction's *How to cite*;
- puts the version, the whole book's PDF and *How to cite* in the footer of every page, and the
  PDF in the header's download menu (next to the page's own files). The PDF is
  ``losses-derived.pdf`` at the top of the site, printed by ``make book`` (tools/pdf.py) after
  the site is built.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import yaml
from sphinx.errors import ExtensionError

PDF = "losses-derived.pdf"
INTRO = "book/intro"


def book_version() -> str:
    import companion

    return str(companion.__version__)


def read_citation(root: Path) -> dict[str, Any]:
    citation: dict[str, Any] = yaml.safe_load((root / "CITATION.cff").read_text(encoding="utf-8"))
    return citation


def bibtex(citation: dict[str, Any], url: str) -> str:
    """The BibTeX entry of CITATION.cff (a @misc entry: the book is online and versioned)."""
    authors = " and ".join(
        f"{{{a['name']}}}" if "name" in a else f"{a['family-names']}, {a['given-names']}"
        for a in citation["authors"]
    )
    released = citation["date-released"]
    if isinstance(released, str):
        released = datetime.date.fromisoformat(released)
    fields = {
        "title": f"{{{citation['title']}}}",
        "author": authors,
        "year": str(released.year),
        "version": str(citation["version"]),
        "note": f"Version {citation['version']}",
        "url": url,
    }
    width = max(map(len, fields))
    body = ",\n".join(f"  {key.ljust(width)} = {{{value}}}" for key, value in fields.items())
    return f"@misc{{losses_derived,\n{body}\n}}"


def _config_inited(app: Any, config: Any) -> None:
    version = book_version()
    citation = read_citation(Path(app.srcdir))
    if str(citation.get("version")) != version:
        raise ExtensionError(
            f"CITATION.cff has version {citation.get('version')!r} but companion.__version__ is "
            f"{version!r}: update CITATION.cff (version and date-released) and CHANGELOG.md"
        )
    url = config.html_theme_options.get("repository_url") or citation.get("url", "")
    config.version = config.release = version
    substitutions = dict(config.myst_substitutions or {})
    substitutions["version"] = version
    substitutions["bibtex"] = f"```bibtex\n{bibtex(citation, url)}\n```"
    config.myst_substitutions = substitutions


def _page_context(
    app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    if app.builder.name != "html":  # the one-page build is what the PDF is printed from
        return
    pathto = context["pathto"]
    pdf = pathto(PDF, 1)
    cite = ("" if pagename == INTRO else pathto(INTRO)) + "#how-to-cite"
    context["theme_extra_footer"] = (
        f'<p class="book-version">Losses, Derived, version {app.config.version} · '
        f'<a class="book-pdf-link" href="{pdf}">the whole book as a PDF</a> · '
        f'<a href="{cite}">how to cite</a></p>'
    )
    for group in context.get("header_buttons", []):
        if group.get("label") == "download-buttons":
            group["buttons"].insert(
                0,
                {
                    "type": "link",
                    "url": pdf,
                    "text": "book .pdf",
                    "tooltip": "Download the whole book as one PDF",
                    "icon": "fas fa-book",
                    "label": "download-book-pdf-button",
                },
            )


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", _config_inited)
    # after the theme has built its header buttons (priority 501)
    app.connect("html-page-context", _page_context, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
