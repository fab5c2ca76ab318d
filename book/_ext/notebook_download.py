"""Offer every executed chapter as an .ipynb in the page's download menu.

sphinx-book-theme lists an ``.ipynb`` download only when a launch service (Binder, Colab...) is
configured, because it copies the notebook as a side effect of building launch links. This book
has no launch service, so this extension does that copy itself: after myst-nb has executed a
MyST chapter into ``_build/jupyter_execute/<page>.ipynb``, the notebook is copied next to the
page's sources and the theme's download menu picks it up from ``ipynb_source``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def _add_notebook(
    app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if doctree is None or not executed.exists():
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app: Any) -> dict[str, Any]:
    # before the theme builds its header buttons (priority 501)
    app.connect("html-page-context", _add_notebook, priority=500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
