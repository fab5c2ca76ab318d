r"""Losses for imbalanced classes: focal, class-balanced, logit-adjusted, asymmetric, Poly-1.

When some classes (or, in multi-label data, the negatives) are far more common than others,
plain cross-entropy spends most of its gradient on the common ones, and its arg-max favours
them. The functions here are the standard answers, each derived in the book's chapter on
imbalanced classes:

* :func:`focal_loss` (softmax, class indices) and :func:`sigmoid_focal_loss` (independent
  labels): cross-entropy multiplied by :math:`(1 - p_t)^\gamma`, which shrinks the loss of
  the examples the model already gets right (Lin et al., 2017).
* :func:`class_balanced_weights`: per-class weights from the *effective number* of samples
  :math:`(1 - \beta^{n}) / (1 - \beta)` (Cui et al., 2019), for the ``weight`` of a
  cross-entropy or the ``alpha`` of :func:`focal_loss`.
* :func:`logit_adjusted_cross_entropy`: cross-entropy on logits shifted by
  :math:`\tau \log \pi` (the class prior) during training, consistent for the balanced error
  (Menon et al., 2021); with :math:`\tau = 1` it is the balanced softmax of Ren et al. (2020).
  :func:`adjust_logits` is the post-hoc form: subtract :math:`\tau \log \pi` from the logits
  of a model trained with plain cross-entropy.
* :func:`asymmetric_loss`: ASL for multi-label data, with separate focusing exponents for
  positives and negatives and a probability shift that discards easy negatives (Ridnik et
  al., 2021).
* :func:`poly1_cross_entropy`: cross-entropy plus :math:`\varepsilon (1 - p_t)`, the first
  term of its Taylor series in :math:`1 - p_t` re-weighted (Leng et al., 2022).

Every loss works in log space (``logsumexp``, ``logsigmoid``), computes in float32 or wider
for half-precision inputs and returns the input's dtype, and is ready for a hot loop: with
value checks off (:func:`companion.set_value_checks`) a forward and backward pass makes no
host sync and compiles with ``torch.compile(fullgraph=True)``.

The modulating factor :math:`(1 - p)^\gamma` has an infinite derivative at :math:`p = 1` when
:math:`0 < \gamma < 1`, while the loss it multiplies vanishes there; the product has the
finite derivative 0 (the exact limit). The losses here return that limit: they never form
:math:`(1 - p)^{\gamma - 1}`, but raise :math:`1 - p_t` to the power :math:`\gamma` as
:math:`\exp(\gamma \log(1 - p_t))`, with :math:`\log(1 - p_t)` computed from the logits
directly (a log-sum-exp over the other classes, or a log-sigmoid), whose derivative is bounded.
The softmax losses also take :math:`\log p_t` from it where :math:`p_t > 1/2`, so a tiny loss
keeps its relative precision (``F.cross_entropy`` rounds the loss at a logit margin of 40 to 0,
even in float64).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from companion._numerics import compute_dtype
from companion._validate import (
    Reduction,
    check_binary,
    check_class_index,
    check_finite,
    check_in_range,
    check_positive,
    check_positive_entries,
    check_probabilities,
    check_real,
    check_reduction,
    check_same_dtype_device,
    check_same_shape,
    check_shape,
    check_tensor,
    reduce_loss,
    value_checks_enabled,
)

__all__ = [
    "adjust_logits",
    "asymmetric_loss",
    "class_balanced_weights",
    "focal_loss",
    "logit_adjusted_cross_entropy",
    "poly1_cross_entropy",
    "sigmoid_focal_loss",
]


# ---------------------------------------------------------------------------------------------
# checks shared by the losses
# ---------------------------------------------------------------------------------------------


def _check_classification(input: object, target: object) -> tuple[Tensor, Tensor]:
    """``input`` (B, C) finite floating logits and ``target`` (B,) class indices on its device."""
    logits = check_tensor(input, "input", ndim=2)
    batch, num_classes = logits.shape
    if isinstance(target, Tensor) and target.device != logits.device:
        raise ValueError(
            f"target must be on the same device as input ({logits.device}), got {target.device}"
        )
    index = check_class_index(target, "target", num_classes, batch_shape=(batch,))
    return logits, index


def _check_multilabel(input: object, target: object) -> tuple[Tensor, Tensor]:
    """``input`` finite floating logits of any shape and ``target`` of the same shape, dtype and
    device (its range is checked by the caller)."""
    logits = check_tensor(input, "input", ndim=None)
    labels = check_tensor(target, "target", ndim=None)
    check_same_shape(logits, "input", labels, "target")
    check_same_dtype_device(logits, "input", labels, "target")
    return logits, labels


def _check_class_vector(value: object, name: str, logits: Tensor) -> Tensor:
    """A (C,) floating tensor with the dtype and device of ``logits``, finite."""
    vector = check_tensor(value, name, ndim=1)
    check_shape(vector, name, (logits.shape[-1],))
    check_same_dtype_device(logits, "input", vector, name)
    check_finite(vector, name)
    return vector


def _check_prior(prior: object, logits: Tensor) -> Tensor:
    """A (C,) probability vector with positive entries (its log is taken)."""
    vector = _check_class_vector(prior, "prior", logits)
    check_positive_entries(vector, "prior", what="positive class probabilities")
    tol = max(1e-4, float(torch.finfo(vector.dtype).eps) * vector.shape[0])
    check_probabilities(vector, "prior", atol=tol)
    return vector


def _check_exponent(value: object, name: str) -> float:
    return check_positive(value, name, allow_zero=True)


def _log_target_and_rest(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`\log p_t` and :math:`\log(1 - p_t)` of a softmax, both from the logits.

    :math:`\log(1 - p_t) = \operatorname{LSE}_{j \ne t}(x_j) - \operatorname{LSE}_j(x_j)`:
    its derivative is a difference of softmax probabilities, bounded by 1 in absolute value,
    where :math:`\log(1 - \exp(\log p_t))` would divide by :math:`1 - p_t`.

    :math:`\log p_t` is :math:`x_t - \operatorname{LSE}_j(x_j)` where :math:`p_t \le 1/2`, and
    :math:`\operatorname{log1p}(-(1 - p_t))` with :math:`1 - p_t` from the line above where
    :math:`p_t > 1/2`: the difference of two nearly equal numbers would lose the digits of a
    small :math:`1 - p_t` (at a margin of 40, :math:`x_t - \operatorname{LSE}` is exactly 0
    even in float64), the second form keeps its relative precision.
    """
    lse = torch.logsumexp(logits, dim=1)
    is_target = torch.zeros_like(logits, dtype=torch.bool).scatter(1, target[:, None], True)
    log_rest = torch.logsumexp(logits.masked_fill(is_target, -math.inf), dim=1) - lse
    direct = logits.gather(1, target[:, None]).squeeze(1) - lse
    near_one = log_rest < -_LOG2
    # evaluated on a safe input outside its branch, so neither branch's gradient is NaN
    rest = torch.where(near_one, log_rest, torch.full_like(log_rest, -_LOG2))
    log_p = torch.where(near_one, torch.log1p(-torch.exp(rest)), direct)
    return log_p, log_rest


_LOG2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# focal losses
# ---------------------------------------------------------------------------------------------


def focal_loss(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The softmax focal loss: cross-entropy scaled down on well-classified examples.

    With :math:`p_t = \operatorname{softmax}(x)_t` the probability of the target class,

    .. math::

        \ell(x, t) = -\alpha_t\, (1 - p_t)^{\gamma} \log p_t .

    :math:`\gamma = 0` (and no ``alpha``) is cross-entropy. The factor :math:`(1 - p_t)^\gamma`
    is near 1 for a misclassified example and near 0 for an easy one, so the many easy examples
    of a frequent class stop dominating the gradient. Lin et al. (2017), *Focal Loss for Dense
    Object Detection*, introduced it for the sigmoid (one-vs-all) head of a detector; this is
    its softmax form, for class indices.

    Computed as :math:`-\alpha_t \exp\bigl(\gamma \log(1 - p_t)\bigr) \log p_t` with both logs
    taken from the logits by log-sum-exps, so the gradient is finite everywhere: at
    :math:`p_t \to 1` it tends to 0 for every :math:`\gamma > 0`, including
    :math:`0 < \gamma < 1`, where :math:`(1 - p_t)^\gamma` alone has an infinite derivative.

    ``alpha`` (per-class weights, for example from :func:`class_balanced_weights`) weights the
    loss as torch's cross-entropy ``weight`` does, and ``reduction="mean"`` is then the
    weighted mean :math:`\sum_b \alpha_{t_b} \ell_b / \sum_b \alpha_{t_b}` (0 where every
    weight is 0), so that ``focal_loss(x, t, gamma=0, alpha=w)`` equals
    ``F.cross_entropy(x, t, weight=w)``.

    Args:
        input: ``(B, C)`` floating logits, finite.
        target: ``(B,)`` class indices in ``[0, C)``, int64 or int32.
        gamma: the focusing exponent :math:`\gamma \ge 0` (2 in the paper).
        alpha: optional ``(C,)`` non-negative class weights, same dtype and device as
            ``input``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Raises:
        TypeError: non-tensor or integer ``input``, non-integer ``target``, mismatched dtypes.
        ValueError: wrong shapes, an empty batch, indices out of range, a negative ``gamma``,
            negative or non-finite ``alpha``, non-finite ``input``, an unknown ``reduction``.

    Shape:
        - input: ``(B, C)``.
        - target: ``(B,)``.
        - alpha: ``(C,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.imbalance import focal_loss
        >>> x, t = torch.tensor([[3.0, 0.0, -1.0], [0.5, 0.2, 0.1]]), torch.tensor([0, 2])
        >>> focal_loss(x, t, reduction="none")  # the easy first row loses almost everything
        tensor([2.6784e-04, 6.6728e-01])
        >>> F.cross_entropy(x, t, reduction="none")
        tensor([0.0659, 1.2801])
        >>> w = torch.tensor([1.0, 2.0, 4.0])
        >>> torch.allclose(focal_loss(x, t, gamma=0.0, alpha=w), F.cross_entropy(x, t, weight=w))
        True
    """
    check_reduction(reduction)
    logits, index = _check_classification(input, target)
    g = _check_exponent(gamma, "gamma")
    weight = None
    if alpha is not None:
        weight = _check_class_vector(alpha, "alpha", logits)
        check_in_range(weight, "alpha", 0.0, math.inf, what="non-negative class weights")
    x = logits.to(compute_dtype(logits.dtype))
    log_p, log_rest = _log_target_and_rest(x, index)
    loss = -log_p if g == 0 else -torch.exp(g * log_rest) * log_p
    sample_weight = weight.to(x.dtype)[index] if weight is not None else None
    return reduce_loss(loss, reduction, sample_weight).to(logits.dtype)


def sigmoid_focal_loss(
    input: Tensor,
    target: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The sigmoid focal loss of RetinaNet, for independent binary labels.

    With :math:`p = \sigma(x)`, :math:`p_t = p\,y + (1 - p)(1 - y)` and
    :math:`\alpha_t = \alpha\, y + (1 - \alpha)(1 - y)`,

    .. math::

        \ell(x, y) = \alpha_t\, (1 - p_t)^{\gamma}\, \operatorname{BCE}(x, y),
        \qquad \operatorname{BCE}(x, y) = -y \log p - (1 - y) \log(1 - p),

    elementwise (Lin et al., 2017, *Focal Loss for Dense Object Detection*). For a 0/1 label
    the binary cross-entropy is :math:`-\log p_t`, the form of the paper.

    **Relation to** ``torchvision.ops.sigmoid_focal_loss``: the same formula, the same
    defaults (``alpha=0.25``, ``gamma=2``) and the same argument order; a negative ``alpha``
    turns the weighting off, as there (``None`` does too). One difference: torchvision's
    default ``reduction`` is ``"none"``, this function's is ``"mean"`` (the mean over every
    element), as for every loss of torch and of this package; pass ``reduction="none"`` to get
    torchvision's default. Also unlike torchvision, the inputs are validated (targets in
    :math:`[0, 1]`), and the gradient stays finite where :math:`1 - p_t` underflows to 0 with
    :math:`0 < \gamma < 1`: :math:`(1 - p_t)^\gamma` is evaluated as
    :math:`\exp(\gamma \log(1 - p_t))` with :math:`\log(1 - p_t)` formed from log-sigmoids,
    and the gradient there is the exact limit, 0.

    Soft targets in :math:`[0, 1]` are accepted and follow the same formula.

    Args:
        input: floating logits of any non-empty shape, e.g. ``(N, C)``.
        target: same shape, dtype and device: 0/1 labels or probabilities in :math:`[0, 1]`.
        alpha: the weight :math:`\alpha \in [0, 1]` of the positives (the negatives get
            :math:`1 - \alpha`); ``None`` or a negative number: no weighting.
        gamma: the focusing exponent :math:`\gamma \ge 0`; 0 gives the (weighted) BCE.
        reduction: ``"none"`` (the shape of ``input``) | ``"mean"`` | ``"sum"``.

    Raises:
        TypeError: non-tensor or integer arguments, mismatched dtypes.
        ValueError: mismatched shapes, an empty input, targets outside :math:`[0, 1]`,
            non-finite logits, ``alpha > 1``, a negative ``gamma``, an unknown ``reduction``.

    Shape:
        - input: ``(*)``, any non-empty shape.
        - target: ``(*)``, the shape of ``input``.
        - output: scalar, or ``(*)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.imbalance import sigmoid_focal_loss
        >>> x = torch.tensor([[4.0, -1.0], [-3.0, 0.5]])
        >>> y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> sigmoid_focal_loss(x, y, reduction="none")
        tensor([[1.4679e-06, 1.6994e-02],
                [8.1962e-05, 1.6893e-02]])
        >>> bce = F.binary_cross_entropy_with_logits(x, y)
        >>> torch.allclose(sigmoid_focal_loss(x, y, alpha=None, gamma=0.0), bce)
        True
    """
    check_reduction(reduction)
    logits, labels = _check_multilabel(input, target)
    check_in_range(labels, "target", 0.0, 1.0, what="labels or probabilities")
    g = _check_exponent(gamma, "gamma")
    a = None if alpha is None else check_real(alpha, "alpha")
    if a is not None and a > 1:
        raise ValueError(
            f"alpha must be at most 1 (or negative, or None, for no weighting), got {a}"
        )
    x = logits.to(compute_dtype(logits.dtype))
    y = labels.to(x.dtype)
    log_p, log_1mp = F.logsigmoid(x), F.logsigmoid(-x)
    loss = -(y * log_p + (1 - y) * log_1mp)
    if g > 0:
        # log(1 - p_t) = log(y (1 - p) + (1 - y) p): a log-sigmoid for a 0/1 label, one
        # log-sum-exp of two log-space terms for a soft one (never a log of 0, whose -inf would
        # make the second derivative NaN)
        soft = (y > 0) & (y < 1)
        y_soft = torch.where(soft, y, torch.full_like(y, 0.5))
        mixed = torch.logaddexp(torch.log(y_soft) + log_1mp, torch.log1p(-y_soft) + log_p)
        log_1m_pt = torch.where(soft, mixed, torch.where(y > 0.5, log_1mp, log_p))
        loss = loss * torch.exp(g * log_1m_pt)
    if a is not None and a >= 0:
        loss = (a * y + (1 - a) * (1 - y)) * loss
    return reduce_loss(loss, reduction).to(logits.dtype)


# ---------------------------------------------------------------------------------------------
# weights and priors
# ---------------------------------------------------------------------------------------------


def class_balanced_weights(counts: Tensor, beta: float) -> Tensor:
    r"""Per-class weights from the effective number of samples (Cui et al., 2019).

    The effective number of :math:`n` samples, with :math:`\beta \in [0, 1]`, is

    .. math::

        E_n = \frac{1 - \beta^{n}}{1 - \beta} = \sum_{k=0}^{n-1} \beta^{k},

    the expected number of distinct "prototypes" covered by :math:`n` samples drawn from a
    class of :math:`N` of them, :math:`\beta = (N - 1) / N`: a new sample falls on an already
    covered prototype with probability :math:`E_{n-1} / N`, so
    :math:`E_n = 1 + \beta E_{n-1}` (*Class-Balanced Loss Based on Effective Number of
    Samples*). The weight of class :math:`c` is :math:`1 / E_{n_c}`, normalised as in the paper
    so that the weights sum to the number of classes :math:`C`.

    :math:`\beta = 0` gives equal weights (:math:`E_n = 1`); :math:`\beta \to 1` gives
    :math:`E_n \to n`, inverse-frequency weights, and ``beta=1`` is accepted as that limit.
    The paper uses :math:`\beta` between 0.9 and 0.9999. A class with no sample
    (:math:`n_c = 0`, :math:`E_0 = 0`) gets weight 0 rather than an infinite one: no training
    sample carries it, and an infinity would spoil the normalisation of the others.

    Computed in float64 (:math:`\beta^n` as ``expm1(n log beta)``), returned in the dtype of
    floating ``counts``, or torch's default dtype for integer counts.

    Args:
        counts: ``(C,)`` non-negative sample counts per class (integer or floating).
        beta: :math:`\beta \in [0, 1]`.

    Raises:
        TypeError: a non-tensor, bool or complex ``counts``, or a non-real ``beta``.
        ValueError: ``counts`` not one-dimensional or empty, negative or non-finite counts,
            every count zero, ``beta`` outside :math:`[0, 1]`.

    Shape:
        - counts: ``(C,)``.
        - output: ``(C,)``, summing to ``C``.

    Examples:
        >>> import torch
        >>> from companion.imbalance import class_balanced_weights
        >>> counts = torch.tensor([1000, 100, 10, 1])
        >>> class_balanced_weights(counts, beta=0.99)
        tensor([0.0354, 0.0558, 0.3701, 3.5387])
        >>> class_balanced_weights(counts, beta=1.0) * counts  # inverse frequency
        tensor([3.6004, 3.6004, 3.6004, 3.6004])
        >>> class_balanced_weights(counts, beta=0.0)
        tensor([1., 1., 1., 1.])
    """
    check_tensor(counts, "counts", ndim=1, floating=False)
    if counts.is_complex() or counts.dtype == torch.bool:
        raise TypeError(f"counts must hold real numbers of samples, got dtype {counts.dtype}")
    b = check_real(beta, "beta")
    if not 0.0 <= b <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {b}")
    check_finite(counts, "counts")
    check_in_range(counts, "counts", 0.0, math.inf, what="non-negative sample counts")
    n = counts.to(torch.float64)
    present = n > 0
    if b == 1.0:
        effective = n
    elif b == 0.0:
        effective = present.to(torch.float64)
    else:
        effective = -torch.expm1(n * math.log(b)) / (1.0 - b)
    inverse = torch.where(present, 1.0 / torch.where(present, effective, 1.0), 0.0)
    total = inverse.sum()
    if value_checks_enabled() and not bool(total > 0):
        raise ValueError("counts must hold at least one positive count, got all zeros")
    weights = inverse * (n.shape[0] / torch.where(total > 0, total, 1.0))
    dtype = counts.dtype if counts.is_floating_point() else torch.get_default_dtype()
    return weights.to(dtype)


def adjust_logits(input: Tensor, prior: Tensor, tau: float = 1.0) -> Tensor:
    r"""Post-hoc logit adjustment: :math:`x_c - \tau \log \pi_c`, for the balanced error.

    A model trained with plain cross-entropy on data whose classes have prior :math:`\pi`
    estimates :math:`p(c \mid x)`; the classifier that minimises the *balanced* error (the
    mean over classes of the per-class error) is :math:`\arg\max_c p(c \mid x) / \pi_c`, the
    arg-max of the adjusted logits with :math:`\tau = 1` (Menon et al., 2021, *Long-tail
    learning via logit adjustment*). :math:`\tau` is a knob tuned on held-out data;
    :math:`\tau = 0` changes nothing. The softmax of the adjusted logits estimates the class
    probabilities under a uniform prior, up to the model's own calibration.

    For a model trained with :func:`logit_adjusted_cross_entropy`, no adjustment is needed:
    its plain arg-max is already the balanced one.

    Args:
        input: ``(*, C)`` floating logits.
        prior: ``(C,)`` class probabilities, positive and summing to 1, same dtype and device.
        tau: the scale :math:`\tau \ge 0` of the adjustment.

    Raises:
        TypeError: non-tensor or integer arguments, mismatched dtypes.
        ValueError: a ``prior`` of the wrong shape, not positive or not summing to 1, a
            negative ``tau``, non-finite logits.

    Shape:
        - input: ``(*, C)``.
        - prior: ``(C,)``.
        - output: ``(*, C)``, in the dtype of ``input``.

    Examples:
        >>> import torch
        >>> from companion.imbalance import adjust_logits
        >>> prior = torch.tensor([0.9, 0.1])
        >>> x = torch.tensor([[1.0, 0.0]])  # class 0 wins by 1, but it is 9 times as common
        >>> adjust_logits(x, prior)
        tensor([[1.1054, 2.3026]])
        >>> adjust_logits(x, prior).argmax(dim=1)
        tensor([1])
    """
    logits = check_tensor(input, "input", ndim=None)
    if logits.dim() == 0:
        raise ValueError("input must have at least 1 dimension (the classes last), got a scalar")
    p = _check_prior(prior, logits)
    t = _check_exponent(tau, "tau")
    x = logits.to(compute_dtype(logits.dtype))
    return (x - t * torch.log(p.to(x.dtype))).to(logits.dtype)


def logit_adjusted_cross_entropy(
    input: Tensor,
    target: Tensor,
    prior: Tensor,
    tau: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Cross-entropy on logits shifted by :math:`\tau \log \pi`: the logit-adjusted loss.

    .. math::

        \ell(x, t) = -\log \frac{e^{x_t + \tau \log \pi_t}}{\sum_c e^{x_c + \tau \log \pi_c}}
                   = -\log \frac{\pi_t^{\tau} e^{x_t}}{\sum_c \pi_c^{\tau} e^{x_c}} .

    The shift is applied in training only; predictions use the plain logits :math:`x`. With
    :math:`\tau = 1` the population minimiser satisfies
    :math:`\operatorname{softmax}(x + \log \pi) = p(c \mid \text{input})`, so
    :math:`x_c = \log p(c \mid \text{input}) - \log \pi_c` up to a constant, and
    :math:`\arg\max_c x_c` is the Bayes classifier for the balanced error (Menon et al., 2021,
    *Long-tail learning via logit adjustment*). With :math:`\tau = 1` this is also the
    *balanced softmax* of Ren et al. (2020), *Balanced Meta-Softmax for Long-Tailed Visual
    Recognition*, whose :math:`n_c e^{x_c}` are :math:`\pi_c e^{x_c}` times the total count.
    :math:`\tau = 0` is plain cross-entropy. The post-hoc alternative, for a model trained
    with plain cross-entropy, is :func:`adjust_logits`.

    Args:
        input: ``(B, C)`` floating logits, finite.
        target: ``(B,)`` class indices in ``[0, C)``, int64 or int32.
        prior: ``(C,)`` class probabilities of the training data, positive and summing to 1,
            same dtype and device as ``input`` (for example ``counts / counts.sum()``).
        tau: :math:`\tau \ge 0`.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Raises:
        TypeError: non-tensor or integer ``input``, non-integer ``target``, mismatched dtypes.
        ValueError: wrong shapes, an empty batch, indices out of range, a ``prior`` that is not
            positive or does not sum to 1, a negative ``tau``, non-finite ``input``, an unknown
            ``reduction``.

    Shape:
        - input: ``(B, C)``.
        - target: ``(B,)``.
        - prior: ``(C,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.imbalance import logit_adjusted_cross_entropy
        >>> x, t = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
        >>> prior = torch.tensor([0.8, 0.2])
        >>> logit_adjusted_cross_entropy(x, t, prior, reduction="none")
        tensor([0.0333, 0.9048])
        >>> shifted = x + prior.log()
        >>> torch.allclose(logit_adjusted_cross_entropy(x, t, prior), F.cross_entropy(shifted, t))
        True
    """
    check_reduction(reduction)
    logits, index = _check_classification(input, target)
    p = _check_prior(prior, logits)
    t = _check_exponent(tau, "tau")
    x = logits.to(compute_dtype(logits.dtype))
    shifted = x + t * torch.log(p.to(x.dtype))
    log_p, _ = _log_target_and_rest(shifted, index)
    return reduce_loss(-log_p, reduction).to(logits.dtype)


# ---------------------------------------------------------------------------------------------
# asymmetric loss and Poly-1
# ---------------------------------------------------------------------------------------------


def asymmetric_loss(
    input: Tensor,
    target: Tensor,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The asymmetric loss (ASL) for multi-label classification (Ridnik et al., 2021).

    With :math:`p = \sigma(x)` and the *shifted* probability of a negative
    :math:`p_m = \max(p - m, 0)`, :math:`m` = ``clip``,

    .. math::

        \ell(x, y) = -y\, (1 - p)^{\gamma_+} \log p
                     - (1 - y)\, p_m^{\gamma_-} \log(1 - p_m),

    elementwise. Two mechanisms act on the negatives only: a focusing exponent
    :math:`\gamma_- > \gamma_+` that shrinks the loss of easy negatives far more than that of
    positives (with many more negatives than positives in each sample, the positives' gradient
    is otherwise drowned), and the shift by :math:`m`, which sets the loss of every negative
    with :math:`p \le m` to exactly 0 and lowers the rest, so that very easy negatives are
    discarded and a negative with a large :math:`p`, possibly a missing label, is penalised less
    than by :math:`\gamma_-` alone. ``gamma_pos = gamma_neg = clip = 0`` gives the binary
    cross-entropy. Defaults: the paper's recommended :math:`\gamma_+ = 0`,
    :math:`\gamma_- = 4`, :math:`m = 0.05`.

    Differences from the authors' reference code (``AsymmetricLoss`` in Alibaba-MIIL/ASL):
    that code returns the sum over every element (pass ``reduction="sum"``), defaults to
    ``gamma_pos=1``, and clamps probabilities at ``eps`` before taking logs; here the logs come
    from log-sigmoids, and the gradient flows through the focusing weights (as in the paper's
    gradient analysis). Where :math:`p_m = 0` the factor :math:`p_m^{\gamma_-}` is taken as 0
    with a zero gradient (the loss is identically 0 there), so :math:`0 < \gamma_- < 1` gives
    no NaN at the edge of the shift.

    Args:
        input: floating logits of any non-empty shape, e.g. ``(N, C)``.
        target: same shape, dtype and device, labels 0 or 1.
        gamma_pos: :math:`\gamma_+ \ge 0`, the focusing exponent of the positives.
        gamma_neg: :math:`\gamma_- \ge 0`, the focusing exponent of the negatives.
        clip: the probability shift :math:`m \in [0, 1)` of the negatives.
        reduction: ``"none"`` (the shape of ``input``) | ``"mean"`` | ``"sum"``.

    Raises:
        TypeError: non-tensor or integer arguments, mismatched dtypes.
        ValueError: mismatched shapes, an empty input, labels other than 0 and 1, non-finite
            logits, negative exponents, ``clip`` outside :math:`[0, 1)`, an unknown
            ``reduction``.

    Shape:
        - input: ``(*)``, any non-empty shape.
        - target: ``(*)``, the shape of ``input``.
        - output: scalar, or ``(*)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.imbalance import asymmetric_loss
        >>> x = torch.tensor([[2.0, -4.0, 0.5]])
        >>> y = torch.tensor([[1.0, 0.0, 0.0]])
        >>> asymmetric_loss(x, y, reduction="none")  # p = 0.018 < 0.05: that negative is dropped
        tensor([[0.1269, 0.0000, 0.0913]])
        >>> bce = F.binary_cross_entropy_with_logits(x, y)
        >>> torch.allclose(asymmetric_loss(x, y, gamma_neg=0.0, clip=0.0), bce)
        True
    """
    check_reduction(reduction)
    logits, labels = _check_multilabel(input, target)
    check_binary(labels, "target")
    g_pos = _check_exponent(gamma_pos, "gamma_pos")
    g_neg = _check_exponent(gamma_neg, "gamma_neg")
    m = check_real(clip, "clip")
    if not 0.0 <= m < 1.0:
        raise ValueError(f"clip must be in [0, 1), got {m}")
    x = logits.to(compute_dtype(logits.dtype))
    y = labels.to(x.dtype)
    log_p, log_1mp = F.logsigmoid(x), F.logsigmoid(-x)
    positive = -log_p if g_pos == 0 else -torch.exp(g_pos * log_1mp) * log_p
    if m == 0:
        negative = -log_1mp if g_neg == 0 else -torch.exp(g_neg * log_p) * log_1mp
    else:
        shifted = torch.sigmoid(x) - m  # p_m where positive
        kept = shifted > 0
        # p_m^gamma with a zero gradient where p_m = 0: no (p_m)^(gamma - 1) is ever formed
        base = torch.where(kept, shifted, torch.ones_like(shifted))
        factor = torch.where(kept, base.pow(g_neg), torch.zeros_like(shifted))
        # -log(1 - p_m) = -log(sigmoid(-x) + m), finite and with a bounded derivative
        negative = -factor * torch.log(torch.sigmoid(-x) + m)
    loss = y * positive + (1 - y) * negative
    return reduce_loss(loss, reduction).to(logits.dtype)


def poly1_cross_entropy(
    input: Tensor, target: Tensor, epsilon: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    r"""Poly-1: cross-entropy plus :math:`\varepsilon (1 - p_t)` (Leng et al., 2022).

    Cross-entropy expands in powers of :math:`1 - p_t`,
    :math:`-\log p_t = \sum_{j \ge 1} (1 - p_t)^j / j`; *PolyLoss: A Polynomial Expansion
    Perspective of Classification Loss Functions* re-weights the leading term,

    .. math::

        \ell(x, t) = -\log p_t + \varepsilon\, (1 - p_t),
        \qquad p_t = \operatorname{softmax}(x)_t .

    :math:`\varepsilon = 0` is cross-entropy; :math:`\varepsilon > 0` adds a gradient
    :math:`-\varepsilon\, p_t (1 - p_t)` on the target logit, which keeps pushing confident
    examples; :math:`\varepsilon = -1` removes the leading term (the paper's choice for
    detection). :math:`1 - p_t` is computed as
    :math:`\exp(\operatorname{LSE}_{j \ne t}(x_j) - \operatorname{LSE}_j(x_j))`, which keeps
    its relative precision where :math:`p_t` rounds to 1 (``1 - p_t`` or
    ``-expm1(log p_t)`` would return 0 there).

    Args:
        input: ``(B, C)`` floating logits, finite.
        target: ``(B,)`` class indices in ``[0, C)``, int64 or int32.
        epsilon: the coefficient :math:`\varepsilon` (any finite real; the paper uses
            values from -1 up).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Raises:
        TypeError: non-tensor or integer ``input``, non-integer ``target``.
        ValueError: wrong shapes, an empty batch, indices out of range, a non-finite
            ``epsilon`` or ``input``, an unknown ``reduction``.

    Shape:
        - input: ``(B, C)``.
        - target: ``(B,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.imbalance import poly1_cross_entropy
        >>> x, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        >>> poly1_cross_entropy(x, t)  # CE 0.1698 plus 1 - p_t = 0.1562
        tensor(0.3261)
        >>> torch.allclose(poly1_cross_entropy(x, t, epsilon=0.0), F.cross_entropy(x, t))
        True
    """
    check_reduction(reduction)
    logits, index = _check_classification(input, target)
    eps = check_real(epsilon, "epsilon")
    x = logits.to(compute_dtype(logits.dtype))
    log_p, log_rest = _log_target_and_rest(x, index)
    loss = -log_p + eps * torch.exp(log_rest)
    return reduce_loss(loss, reduction).to(logits.dtype)
