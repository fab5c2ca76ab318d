r"""The classic losses beyond cross-entropy: hinge, regression, weighting, multi-task, L2.

Every loss here is a short formula; what this module adds is precision about *which* formula,
because libraries that share a name often disagree on a factor, a term or a reduction:

* **Hinge losses.** :func:`multiclass_hinge_loss` is the multiclass SVM loss of Weston and
  Watkins (1999), :math:`\sum_{j \ne y} \max(0, \Delta + s_j - s_y)`. torch's
  :func:`torch.nn.functional.multi_margin_loss` computes the same sum *divided by the number of
  classes* :math:`C`. :func:`squared_hinge_loss` squares each term. :func:`binary_hinge_loss`
  is the elementwise :math:`\max(0, \Delta - \tilde y z)` with labels :math:`y \in \{0, 1\}`
  mapped to :math:`\tilde y = 2y - 1`, which is what TF-Slim's ``hinge_loss`` computes.
* **Regression losses.** :func:`mse_loss`, :func:`absolute_difference` and :func:`huber_loss`
  (torch: ``mse_loss``, ``l1_loss``, ``huber_loss``); :func:`log_loss`, the binary
  cross-entropy of *probabilities* with TF's additive :math:`\epsilon`;
  :func:`cosine_distance`, :math:`1 - \cos`; :func:`mean_pairwise_squared_error`, which
  compares the pairwise differences within each sample and ignores a common shift.
* **Weights and reductions.** :func:`weighted_loss` applies per-sample or per-element weights
  and reduces them in each of the ways torch and TensorFlow do.
* **Several tasks.** :class:`MultiTaskLoss` sums task losses with fixed weights or with the
  learned homoscedastic-uncertainty weights of Kendall, Gal and Cipolla (2018);
  :func:`l2_regularization` is the weight-decay penalty :math:`\tfrac12\sum\theta^2`.

Functions take ``(input, target)`` like :mod:`torch.nn.functional` and end with
``reduction="none" | "mean" | "sum"``; inputs may be float32, float64 or bfloat16 on any device.
Where torch ships the loss, use torch's in production; the tests prove the two agree (or state
the exact difference).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from companion._validate import (
    REDUCTIONS,
    Reduction,
    check_binary,
    check_class_index,
    check_finite,
    check_in_range,
    check_int,
    check_positive,
    check_reduction,
    check_same_dtype_device,
    check_same_shape,
    check_tensor,
    reduce_loss,
    value_checks_enabled,
)

__all__ = [
    "WEIGHTED_REDUCTIONS",
    "MultiTaskLoss",
    "absolute_difference",
    "binary_hinge_loss",
    "cosine_distance",
    "huber_loss",
    "l2_regularization",
    "log_loss",
    "mean_pairwise_squared_error",
    "mse_loss",
    "multiclass_hinge_loss",
    "squared_hinge_loss",
    "weighted_loss",
]

TaskKind = Literal["regression", "classification"]

#: The reductions :func:`weighted_loss` accepts.
WEIGHTED_REDUCTIONS: tuple[str, ...] = (
    "none",
    "sum",
    "mean",
    "mean_over_elements",
    "mean_over_nonzero_weights",
)


# --------------------------------------------------------------------------------------------
# Input checks shared by the losses of this module
# --------------------------------------------------------------------------------------------


def _check_pair(input: object, target: object) -> tuple[Tensor, Tensor]:
    """``input`` and ``target``: non-empty floating tensors of one shape, dtype and device."""
    x = check_tensor(input, "input")
    y = check_tensor(target, "target")
    check_same_shape(x, "input", y, "target")
    check_same_dtype_device(x, "input", y, "target")
    return x, y


def _check_scores(input: object, target: object) -> tuple[Tensor, Tensor]:
    """Scores ``(B, C)`` with ``C >= 2`` and integer class indices ``(B,)``."""
    x = check_tensor(input, "input", ndim=2)
    if x.shape[1] < 2:
        raise ValueError(
            f"input must have at least 2 classes (columns), got shape {tuple(x.shape)}"
        )
    y = check_class_index(target, "target", x.shape[1], batch_shape=(x.shape[0],))
    if y.device != x.device:
        raise ValueError(f"target must be on the same device as input ({x.device}), got {y.device}")
    return x, y


# --------------------------------------------------------------------------------------------
# Hinge losses
# --------------------------------------------------------------------------------------------


def _margin_violations(input: Tensor, target: Tensor, margin: float) -> Tensor:
    r""":math:`\max(0, \Delta + s_j - s_y)` for every class, with 0 in the target's column."""
    target_score = input.gather(1, target[:, None])
    violations = torch.clamp(margin + input - target_score, min=0)
    is_target = torch.zeros_like(input, dtype=torch.bool).scatter_(1, target[:, None], True)
    return violations.masked_fill(is_target, 0)


def multiclass_hinge_loss(
    input: Tensor, target: Tensor, margin: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    r"""The multiclass SVM (hinge) loss of Weston and Watkins (1999).

    .. math::

        \ell_i = \sum_{j \ne y_i} \max\bigl(0,\ \Delta + s_{ij} - s_{i y_i}\bigr)

    Each wrong class :math:`j` is penalised when its score comes within the margin
    :math:`\Delta` of the target's score. The loss depends on the scores only through the
    differences :math:`s_j - s_y`, so adding a constant to a row changes nothing.

    torch's :func:`torch.nn.functional.multi_margin_loss` (with ``p=1``) excludes the target
    class too but divides each row's sum by :math:`C`:
    ``multiclass_hinge_loss(s, y) == C * multi_margin_loss(s, y, margin=margin)`` exactly.

    Args:
        input: scores (logits) of shape ``(B, C)``, :math:`C \ge 2`.
        target: class indices (``torch.long``) of shape ``(B,)``.
        margin: :math:`\Delta \ge 0`.
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` over the batch, or ``"sum"``.

    Shape:
        - input: ``(B, C)``.
        - target: ``(B,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.zoo import multiclass_hinge_loss
        >>> s, y = torch.tensor([[3.0, 2.5, 0.0], [1.0, 2.0, 1.5]]), torch.tensor([0, 0])
        >>> multiclass_hinge_loss(s, y, reduction="none")  # 0.5 + 0, then 2 + 1.5
        tensor([0.5000, 3.5000])
        >>> torch.allclose(multiclass_hinge_loss(s, y), 3 * F.multi_margin_loss(s, y))
        True
    """
    check_reduction(reduction)
    x, y = _check_scores(input, target)
    check_positive(margin, "margin", allow_zero=True)
    return reduce_loss(_margin_violations(x, y, margin).sum(dim=1), reduction)


def squared_hinge_loss(
    input: Tensor, target: Tensor, margin: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    r"""The squared multiclass hinge loss (the "L2-SVM" loss).

    .. math::

        \ell_i = \sum_{j \ne y_i} \max\bigl(0,\ \Delta + s_{ij} - s_{i y_i}\bigr)^2

    Squaring makes the loss differentiable at the hinge and punishes large violations more
    than small ones. It equals ``C * multi_margin_loss(s, y, p=2, margin=margin)``. For a single
    logit :math:`z` with label :math:`y \in \{0, 1\}`, the binary squared hinge
    :math:`\max(0, \Delta - (2y - 1) z)^2` is this loss on the two scores :math:`(0, z)`.

    Args:
        input: scores (logits) of shape ``(B, C)``, :math:`C \ge 2`.
        target: class indices (``torch.long``) of shape ``(B,)``.
        margin: :math:`\Delta \ge 0`.
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` over the batch, or ``"sum"``.

    Shape:
        - input: ``(B, C)``.
        - target: ``(B,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.zoo import squared_hinge_loss
        >>> s, y = torch.tensor([[3.0, 2.5, 0.0], [1.0, 2.0, 1.5]]), torch.tensor([0, 0])
        >>> squared_hinge_loss(s, y, reduction="none")  # 0.5^2, then 2^2 + 1.5^2
        tensor([0.2500, 6.2500])
        >>> torch.allclose(squared_hinge_loss(s, y), 3 * F.multi_margin_loss(s, y, p=2))
        True
    """
    check_reduction(reduction)
    x, y = _check_scores(input, target)
    check_positive(margin, "margin", allow_zero=True)
    return reduce_loss(_margin_violations(x, y, margin).square().sum(dim=1), reduction)


def binary_hinge_loss(
    input: Tensor, target: Tensor, margin: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    r"""The binary hinge loss with labels in :math:`\{0, 1\}`, elementwise.

    .. math::

        \ell = \max\bigl(0,\ \Delta - \tilde y\, z\bigr), \qquad \tilde y = 2y - 1 \in \{-1, +1\}

    With :math:`\Delta = 1` this is what TF-Slim's ``hinge_loss`` (and ``tf.losses.hinge_loss``)
    computes: one independent binary hinge per entry, *not* the multiclass SVM loss. It equals
    :func:`multiclass_hinge_loss` on the two scores :math:`(0, z)`, hence
    ``2 * multi_margin_loss(stack([0, z]), y)`` in torch.

    Args:
        input: logits :math:`z` of any non-empty shape.
        target: labels of the same shape, dtype and device, each exactly 0.0 or 1.0.
        margin: :math:`\Delta \ge 0`.
        reduction: ``"none"`` (same shape as ``input``), ``"mean"`` or ``"sum"``.

    Shape:
        - input: ``(*)``, any non-empty shape.
        - target: ``(*)``, the shape of ``input``.
        - output: scalar, or ``(*)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.zoo import binary_hinge_loss
        >>> z, y = torch.tensor([2.0, 0.5, -1.0, 0.5]), torch.tensor([1.0, 1.0, 0.0, 0.0])
        >>> binary_hinge_loss(z, y, reduction="none")  # max(0, 1 - (2y - 1) z)
        tensor([0.0000, 0.5000, 0.0000, 1.5000])
    """
    check_reduction(reduction)
    x, y = _check_pair(input, target)
    check_positive(margin, "margin", allow_zero=True)
    check_binary(
        y,
        "target",
        hint=" (they are mapped to -1 and +1; for labels in {-1, +1} pass (target + 1) / 2)",
    )
    return reduce_loss(torch.clamp(margin - (2 * y - 1) * x, min=0), reduction)


# --------------------------------------------------------------------------------------------
# Regression losses
# --------------------------------------------------------------------------------------------


def mse_loss(input: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    r"""The squared error :math:`(x - y)^2`, elementwise, then reduced.

    ``"mean"`` is the mean squared error over *all elements*, as in
    :func:`torch.nn.functional.mse_loss` and TF-Slim's ``mean_squared_error``.

    Args:
        input: predictions of any non-empty shape.
        target: same shape, dtype and device.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Shape:
        - input: ``(*)``, any non-empty shape.
        - target: ``(*)``, the shape of ``input``.
        - output: scalar, or ``(*)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.zoo import mse_loss
        >>> x, y = torch.tensor([[0.0, 2.0], [5.0, 1.0]]), torch.zeros(2, 2)
        >>> mse_loss(x, y)  # (0 + 4 + 25 + 1) / 4
        tensor(7.5000)
        >>> torch.allclose(mse_loss(x, y, reduction="sum"), F.mse_loss(x, y, reduction="sum"))
        True
    """
    check_reduction(reduction)
    x, y = _check_pair(input, target)
    return reduce_loss((x - y).square(), reduction)


def absolute_difference(input: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    r"""The absolute error :math:`|x - y|` (L1 loss), elementwise, then reduced.

    torch: :func:`torch.nn.functional.l1_loss`; TF-Slim: ``absolute_difference``. The
    derivative is :math:`\operatorname{sign}(x - y)`, with 0 at :math:`x = y`.

    Args:
        input: predictions of any non-empty shape.
        target: same shape, dtype and device.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Shape:
        - input: ``(*)``, any non-empty shape.
        - target: ``(*)``, the shape of ``input``.
        - output: scalar, or ``(*)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.zoo import absolute_difference
        >>> x, y = torch.tensor([[0.0, -2.0], [5.0, 1.0]]), torch.zeros(2, 2)
        >>> absolute_difference(x, y)  # (0 + 2 + 5 + 1) / 4
        tensor(2.)
        >>> torch.allclose(absolute_difference(x, y), F.l1_loss(x, y))
        True
    """
    check_reduction(reduction)
    x, y = _check_pair(input, target)
    return reduce_loss((x - y).abs(), reduction)


def huber_loss(
    input: Tensor, target: Tensor, delta: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    r"""The Huber loss (Huber, 1964): quadratic near 0, linear beyond :math:`\delta`.

    .. math::

        \ell(r) = \begin{cases} \tfrac12 r^2 & |r| \le \delta \\
                  \delta\,\bigl(|r| - \tfrac12 \delta\bigr) & |r| > \delta \end{cases},
        \qquad r = x - y

    computed without a branch as :math:`\tfrac12 q^2 + \delta(|r| - q)` with
    :math:`q = \min(|r|, \delta)`. The derivative is :math:`r` inside and
    :math:`\delta\operatorname{sign}(r)` outside: a squared error whose gradient is clipped at
    :math:`\delta`. torch: :func:`torch.nn.functional.huber_loss`; the smooth L1 loss of Fast
    R-CNN is ``smooth_l1_loss(x, y, beta) == huber_loss(x, y, delta=beta) / beta``.

    Args:
        input: predictions of any non-empty shape.
        target: same shape, dtype and device.
        delta: :math:`\delta > 0`.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Shape:
        - input: ``(*)``, any non-empty shape.
        - target: ``(*)``, the shape of ``input``.
        - output: scalar, or ``(*)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.zoo import huber_loss
        >>> x, y = torch.tensor([0.5, -2.0, 5.0]), torch.zeros(3)
        >>> huber_loss(x, y, reduction="none")  # r^2 / 2 inside, |r| - 1/2 outside
        tensor([0.1250, 1.5000, 4.5000])
        >>> torch.allclose(huber_loss(x, y, delta=2.0), F.huber_loss(x, y, delta=2.0))
        True
    """
    check_reduction(reduction)
    x, y = _check_pair(input, target)
    check_positive(delta, "delta")
    r = (x - y).abs()
    q = torch.clamp(r, max=delta)
    return reduce_loss(0.5 * q.square() + delta * (r - q), reduction)


def log_loss(
    input: Tensor, target: Tensor, eps: float = 1e-7, reduction: Reduction = "mean"
) -> Tensor:
    r"""The log loss on probabilities, as TF-Slim defines it, elementwise, then reduced.

    .. math::

        \ell(p, y) = -y \log(p + \epsilon) - (1 - y) \log(1 - p + \epsilon)

    This is the *binary* cross-entropy of each entry, whatever the shape: on a ``(B, C)``
    matrix of softmax probabilities and one-hot labels it is not the multi-class
    cross-entropy (every wrong class adds :math:`-\log(1 - p_j)`, and ``"mean"`` divides by
    :math:`B C`). The :math:`\epsilon` keeps both logarithms finite at :math:`p \in \{0, 1\}`;
    it also biases the loss slightly (by at most about :math:`\epsilon / p`).

    torch's :func:`torch.nn.functional.binary_cross_entropy` has no :math:`\epsilon` and clamps
    each logarithm at :math:`-100` instead; the two agree to within that bias. Both take
    probabilities: when you have logits, use a loss on logits
    (:func:`torch.nn.functional.binary_cross_entropy_with_logits` or
    :func:`torch.nn.functional.cross_entropy`), which keeps full precision near 0 and 1.

    Args:
        input: probabilities :math:`p \in [0, 1]`, any non-empty shape.
        target: labels or probabilities in :math:`[0, 1]`, same shape, dtype and device.
        eps: :math:`\epsilon > 0` (TF's default ``1e-7``).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Shape:
        - input: ``(*)``, any non-empty shape.
        - target: ``(*)``, the shape of ``input``.
        - output: scalar, or ``(*)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.zoo import log_loss
        >>> # -log(p + eps): a perfect prediction costs slightly less than 0
        >>> log_loss(torch.tensor([0.5, 1.0]), torch.tensor([1.0, 1.0]), reduction="none")
        tensor([ 6.9315e-01, -1.1921e-07])
        >>> p, y = torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1.0, 0.0, 0.3])
        >>> torch.allclose(log_loss(p, y), F.binary_cross_entropy(p, y), atol=1e-6)
        True
    """
    check_reduction(reduction)
    p, y = _check_pair(input, target)
    check_positive(eps, "eps")
    check_in_range(p, "input", 0.0, 1.0, what="probabilities")
    check_in_range(y, "target", 0.0, 1.0, what="labels or probabilities")
    loss = -y * torch.log(p + eps) - (1 - y) * torch.log(1 - p + eps)
    return reduce_loss(loss, reduction)


def cosine_distance(
    input: Tensor, target: Tensor, dim: int = 1, eps: float = 1e-8, reduction: Reduction = "mean"
) -> Tensor:
    r"""The cosine distance :math:`1 - \cos(x, y)` along ``dim``, then reduced.

    .. math::

        \ell = 1 - \frac{x}{\max(\lVert x\rVert, \epsilon)} \cdot
                   \frac{y}{\max(\lVert y\rVert, \epsilon)} \in [0, 2]

    Each vector is normalised before the dot product, exactly as in
    :func:`torch.nn.functional.cosine_similarity`, so ``cosine_distance(x, y)`` equals
    ``1 - cosine_similarity(x, y, dim, eps)`` and, up to its :math:`10^{-12}` stabiliser,
    ``cosine_embedding_loss(x, y, ones)``. No arc-cosine is taken, so the gradient is finite at
    :math:`\cos = \pm 1`, and a zero vector gives distance 1 with a finite gradient.

    TF-Slim's ``cosine_distance`` does *not* normalise: it returns :math:`1 - x \cdot y` and
    assumes that both inputs already have unit norm.

    Args:
        input: floating tensor with at least one dimension.
        target: same shape, dtype and device.
        dim: the dimension holding the vectors.
        eps: :math:`\epsilon > 0`, the smallest norm used as a divisor.
        reduction: ``"none"`` (the shape of ``input`` without ``dim``), ``"mean"`` or ``"sum"``.

    Shape:
        - input: ``(*)`` with the vectors along ``dim``, e.g. ``(B, D)`` with ``dim=1``.
        - target: ``(*)``, the shape of ``input``.
        - output: scalar, or ``input``'s shape without ``dim`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.zoo import cosine_distance
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
        >>> y = torch.tensor([[0.0, 1.0], [0.0, 5.0], [1.0, 0.0]])
        >>> cosine_distance(x, y, reduction="none")  # orthogonal, parallel, a zero vector
        tensor([1., 0., 1.])
        >>> torch.allclose(cosine_distance(x, y), (1 - F.cosine_similarity(x, y)).mean())
        True
    """
    check_reduction(reduction)
    x, y = _check_pair(input, target)
    check_int(dim, "dim")
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(
            f"dim must be in [{-x.dim()}, {x.dim() - 1}] for input of shape {tuple(x.shape)}, "
            f"got {dim}"
        )
    # an eps below the dtype's smallest normal number rounds to 0 (1e-8 in float16): then a
    # zero vector would be 0 / 0
    floor = max(check_positive(eps, "eps"), torch.finfo(x.dtype).tiny)
    x_unit = x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(floor)
    y_unit = y / torch.linalg.vector_norm(y, dim=dim, keepdim=True).clamp_min(floor)
    return reduce_loss(1 - (x_unit * y_unit).sum(dim=dim), reduction)


def mean_pairwise_squared_error(
    input: Tensor, target: Tensor, reduction: Reduction = "mean"
) -> Tensor:
    r"""The mean over pairs of the squared difference of pairwise differences, per sample.

    For one sample with predictions :math:`x_1, \dots, x_n` and targets :math:`y_1, \dots, y_n`
    (all entries after the batch dimension, flattened), with residuals :math:`d_k = x_k - y_k`:

    .. math::

        \ell = \binom{n}{2}^{-1} \sum_{j < k} \bigl((x_j - x_k) - (y_j - y_k)\bigr)^2
             = \binom{n}{2}^{-1} \sum_{j < k} (d_j - d_k)^2
             = \frac{2}{n - 1} \sum_k (d_k - \bar d)^2,

    twice the sample variance of the residuals, computed in that centred form (the expanded
    form :math:`\sum d^2 - (\sum d)^2/n` cancels catastrophically when the residuals share a
    large offset). Adding the same constant to every prediction of a sample leaves the loss
    unchanged: it compares shapes, not levels.

    This is the definition TF-Slim's docstring states and that ``tf.losses`` computes; the code
    of TF-Slim's own ``mean_pairwise_squared_error`` divides by :math:`n^2` instead of
    :math:`n(n-1)` (so it is :math:`(n-1)/n` times this value) and sums over the batch.

    Args:
        input: predictions of shape ``(B, ...)`` with at least 2 entries per sample.
        target: same shape, dtype and device.
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` over the batch, or ``"sum"``.

    Shape:
        - input: ``(B, *)``, at least 2 entries per sample.
        - target: ``(B, *)``, the shape of ``input``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.zoo import mean_pairwise_squared_error
        >>> x, y = torch.tensor([[0.0, 0.0, 3.0]]), torch.zeros(1, 3)
        >>> mean_pairwise_squared_error(x, y)  # pairs: (0 + 9 + 9) / 3
        tensor(6.)
        >>> mean_pairwise_squared_error(x + 10.0, y)  # a common shift changes nothing
        tensor(6.)
    """
    check_reduction(reduction)
    x, y = _check_pair(input, target)
    if x.dim() < 2 or x[0].numel() < 2:
        raise ValueError(
            "input must have shape (B, ...) with at least 2 entries per sample, "
            f"got shape {tuple(x.shape)}"
        )
    d = (x - y).flatten(start_dim=1)
    n = d.shape[1]
    centred = d - d.mean(dim=1, keepdim=True)
    return reduce_loss(2 * centred.square().sum(dim=1) / (n - 1), reduction)


# --------------------------------------------------------------------------------------------
# Weighted losses
# --------------------------------------------------------------------------------------------


def weighted_loss(losses: Tensor, weights: Tensor | float, reduction: str = "mean") -> Tensor:
    r"""Weight an unreduced loss and reduce it, in the way torch or TensorFlow would.

    ``weights`` is aligned with ``losses`` *from the left* and repeated along the dimensions it
    lacks: a scalar weighs everything, shape ``(B,)`` gives one weight per sample (applied to
    each of its elements), the shape of ``losses`` gives one weight per element, and a size-1
    dimension broadcasts (``(1, C)`` is one weight per class). With :math:`w` so expanded to
    the shape of the losses :math:`\ell`, the reductions are

    * ``"none"``: :math:`w \ell`, the shape of ``losses`` (TensorFlow's ``NONE``);
    * ``"sum"``: :math:`\sum w \ell` (``SUM``);
    * ``"mean"``: :math:`\sum w \ell / \sum w` (``MEAN``);
    * ``"mean_over_elements"``: :math:`\sum w \ell / N` (``SUM_OVER_BATCH_SIZE``);
    * ``"mean_over_nonzero_weights"``: :math:`\sum w \ell / \#\{w \ne 0\}`
      (``SUM_BY_NONZERO_WEIGHTS``),

    where :math:`N` is the number of elements of ``losses`` and the count of non-zero weights is
    taken after expansion. ``"mean"`` is the weighted average that torch uses for class
    weights (``F.cross_entropy(..., weight=w)`` equals
    ``weighted_loss(F.cross_entropy(..., reduction="none"), w[y])``). The last one is
    ``compute_weighted_loss`` of TF-Slim (its only behaviour) and the default of ``tf.losses``:
    a weight of 0 removes an element from the count, but any non-zero weight counts as one
    element, so scaling all weights by 2 doubles the loss. As in TensorFlow, a zero
    denominator (all weights 0) gives 0, not NaN.

    Args:
        losses: unreduced loss, a floating tensor of shape ``(B, ...)`` (or a scalar).
        weights: a non-negative number or tensor (same dtype and device as ``losses``) whose
            shape matches the leading dimensions of ``losses`` (each dimension equal or 1).
        reduction: one of :data:`WEIGHTED_REDUCTIONS`.

    Shape:
        - losses: ``(B, *)``, or a scalar.
        - weights: a number, or the leading dimensions of ``losses`` (each equal or 1), e.g.
          ``(B,)`` or the shape of ``losses``.
        - output: scalar, or the shape of ``losses`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.zoo import weighted_loss
        >>> losses, w = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 1.0, 0.0, 0.0])
        >>> weighted_loss(losses, w)  # (2 + 2) / (2 + 1)
        tensor(1.3333)
        >>> weighted_loss(losses, w, "mean_over_elements")  # (2 + 2) / 4
        tensor(1.)
        >>> weighted_loss(losses, w, "mean_over_nonzero_weights")  # (2 + 2) / 2
        tensor(2.)
    """
    if reduction not in WEIGHTED_REDUCTIONS:
        raise ValueError(f"reduction must be one of {WEIGHTED_REDUCTIONS}, got {reduction!r}")
    check_tensor(losses, "losses")
    if not isinstance(weights, Tensor):
        if isinstance(weights, bool) or not isinstance(weights, (int, float)):
            raise TypeError(
                f"weights must be a number or a torch.Tensor, got {type(weights).__name__}"
            )
        weights = torch.tensor(float(weights), dtype=losses.dtype, device=losses.device)
    check_tensor(weights, "weights")
    check_same_dtype_device(losses, "losses", weights, "weights")
    check_finite(weights, "weights")
    check_in_range(weights, "weights", 0.0, math.inf, what="non-negative weights")
    lead = tuple(losses.shape[: weights.dim()])
    if weights.dim() > losses.dim() or any(
        w not in (1, s) for w, s in zip(weights.shape, lead, strict=True)
    ):
        raise ValueError(
            f"weights must have a shape that matches the leading dimensions of losses "
            f"{tuple(losses.shape)} (each equal or 1), got {tuple(weights.shape)}"
        )
    w = weights.reshape(weights.shape + (1,) * (losses.dim() - weights.dim()))
    if reduction in REDUCTIONS:
        return reduce_loss(losses, reduction, w)
    total = (losses * w).sum()
    if reduction == "mean_over_elements":
        denominator = torch.tensor(float(losses.numel()), dtype=total.dtype, device=total.device)
    else:
        denominator = (w != 0).expand_as(losses).sum().to(total.dtype)
    positive = denominator > 0
    safe = torch.where(positive, denominator, torch.ones_like(denominator))
    return torch.where(positive, total / safe, torch.zeros_like(total))


# --------------------------------------------------------------------------------------------
# Several tasks and regularisation
# --------------------------------------------------------------------------------------------


class MultiTaskLoss(nn.Module):
    r"""A weighted sum of task losses, with fixed weights or learned uncertainty weights.

    **Fixed weights** (``learned=False``): :math:`L = \sum_t w_t L_t`, default :math:`w_t = 1`.

    **Learned weights** (``learned=True``), after Kendall, Gal and Cipolla (2018, eqs. 7 and
    10). Each task :math:`t` has a learned log-variance :math:`s_t = \log\sigma_t^2`
    (:attr:`log_variance`, initialised to 0, i.e. :math:`\sigma_t = 1`), and

    .. math::

        L = \sum_{t\ \text{regression}} \Bigl(\tfrac12 e^{-s_t} L_t + \tfrac12 s_t\Bigr)
          + \sum_{t\ \text{classification}} \Bigl(e^{-s_t} L_t + \tfrac12 s_t\Bigr),

    that is :math:`\frac{1}{2\sigma_t^2} L_t + \log\sigma_t` for a regression task and
    :math:`\frac{1}{\sigma_t^2} L_t + \log\sigma_t` for a classification task.

    * Regression: :math:`L_t` must be the **mean squared error**. Then the term is, up to the
      constant :math:`\tfrac12\log 2\pi`, the mean negative log-likelihood of a Gaussian with
      variance :math:`\sigma_t^2`, exactly.
    * Classification: :math:`L_t` must be the **mean cross-entropy**. The term is the paper's
      *approximation* of the negative log-likelihood of a softmax with temperature
      :math:`\sigma_t^2`; it is exact only at :math:`\sigma_t = 1`.

    For fixed :math:`L_t` the best :math:`s_t` makes the effective weight
    (:meth:`effective_weights`: :math:`\tfrac12 e^{-s_t}` or :math:`e^{-s_t}`) equal to
    :math:`1/(2 L_t)`: learned weighting rescales every task to the same size. It therefore
    needs :math:`L_t > 0`; a loss that can reach 0 (or go negative) drives :math:`s_t` to
    :math:`-\infty`, so negative losses are rejected. Learning :math:`s_t` rather than
    :math:`\sigma_t` keeps the weights positive and avoids a division by zero.

    Args:
        kinds: one entry per task, ``"regression"`` or ``"classification"``.
        weights: fixed weights :math:`w_t \ge 0` (only without ``learned``); default all 1.
        learned: learn the weights as above; the module then owns the parameter
            :attr:`log_variance` of shape ``(T,)``, to be optimised with the network's.

    Shape:
        - losses (the argument of :meth:`forward`): a sequence of ``T`` scalar tensors.
        - output: scalar.

    Examples:
        >>> import torch
        >>> from companion.zoo import MultiTaskLoss
        >>> losses = [torch.tensor(2.0), torch.tensor(4.0)]
        >>> MultiTaskLoss(["regression", "classification"], weights=[1.0, 0.5])(losses)
        tensor(4.)
        >>> learned = MultiTaskLoss(["regression", "classification"], learned=True)
        >>> learned(losses), learned.effective_weights()  # s = 0: 2 / 2 + 4
        (tensor(5., grad_fn=<SumBackward0>), tensor([0.5000, 1.0000]))
    """

    log_variance: nn.Parameter | None
    fixed_weights: Tensor
    likelihood_factor: Tensor

    def __init__(
        self,
        kinds: Sequence[TaskKind],
        weights: Sequence[float] | None = None,
        *,
        learned: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(kinds, str) or not isinstance(kinds, Sequence) or len(kinds) == 0:
            raise ValueError(
                f"kinds must be a non-empty sequence of 'regression' / 'classification', "
                f"got {kinds!r}"
            )
        for kind in kinds:
            if kind not in ("regression", "classification"):
                raise ValueError(f"kinds must hold 'regression' or 'classification', got {kind!r}")
        self.kinds: tuple[str, ...] = tuple(kinds)
        self.learned = bool(learned)
        num_tasks = len(self.kinds)
        if learned and weights is not None:
            raise ValueError("weights must be None when learned=True (the weights are learned)")
        w = [1.0] * num_tasks if weights is None else [float(v) for v in weights]
        if len(w) != num_tasks:
            raise ValueError(f"weights must have one entry per task ({num_tasks}), got {len(w)}")
        for v in w:
            check_positive(v, "weights", allow_zero=True)
        self.register_buffer("fixed_weights", torch.tensor(w))
        # 1/2 for a regression task's Gaussian likelihood, 1 for a classification task's softmax
        factor = [0.5 if kind == "regression" else 1.0 for kind in self.kinds]
        self.register_buffer("likelihood_factor", torch.tensor(factor))
        self.log_variance = nn.Parameter(torch.zeros(num_tasks)) if learned else None

    def _check_losses(self, losses: Sequence[Tensor]) -> Tensor:
        if isinstance(losses, Tensor) or not isinstance(losses, Sequence):
            raise TypeError(
                f"losses must be a sequence of scalar tensors (one per task), "
                f"got {type(losses).__name__}"
            )
        if len(losses) != len(self.kinds):
            raise ValueError(
                f"losses must have one entry per task ({len(self.kinds)}), got {len(losses)}"
            )
        for t, loss in enumerate(losses):
            if not isinstance(loss, Tensor):
                raise TypeError(f"losses[{t}] must be a torch.Tensor, got {type(loss).__name__}")
            if not loss.is_floating_point():
                raise TypeError(f"losses[{t}] must be a floating-point tensor, got {loss.dtype}")
            if loss.dim() != 0:
                raise ValueError(
                    f"losses[{t}] must be a scalar (0-d tensor), got shape {tuple(loss.shape)}"
                )
            check_same_dtype_device(losses[0], "losses[0]", loss, f"losses[{t}]")
        stacked = torch.stack(list(losses))
        check_finite(stacked, "losses")
        if self.learned and value_checks_enabled() and bool((stacked < 0).any()):
            raise ValueError(
                "losses must be non-negative with learned weights (a negative task loss makes "
                f"the objective unbounded below), got {[float(v) for v in stacked]}"
            )
        return stacked

    def effective_weights(self) -> Tensor:
        r"""The weight each task loss gets now: :math:`w_t`, or :math:`c_t e^{-s_t}` if learned.

        :math:`c_t` is :math:`\tfrac12` for regression and 1 for classification. Detached.
        """
        if self.log_variance is None:
            return self.fixed_weights.detach().clone()
        return (self.likelihood_factor * torch.exp(-self.log_variance)).detach()

    def forward(self, losses: Sequence[Tensor]) -> Tensor:
        """Combine one scalar loss per task (in the order of ``kinds``) into the total."""
        stacked = self._check_losses(losses)
        if self.log_variance is None:
            return (self.fixed_weights.to(stacked) * stacked).sum()
        # computed in the wider of the two dtypes: float32 for bfloat16 losses, float64 for float64
        dtype = torch.promote_types(stacked.dtype, self.log_variance.dtype)
        s = self.log_variance.to(dtype)
        c = self.likelihood_factor.to(dtype)
        return (c * torch.exp(-s) * stacked.to(dtype) + 0.5 * s).sum()

    def extra_repr(self) -> str:
        return f"kinds={self.kinds}, learned={self.learned}"


def l2_regularization(module_or_params: nn.Module | Iterable[Tensor]) -> Tensor:
    r"""The weight-decay penalty :math:`\tfrac12 \sum_\theta \lVert\theta\rVert^2`.

    Adding :math:`\lambda` times this to a loss adds :math:`\lambda\theta` to each gradient,
    which is exactly what ``weight_decay=lambda`` does in :class:`torch.optim.SGD` and
    :class:`torch.optim.Adam` (not :class:`torch.optim.AdamW`, whose decay is decoupled from
    the gradient). It is also TensorFlow's ``tf.nn.l2_loss``. As a prior: the penalty
    :math:`\frac{\lambda}{2}\lVert\theta\rVert^2` added to a *summed* negative log-likelihood
    is the negative log-density of :math:`\theta \sim \mathcal N(0, \lambda^{-1} I)` (up to a
    constant), so minimising the sum is maximum a posteriori estimation.

    Args:
        module_or_params: a module (all of its parameters are penalised, biases included) or
            an iterable of floating tensors, e.g. only the weight matrices.

    Returns:
        A scalar tensor on the parameters' device.

    Examples:
        >>> import torch
        >>> from companion.zoo import l2_regularization
        >>> w = torch.tensor([3.0, 4.0], requires_grad=True)
        >>> l2_regularization([w, torch.tensor([[1.0]])])  # (9 + 16 + 1) / 2
        tensor(13., grad_fn=<MulBackward0>)
        >>> l2_regularization([w]).backward()
        >>> w.grad  # the gradient is the weight itself, as weight decay adds
        tensor([3., 4.])
    """
    params: list[Tensor]
    if isinstance(module_or_params, nn.Module):
        params = list(module_or_params.parameters())
    elif isinstance(module_or_params, Tensor):
        params = [module_or_params]
    elif isinstance(module_or_params, Iterable):
        params = list(module_or_params)
    else:
        raise TypeError(
            "module_or_params must be a torch.nn.Module or an iterable of tensors, "
            f"got {type(module_or_params).__name__}"
        )
    if not params:
        raise ValueError("module_or_params must hold at least one parameter, got none")
    for i, p in enumerate(params):
        check_tensor(p, f"module_or_params[{i}]", allow_empty=True)
    total = params[0].square().sum()
    for p in params[1:]:
        total = total + p.square().sum()
    return 0.5 * total
