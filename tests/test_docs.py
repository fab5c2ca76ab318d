"""Every public function and class documents itself with an example, and every example runs.

The examples in the docstrings (``>>>`` lines) are run as doctests here, so ``make test``
fails when one goes stale; a public name without an ``Examples`` section fails too.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import companion

MODULES = sorted(
    name
    for info in pkgutil.iter_modules(companion.__path__)
    if not (name := info.name).startswith("_")
)


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"companion.{name}")


def _public_callables(module: ModuleType) -> list[tuple[str, object]]:
    names = getattr(module, "__all__", [])
    return [
        (n, obj)
        for n in names
        if (inspect.isfunction(obj := getattr(module, n)) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]


@pytest.mark.parametrize("name", MODULES)
def test_every_public_name_has_an_example(name: str) -> None:
    module = _module(name)
    missing = [
        n
        for n, obj in _public_callables(module)
        if "Examples" not in (obj.__doc__ or "") or ">>>" not in (obj.__doc__ or "")
    ]
    assert not missing, f"companion.{name}: no Examples section with >>> lines in {missing}"


@pytest.mark.parametrize("name", ["companion", *(f"companion.{m}" for m in MODULES)])
def test_doctests_run(name: str) -> None:
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctests failed in {name}"


LOSS_MODULES = [
    "sigmoid", "logistic", "softmax", "multilabel", "zoo", "invented", "nce", "contrastive",
    "margin", "minmax", "partial_fc", "siglip", "imbalance",
]  # fmt: skip


@pytest.mark.parametrize("name", LOSS_MODULES)
def test_public_names_are_reexported_at_the_top(name: str) -> None:
    """``import companion as cp; cp.ArcFaceLoss(...)``: every module's public names."""
    module = _module(name)
    assert getattr(companion, name) is module  # no function hides its module
    names = [n for n in module.__all__ if n not in LOSS_MODULES]
    missing = [n for n in names if getattr(companion, n, None) is not getattr(module, n)]
    assert not missing, f"companion.{name} names not re-exported by companion: {missing}"
    assert set(names) <= set(companion.__all__)


def test_the_package_imports_without_book_dependencies() -> None:
    """``import companion`` loads neither matplotlib nor scikit-learn (the wheel needs neither)."""
    import subprocess
    import sys

    code = (
        "import sys, companion; "
        "bad = [m for m in ('matplotlib', 'sklearn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
