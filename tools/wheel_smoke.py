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
    for name in names:
        module = importlib.import_module(name)
        result = doctest.testmod(module, optionflags=FLAGS)
        failures += result.failed
        tested += result.attempted
    print(f"wheel: {len(names)} modules imported, {tested} doctest examples, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
