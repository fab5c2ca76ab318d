"""The PDF of the whole book (_build/html/losses-derived.pdf), read back with poppler-utils.

Run after `make book` (make test does), which prints the PDF from the single-page build
(tools/pdf.py). Every chapter must be in it as a numbered heading, as on the site; no MyST or
LaTeX source may be left in its text (math not typeset, a role or directive not rendered); and
every figure of the one-page book must be in it as an image. Without poppler-utils the test
skips with the reason, except under CI=true.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import unicodedata
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml
from PIL import Image

import companion

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
PDF = Path(os.environ.get("BOOK_PDF", BUILD / "html" / "losses-derived.pdf"))
ONE_PAGE = Path(os.environ.get("BOOK_SINGLEHTML", BUILD / "singlehtml"))
MONOSPACE = re.compile(r"mono|courier", re.IGNORECASE)
# MyST roles and directives of the sources; none may reach the reader as text
MYST_SOURCE = re.compile(
    r"\{(math|code-cell|glue|glue:\w+|numref|cite:\w+|cite|ref|doc|eq|mod|func|class|figure|"
    r"solution-start|solution-end|exercise|admonition|note|eval-rst|automodule)\}"
)
# what math looks like when MathJax has not typeset it (searched outside code only: code may
# hold a matplotlib label such as r"$\sigma(x)$")
RAW_MATH = re.compile(r"\$|\\\(|\\\)|\\\[|\\\]|\\frac|\\begin\{|\\mathrm|\\sum_|\\log\b|\\sigma\b")


@dataclass
class Text:
    font_size: float
    monospace: bool
    text: str


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} not found (apt-get install poppler-utils)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the PDF test cannot run in CI: {reason}")
        pytest.skip(reason)
    return path


@cache
def pdf_texts() -> list[Text]:
    """Every run of text in the PDF, in reading order, with its font (pdftohtml -xml)."""
    if not PDF.exists():
        pytest.fail(f"{PDF} is missing: run `make book` (it prints the PDF)")
    xml = subprocess.run(
        [need("pdftohtml"), "-xml", "-i", "-q", "-stdout", str(PDF)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fonts: dict[str, tuple[float, bool]] = {}
    texts = []
    for page in ET.fromstring(xml).iter("page"):
        for node in page:
            if node.tag == "fontspec":
                family = node.get("family", "")
                fonts[node.get("id", "")] = (
                    float(node.get("size", 0)),
                    bool(MONOSPACE.search(family)),
                )
            elif node.tag == "text":
                size, mono = fonts[node.get("font", "")]
                texts.append(Text(size, mono, "".join(node.itertext())))
    assert texts, f"{PDF} holds no text"
    return texts


def squash(text: str) -> str:
    """One space between words, and ligatures (the "fi" of "classification") as letters."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def chapters() -> list[tuple[str, str]]:
    """(number as on the site, title) of every chapter in _toc.yml; "" where unnumbered."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    numbered, out = 0, []
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            source = (ROOT / f"{chapter['file']}.md").read_text(encoding="utf-8")
            title = re.search(r"^# (.+)$", source, re.MULTILINE)
            assert title, f"{chapter['file']} has no title"
            number = ""
            if part.get("numbered"):
                numbered += 1
                number = f"{numbered}."
            out.append((number, squash(title.group(1))))
    return out


def test_every_chapter_is_a_numbered_heading_of_the_pdf() -> None:
    texts = pdf_texts()
    body = statistics.median(t.font_size for t in texts if not t.monospace)
    # headings are the runs set at least 1.8 times the body size; a long title wraps
    headings = squash(" ".join(t.text for t in texts if t.font_size >= 1.8 * body))
    headings = re.sub(r"(?<=\w)- (?=\w)", "-", headings)  # "image-" / "text pairs"
    missing = [
        f"{n} {title}".strip() for n, title in chapters() if f"{n} {title}".strip() not in headings
    ]
    assert not missing, f"chapter headings missing from {PDF.name}: {missing}"


def test_figures_are_numbered_as_on_the_site() -> None:
    text = squash(" ".join(t.text for t in pdf_texts()))
    for number, title in chapters():
        if number and f"Fig. {number}1" not in text:
            pytest.fail(f"{PDF.name}: no 'Fig. {number}1' caption for chapter {number} {title}")


def test_no_source_is_left_in_the_text() -> None:
    texts = pdf_texts()
    everything = "\n".join(t.text for t in texts)
    prose = "\n".join(t.text for t in texts if not t.monospace)
    roles = sorted(set(MYST_SOURCE.findall(everything)))
    assert not roles, f"MyST roles or directives left as text in {PDF.name}: {roles}"
    for fence in ("```", ":::"):
        assert fence not in everything, f"a '{fence}' fence left as text in {PDF.name}"
    raw = [squash(prose[max(0, m.start() - 40) : m.end() + 40]) for m in RAW_MATH.finditer(prose)]
    assert not raw, f"math not typeset in {PDF.name} (outside code): {raw[:5]}"


def test_the_pdf_states_the_version() -> None:
    text = squash(" ".join(t.text for t in pdf_texts()))
    assert f"version {companion.__version__}" in text


def figure_sizes() -> Counter[tuple[int, int]]:
    """Pixel sizes of the figures of the one-page book, leaving out cells hidden on the site."""
    page = ONE_PAGE / f"{yaml.safe_load((ROOT / '_toc.yml').read_text())['root']}.html"
    if not page.exists():
        pytest.fail(f"{page} is missing: run `make book`")
    html = page.read_text(encoding="utf-8")
    html = re.sub(r'<details class="[^"]*\bhide\b.*?</details>', "", html, flags=re.DOTALL)
    sizes: Counter[tuple[int, int]] = Counter()
    for figure in re.findall(r"<figure\b.*?</figure>", html, flags=re.DOTALL):
        for src in re.findall(r'<img\b[^>]*\bsrc="([^"]+)"', figure):
            with Image.open(ONE_PAGE / src) as image:
                sizes[image.size] += 1
    return sizes


def test_every_figure_is_an_image_of_the_pdf() -> None:
    pdf_texts()  # fails first, with its reason, when the PDF is missing
    listing = subprocess.run(
        [need("pdfimages"), "-list", str(PDF)], check=True, capture_output=True, text=True
    ).stdout.splitlines()[2:]
    in_pdf: Counter[tuple[int, int]] = Counter()
    for row in listing:
        fields = row.split()
        if fields[2] == "image":  # not the soft masks (alpha channels) of the same images
            in_pdf[(int(fields[3]), int(fields[4]))] += 1
    figures = figure_sizes()
    numbered = sum(1 for number, _ in chapters() if number)
    assert sum(figures.values()) >= numbered, "fewer figures than chapters in the one-page book"
    missing = figures - in_pdf
    assert not missing, f"figures (width, height: count) missing from {PDF.name}: {dict(missing)}"
