"""Let the single-page HTML build (the source of the book's PDF) render every node the site does.

Sphinx looks up the HTML writer of an extension's node under the builder's name and falls back to
its format ("html") only when no extension registered anything under that name. sphinx-proof and
sphinx-exercise register theirs under "singlehtml" too, so that fallback never happens for the
single-page builder, and nodes registered for "html" alone (myst-nb's hidden-cell wrapper among
them) fail with "unknown node type". This copies the missing "html" writers to any other HTML
builder when it starts; the multi-page site is untouched.
"""

from __future__ import annotations

from typing import Any


def _copy_html_handlers(app: Any) -> None:
    builder = app.builder
    if builder.format != "html" or builder.name == "html":
        return
    handlers = app.registry.translation_handlers
    own = handlers.setdefault(builder.name, {})
    for node, visitors in handlers.get("html", {}).items():
        own.setdefault(node, visitors)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _copy_html_handlers)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
