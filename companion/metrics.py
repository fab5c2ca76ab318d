"""Metrics for the experiments: numbers to report, not losses to train with.

They return Python floats (one host sync each), so they belong in evaluation, not in a training
step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from companion._validate import (
    check_integer_labels,
    check_same_dtype_device,
    check_same_shape,
    check_tensor,
)

__all__ = ["retrieval_accuracy"]


def retrieval_accuracy(query: Tensor, keys: Tensor, group: Tensor | None = None) -> float:
    """Top-1 retrieval accuracy: the fraction of queries whose most similar key is their own.

    Similarity is the dot product (pass normalised features for the cosine). With ``group``,
    retrieving any key of the same group (a duplicate) also counts as correct. A metric, not a
    loss: it returns a Python float (one host sync).

    Args:
        query, keys: query ``i``'s match is key ``i``.
        group: optional integer group of each pair.

    Shape:
        - query, keys: ``(B, D)``; group: ``(B,)``.
        - output: a Python float in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> from companion.metrics import retrieval_accuracy
        >>> x = torch.eye(3)
        >>> retrieval_accuracy(x, x), retrieval_accuracy(x, x.roll(1, 0))
        (1.0, 0.0)
    """
    check_tensor(query, "query", ndim=2)
    check_tensor(keys, "keys", ndim=2)
    check_same_shape(query, "query", keys, "keys")
    check_same_dtype_device(query, "query", keys, "keys")
    best = (query @ keys.T).argmax(dim=1)
    if group is None:
        hits = best == torch.arange(query.shape[0], device=query.device)
    else:
        g = check_integer_labels(group, "group", query.shape[0], query)
        hits = g[best] == g
    return float(hits.double().mean())
