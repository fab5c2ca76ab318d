"""Numerical helpers shared by the loss modules: one precision rule, one safe normalisation."""

from __future__ import annotations

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
            f"{where} with chunk_size does not support double backward (create_graph=True, "
            "as a gradient penalty needs): its backward pass is not itself differentiable. "
            "Use chunk_size=None, whose full-matrix graph supports higher derivatives."
        )
