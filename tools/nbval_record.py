"""A pytest plugin that keeps what nbval executed, so that the book build need not run it again.

nbval runs every code cell of a notebook in one kernel and checks that none raises. This plugin
(loaded with ``-p tools.nbval_record``; it does nothing unless NBVAL_RECORD_DIR is set) collects
each cell's outputs as nbval received them and, once every code cell of a notebook has passed,
writes the executed notebook to ``$NBVAL_RECORD_DIR/<name>.ipynb`` with its execution time in
``metadata.execution_seconds``. A notebook with a failed, skipped or unrun cell is not written.
``tools/nbcache.py`` then files the recorded notebooks in the book's jupyter-cache.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

# notebook path -> {"nb": its notebook, "outputs": {code cell number: outputs}, "seconds": ...}
_runs: dict[str, dict[str, Any]] = {}


def _record_dir() -> Path | None:
    folder = os.environ.get("NBVAL_RECORD_DIR")
    return Path(folder) if folder else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    start = time.perf_counter()
    outcome = yield
    if _record_dir() is None or not hasattr(item, "test_outputs"):
        return
    if outcome.excinfo is not None:  # the cell failed: never record this notebook
        _runs.setdefault(str(item.fspath), {})["failed"] = True
        return
    run = _runs.setdefault(str(item.fspath), {})
    run.setdefault("nb", item.parent.nb)  # type: ignore[attr-defined]
    run.setdefault("outputs", {})[item.cell_num] = list(item.test_outputs or [])  # type: ignore[attr-defined]
    run["seconds"] = run.get("seconds", 0.0) + time.perf_counter() - start


def _write(path: str, run: dict[str, Any], folder: Path) -> None:
    nb = run["nb"]
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    if run.get("failed") or len(run.get("outputs", {})) != len(code_cells):
        return
    for number, cell in enumerate(code_cells):
        cell.outputs = [nbformat.from_dict(dict(out)) for out in run["outputs"][number]]
        cell.execution_count = number + 1
        for out in cell.outputs:
            if out.output_type == "execute_result":
                out.execution_count = number + 1
    nb.metadata["execution_seconds"] = run["seconds"]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(path).name
    tmp = target.with_suffix(".tmp")
    nbformat.write(nb, str(tmp))
    tmp.replace(target)


def pytest_sessionfinish(session: pytest.Session) -> None:
    folder = _record_dir()
    if folder is None:
        return
    for path, run in _runs.items():
        _write(path, run, folder)
