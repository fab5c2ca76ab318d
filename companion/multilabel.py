r"""Multi-label classification: one independent sigmoid per label, its loss, predictions, metrics.

A sample carries a binary vector :math:`y \in \{0, 1\}^C` (any number of labels may be present,
including none) and the model outputs one logit :math:`x_c` per label. Reading each logit as the
log-odds of its own label, :math:`P(y_c = 1 \mid \text{input}) = \sigma(x_c)`, and treating the
labels as conditionally independent, the negative log-likelihood is a sum of binary
cross-entropies, one per element:

.. math::

    \ell(x, y) = -y \log \sigma(x) - (1 - y) \log\bigl(1 - \sigma(x)\bigr)
               = y \operatorname{softplus}(-x) + (1 - y) \operatorname{softplus}(x)
               = \max(x, 0) - x y + \log\bigl(1 + e^{-|x|}\bigr).

Its derivative with respect to the logit is :math:`\sigma(x) - y`.

:func:`binary_cross_entropy_with_logits` and :func:`multilabel_soft_margin_loss` compute this
same per-element loss and differ only in how they reduce it. :func:`predict_labels` thresholds
the probabilities; :func:`subset_accuracy`, :func:`hamming_loss` and :func:`per_label_f1` score
the predictions.

torch ships both losses (:func:`torch.nn.functional.binary_cross_entropy_with_logits`,
:func:`torch.nn.functional.multilabel_soft_margin_loss`) and scikit-learn the metrics; use
those in production. The versions here are the readable from-scratch ones the book derives,
and the tests prove they agree. Unlike torch, they reject targets outside :math:`[0, 1]`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from companion._numerics import compute_dtype
from companion._validate import (
    Reduction,
    check_batch_size,
    check_binary,
    check_finite,
    check_in_range,
    check_reduction,
    check_same_dtype_device,
    check_same_shape,
    check_tensor,
    reduce_loss,
)
from companion.sigmoid import softplus

__all__ = [
    "binary_cross_entropy_with_logits",
    "hamming_loss",
    "multilabel_soft_margin_loss",
    "per_label_f1",
    "predict_labels",
    "subset_accuracy",
]


def _check_input_and_target(input: object, target: object, *, ndim: int | None) -> None:
    """Validate a (logits, target) pair: floating, same shape/dtype/device, target in [0, 1]."""
    check_tensor(input, "input", ndim=ndim)
    check_tensor(target, "target", ndim=ndim)
    assert isinstance(input, Tensor) and isinstance(target, Tensor)  # for mypy
    check_finite(input, "input")
    if input.dim() > 0 and target.dim() > 0 and input.shape[0] != target.shape[0]:
        check_batch_size(input, "input", target, "target")
    check_same_shape(input, "input", target, "target")
    check_same_dtype_device(input, "input", target, "target")
    check_in_range(target, "target", 0.0, 1.0, what="labels or probabilities")


def _check_weight(weight: object, name: str, input: Tensor) -> Tensor:
    """A non-negative floating tensor that broadcasts to ``input.shape`` without enlarging it."""
    check_tensor(weight, name)
    assert isinstance(weight, Tensor)  # for mypy
    check_same_dtype_device(input, "input", weight, name)
    try:
        broadcast = torch.broadcast_shapes(weight.shape, input.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != input.shape:
        raise ValueError(
            f"{name} must broadcast to the shape of input {tuple(input.shape)}, "
            f"got shape {tuple(weight.shape)}"
        )
    check_finite(weight, name)
    check_in_range(weight, name, 0.0, math.inf, what="non-negative weights")
    return weight


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Binary cross-entropy on logits, elementwise, optionally weighted, then reduced.

    With weight :math:`w` and positive-class weight :math:`p` (both default to 1):

    .. math::

        \ell(x, y) = -w \bigl[\, p\, y \log \sigma(x) + (1 - y) \log\bigl(1 - \sigma(x)\bigr)\bigr]
                   = w \bigl[\, p\, y \operatorname{softplus}(-x)
                     + (1 - y) \operatorname{softplus}(x)\bigr].

    The right-hand form is what is computed: both terms are non-negative and ``softplus`` is
    evaluated as :math:`\max(t, 0) + \log(1 + e^{-|t|})`, so nothing overflows, no probability
    is formed and then logged, and no large terms cancel (even a loss of :math:`10^{-18}` keeps
    its relative precision). The derivative with respect to :math:`x` is
    :math:`w\,[(1 - y)\sigma(x) - p\, y\, \sigma(-x)]`, which is :math:`w(\sigma(x) - y)` when
    :math:`p = 1`.

    Same semantics as :func:`torch.nn.functional.binary_cross_entropy_with_logits`, including
    broadcasting: ``pos_weight`` of shape ``(C,)`` weights the positives of each of the ``C``
    labels along the last dimension (a common choice is #negatives / #positives of that label);
    ``weight`` of any shape that broadcasts to ``input`` rescales each element. With
    ``reduction="mean"`` the result is the plain mean of the weighted elements (not divided by
    the sum of the weights), as in torch.

    Args:
        input: floating tensor of any non-empty shape, e.g. ``(N, C)``: the log-odds.
        target: same shape, dtype and device: labels 0.0 / 1.0 or probabilities in
            :math:`[0, 1]`.
        weight: optional non-negative tensor broadcastable to ``input.shape``.
        pos_weight: optional non-negative tensor broadcastable to ``input.shape``, usually
            ``(C,)``.
        reduction: ``"none"`` (shape of ``input``), ``"mean"`` or ``"sum"``.

    Raises:
        TypeError: if an argument is not a floating tensor, or the dtypes differ.
        ValueError: on an empty input, a batch-size or shape mismatch, a target outside
            :math:`[0, 1]`, NaN or infinite logits, negative or non-broadcastable weights, or an
            unknown ``reduction``.

    Shape:
        - input: ``(*)``, any non-empty shape, e.g. ``(N, C)``.
        - target: ``(*)``, the shape of ``input``.
        - weight, pos_weight: broadcastable to ``(*)``; ``pos_weight`` usually ``(C,)``.
        - output: scalar, or ``(*)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.multilabel import binary_cross_entropy_with_logits
        >>> z = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
        >>> y, pw = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), torch.tensor([1.0, 3.0, 0.5])
        >>> ours = binary_cross_entropy_with_logits(z, y, pos_weight=pw)
        >>> torch.allclose(ours, F.binary_cross_entropy_with_logits(z, y, pos_weight=pw))
        True
        >>> binary_cross_entropy_with_logits(torch.tensor([-40.0]), torch.tensor([0.0]))  # not 0
        tensor(4.2484e-18)
    """
    check_reduction(reduction)
    _check_input_and_target(input, target, ndim=None)
    positive_term = target * softplus(-input)  # -y log sigma(x)
    if pos_weight is not None:
        positive_term = _check_weight(pos_weight, "pos_weight", input) * positive_term
    loss = positive_term + (1 - target) * softplus(input)  # + -(1 - y) log(1 - sigma(x))
    if weight is not None:
        loss = _check_weight(weight, "weight", input) * loss
    return reduce_loss(loss, reduction)


def multilabel_soft_margin_loss(
    input: Tensor, target: Tensor, reduction: Reduction = "mean"
) -> Tensor:
    r"""The multi-label soft-margin loss: binary cross-entropy averaged over the labels of a sample.

    .. math::

        L_n = \frac{1}{C} \sum_{c=1}^{C} \ell(x_{nc}, y_{nc}),

    with :math:`\ell` the per-element loss of :func:`binary_cross_entropy_with_logits`. It is the
    same loss, reduced differently: ``"none"`` gives one value per *sample* (shape ``(N,)``), not
    per element; ``"mean"`` averages those and so equals
    ``binary_cross_entropy_with_logits(..., reduction="mean")``; ``"sum"`` is ``1/C`` times the
    summed binary cross-entropy.

    Same as :func:`torch.nn.functional.multilabel_soft_margin_loss` without its ``weight``.

    Args:
        input: floating tensor ``(N, C)``.
        target: ``(N, C)``, same dtype and device, labels 0.0 / 1.0 or probabilities.
        reduction: ``"none"`` (shape ``(N,)``), ``"mean"`` or ``"sum"``.

    Raises:
        TypeError, ValueError: as :func:`binary_cross_entropy_with_logits`; also if the inputs
            are not two-dimensional.

    Shape:
        - input: ``(N, C)``.
        - target: ``(N, C)``.
        - output: scalar, or ``(N,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.multilabel import multilabel_soft_margin_loss
        >>> y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
        >>> multilabel_soft_margin_loss(torch.zeros(2, 3), y, reduction="none")  # log 2 each
        tensor([0.6931, 0.6931])
        >>> z = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
        >>> torch.allclose(multilabel_soft_margin_loss(z, y), F.multilabel_soft_margin_loss(z, y))
        True
    """
    check_reduction(reduction)
    _check_input_and_target(input, target, ndim=2)
    per_element = binary_cross_entropy_with_logits(input, target, reduction="none")
    return reduce_loss(per_element.mean(dim=1), reduction)


def predict_labels(input: Tensor, threshold: float | Tensor = 0.5) -> Tensor:
    r"""Predict which labels are present: :math:`\sigma(x_c) \ge t_c`.

    The comparison is made in logit space, :math:`x_c \ge \operatorname{logit}(t_c)`, which is
    equivalent (the sigmoid is increasing) but exact where the rounded probability is not: in
    float32, :math:`\sigma(20)` rounds to 1, while :math:`20 < \operatorname{logit}(1) = \infty`.
    A threshold of 0 predicts every label, a threshold of 1 none (for finite logits).

    Args:
        input: floating tensor ``(..., C)`` of log-odds.
        threshold: one probability in :math:`[0, 1]` for every label, or a floating tensor of
            shape ``(C,)`` with one threshold per label.

    Returns:
        A boolean tensor of the shape of ``input``, True where a label is predicted present.

    Raises:
        TypeError: if ``input`` or ``threshold`` has the wrong type.
        ValueError: if a threshold lies outside :math:`[0, 1]`, or a per-label ``threshold``
            does not have shape ``(C,)``.

    Shape:
        - input: ``(*, C)``.
        - threshold: a number, or ``(C,)``.
        - output: ``(*, C)``, bool.

    Examples:
        >>> import torch
        >>> from companion.multilabel import predict_labels
        >>> z = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 1.0, 20.0]])
        >>> predict_labels(z)
        tensor([[ True, False,  True],
                [False,  True,  True]])
        >>> # threshold 1 predicts nothing, though sigmoid(20) rounds to 1 in float32
        >>> predict_labels(z, threshold=torch.tensor([0.5, 0.5, 1.0]))
        tensor([[ True, False, False],
                [False,  True, False]])
    """
    check_tensor(input, "input", allow_empty=True, allow_inf=True)
    work = compute_dtype(input.dtype)
    if isinstance(threshold, Tensor):
        check_tensor(threshold, "threshold", ndim=1)
        if input.dim() == 0 or threshold.shape[0] != input.shape[-1]:
            want = (input.shape[-1],) if input.dim() else "a float for 0-d input"
            raise ValueError(
                f"threshold must have shape {want} (one per label), got {tuple(threshold.shape)}"
            )
        check_in_range(threshold, "threshold", 0.0, 1.0, what="probabilities")
        t = threshold.detach().to(device=input.device, dtype=torch.float64)
    elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(
            f"threshold must be a float or a tensor of shape (C,), got {type(threshold).__name__}"
        )
    else:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
        t = torch.tensor(float(threshold), dtype=torch.float64, device=input.device)
    cut = (torch.log(t) - torch.log1p(-t)).to(work)  # logit(t); +-inf at 1 and 0
    return input.to(work) >= cut


def _as_label_matrix(x: object, name: str) -> Tensor:
    """Check a 2-D tensor of hard 0/1 labels (bool, integer or floating) and return it as bool."""
    check_tensor(x, name, ndim=2, floating=False)
    assert isinstance(x, Tensor)  # for mypy
    if x.dtype == torch.bool:
        return x
    check_binary(x, name)
    return x != 0


def _check_label_pair(predicted: object, target: object) -> tuple[Tensor, Tensor]:
    pred = _as_label_matrix(predicted, "predicted")
    true = _as_label_matrix(target, "target")
    if pred.shape[0] != true.shape[0]:
        check_batch_size(pred, "predicted", true, "target")
    check_same_shape(pred, "predicted", true, "target")
    if pred.device != true.device:
        raise ValueError(
            f"target must be on the same device as predicted ({pred.device}), got {true.device}"
        )
    return pred, true


def subset_accuracy(predicted: Tensor, target: Tensor) -> float:
    r"""Fraction of samples whose whole label set is predicted exactly (exact-match ratio).

    .. math:: \frac{1}{N} \sum_{n} [\hat y_n = y_n]

    The strictest multi-label metric: one wrong label makes the whole sample wrong. It is what
    :func:`sklearn.metrics.accuracy_score` returns for label-indicator matrices.

    Args:
        predicted, target: ``(N, C)`` tensors of hard labels (bool, or 0/1 numbers).

    Shape:
        - predicted, target: ``(N, C)``.
        - output: a Python float.

    Examples:
        >>> import torch
        >>> from companion.multilabel import subset_accuracy
        >>> predicted = torch.tensor([[1, 0, 1], [0, 1, 0]])
        >>> target = torch.tensor([[1, 0, 0], [0, 1, 0]])
        >>> subset_accuracy(predicted, target)  # the first sample has a wrong label
        0.5
    """
    pred, true = _check_label_pair(predicted, target)
    return float((pred == true).all(dim=1).double().mean())


def hamming_loss(predicted: Tensor, target: Tensor) -> float:
    r"""Fraction of individual labels that are wrong.

    .. math:: \frac{1}{N C} \sum_{n, c} [\hat y_{nc} \ne y_{nc}]

    As :func:`sklearn.metrics.hamming_loss`. Lower is better; predicting "absent" everywhere
    scores the label density, so compare it against that baseline.

    Args:
        predicted, target: ``(N, C)`` tensors of hard labels (bool, or 0/1 numbers).

    Shape:
        - predicted, target: ``(N, C)``.
        - output: a Python float.

    Examples:
        >>> import torch
        >>> from companion.multilabel import hamming_loss
        >>> predicted = torch.tensor([[1, 0, 1], [0, 1, 0]])
        >>> target = torch.tensor([[1, 0, 0], [0, 1, 0]])
        >>> hamming_loss(predicted, target)  # 1 wrong label of 6
        0.16666666666666666
    """
    pred, true = _check_label_pair(predicted, target)
    return float((pred != true).double().mean())


def per_label_f1(predicted: Tensor, target: Tensor, zero_division: float = 0.0) -> Tensor:
    r"""The F1 score of each label, :math:`2\,TP / (2\,TP + FP + FN)`, computed over the samples.

    F1 is the harmonic mean of precision and recall; unlike accuracy it ignores true negatives,
    so a rare label cannot score well by never being predicted. Its mean over the labels is the
    macro F1. As :func:`sklearn.metrics.f1_score` with ``average=None``.

    Args:
        predicted, target: ``(N, C)`` tensors of hard labels (bool, or 0/1 numbers).
        zero_division: the score of a label that is neither present nor predicted in any
            sample (where F1 is 0/0).

    Returns:
        float64 tensor of shape ``(C,)``.

    Shape:
        - predicted, target: ``(N, C)``.
        - output: ``(C,)``, float64.

    Examples:
        >>> import torch
        >>> from companion.multilabel import per_label_f1
        >>> predicted = torch.tensor([[1, 0, 1], [0, 1, 0]])
        >>> target = torch.tensor([[1, 0, 0], [0, 1, 0]])
        >>> per_label_f1(predicted, target)
        tensor([1., 1., 0.], dtype=torch.float64)
    """
    pred, true = _check_label_pair(predicted, target)
    if not 0.0 <= float(zero_division) <= 1.0:
        raise ValueError(f"zero_division must be in [0, 1], got {zero_division}")
    tp = (pred & true).sum(dim=0, dtype=torch.float64)
    fp = (pred & ~true).sum(dim=0, dtype=torch.float64)
    fn = (~pred & true).sum(dim=0, dtype=torch.float64)
    denominator = 2 * tp + fp + fn
    score = 2 * tp / denominator.clamp(min=1)
    return torch.where(denominator > 0, score, torch.full_like(score, float(zero_division)))
