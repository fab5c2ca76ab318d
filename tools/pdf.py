"""Print the single-page build of the book to one PDF, with Debian's Chromium through Playwright.

    python tools/pdf.py _build/singlehtml _build/html/losses-derived.pdf

`make book` builds the whole book as one HTML page (``jupyter-book build --builder singlehtml``,
which reuses the site's parsed pages and the executed chapters) and then runs this. Sphinx writes
that page under the root document's name (``book/intro.html``) but links its assets as if it sat
at the top of the output, so the page is copied there first, with its links into itself made
same-page links (they become the PDF's internal links). The copy is served on a loopback port
and opened in headless Chromium; the PDF is printed only after MathJax has typeset every formula
(its startup promise), the web fonts have loaded and every image has decoded, and the script
fails on a formula MathJax could not typeset, a console error or a missing file, so a broken
page never becomes a PDF quietly. The print layout (no sidebars or buttons, hidden cells stay
hidden, code wrapped, each chapter on a new page, figures not split across pages) is the site's
own print style sheet, book/_static/losses-derived.css; display equations and tables wider than
the text are shrunk to fit it here. A4, the page scaled to 85 %, an outline (bookmarks) from the
headings and page numbers in the footer. Without Chromium it prints nothing and says so (an
error under CI=true), as the site test skips.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PRINT_PAGE = "losses-derived.html"
TIMEOUT_MS = 300_000
# A4, and the page scaled to 85 % (the site's 16 px body text prints at about 10 pt); the
# page is laid out in print mode at the width of the printed text block, in CSS pixels.
MARGIN_MM = {"top": 16, "bottom": 16, "left": 14, "right": 14}
SCALE = 0.85
TEXT_WIDTH_PX = round((210 - MARGIN_MM["left"] - MARGIN_MM["right"]) / 25.4 * 96 / SCALE)
# On the site a display equation or a table wider than the text scrolls; on paper it would be
# cut off at the margin. Each one is shrunk to the width of the text instead.
FIT_TO_WIDTH = """() => {
  let shrunk = 0;
  for (const el of document.querySelectorAll(
    'article mjx-container[display="true"], article table'
  )) {
    const need = el.scrollWidth, room = el.parentElement.clientWidth;
    if (need > room + 1) {
      el.style.zoom = (room / need).toFixed(3);
      shrunk += 1;
    }
  }
  return shrunk;
}"""
FOOTER = (
    '<div style="font-size: 8px; width: 100%; text-align: center; color: #555;">'
    '<span class="pageNumber"></span> / <span class="totalPages"></span></div>'
)


def print_page(singlehtml: Path) -> Path:
    """Copy the one-page book to the top of the output, its self-links made same-page links."""
    root_doc = yaml.safe_load((ROOT / "_toc.yml").read_text())["root"]
    source = singlehtml / f"{root_doc}.html"
    if not source.exists():
        sys.exit(f"pdf: {source} is missing: build the single-page book first")
    html = source.read_text(encoding="utf-8")
    html = re.sub(rf'href="{re.escape(root_doc)}\.html(#[^"]*)?"', r'href="\1"', html)
    html = html.replace('href=""', 'href="#"')
    target = singlehtml / PRINT_PAGE
    target.write_text(html, encoding="utf-8")
    # the theme's search script asks for the search index, which only the multi-page build writes
    search_index = singlehtml / "searchindex.js"
    if not search_index.exists():
        search_index.write_text("/* no search in the printed book */\n")
    return target


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def render(singlehtml: Path, pdf: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if chromium is None:
        # as the site test does: a developer without Chromium still gets the site; CI does not
        message = f"pdf: {CHROMIUM} not found (apt-get install chromium): no PDF printed"
        if os.environ.get("CI") == "true":
            sys.exit(message)
        print(message, file=sys.stderr)
        return
    page_file = print_page(singlehtml)
    server, site = serve(singlehtml)
    errors: list[str] = []
    start = time.monotonic()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            # the light theme, whatever the system's setting (the site's default mode is "auto")
            context = browser.new_context(
                viewport={"width": TEXT_WIDTH_PX, "height": 1000}, color_scheme="light"
            )
            page = context.new_page()
            page.emulate_media(media="print")
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "response",
                lambda r: r.status >= 400 and errors.append(f"HTTP {r.status} for {r.url}"),
            )
            page.goto(f"{site}/{page_file.name}", wait_until="networkidle")
            page.wait_for_function("() => window.MathJax?.startup?.promise !== undefined")
            page.evaluate("() => MathJax.startup.promise")
            page.evaluate("() => document.fonts.ready.then(() => true)")
            page.wait_for_function(
                "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
            )
            formulas = page.locator("mjx-container").count()
            failed = page.locator("mjx-merror").all_inner_texts()
            if failed:
                errors += [f"MathJax could not typeset: {text}" for text in failed[:10]]
            if errors:
                sys.exit("pdf: the one-page book did not render cleanly:\n  " + "\n  ".join(errors))
            shrunk = page.evaluate(FIT_TO_WIDTH)
            pdf.parent.mkdir(parents=True, exist_ok=True)
            typeset = time.monotonic() - start
            page.pdf(
                path=str(pdf),
                format="A4",
                scale=SCALE,
                margin={side: f"{mm}mm" for side, mm in MARGIN_MM.items()},
                print_background=True,
                display_header_footer=True,
                header_template="<span></span>",
                footer_template=FOOTER,
                outline=True,
                # a tagged PDF (structure tree for screen readers) is three times larger here
                tagged=False,
            )
            browser.close()
    finally:
        server.shutdown()
        page_file.unlink(missing_ok=True)
    printed = time.monotonic() - start - typeset
    size = pdf.stat().st_size / 2**20
    print(
        f"pdf: {pdf} ({size:.1f} MiB): {formulas} formulas typeset in {typeset:.0f} s "
        f"({shrunk} wide ones shrunk to the text width), printed in {printed:.0f} s"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/pdf.py SINGLEHTML_DIR OUT.pdf")
    render(Path(sys.argv[1]), Path(sys.argv[2]))
