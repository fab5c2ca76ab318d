"""Numerical helpers shared by the loss modules: one precision rule, one safe normalisation."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype reductions and per-sample arithmetic run in: at least float32.

    float16 and bfloat16 inputs are promoted (softmax statistics, log-sum-exps and margin
    arithmetic lose too much in 8 or 11 bits of mantissa); float32 and float64 are kept.
    """
    return torch.promote_types(dtype, torch.float32)


def normalize(x: Tensor, dim: int = -1) -> Tensor:
    r"""``x / ||x||`` along ``dim``; a zero vector stays zero, in every dtype.

    :func:`torch.nn.functional.normalize` divides by ``max(||x||, eps)`` with ``eps = 1e-12``,
    which is 0 in float16 (a zero row becomes 0 / 0 = NaN) and, in every dtype, gives a zero
    row the gradient ``1 / eps`` (1e12 in float32, infinite in float16). Here a vector whose
    norm is 0 (or underflows to 0) is divided by 1 instead: it maps to 0 with the finite
    gradient of ``x / 1``; every other vector gets the exact value and gradient. (The same
    number of passes as ``F.normalize``: one norm, one division.)
    """
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def refuse_double_backward(where: str) -> None:
    """Raise if a tiled backward runs with ``create_graph=True`` (grad mode is then on).

    The hand-written backward passes of the tiled losses are not themselves differentiable, so a
    second derivative through them (a gradient penalty) would be silently wrong; this makes it a
    clear error instead.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{where} does not support double backward (create_graph=True, as a gradient "
            "penalty needs): its backward pass is not itself differentiable. For higher "
            "derivatives build the logits: chunk_size=None in clip_loss, siglip_loss and "
            "partial_fc_loss, or F.cross_entropy(F.linear(...)) for linear_cross_entropy."
        )


def head_dtype_input(
    features: Tensor, weight: Tensor, *, name: str = "features", weight_name: str = "weight"
) -> Tensor:
    """``features`` in the dtype of a head's ``weight``: the rule for the AMP training pattern.

    Under :func:`torch.autocast` a backbone hands float16 or bfloat16 features to a head whose
    weights stay float32. A head computes in its own precision: features of a lower-precision
    floating dtype (one that ``weight``'s dtype holds exactly: float16 or bfloat16 for a float32
    head, and float32 for a float64 one) are cast up to ``weight``'s dtype, and the gradient
    flows back to them in their own dtype. The weight is never cast down: any other dtype
    mismatch (float64 features for a float32 head, float16 features for a bfloat16 one) is a
    ``TypeError``, and a different device a ``ValueError``, each naming ``name``.

    Examples:
        >>> import torch
        >>> from companion._numerics import head_dtype_input
        >>> weight = torch.zeros(3, 4)
        >>> head_dtype_input(torch.ones(2, 4, dtype=torch.bfloat16), weight).dtype
        torch.float32
    """
    if features.device != weight.device:
        raise ValueError(
            f"{name} must be on the same device as {weight_name} ({weight.device}), "
            f"got {features.device}"
        )
    if features.dtype == weight.dtype:
        return features
    if (
        features.is_floating_point()
        and weight.is_floating_point()
        and torch.promote_types(features.dtype, weight.dtype) == weight.dtype
    ):
        return features.to(weight.dtype)
    raise TypeError(
        f"{name} must have the same dtype as {weight_name} ({weight.dtype}) or a lower-precision "
        f"floating dtype, which is cast up to it; got {features.dtype}. A head is never cast "
        f"down: convert the features, or the head with .to({features.dtype})"
    )


def autocast_disabled(x: Tensor) -> contextlib.AbstractContextManager[None]:
    """A context in which :func:`torch.autocast` is off for ``x``'s device type.

    A head that computes in its own precision (see :func:`head_dtype_input`) runs its matrix
    products inside it, so that an enclosing autocast region does not cast them back down; a
    device type without autocast (``meta``) gets a context that does nothing.
    """
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
