"""File the chapters that nbval executed in the book's jupyter-cache, so each chapter runs once.

    python tools/nbcache.py convert OUT CHAPTER.md ...  # jupytext: OUT/<name>.ipynb, slowest first
    python tools/nbcache.py check CACHE                  # empty CACHE if companion/ or pins changed
    python tools/nbcache.py store RECORDED CACHE

The book builds with ``execute_notebooks: cache``: myst-nb looks each chapter up in CACHE by a
hash of its code cells and runs it only when nothing matches. That hash cannot see the
companion package, so ``check`` keys the whole cache on companion's source, the pinned
requirements and the benchmarks' results files (which the performance page reads), and empties
it when they change. ``store`` takes the notebooks that nbval ran
(written by tools/nbval_record.py), reads each chapter's Markdown source the way myst-nb does,
copies the recorded outputs into its code cells (after checking that the code is the same) and
caches the result, with nbval's execution time for the execution-status page. ``convert``
writes the notebooks for nbval in one process and prints their paths, the slowest chapter of
the last run first (the largest file first when there is no last run), so that two workers
finish close together.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAMP = "companion.sha256"
TIMES = ROOT / "_build" / "nbval-seconds.json"


def convert(out: Path, chapters: list[str]) -> None:
    import jupytext

    out.mkdir(parents=True, exist_ok=True)
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    paths = []
    for chapter in chapters:
        source = ROOT / chapter
        target = out / f"{source.stem}.ipynb"
        jupytext.write(jupytext.read(source), target, fmt="ipynb")
        paths.append((times.get(source.stem, 0.0), source.stat().st_size, target))
    paths.sort(key=lambda item: (-item[0], -item[1]))
    print(" ".join(str(target) for _, _, target in paths))


def companion_key() -> str:
    """A hash of everything outside a chapter that its outputs depend on."""
    digest = hashlib.sha256()
    files = sorted((ROOT / "companion").rglob("*.py"))
    files += [ROOT / "requirements.txt", ROOT / "pyproject.toml"]
    # the performance page reads the benchmarks' results files
    files += sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def check(cache: Path) -> None:
    stamp = cache / STAMP
    key = companion_key()
    if cache.exists() and (not stamp.exists() or stamp.read_text().strip() != key):
        print(f"nbcache: companion/ or the pins changed, emptying {cache}")
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")


def read_like_myst_nb(source: Path) -> nbformat.NotebookNode:
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    extensions = set(config.get("parse", {}).get("myst_enable_extensions", []))
    return read_myst_markdown_notebook(
        source.read_text(encoding="utf-8"),
        config=MdParserConfig(enable_extensions=extensions),
        add_source_map=True,
        path=str(source),
    )


def store(recorded: Path, cache_path: Path) -> None:
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    check(cache_path)
    cache = get_cache(str(cache_path))
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    for executed_path in sorted(recorded.glob("*.ipynb")):
        source = ROOT / "book" / f"{executed_path.stem}.md"
        executed = nbformat.read(str(executed_path), as_version=4)
        nb = read_like_myst_nb(source)
        ran = [c for c in executed.cells if c.cell_type == "code"]
        cells = [c for c in nb.cells if c.cell_type == "code"]
        if [c.source.strip() for c in ran] != [c.source.strip() for c in cells]:
            print(f"nbcache: {source.name} changed since nbval ran it; the build will run it")
            continue
        for cell, done in zip(cells, ran, strict=True):
            cell.outputs = done.outputs
            cell.execution_count = done.execution_count
        seconds = float(executed.metadata.get("execution_seconds", 0.0))
        cache.cache_notebook_bundle(
            CacheBundleIn(nb, str(source), data={"execution_seconds": seconds}),
            check_validity=False,
            overwrite=True,
        )
        print(f"nbcache: cached {source.relative_to(ROOT)} ({seconds:.1f} s under nbval)")
        times[source.stem] = seconds
    TIMES.parent.mkdir(parents=True, exist_ok=True)
    TIMES.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "convert":
        convert(Path(sys.argv[2]), sys.argv[3:])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "store":
        store(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
