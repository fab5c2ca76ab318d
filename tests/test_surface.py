"""One public surface: every public loss is called the way torch's losses are.

The naming rule, checked mechanically for every public loss of every module (a new module or loss
is picked up without editing this file):

* the main input is the first parameter and is called ``input`` (as in
  ``torch.nn.functional.cross_entropy(input, target)``), or ``features`` where it is an embedding;
* class targets are called ``target``: no loss takes ``labels``, ``y`` or ``targets``, and where
  the contract registry (``tests/test_contract.py``) marks an argument as the class target of a
  function, that argument is ``target``;
* a loss that owns a class matrix takes ``(input, weight, target)``, the order of torch's
  ``F.linear_cross_entropy(input, linear_weight, target)``;
* every loss has ``reduction`` with the default ``"mean"``;
* every public ``nn.Module`` loss exposes, through its constructor and ``forward``, every
  parameter of the function it calls, except those it owns or computes (its weight, the cosines).

The exceptions are listed below with the reason for each. ``KNOWN`` holds the ones that are
being fixed (margin, contrastive, SigLIP and Partial FC are renamed by their owners): the lead
removes entries as the renames land, and a test fails when an entry is no longer needed, so the
lists can only shrink.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import Any

from torch import nn

import companion
from tests.test_contract import CASES

#: Modules with no loss in them (data generators, plotting, a training loop, evaluation metrics).
HELPER_MODULES = {"data", "plot", "train", "metrics"}

#: Permanent exceptions to "the first parameter is input or features", with the reason.
FIRST_PARAMETER = {
    # a pair (or triple) of embeddings, named as torch / open_clip name them
    "triplet_loss": "anchor, positive, negative, as torch.nn.functional.triplet_margin_loss",
    "contrastive_loss": "input1, input2, as torch.nn.functional.cosine_embedding_loss",
    "info_nce_loss": "query and key embeddings, a pair",
    "clip_loss": "image_features and text_features, a pair (open_clip's names)",
    "soft_target_clip_loss": "image_features and text_features, a pair",
    "siglip_loss": "image_features and text_features, a pair",
    # reduces losses that are already computed
    "weighted_loss": "its input is an unreduced loss tensor, `losses`",
}

#: Losses that return a Python float for reporting, not a loss to train with.
METRICS = {"hamming_loss"}

#: Names a class target must not have (it is ``target``).
NOT_TARGET = {"labels", "label", "y", "targets"}

#: Being renamed by their owners (issue 17, "One public surface"); shrink as the renames land.
KNOWN: dict[str, set[str]] = {
    # rule -> the losses (or "Module.parameter") that break it today
    "first parameter": set(),
    "target name": set(),
    "class matrix order": set(),
    "reduction": set(),
    "module exposes its function": set(),
}

#: Each public nn.Module loss, the function it calls, and the parameters it owns or computes.
MODULE_FUNCTIONS: dict[str, tuple[str, set[str]]] = {
    "ArcFaceLoss": ("additive_angular_margin_loss", {"input"}),
    "AMSoftmaxLoss": ("additive_margin_softmax_loss", {"input"}),
    "LSoftmaxLoss": ("large_margin_softmax_loss", {"input", "target_norm", "lambda_"}),
    "ASoftmaxLoss": ("angular_softmax_loss", {"input", "feature_norm", "lambda_"}),
    "ClipLoss": ("clip_loss", {"logit_scale"}),
    "SigLipLoss": ("siglip_loss", {"logit_scale", "logit_bias"}),
    # the module keeps the kept classes in last_sampled instead of returning them
    "PartialFC": ("partial_fc_loss", {"weight", "num_classes", "return_sampled"}),
    "LinearCrossEntropyLoss": ("linear_cross_entropy", set()),
    "LabelEmbeddingClassifier": ("min_max_loss", {"features", "weight"}),
}

#: Public nn.Modules that call no loss function of the package.
NO_FUNCTION = {
    "MultiTaskLoss": "combines task losses the caller computed",
}


def _modules() -> list[ModuleType]:
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(companion.__path__)
        if not info.name.startswith("_") and info.name not in HELPER_MODULES
    )
    return [importlib.import_module(f"companion.{name}") for name in names]


def _public(module: ModuleType) -> dict[str, Any]:
    return {name: getattr(module, name) for name in getattr(module, "__all__", [])}


def _loss_functions() -> dict[str, Callable[..., Any]]:
    """Public functions named ``*loss*``, and every function the contract registry calls."""
    found: dict[str, Callable[..., Any]] = {}
    for module in _modules():
        for name, obj in _public(module).items():
            if inspect.isfunction(obj) and "loss" in name.lower() and name not in METRICS:
                found[name] = obj
    for case in CASES.values():
        fn = case.fn
        if not case.module and inspect.isfunction(fn) and fn.__module__.startswith("companion."):
            found[fn.__name__] = fn
    return found


def _loss_modules() -> dict[str, type[nn.Module]]:
    """Public nn.Modules, without the base classes that other public modules extend."""
    found: dict[str, type[nn.Module]] = {}
    for module in _modules():
        for name, obj in _public(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, nn.Module)
                and obj.__module__ == module.__name__
            ):
                found[name] = obj
    bases = {base for cls in found.values() for base in cls.__mro__[1:]}
    return {name: cls for name, cls in found.items() if cls not in bases}


LOSSES = _loss_functions()
MODULES = _loss_modules()


def _names(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _check_known(rule: str, broken: set[str]) -> None:
    """``broken`` must be exactly the known exceptions: no new one, no stale one."""
    new = sorted(broken - KNOWN[rule])
    assert not new, f"{rule}: {new} break the naming rule (see this file's docstring)"
    fixed = sorted(KNOWN[rule] - broken)
    assert not fixed, f"{rule}: {fixed} follow the rule now; remove them from KNOWN[{rule!r}]"


def test_the_discovery_finds_the_package() -> None:
    """The lists below are not vacuous: the losses and modules of every topic are found."""
    for name in ("cross_entropy", "nce_loss", "min_max_loss", "clip_loss", "partial_fc_loss"):
        assert name in LOSSES
    for name in ("ArcFaceLoss", "ClipLoss", "PartialFC", "MultiTaskLoss"):
        assert name in MODULES


def test_first_parameter_is_input_or_features() -> None:
    broken = {
        name
        for name, fn in LOSSES.items()
        if name not in FIRST_PARAMETER and _names(fn)[0] not in ("input", "features")
    }
    _check_known("first parameter", broken)
    for name in FIRST_PARAMETER:
        assert name in LOSSES, f"{name} is listed as an exception but is not a public loss"


def test_class_targets_are_called_target() -> None:
    broken = {name for name, fn in LOSSES.items() if NOT_TARGET & set(_names(fn))}
    # where the contract registry says which argument holds class indices, it is `target`
    for case in CASES.values():
        fn = case.fn
        if case.module or case.class_target is None or fn.__name__ not in LOSSES:
            continue
        if LOSSES[fn.__name__] is fn and _names(fn)[case.class_target] != "target":
            broken.add(fn.__name__)
    _check_known("target name", broken)


def test_a_class_matrix_comes_between_input_and_target() -> None:
    """``weight`` before ``target`` is a class matrix: then ``(input, weight, target)``.

    (``weight`` after ``target`` is torch's per-class rescaling vector, as in cross_entropy.)
    """
    owners = {
        name
        for name, fn in LOSSES.items()
        if {"weight", "target"} <= set(_names(fn))
        and _names(fn).index("weight") < _names(fn).index("target")
    }
    assert {"full_softmax_loss", "nce_loss", "min_max_loss", "partial_fc_loss"} <= owners
    orders = (["input", "weight", "target"], ["features", "weight", "target"])
    broken = {name for name in owners if _names(LOSSES[name])[:3] not in orders}
    _check_known("class matrix order", broken)


def test_every_loss_has_reduction_mean() -> None:
    broken = set()
    for name, fn in LOSSES.items():
        parameter = inspect.signature(fn).parameters.get("reduction")
        if parameter is None or parameter.default != "mean":
            broken.add(name)
    _check_known("reduction", broken)


def test_every_module_is_mapped_to_its_function() -> None:
    unmapped = sorted(set(MODULES) - set(MODULE_FUNCTIONS) - set(NO_FUNCTION))
    assert not unmapped, f"public modules with no entry in MODULE_FUNCTIONS: {unmapped}"
    for name, (function, _) in MODULE_FUNCTIONS.items():
        assert name in MODULES and function in LOSSES, (name, function)


def test_modules_expose_every_option_of_their_function() -> None:
    broken = set()
    for name, (function, owned) in MODULE_FUNCTIONS.items():
        module = MODULES[name]
        exposed = set(_names(module.__init__)) | set(_names(module.forward))
        if hasattr(module, "loss"):  # a model whose loss is a method (LabelEmbeddingClassifier)
            exposed |= set(_names(module.loss))
        needed = set(_names(LOSSES[function]))
        for parameter in sorted(needed - owned - exposed):
            broken.add(f"{name}.{parameter}")
        assert owned <= needed, f"{name}: {sorted(owned - needed)} are not in {function}"
    _check_known("module exposes its function", broken)
