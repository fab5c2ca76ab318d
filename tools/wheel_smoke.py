"""Run inside a virtual environment that holds only the companion wheel, torch and numpy.

    python tools/wheel_smoke.py

Imports companion and every module in it from the installed wheel (not from a source tree),
checks that py.typed shipped, and runs every module's doctests. A package file missing from
the wheel, or an import of a dependency that only the book needs (matplotlib, scikit-learn),
fails here. Started from another folder than the repository, so the source tree is not on
sys.path.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# The only functions whose whole job needs the optional `book` extra (pyproject.toml): loading
# scikit-learn's bundled data sets and styling matplotlib figures. Their doctests run in the
# book's environment (the unit tests), not here; each must still import without the extra.
NEEDS_BOOK_EXTRA = {
    "companion.data.load_digits",
    "companion.data.load_breast_cancer",
    "companion.plot.figure",
    "companion.plot.use_book_style",
}


def main() -> int:
    import companion

    installed = Path(companion.__file__).resolve().parent
    assert "site-packages" in installed.parts, f"companion imported from {installed}"
    assert (installed / "py.typed").is_file(), "py.typed is missing from the wheel"
    for book_only in ("matplotlib", "sklearn", "scipy", "pytest"):
        assert importlib.util.find_spec(book_only) is None, f"{book_only} is installed"
    failures = tested = 0
    names = ["companion"] + [
        f"companion.{m.name}" for m in pkgutil.iter_modules(companion.__path__)
    ]
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=FLAGS)
    skipped = set()
    for name in names:
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            if test.name in NEEDS_BOOK_EXTRA:
                skipped.add(test.name)
                continue
            result = runner.run(test)
            failures += result.failed
            tested += result.attempted
    missing = NEEDS_BOOK_EXTRA - skipped
    assert not missing, f"NEEDS_BOOK_EXTRA names no doctest: {sorted(missing)}"
    print(
        f"wheel: {len(names)} modules imported, {tested} doctest examples, {failures} failed"
        f" ({len(skipped)} docstrings that need the book extra not run)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
