"""Numerical helpers shared by the loss modules: one precision rule, one safe normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype reductions and per-sample arithmetic run in: at least float32.

    float16 and bfloat16 inputs are promoted (softmax statistics, log-sum-exps and margin
    arithmetic lose too much in 8 or 11 bits of mantissa); float32 and float64 are kept.
    """
    return torch.promote_types(dtype, torch.float32)


def normalize(x: Tensor, dim: int = -1) -> Tensor:
    r"""``x / max(||x||, eps)`` along ``dim``, with an ``eps`` that exists in ``x``'s dtype.

    :func:`torch.nn.functional.normalize` uses ``eps = 1e-12``, which is 0 in float16: a zero
    row then becomes 0 / 0 = NaN. Here ``eps`` is at least the dtype's smallest normal number,
    so a zero row stays zero (and its gradient finite) in every dtype.
    """
    eps = max(1e-12, torch.finfo(x.dtype).tiny) if x.is_floating_point() else 1e-12
    return F.normalize(x, dim=dim, eps=eps)
