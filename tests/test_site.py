"""The built site, opened in a real headless Chromium (Debian's /usr/bin/chromium via Playwright).

Run after `make book` (make test does). Every chapter page must load without console errors,
render its math with the bundled MathJax, show every figure as a captioned image of non-zero
size, and link to the next page. The site shows the package's version and links the PDF of the
whole book; dark mode is one click away and keeps figures and code legible; the API page
documents every public name of every module. Without Chromium the test skips with the reason,
except under CI=true.
"""

from __future__ import annotations

import http.server
import importlib
import io
import os
import pkgutil
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

import companion

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("SITE_HTML", ROOT / "_build" / "html"))
CHROMIUM = "/usr/bin/chromium"
PDF = "losses-derived.pdf"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def toc_pages() -> list[str]:
    """Every page of _toc.yml, in reading order, as paths relative to the site root."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc["parts"]:
        pages += [chapter["file"] for chapter in part["chapters"]]
    return pages


def chapter_pages() -> list[str]:
    """The executable chapters (MyST notebooks), which carry math and figures."""
    return [
        p
        for p in toc_pages()
        if "format_name: myst" in (ROOT / f"{p}.md").read_text(encoding="utf-8")[:400]
    ]


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """Serve _build/html on a free loopback port for the duration of the module."""
    if not (HTML / "index.html").exists():
        pytest.fail("_build/html/index.html is missing: run `make book` first")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(HTML), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        reason = f"{CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Tab:
    """A browser page plus the console errors and uncaught exceptions it has logged."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on(
            "response",
            lambda r: r.status >= 400 and self.errors.append(f"HTTP {r.status} for {r.url}"),
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)


@pytest.fixture
def page(browser: Any) -> Iterator[Tab]:
    """A fresh page (a new profile: a first visit) that collects console errors.

    A first visit is what used to log "Got invalid theme mode" from the book theme; the site
    sets the theme's default_mode ("auto") in _config.yml, so no error is expected or filtered
    here (test_a_first_visit_on_a_dark_system_gets_the_dark_theme checks a dark system too).
    """
    context = browser.new_context()
    yield Tab(context.new_page())
    context.close()


def open_page(page: Tab, url: str) -> None:
    response = page.goto(url, wait_until="networkidle")
    assert response is not None and response.ok, f"{url} did not load"


def test_index_redirects_to_intro_and_links_to_the_first_chapter(site: str, page: Tab) -> None:
    open_page(page, f"{site}/index.html")
    page.wait_for_url("**/book/intro.html")
    assert "Losses, Derived" in page.title()
    nav = page.locator("nav.bd-links a.reference.internal")
    assert nav.count() >= len(toc_pages()) - 1
    assert page.errors == []


@pytest.mark.parametrize("doc", toc_pages())
def test_page_loads_renders_and_links_to_the_next(site: str, page: Tab, doc: str) -> None:
    """Each page is opened once (MathJax typesetting is most of the cost) and checked whole."""
    pages = toc_pages()
    open_page(page, f"{site}/{doc}.html")
    assert page.locator("main h1").first.inner_text().strip()
    if doc in chapter_pages():
        # MathJax (bundled, no CDN) typesets every $...$ into an mjx-container element.
        # (Counted in the article: the first match on a page can be a hidden navigation entry.)
        page.wait_for_function(
            "document.querySelectorAll('article mjx-container').length > 3", timeout=30_000
        )
        assert page.locator("article mjx-container").first.is_visible()
        scripts = page.eval_on_selector_all(
            "script[src]", "els => els.map(e => e.getAttribute('src'))"
        )
        mathjax = [s for s in scripts if "mathjax" in s.lower()]
        assert mathjax and all(not s.startswith("http") for s in mathjax), mathjax
        # Figures are <img> outputs of executed cells; each must have decoded to a real size.
        sizes = page.eval_on_selector_all(
            ".cell_output img",
            "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])",
        )
        for complete, width, height in sizes:
            assert complete and width > 0 and height > 0
        # every figure is numbered and captioned (mystnb: figure: caption/name on its cell)
        uncaptioned = page.eval_on_selector_all(
            ".cell_output img",
            "imgs => imgs.filter(i => !i.closest('figure[id]')?.querySelector('figcaption'))"
            ".length",
        )
        assert uncaptioned == 0, f"{doc}: {uncaptioned} figure(s) without a caption"
        if doc not in ("book/errata", "book/performance"):  # every chapter has figures
            # (the errata checks claims; the performance page reads the benchmarks' tables)
            assert len(sizes) >= 1, f"{doc} shows no figure"
    if doc != pages[-1]:
        # the next link resolves to the following page (which its own test opens)
        following = pages[pages.index(doc) + 1]
        href = page.eval_on_selector("a.right-next", "a => a.href")
        assert href.split("#")[0] == f"{site}/{following}.html", href
    assert page.errors == []


def test_download_button_offers_the_notebook(site: str, page: Tab) -> None:
    open_page(page, f"{site}/book/sigmoid.html")
    links = page.eval_on_selector_all(
        ".dropdown-download-buttons a", "els => els.map(e => e.getAttribute('href'))"
    )
    ipynb = [href for href in links if href and href.endswith(".ipynb")]
    assert ipynb, links
    response = page.request.get(f"{site}/book/{ipynb[0]}")
    assert response.ok and '"cells"' in response.text()


def test_intro_shows_the_version_links_the_pdf_and_says_how_to_cite(site: str, page: Tab) -> None:
    version = companion.__version__
    open_page(page, f"{site}/book/intro.html")
    assert f"version {version}" in page.locator("article").inner_text()
    assert f"version {version}" in page.locator("p.book-version").inner_text()  # every page
    bibtex = page.locator("#how-to-cite pre").first.inner_text()
    assert bibtex.startswith("@misc{") and "Losses, Derived" in bibtex, bibtex
    assert re.search(rf"version\s*=\s*\{{{re.escape(version)}\}}", bibtex), bibtex
    links = set(page.eval_on_selector_all("a.book-pdf-link", "els => els.map(e => e.href)"))
    assert links == {f"{site}/{PDF}"}, links  # the intro's paragraph and the footer
    response = page.request.get(f"{site}/{PDF}")
    assert response.ok and response.headers["content-type"] == "application/pdf"
    assert response.body().startswith(b"%PDF-")
    assert page.errors == []


def test_download_menu_offers_the_whole_book_as_pdf(site: str, page: Tab) -> None:
    open_page(page, f"{site}/book/sigmoid.html")
    links = page.eval_on_selector_all(".dropdown-download-buttons a", "els => els.map(e => e.href)")
    assert f"{site}/{PDF}" in links, links


def luminance_map(rgb: np.ndarray) -> np.ndarray:
    """WCAG 2 relative luminance of sRGB colours (channels 0..255 on the last axis)."""
    c = rgb[..., :3] / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def relative_luminance(rgb: tuple[float, ...]) -> float:
    return float(luminance_map(np.array(rgb, dtype=np.float64)))


def contrast(a: float, b: float) -> float:
    """WCAG contrast ratio of two relative luminances (4.5 is the minimum for body text)."""
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


def css_rgb(colour: str) -> tuple[float, ...]:
    channels = re.findall(r"[\d.]+", colour)
    return tuple(float(c) for c in channels[:3])


# The text colour of every run of code (source and outputs, and inline code), with the
# background it is drawn on: the nearest ancestor whose background is not transparent.
CODE_COLOURS = """() => {
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = getComputedStyle(el).backgroundColor;
      if (c !== 'transparent' && !/^rgba\\(.*,\\s*0\\)$/.test(c)) return c;
    }
    return getComputedStyle(document.documentElement).backgroundColor;
  };
  const seen = {};
  for (const el of document.querySelectorAll('article pre, article pre span, article code')) {
    if (!el.textContent.trim()) continue;
    const pair = getComputedStyle(el).color + ' on ' + background(el);
    seen[pair] = seen[pair] || el.textContent.trim().slice(0, 30);
  }
  return Object.entries(seen);
}"""


def test_dark_mode_is_one_click_away_and_keeps_figures_and_code_legible(
    site: str, browser: Any
) -> None:
    """A first visit on a light system, the header's switcher clicked once, the page reloaded.

    The site's default mode is "auto" (the system's setting), so one click gives the dark
    theme and the reload keeps it (localStorage). Each figure is photographed as the reader
    sees it: its background must be light, with dark marks on it (axes, text) at a contrast of
    at least 4.5; every colour of code text must keep a contrast of 4.5 with its background.
    """
    context = browser.new_context(color_scheme="light")
    page = Tab(context.new_page())
    try:
        open_page(page, f"{site}/book/sigmoid.html")
        theme = "document.documentElement.dataset.theme"
        assert page.evaluate(theme) == "light"
        switch = page.locator("button.theme-switch-button").first
        assert switch.is_visible()
        switch.click()
        assert page.evaluate(theme) == "dark"
        page.reload(wait_until="networkidle")
        assert page.evaluate(theme) == "dark"
        page.wait_for_function("[...document.images].every(i => i.complete)")
        figures = page.locator("article figure img")
        assert figures.count() >= 1
        for i in range(figures.count()):
            shot = Image.open(io.BytesIO(figures.nth(i).screenshot())).convert("RGB")
            levels = np.sort(luminance_map(np.asarray(shot, dtype=np.float64)), axis=None)
            background = float(np.median(levels))
            darkest = float(levels[len(levels) // 200])  # the darkest 0.5 %: axes, text
            assert background > 0.7, f"figure {i + 1}: background luminance {background:.2f}"
            assert contrast(background, darkest) >= 4.5, f"figure {i + 1}: marks too faint"
        for pair, sample in page.evaluate(CODE_COLOURS):
            colour, background = pair.split(" on ")
            ratio = contrast(
                relative_luminance(css_rgb(colour)), relative_luminance(css_rgb(background))
            )
            assert ratio >= 4.5, f"code {sample!r}: {pair}, contrast {ratio:.1f} in dark mode"
        assert page.errors == []
    finally:
        context.close()


def test_a_first_visit_on_a_dark_system_gets_the_dark_theme(site: str, browser: Any) -> None:
    context = browser.new_context(color_scheme="dark")
    page = Tab(context.new_page())
    try:
        open_page(page, f"{site}/book/intro.html")
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"
        assert page.errors == []  # no "Got invalid theme mode" on a first visit
    finally:
        context.close()


def public_modules() -> list[str]:
    """Every public module of the package (not the private helpers such as _validate)."""
    return sorted(
        f"companion.{info.name}"
        for info in pkgutil.iter_modules(companion.__path__)
        if not info.name.startswith("_")
    )


def test_api_page_documents_every_public_name_of_every_module() -> None:
    """Each public module has its section and each name of its __all__ an entry (an anchor
    named after the object); each name of the package's own __all__ is documented somewhere."""
    api = HTML / "book" / "api.html"
    if not api.exists():
        pytest.fail(f"{api} is missing: run `make book` first")
    anchors = set(re.findall(r'\bid="([^"]+)"', api.read_text(encoding="utf-8")))
    missing = []
    for name in public_modules():
        module = importlib.import_module(name)
        public = getattr(module, "__all__", None)
        assert public is not None, f"{name} has no __all__: its public names are not declared"
        if f"module-{name}" not in anchors:
            missing.append(f"{name} (the module)")
        missing += [f"{name}.{obj}" for obj in public if f"{name}.{obj}" not in anchors]
    documented = {
        anchor.rsplit(".", 1)[-1] for anchor in anchors if anchor.startswith("companion.")
    }
    missing += [f"companion.{obj}" for obj in companion.__all__ if obj not in documented]
    assert not missing, f"not documented on the API page: {missing}"
