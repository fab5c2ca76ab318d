"""Drop repeated inline scripts from the page head.

Under Jupyter Book 1, sphinx-thebe registers its configuration script
(``const THEBE_JS_URL = ...``) once per ``env-before-read-docs`` event, and that event fires
more than once in a build, so every page declared the same ``const`` twice and the browser
logged "Identifier 'THEBE_JS_URL' has already been declared". This removes exact repeats (same
file, same inline body, same attributes) while keeping the first occurrence in place, so the
site loads with a clean console.
"""

from __future__ import annotations

from typing import Any


def _dedupe(
    app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, str]] = set()
    unique = []
    for script in scripts:
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", None) or "", repr(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _dedupe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
