"""The built site, opened in a real headless Chromium (Debian's /usr/bin/chromium via Playwright).

Run after `make book` (make test does). Every chapter page must load without console errors,
render its math with the bundled MathJax, show every figure as a captioned image of non-zero
size, and link to the next page. Without Chromium the test skips with the reason, except under
CI=true.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("SITE_HTML", ROOT / "_build" / "html"))
CHROMIUM = "/usr/bin/chromium"
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
    sets the theme's default_mode in _config.yml, so no error is expected or filtered here.
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
        if doc != "book/errata":  # every chapter has an experiment with figures
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
