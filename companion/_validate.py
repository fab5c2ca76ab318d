"""Input checks shared by every public function of the companion package.

This is the one place where inputs are validated. Each public loss calls these helpers at its
boundary, so a bad call fails early with a message that names the argument, the shape (or
dtype, or value) it got and what it wanted, instead of returning a silent wrong answer or NaN.

Conventions:

* A wrong *type* (not a tensor, an integer tensor where a float one is needed) raises
  ``TypeError``; a wrong *value* (shape, range, NaN, empty batch) raises ``ValueError``.
* Messages start with the argument's name: ``"target must have shape (8,), got (7,)"``.
* Checks never copy or modify their input; those that return something return it unchanged,
  so they can be used inline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    floating: bool = True,
    allow_empty: bool = False,
    allow_nan: bool = False,
) -> Tensor:
    """Check that ``x`` is a tensor of the expected kind and return it.

    Args:
        x: the value to check.
        name: the argument's name, used in the error message.
        ndim: required number of dimensions (an int, or a sequence of allowed ints).
        floating: require a floating-point dtype (float16, bfloat16, float32, float64).
        allow_empty: accept a tensor with zero elements.
        allow_nan: accept NaN entries (infinities are always accepted here; losses that
            cannot handle them call :func:`check_finite`).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float64 or bfloat16), "
            f"got dtype {x.dtype}; convert it with .float()"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(
                f"{name} must have {want} dimension(s), got {x.dim()} with shape {_shape(x)}"
            )
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {_shape(x)}")
    if not allow_nan and x.is_floating_point() and bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN")
    return x


def check_finite(x: Tensor, name: str) -> Tensor:
    """Reject NaN and +-inf in ``x``."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite, got NaN or infinite entries")
    return x


def check_shape(x: Tensor, name: str, shape: Sequence[int]) -> Tensor:
    """Require ``x.shape == shape`` exactly."""
    want = tuple(int(s) for s in shape)
    if _shape(x) != want:
        raise ValueError(f"{name} must have shape {want}, got {_shape(x)}")
    return x


def check_same_shape(a: Tensor, name_a: str, b: Tensor, name_b: str) -> None:
    """Require two tensors to have identical shapes."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the same shape as {name_a} {_shape(a)}, got {_shape(b)}"
        )


def check_batch_size(a: Tensor, name_a: str, b: Tensor, name_b: str) -> None:
    """Require the first dimensions (the batch) of two tensors to agree."""
    if a.dim() == 0 or b.dim() == 0 or a.shape[0] != b.shape[0]:
        got_a = a.shape[0] if a.dim() else "a scalar"
        got_b = b.shape[0] if b.dim() else "a scalar"
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch size (first dimension), "
            f"got {got_a} for {name_a} {_shape(a)} and {got_b} for {name_b} {_shape(b)}"
        )


def check_same_dtype_device(a: Tensor, name_a: str, b: Tensor, name_b: str) -> None:
    """Require two floating tensors to share dtype and device (no silent promotion)."""
    if a.dtype != b.dtype:
        raise TypeError(f"{name_b} must have the same dtype as {name_a} ({a.dtype}), got {b.dtype}")
    if a.device != b.device:
        raise ValueError(
            f"{name_b} must be on the same device as {name_a} ({a.device}), got {b.device}"
        )


def check_class_index(
    target: object, name: str, num_classes: int, *, batch_shape: Sequence[int] | None = None
) -> Tensor:
    """Check integer class indices in ``[0, num_classes)``.

    Args:
        target: the class indices.
        name: the argument's name.
        num_classes: the number of classes C.
        batch_shape: required shape of ``target`` (for example ``(B,)``).
    """
    if not isinstance(target, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of class indices, got {type(target).__name__}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integer class indices (torch.long), got dtype {target.dtype}"
        )
    if batch_shape is not None:
        check_shape(target, name, batch_shape)
    if target.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {_shape(target)}")
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} must hold class indices in [0, {num_classes - 1}] for {num_classes} classes, "
            f"got {bad}"
        )
    return target


def check_in_range(
    x: Tensor, name: str, low: float, high: float, *, what: str = "values"
) -> Tensor:
    """Require every entry of ``x`` to lie in the closed interval ``[low, high]``."""
    if x.numel() and (bool((x < low).any()) or bool((x > high).any())):
        raise ValueError(
            f"{name} must hold {what} in [{low}, {high}], "
            f"got min {float(x.min()):.6g} and max {float(x.max()):.6g}"
        )
    return x


def check_probabilities(p: Tensor, name: str, *, dim: int = -1, atol: float = 1e-4) -> Tensor:
    """Require ``p`` to hold probability vectors along ``dim``: entries in [0, 1], sum 1."""
    check_in_range(p, name, 0.0, 1.0, what="probabilities")
    sums = p.sum(dim=dim, dtype=torch.float64)
    worst = float((sums - 1.0).abs().max()) if sums.numel() else 0.0
    if worst > atol:
        raise ValueError(
            f"{name} must hold probability vectors that sum to 1 along dim {dim}, "
            f"got a sum that is off by {worst:.3g}"
        )
    return p


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """Require a finite positive (or non-negative) Python or 0-d tensor scalar."""
    v = float(value)
    ok = v >= 0 if allow_zero else v > 0
    if not ok or v != v or v in (float("inf"), float("-inf")):
        want = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {want} number, got {v}")
    return v


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """Require a Python integer (not bool), optionally at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_reduction(reduction: str) -> str:
    """Require one of ``"none"``, ``"mean"``, ``"sum"``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_loss(loss: Tensor, reduction: str, weight: Tensor | None = None) -> Tensor:
    """Apply ``reduction`` to an unreduced loss, as torch.nn.functional does.

    With ``weight`` (one weight per element of ``loss``) and ``reduction="mean"``, the result
    is the weighted average ``sum(w * l) / sum(w)``, which is how ``F.cross_entropy`` and
    ``F.nll_loss`` average class-weighted losses. Without weights, ``"mean"`` is the plain mean.
    """
    check_reduction(reduction)
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if weight is not None:
        return loss.sum() / weight.sum()
    return loss.mean()
