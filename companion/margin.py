r"""Margin softmax heads: L-Softmax, A-Softmax (SphereFace), AM-Softmax (CosFace) and ArcFace.

A softmax classifier scores class :math:`j` with :math:`W_j^\top x = \|W_j\|\,\|x\|\cos\theta_j`.
The heads here make the *target* class harder to win during training by replacing its score
with a smaller one that depends on the angle :math:`\theta_y` between the feature and the
target's class weight, so that the network must pull features closer to their class than
plain softmax would require:

* L-Softmax: target logit :math:`\|W_y\|\|x\|\,\psi_m(\theta_y)`
  (Liu et al., 2016);
* A-Softmax / SphereFace: :math:`\|x\|\,\psi_m(\theta_y)` with unit class weights
  (Liu et al., 2017);
* AM-Softmax / CosFace: all logits :math:`s\cos\theta_j`, the target one
  :math:`s(\cos\theta_y - m)` (Wang et al., 2018);
* ArcFace: all logits :math:`s\cos\theta_j`, the target one :math:`s\cos(\theta_y + m)`
  (Deng et al., 2019);

where :math:`\psi_m(\theta) = (-1)^k\cos(m\theta) - 2k` on
:math:`[k\pi/m, (k+1)\pi/m]`, :math:`k = 0, \dots, \lceil m \rceil - 1`, is the monotone
extension of :math:`\cos(m\theta)` (:func:`multiplicative_angular_margin`).

Implementation notes (these are what make the heads usable in real training):

* The margin touches only the target column: the ``B`` target logits are gathered, changed and
  written back; no transcendental function of the ``B x C`` logit matrix is ever formed, so a
  head costs one matrix product and one cross-entropy, like plain softmax.
* No ``acos``. For an integer :math:`m`, :math:`\cos(m\theta) = T_m(\cos\theta)` (the Chebyshev
  polynomial) and :math:`k` is found by comparing :math:`\cos\theta` with
  :math:`\cos(j\pi/m)`. ArcFace uses :math:`\cos(\theta + m) = \cos\theta\cos m -
  \sin\theta\sin m` with :math:`\sin\theta = \sqrt{1 - \cos^2\theta}`, whose derivative is
  replaced by 0 where :math:`\sin\theta = 0` exactly, so gradients stay finite at
  :math:`\cos\theta = \pm 1`. A non-integer :math:`m` needs the angle itself, taken as
  ``atan2(sin, cos)`` with the same guard.
* The per-sample margin arithmetic runs in at least float32 (bfloat16 and float16 inputs are
  promoted for those ``B`` values and for the cross-entropy), and the result has the input's
  dtype, on the input's device.

At inference, use the plain logits (each module's :meth:`logits`): the margin is a training
device only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from companion._numerics import autocast_disabled, compute_dtype, head_dtype_input, normalize
from companion._validate import (
    Reduction,
    check_batch_size,
    check_class_index,
    check_finite,
    check_in_range,
    check_int,
    check_positive,
    check_real,
    check_reduction,
    check_same_dtype_device,
    check_shape,
    check_tensor,
    value_checks_enabled,
)

__all__ = [
    "LSOFTMAX_SCHEDULE",
    "SPHEREFACE_SCHEDULE",
    "AMSoftmaxLoss",
    "ASoftmaxLoss",
    "ArcFaceLoss",
    "CosineMarginHead",
    "LSoftmaxLoss",
    "LambdaSchedule",
    "MarginHead",
    "ScheduledMarginHead",
    "additive_angular_margin",
    "additive_angular_margin_loss",
    "additive_margin_softmax_loss",
    "angular_softmax_loss",
    "large_margin_softmax_loss",
    "multiplicative_angular_margin",
]

#: A scheduled head (L-Softmax, A-Softmax) that runs this many training forward passes without a
#: ``step()`` warns once: its lambda schedule has not moved.
STEP_REMINDER_AFTER = 100

#: How far outside [-1, 1] a cosine handed to a public function may lie (rounding in low
#: precision) before it is rejected as "not a cosine"; values inside are clamped to [-1, 1].
COSINE_TOLERANCE = 1e-2


# --------------------------------------------------------------------------------------------
# argument checks specific to margins
# --------------------------------------------------------------------------------------------


def _check_multiplicative_margin(margin: object) -> float:
    m = check_real(margin, "margin")
    if m < 1:
        raise ValueError(f"margin must be at least 1 (1 is plain softmax), got {m}")
    return m


def _check_additive_angular_margin(margin: object) -> float:
    m = check_real(margin, "margin")
    if not 0 <= m < math.pi:
        raise ValueError(f"margin must be an angle in radians in [0, pi), got {m}")
    return m


def _check_lambda(lambda_: object) -> float | Tensor:
    """A Python number >= 0, or a 0-d floating tensor (a module's schedule, read without a sync)."""
    if isinstance(lambda_, Tensor):
        check_tensor(lambda_, "lambda_", ndim=0)
        if value_checks_enabled(lambda_) and bool(lambda_ < 0):
            raise ValueError("lambda_ must be non-negative")
        return lambda_
    return check_positive(lambda_, "lambda_", allow_zero=True)


def _check_cosine(cosine: object, name: str, *, ndim: int | None = None) -> Tensor:
    x = check_tensor(cosine, name, ndim=ndim, allow_empty=ndim is None)
    if x.numel() and value_checks_enabled(x):
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if lo < -1 - COSINE_TOLERANCE or hi > 1 + COSINE_TOLERANCE:
            bad = lo if lo < -1 - COSINE_TOLERANCE else hi
            raise ValueError(
                f"{name} must hold cosines in [-1, 1], got {bad!r}; pass normalised features "
                "and weights (or use the module)"
            )
    return x


def _check_class_target(target: object, logits: Tensor) -> Tensor:
    return check_class_index(target, "target", logits.shape[1], batch_shape=(logits.shape[0],))


# --------------------------------------------------------------------------------------------
# elementwise pieces: the target-logit transforms
# --------------------------------------------------------------------------------------------


def _sine_from_cosine(c: Tensor) -> Tensor:
    r""":math:`\sin\theta = \sqrt{(1 - c)(1 + c)}` for :math:`c = \cos\theta \in [-1, 1]`.

    The true derivative :math:`-c/\sin\theta` is infinite where :math:`\sin\theta = 0`; there the
    square root is bypassed (the double-``where`` trick), so the derivative used is 0 and never
    NaN. Everywhere else the value and derivative are exact.
    """
    u = (1 - c) * (1 + c)
    positive = u > 0
    safe = torch.where(positive, u, torch.ones_like(u))
    return torch.where(positive, torch.sqrt(safe), torch.zeros_like(u))


def _chebyshev(c: Tensor, m: int) -> Tensor:
    r""":math:`T_m(c)`, so that :math:`T_m(\cos\theta) = \cos(m\theta)` (by the recurrence)."""
    previous, current = torch.ones_like(c), c
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2 * c * current - previous
    return current


def _psi(c: Tensor, m: float) -> Tensor:
    """ψ_m(θ) from c = cos θ already clamped to [-1, 1] (no checks)."""
    if float(m).is_integer():
        mi = int(m)
        # k = number of knots cos(j pi / m), j = 1..m-1, that lie above c
        k = torch.zeros_like(c)
        for j in range(1, mi):
            k = k + (c < math.cos(j * math.pi / mi)).to(c.dtype)
        sign = 1 - 2 * torch.remainder(k, 2)
        return sign * _chebyshev(c, mi) - 2 * k
    theta = torch.atan2(_sine_from_cosine(c), c)
    k = torch.floor(theta * (m / math.pi)).clamp(0, math.ceil(m) - 1).detach()
    sign = 1 - 2 * torch.remainder(k, 2)
    psi = sign * torch.cos(m * theta) - 2 * k
    # At c = 1 the angle's derivative is bypassed (it is infinite), which would make the
    # derivative of psi 0; its true limit is m^2 (cos(m arccos c) ~ 1 - m^2 (1 - c)), so use
    # that first-order expansion at c = 1 exactly: value 1, derivative m^2.
    return torch.where(c == 1, 1 - m * m * (1 - c), psi)


def _arc(c: Tensor, m: float) -> Tensor:
    """cos(θ + m) for θ + m ≤ π, else cos θ − m sin m (no checks; c clamped)."""
    cos_m, sin_m = math.cos(m), math.sin(m)
    shifted = c * cos_m - _sine_from_cosine(c) * sin_m
    return torch.where(c >= -cos_m, shifted, c - m * sin_m)


def multiplicative_angular_margin(cosine: Tensor, margin: float = 4) -> Tensor:
    r"""The L-Softmax / A-Softmax target function :math:`\psi_m(\theta)`, from :math:`\cos\theta`.

    .. math::

        \psi_m(\theta) = (-1)^k \cos(m\theta) - 2k, \qquad
        \theta \in \Bigl[\frac{k\pi}{m}, \frac{(k+1)\pi}{m}\Bigr],\;
        k \in \{0, \dots, \lceil m \rceil - 1\}.

    It equals :math:`\cos(m\theta)` on :math:`[0, \pi/m]` and continues it so that it is
    continuous and strictly decreasing on :math:`[0, \pi]`, from 1 down to
    :math:`\psi_m(\pi)` (:math:`1 - 2m` for an integer :math:`m`). For an integer margin it is
    a piecewise polynomial of :math:`\cos\theta` (no ``acos``), with finite derivative at
    :math:`\pm 1`; for a non-integer margin the angle is computed with ``atan2``: at
    :math:`\cos\theta = 1` the derivative is its limit :math:`m^2`, and as
    :math:`\theta \to \pi` it diverges (it is replaced by 0 at :math:`\cos\theta = -1`
    exactly).

    Args:
        cosine: floating tensor of any shape, values in :math:`[-1, 1]` (rounding up to
            ``COSINE_TOLERANCE`` outside is clamped).
        margin: :math:`m \ge 1`; 1 gives :math:`\cos\theta` back.

    Returns:
        :math:`\psi_m(\theta)`, same shape, dtype and device as ``cosine``.

    Reference: Liu et al., *Large-Margin Softmax Loss for Convolutional Neural Networks*, 2016.

    Examples:
        >>> import math, torch
        >>> from companion.margin import multiplicative_angular_margin
        >>> theta = torch.tensor([0.0, math.pi / 4, math.pi / 2], dtype=torch.float64)
        >>> multiplicative_angular_margin(torch.cos(theta), 2)  # cos 2θ, then -cos 2θ - 2
        tensor([ 1.0000e+00,  2.2204e-16, -1.0000e+00], dtype=torch.float64)
    """
    c = _check_cosine(cosine, "cosine")
    m = _check_multiplicative_margin(margin)
    return _psi(c.to(compute_dtype(c.dtype)).clamp(-1, 1), m).to(c.dtype)


def additive_angular_margin(cosine: Tensor, margin: float = 0.5) -> Tensor:
    r"""The ArcFace target function: :math:`\cos(\theta + m)`, kept decreasing past :math:`\pi`.

    .. math::

        \phi(\theta) = \begin{cases}
            \cos(\theta + m) & \theta \le \pi - m \quad (\cos\theta \ge -\cos m)\\
            \cos\theta - m \sin m & \text{otherwise,}
        \end{cases}

    Without the second branch, :math:`\cos(\theta + m)` would *increase* for
    :math:`\theta > \pi - m`, and the loss would reward pushing a sample further from its
    class. The switch is decreasing but not continuous: it drops by
    :math:`\cos m + m\sin m - 1` (about 0.12 for :math:`m = 0.5`). Computed as
    :math:`\cos\theta\cos m - \sin\theta\sin m` (no ``acos``), with a finite derivative at
    :math:`\cos\theta = \pm 1`.

    **Which implementations have this fallback.** insightface's MXNet ArcFace
    (``train_softmax.py``, 2018, the code of the paper), its PyTorch
    ``recognition/arcface_torch/losses.py`` during 2022 (for example at commit ``e78eee5``,
    quoted in its issue #2026 of June 2022), and pytorch-metric-learning's ``ArcFaceLoss``
    (2.x): their values agree with this function at every angle. insightface changed it in
    December 2022 (commit ``657ae30``; ``ArcFace`` and ``CombinedMarginLoss`` of the current
    ``arcface_torch``): there is no fallback, the target logit is
    :math:`\cos(\arccos c + m)` at every angle (so it rises again past :math:`\pi - m`),
    computed under ``torch.no_grad()``, so that its gradient is the plain cosine's (the margin
    moves the value only). The first ``arcface_torch`` (2021) had no fallback either. Between
    :math:`0` and :math:`\pi - m` all of them give the same value, :math:`\cos(\theta + m)`;
    the gradients agree with those versions that differentiate through the margin.

    Args:
        cosine: floating tensor of any shape, values in :math:`[-1, 1]`.
        margin: :math:`m` in radians, in :math:`[0, \pi)`.

    Reference: Deng et al., *ArcFace: Additive Angular Margin Loss for Deep Face Recognition*,
    2019.

    Examples:
        >>> import math, torch
        >>> from companion.margin import additive_angular_margin
        >>> c = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)  # 0, 90 and 180 degrees
        >>> additive_angular_margin(c, 0.5)  # cos(θ + 0.5), and cos θ - m sin m past π - m
        tensor([ 0.8776, -0.4794, -1.2397], dtype=torch.float64)
    """
    c = _check_cosine(cosine, "cosine")
    m = _check_additive_angular_margin(margin)
    return _arc(c.to(compute_dtype(c.dtype)).clamp(-1, 1), m).to(c.dtype)


# --------------------------------------------------------------------------------------------
# functional losses
# --------------------------------------------------------------------------------------------


def _cross_entropy(logits: Tensor, target: Tensor, reduction: str) -> Tensor:
    work = compute_dtype(logits.dtype)
    if work != logits.dtype:
        return F.cross_entropy(logits.to(work), target, reduction=reduction).to(logits.dtype)
    return F.cross_entropy(logits, target, reduction=reduction)


def _margin_cross_entropy(
    logits: Tensor,
    target: Tensor,
    norm: Tensor | float,
    transform: Callable[[Tensor], Tensor],
    reduction: str,
    *,
    inplace: bool,
) -> Tensor:
    r"""The one code path of every margin head.

    ``logits[i, j]`` is :math:`n_i \cos\theta_{ij}` (:math:`n_i` = ``norm``: a product of norms,
    a feature norm, or the scale :math:`s`). Only the target column changes: its cosine
    :math:`c_i = \cos\theta_{iy_i}` is recovered, ``transform`` maps it to the margin version
    (the one thing that differs between heads), and the target logit becomes
    :math:`n_i\,\text{transform}(c_i)`; then cross-entropy. The arithmetic on the ``B`` target
    values runs in at least float32. ``inplace`` may be set only when ``logits`` is a tensor
    the caller owns.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    t = logits[rows, target]
    work = compute_dtype(t.dtype)
    if isinstance(norm, Tensor):
        n: Tensor | float = norm.to(work)
        c = t.to(work) / norm.to(work).clamp_min(torch.finfo(work).tiny)
    else:
        n = norm
        c = t.to(work) / norm
    new_t = (n * transform(c.clamp(-1, 1))).to(logits.dtype)
    if inplace:
        logits = logits.index_put_((rows, target), new_t)
    else:
        logits = logits.index_put((rows, target), new_t)
    return _cross_entropy(logits, target, reduction)


def _blend(m: float, lambda_: float | Tensor) -> Callable[[Tensor], Tensor]:
    """L-Softmax's / A-Softmax's target transform: (psi_m(c) + lambda c) / (1 + lambda)."""

    def transform(c: Tensor) -> Tensor:
        psi = _psi(c, m)
        if isinstance(lambda_, Tensor) or lambda_ != 0:
            return (psi + lambda_ * c) / (1 + lambda_)
        return psi

    return transform


def large_margin_softmax_loss(
    input: Tensor,
    target: Tensor,
    target_norm: Tensor,
    margin: float = 4,
    lambda_: float | Tensor = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""L-Softmax: cross-entropy with the target logit :math:`\|W_y\|\|x\|\cos\theta_y` replaced.

    With :math:`n_i = \|W_{y_i}\|\,\|x_i\|` and :math:`c_i = \cos\theta_{y_i}`, the target logit
    becomes

    .. math::

        f_{y_i} = n_i\,\frac{\psi_m(\theta_{y_i}) + \lambda\, c_i}{1 + \lambda},

    and the loss is :math:`-\log\bigl(e^{f_{y_i}} / \sum_j e^{f_j}\bigr)`. :math:`\lambda = 0` is
    the loss of the paper; a large :math:`\lambda` is plain softmax, which is how training starts
    (see :class:`LambdaSchedule`).

    Args:
        input: ``(B, C)`` plain logits :math:`W x` (no bias).
        target: ``(B,)`` class indices.
        target_norm: ``(B,)`` the products :math:`\|W_{y_i}\|\,\|x_i\|`.
        margin: :math:`m \ge 1`; an integer uses the Chebyshev polynomial (no ``acos``).
        lambda_: blend weight :math:`\lambda \ge 0`.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        The loss: a scalar, or ``(B,)`` for ``reduction="none"``.

    Reference: Liu, Wen, Yu and Yang, *Large-Margin Softmax Loss for Convolutional Neural
    Networks*, ICML 2016.

    Shape:
        - input: ``(B, C)``; target: ``(B,)`` int64 or int32; target_norm: ``(B,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> from companion.margin import large_margin_softmax_loss
        >>> x, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
        >>> y = torch.tensor([0, 1, 2, 3])
        >>> norm = x.norm(dim=1) * w[y].norm(dim=1)
        >>> margin_one = large_margin_softmax_loss(x @ w.T, y, norm, margin=1)
        >>> torch.allclose(margin_one, F.cross_entropy(x @ w.T, y))  # m = 1 is plain softmax
        True
    """
    check_tensor(input, "input", ndim=2)
    check_finite(input, "input")
    check_reduction(reduction)
    m = _check_multiplicative_margin(margin)
    lam = _check_lambda(lambda_)
    target = _check_class_target(target, input)
    check_tensor(target_norm, "target_norm", ndim=1)
    check_shape(target_norm, "target_norm", (input.shape[0],))
    check_same_dtype_device(input, "input", target_norm, "target_norm")
    if value_checks_enabled(input, target_norm):
        check_in_range(target_norm, "target_norm", 0.0, math.inf, what="products of norms")
        rows = torch.arange(input.shape[0], device=input.device)
        t = input.detach()[rows, target]
        if bool((t.abs() > target_norm.detach() * (1 + COSINE_TOLERANCE) + 1e-6).any()):
            raise ValueError(
                "input at the target (a logit) must not exceed target_norm in absolute value "
                "(the logits are |W_y| |x| cos(theta)); check that target_norm holds |W_y| |x| "
                "for each row"
            )
    return _margin_cross_entropy(
        input, target, target_norm, _blend(m, lam), reduction, inplace=False
    )


def angular_softmax_loss(
    input: Tensor,
    target: Tensor,
    feature_norm: Tensor,
    margin: float = 4,
    lambda_: float | Tensor = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""A-Softmax (SphereFace): L-Softmax with unit class weights and no bias.

    Logits are :math:`\|x_i\|\cos\theta_{ij}`; the target one becomes
    :math:`\|x_i\|\,(\psi_m(\theta_{y_i}) + \lambda\cos\theta_{y_i}) / (1 + \lambda)`.

    Args:
        input: ``(B, C)`` cosines between each feature and each (normalised) class weight.
        target: ``(B,)`` class indices.
        feature_norm: ``(B,)`` the feature norms :math:`\|x_i\|`.
        margin, lambda_, reduction: as in :func:`large_margin_softmax_loss`.

    Reference: Liu, Wen, Yu, Li, Raj and Song, *SphereFace: Deep Hypersphere Embedding for Face
    Recognition*, CVPR 2017.

    Shape:
        - input: ``(B, C)``; target: ``(B,)`` int64 or int32; feature_norm: ``(B,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.margin import angular_softmax_loss
        >>> cosine = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
        >>> y, norm = torch.tensor([0, 1]), torch.tensor([2.0, 2.0])
        >>> angular_softmax_loss(cosine, y, norm, margin=4) > angular_softmax_loss(
        ...     cosine, y, norm, margin=1)  # the margin makes the target harder to win
        tensor(True)
    """
    _check_cosine(input, "input", ndim=2)
    check_reduction(reduction)
    m = _check_multiplicative_margin(margin)
    lam = _check_lambda(lambda_)
    target = _check_class_target(target, input)
    check_tensor(feature_norm, "feature_norm", ndim=1)
    check_shape(feature_norm, "feature_norm", (input.shape[0],))
    check_same_dtype_device(input, "input", feature_norm, "feature_norm")
    check_in_range(feature_norm, "feature_norm", 0.0, math.inf, what="norms")
    logits = input * feature_norm[:, None]  # a new tensor: the margin may go in place
    return _margin_cross_entropy(
        logits, target, feature_norm, _blend(m, lam), reduction, inplace=True
    )


def additive_margin_softmax_loss(
    input: Tensor,
    target: Tensor,
    margin: float = 0.35,
    scale: float = 30.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""AM-Softmax / CosFace: logits :math:`s\cos\theta_j`; target :math:`s(\cos\theta_y - m)`.

    .. math::

        \ell_i = -\log \frac{e^{s(\cos\theta_{y_i} - m)}}
            {e^{s(\cos\theta_{y_i} - m)} + \sum_{j \ne y_i} e^{s\cos\theta_j}}.

    Args:
        input: ``(B, C)`` cosines between normalised features and normalised class weights.
        target: ``(B,)`` class indices.
        margin: :math:`m \ge 0`, subtracted from the target cosine.
        scale: :math:`s > 0`. Cosines lie in :math:`[-1, 1]`, so without a large :math:`s` the
            softmax cannot become confident (the chapter derives the bound).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    References: Wang, Cheng, Liu and Liu, *Additive Margin Softmax for Face Verification*, IEEE
    Signal Processing Letters 2018; Wang et al., *CosFace*, CVPR 2018.

    Shape:
        - input: ``(B, C)``; target: ``(B,)`` int64 or int32.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> from companion.margin import additive_margin_softmax_loss
        >>> cosine, y = torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1])
        >>> shifted = cosine - 0.35 * F.one_hot(y, 2)  # the margin on the target column only
        >>> torch.allclose(additive_margin_softmax_loss(cosine, y, 0.35, 30.0),
        ...                F.cross_entropy(30.0 * shifted, y))
        True
    """
    _check_cosine(input, "input", ndim=2)
    check_reduction(reduction)
    m = check_positive(margin, "margin", allow_zero=True)
    s = check_positive(scale, "scale")
    target = _check_class_target(target, input)
    return _margin_cross_entropy(input * s, target, s, lambda c: c - m, reduction, inplace=True)


def additive_angular_margin_loss(
    input: Tensor,
    target: Tensor,
    margin: float = 0.5,
    scale: float = 64.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""ArcFace: logits :math:`s\cos\theta_j`, the target one :math:`s\,\phi(\theta_y)`.

    :math:`\phi(\theta) = \cos(\theta + m)` while :math:`\theta + m \le \pi`, and
    :math:`\cos\theta - m\sin m` beyond (see :func:`additive_angular_margin`).

    Args:
        input: ``(B, C)`` cosines between normalised features and normalised class weights.
        target: ``(B,)`` class indices.
        margin: :math:`m` in **radians**, in :math:`[0, \pi)` (pytorch-metric-learning's
            ``ArcFaceLoss`` takes degrees).
        scale: :math:`s > 0`.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Reference: Deng, Guo, Xue and Zafeiriou, *ArcFace: Additive Angular Margin Loss for Deep Face
    Recognition*, CVPR 2019.

    Shape:
        - input: ``(B, C)``; target: ``(B,)`` int64 or int32.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> from companion.margin import additive_angular_margin_loss
        >>> cosine, y = torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1])
        >>> no_margin = additive_angular_margin_loss(cosine, y, margin=0.0, scale=64.0)
        >>> torch.allclose(no_margin, F.cross_entropy(64.0 * cosine, y))
        True
    """
    _check_cosine(input, "input", ndim=2)
    check_reduction(reduction)
    m = _check_additive_angular_margin(margin)
    s = check_positive(scale, "scale")
    target = _check_class_target(target, input)
    return _margin_cross_entropy(
        input * s, target, s, lambda c: _arc(c, m), reduction, inplace=True
    )


# --------------------------------------------------------------------------------------------
# the lambda schedule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LambdaSchedule:
    r"""The annealing of the blend weight :math:`\lambda` used by L-Softmax and A-Softmax.

    .. math::

        \lambda_t = \max\bigl(\lambda_{\min},\; \text{base}\,(1 + \gamma t)^{-\text{power}}\bigr),

    the rule of the original Caffe layers, where :math:`t` counts training iterations.
    Training starts near plain softmax (:math:`\lambda \approx` base) and the margin is phased
    in as :math:`\lambda` decays. Call it with an iteration number to get :math:`\lambda_t`.

    Two presets: :data:`SPHEREFACE_SCHEDULE` (base 1000, gamma 0.12, power 1, lambda_min 5) and
    :data:`LSOFTMAX_SCHEDULE` (base 1000, gamma 2.5e-5, power 35, lambda_min 0, from the
    L-Softmax MNIST model). A constant :math:`\lambda` is
    ``LambdaSchedule(base=lam, gamma=0, lambda_min=0)``.
    (The Caffe layers increment their counter *before* computing :math:`\lambda`, so their first
    batch uses :math:`t = 1`; here the first batch uses :math:`t = 0`.)

    Examples:
        >>> from companion.margin import SPHEREFACE_SCHEDULE, LambdaSchedule
        >>> SPHEREFACE_SCHEDULE(0), round(SPHEREFACE_SCHEDULE(100), 4), SPHEREFACE_SCHEDULE(10_000)
        (1000.0, 76.9231, 5.0)
        >>> LambdaSchedule(base=2.0, gamma=0.0, lambda_min=0.0)(123)  # a constant lambda
        2.0
    """

    base: float = 1000.0
    gamma: float = 0.12
    power: float = 1.0
    lambda_min: float = 5.0

    def __post_init__(self) -> None:
        for name in ("base", "gamma", "power", "lambda_min"):
            check_positive(getattr(self, name), name, allow_zero=True)

    def __call__(self, iteration: int) -> float:
        """:math:`\\lambda_t` at training iteration ``iteration`` (0 for the first batch)."""
        t = check_int(iteration, "iteration", minimum=0)
        decayed: float = self.base * math.pow(1.0 + self.gamma * t, -self.power)
        return max(self.lambda_min, decayed)

    def at(self, iteration: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """:math:`\\lambda_t` for a 0-d integer tensor ``iteration``, as a 0-d tensor of ``dtype``
        (no host sync, so a head can read its schedule inside a compiled step)."""
        t = iteration.to(dtype)
        decayed = self.base * torch.pow(1.0 + self.gamma * t, -self.power)
        return decayed.clamp_min(self.lambda_min)


#: SphereFace's schedule (``sphereface_model.prototxt``).
SPHEREFACE_SCHEDULE = LambdaSchedule(base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0)
#: L-Softmax's schedule for its MNIST model (``mnist_train_test.prototxt``).
LSOFTMAX_SCHEDULE = LambdaSchedule(base=1000.0, gamma=2.5e-5, power=35.0, lambda_min=0.0)


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------


class MarginHead(nn.Module):
    """The base of every head: the class weights ``weight`` of shape ``(num_classes, in_features)``
    (initialised Xavier-uniform), the input checks and the reduction.

    **Mixed precision.** A head computes in the precision of its weights. Features of a lower
    floating precision, as a backbone under :func:`torch.autocast` produces (bfloat16 or
    float16 features for a float32 head), are cast up to the weights' dtype, and the head's
    products run with autocast off: the loss is the float32 computation on the upcast
    features, returned in float32, and the features' gradient comes back in their own dtype
    (as pytorch-metric-learning computes in its weights' precision). The weights are never cast
    down: float64 features for a float32 head are refused (see
    :func:`companion._numerics.head_dtype_input`).

    Examples:
        >>> import torch
        >>> from companion.margin import ArcFaceLoss, MarginHead
        >>> head = ArcFaceLoss(16, 10)
        >>> isinstance(head, MarginHead), tuple(head.weight.shape)
        (True, (10, 16))
        >>> head.cosine(torch.randn(4, 16)).shape  # cosines to every class weight
        torch.Size([4, 10])
    """

    weight: nn.Parameter

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        reduction: Reduction,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features", minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        self.reduction = check_reduction(reduction)
        self.weight = nn.Parameter(
            torch.empty(num_classes, in_features, device=device, dtype=dtype)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform class weights, as the original Caffe models used."""
        nn.init.xavier_uniform_(self.weight)

    def _check_features(self, features: object) -> Tensor:
        """The checked features, cast up to the weights' dtype (the mixed-precision rule)."""
        x = check_tensor(features, "features", ndim=2)
        check_finite(x, "features")
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"features must have shape (batch, {self.in_features}), got {tuple(x.shape)}"
            )
        return head_dtype_input(x, self.weight)

    def _check_inputs(self, features: object, target: object) -> tuple[Tensor, Tensor]:
        x = self._check_features(features)
        if isinstance(target, Tensor) and target.dim() >= 1:
            check_batch_size(x, "features", target, "target")
        t = check_class_index(target, "target", self.num_classes, batch_shape=(x.shape[0],))
        return x, t

    def cosine(self, features: Tensor) -> Tensor:
        r""":math:`\cos\theta_{ij}` between each feature and each class weight, ``(B, C)``."""
        x = self._check_features(features)
        with autocast_disabled(x):
            return normalize(x, dim=1) @ normalize(self.weight, dim=1).t()

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"reduction={self.reduction!r}"
        )


class ScheduledMarginHead(MarginHead):
    r"""The base of :class:`LSoftmaxLoss` and :class:`ASoftmaxLoss`: a multiplicative margin
    :math:`m` and a blend weight :math:`\lambda` annealed by a :class:`LambdaSchedule`.

    **Advance the schedule with** :meth:`step`, **once per training step**, after
    ``optimizer.step()``, as a learning-rate scheduler is advanced (or register it on the
    optimiser: ``optimizer.register_step_post_hook(lambda *_: head.step())``). A forward pass
    only reads the counter ``iteration``: every micro-batch of a step accumulated over several
    forward passes uses the same :math:`\lambda`, and the second forward pass that
    :func:`torch.utils.checkpoint` runs during the backward pass computes exactly the first
    one's loss, so the checkpointed gradient equals the plain one. (In version 0.1 every
    training forward pass advanced the schedule, which counted a checkpointed step twice and
    an accumulated step once per micro-batch.) ``iteration`` is a buffer: it is saved in
    ``state_dict`` and read without a host sync. A head that runs 100
    training forward passes without a :meth:`step` warns once.
    ``schedule=None`` is the pure margin (:math:`\lambda = 0`) from the first step.

    Examples:
        >>> import torch
        >>> from companion.margin import ASoftmaxLoss
        >>> head = ASoftmaxLoss(16, 10)  # SphereFace's schedule: lambda starts at 1000
        >>> optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
        >>> x, y = torch.randn(8, 16), torch.randint(10, (8,))
        >>> for _ in range(100):
        ...     optimizer.zero_grad()
        ...     head(x, y).backward()
        ...     optimizer.step()
        ...     head.step()  # one training step: lambda moves on
        >>> int(head.iteration), round(head.lambda_, 2)
        (100, 76.92)
        >>> _ = head(x, y)  # a forward pass alone does not advance it
        >>> int(head.iteration)
        100
    """

    iteration: Tensor

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        margin: float,
        schedule: LambdaSchedule | None,
        reduction: Reduction,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__(in_features, num_classes, reduction, device, dtype)
        self.margin = _check_multiplicative_margin(margin)
        if schedule is not None and not isinstance(schedule, LambdaSchedule):
            raise TypeError(
                f"schedule must be a LambdaSchedule or None, got {type(schedule).__name__}"
            )
        self.schedule = schedule
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long, device=device))
        self._passes_without_step = 0  # training forward passes since the last step() (eager)

    @property
    def lambda_(self) -> float:
        """The blend weight the forward passes use until the next :meth:`step` (a sync)."""
        return 0.0 if self.schedule is None else self.schedule(int(self.iteration))

    def step(self) -> None:
        r"""Advance the :math:`\lambda` schedule by one training step (in place, no host sync).

        Call it once per optimiser step, after ``optimizer.step()``.
        """
        with torch.no_grad():
            self.iteration.add_(1)
        self._passes_without_step = 0

    def _logits_and_norm(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The head's plain logits ``n_i cos(theta_ij)`` (a new tensor) and the ``n_i``."""
        raise NotImplementedError

    def forward(self, features: Tensor, target: Tensor) -> Tensor:
        """The loss of ``features`` ``(B, D)`` with class indices ``target`` ``(B,)``.

        The same value as the head's functional form (:func:`large_margin_softmax_loss` or
        :func:`angular_softmax_loss`) on its logits, through the one margin core; the logits are
        computed here, so they are not validated again.
        """
        x, t = self._check_inputs(features, target)
        with autocast_disabled(x):
            logits, norm = self._logits_and_norm(x, t)
            transform = _blend(self.margin, self._current_lambda(x.dtype))
            return _margin_cross_entropy(logits, t, norm, transform, self.reduction, inplace=True)

    def _current_lambda(self, dtype: torch.dtype) -> float | Tensor:
        """The blend weight at the current ``iteration`` (read, never advanced, here)."""
        if self.schedule is None:
            return 0.0
        if self.training and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            self._passes_without_step += 1
            if self._passes_without_step == STEP_REMINDER_AFTER:
                warnings.warn(
                    f"{type(self).__name__} ran {STEP_REMINDER_AFTER} training forward passes "
                    "without a step(): its lambda schedule has not moved (lambda = "
                    f"{self.lambda_:g}); call step() once per training step, after "
                    "optimizer.step()",
                    UserWarning,
                    stacklevel=4,
                )
        return self.schedule.at(self.iteration, compute_dtype(dtype))

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        return f"{super().extra_repr()}, margin={self.margin:g}, schedule={self.schedule}"


class LSoftmaxLoss(ScheduledMarginHead):
    r"""L-Softmax head: class weights ``(num_classes, in_features)`` and the L-Softmax loss.

    ``forward(features, target)`` returns :func:`large_margin_softmax_loss` of the logits
    :math:`W x` with :math:`\lambda` from the schedule, which :meth:`step` advances by one,
    once per training step (see :class:`ScheduledMarginHead`); :meth:`logits` returns the plain
    :math:`W x` used at inference. ``schedule=None`` gives the pure margin, :math:`\lambda = 0`.

    Args:
        in_features: feature dimension ``D``.
        num_classes: number of classes ``C``.
        margin: :math:`m \ge 1` (integer: Chebyshev polynomial, no ``acos``).
        schedule: the :class:`LambdaSchedule` (default :data:`LSOFTMAX_SCHEDULE`) or None.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        device, dtype: of the class weights.

    Shape:
        - features: ``(B, in_features)``; target: ``(B,)`` int64 or int32 class indices.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Reference: Liu et al., ICML 2016.

    Examples:
        >>> import torch
        >>> from companion.margin import LSoftmaxLoss
        >>> head = LSoftmaxLoss(16, 10, margin=4)
        >>> loss = head(torch.randn(8, 16), torch.randint(10, (8,)))
        >>> loss.backward()
        >>> head.step()  # after optimizer.step(): one training step taken, lambda moves on
        >>> int(head.iteration)
        1
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        margin: float = 4,
        schedule: LambdaSchedule | None = LSOFTMAX_SCHEDULE,
        reduction: Reduction = "mean",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, num_classes, margin, schedule, reduction, device, dtype)

    def logits(self, features: Tensor) -> Tensor:
        """Plain logits :math:`W x`, shape ``(B, C)``."""
        x = self._check_features(features)
        with autocast_disabled(x):
            return x @ self.weight.t()

    def _logits_and_norm(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        norm = torch.linalg.vector_norm(x, dim=1) * torch.linalg.vector_norm(
            self.weight[target], dim=1
        )
        return x @ self.weight.t(), norm


class ASoftmaxLoss(ScheduledMarginHead):
    r"""A-Softmax (SphereFace) head: unit-norm class weights, no bias, multiplicative margin.

    ``forward`` returns :func:`angular_softmax_loss`: logits :math:`\|x\|\cos\theta_j` with
    the target one :math:`\|x\|(\psi_m(\theta_y) + \lambda\cos\theta_y)/(1 + \lambda)`. The
    stored ``weight`` may have any norm; it is normalised in every forward pass.
    :meth:`logits` returns :math:`\|x\|\cos\theta_j` (inference). :math:`\lambda` follows the
    schedule, which :meth:`step` advances by one, once per training step; SphereFace's default
    schedule stops at :math:`\lambda = 5`, never 0: ``schedule=None`` gives the pure margin.

    Args:
        in_features, num_classes, reduction, device, dtype: as in :class:`LSoftmaxLoss`.
        margin: :math:`m \ge 1` (SphereFace uses 4).
        schedule: default :data:`SPHEREFACE_SCHEDULE` (:math:`\lambda` decays to 5, never 0).

    Shape:
        As :class:`LSoftmaxLoss`.

    Reference: Liu et al., CVPR 2017.

    Examples:
        >>> import torch
        >>> from companion.margin import ASoftmaxLoss
        >>> head = ASoftmaxLoss(16, 10, schedule=None)  # the pure margin, lambda = 0
        >>> head(torch.randn(8, 16), torch.randint(10, (8,))).shape
        torch.Size([])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        margin: float = 4,
        schedule: LambdaSchedule | None = SPHEREFACE_SCHEDULE,
        reduction: Reduction = "mean",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, num_classes, margin, schedule, reduction, device, dtype)

    def logits(self, features: Tensor) -> Tensor:
        r"""Plain logits :math:`\|x\|\cos\theta_j = \hat W_j^\top x`, shape ``(B, C)``."""
        x = self._check_features(features)
        with autocast_disabled(x):
            return x @ normalize(self.weight, dim=1).t()

    def _logits_and_norm(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return x @ normalize(self.weight, dim=1).t(), torch.linalg.vector_norm(x, dim=1)


class CosineMarginHead(MarginHead):
    r"""The base of :class:`AMSoftmaxLoss` and :class:`ArcFaceLoss`: normalised features and class
    weights, logits :math:`s\cos\theta_j`.

    Examples:
        >>> import torch
        >>> from companion.margin import AMSoftmaxLoss
        >>> head = AMSoftmaxLoss(16, 10, scale=30.0)
        >>> logits = head.logits(torch.randn(4, 16))  # s cos(theta), for inference
        >>> bool(logits.abs().max() <= 30.0)
        True
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        margin: float,
        scale: float,
        reduction: Reduction,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__(in_features, num_classes, reduction, device, dtype)
        self.scale = check_positive(scale, "scale")
        self.margin = margin

    def logits(self, features: Tensor) -> Tensor:
        r"""Plain logits :math:`s\cos\theta_j`, shape ``(B, C)`` (inference)."""
        x = self._check_features(features)
        with autocast_disabled(x):
            return self._scaled_cosine(x)

    def _scaled_cosine(self, x: Tensor) -> Tensor:
        # the scale goes on the (B, D) features, not on the (B, C) product
        return (normalize(x, dim=1) * self.scale) @ normalize(self.weight, dim=1).t()

    def _target_transform(self, c: Tensor) -> Tensor:
        """The margin on the target cosine: the one thing that differs between the heads."""
        raise NotImplementedError

    def forward(self, features: Tensor, target: Tensor) -> Tensor:
        """The loss of ``features`` ``(B, D)`` with class indices ``target`` ``(B,)``.

        The same value as the head's functional form (:func:`additive_margin_softmax_loss` or
        :func:`additive_angular_margin_loss`) on its cosines, through the one margin core; the
        cosines are computed here, so they are not validated again.
        """
        x, t = self._check_inputs(features, target)
        with autocast_disabled(x):
            return _margin_cross_entropy(
                self._scaled_cosine(x), t, self.scale, self._target_transform, self.reduction,
                inplace=True,
            )  # fmt: skip

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        return f"{super().extra_repr()}, margin={self.margin:g}, scale={self.scale:g}"


class AMSoftmaxLoss(CosineMarginHead):
    r"""AM-Softmax / CosFace head: :func:`additive_margin_softmax_loss` with its class weights.

    Args:
        in_features: feature dimension ``D``.
        num_classes: number of classes ``C``.
        margin: :math:`m \ge 0` subtracted from the target cosine (AM-Softmax: 0.35).
        scale: :math:`s` (AM-Softmax: 30; CosFace used 64).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        device, dtype: of the class weights.

    Shape:
        - features: ``(B, in_features)``; target: ``(B,)`` int64 or int32 class indices.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    References: Wang et al., IEEE SPL 2018; Wang et al., CVPR 2018.

    Examples:
        >>> import torch
        >>> from companion.margin import AMSoftmaxLoss
        >>> head = AMSoftmaxLoss(16, 10)
        >>> head(torch.randn(8, 16), torch.randint(10, (8,)), ).dim()
        0
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        margin: float = 0.35,
        scale: float = 30.0,
        reduction: Reduction = "mean",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        m = check_positive(margin, "margin", allow_zero=True)
        super().__init__(in_features, num_classes, m, scale, reduction, device, dtype)

    def _target_transform(self, c: Tensor) -> Tensor:
        return c - self.margin


class ArcFaceLoss(CosineMarginHead):
    r"""ArcFace head: :func:`additive_angular_margin_loss` with its class weights.

    Args:
        in_features: feature dimension ``D``.
        num_classes: number of classes ``C``.
        margin: :math:`m` in **radians**, in :math:`[0, \pi)` (ArcFace: 0.5).
        scale: :math:`s` (ArcFace: 64).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        device, dtype: of the class weights.

    Shape:
        - features: ``(B, in_features)``; target: ``(B,)`` int64 or int32 class indices.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Reference: Deng et al., CVPR 2019.

    Examples:
        >>> import torch
        >>> from companion.margin import ArcFaceLoss
        >>> head = ArcFaceLoss(16, 10, margin=0.5, scale=64.0)
        >>> loss = head(torch.randn(8, 16), torch.randint(10, (8,)))
        >>> loss.backward()
        >>> head.weight.grad.shape
        torch.Size([10, 16])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        margin: float = 0.5,
        scale: float = 64.0,
        reduction: Reduction = "mean",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        m = _check_additive_angular_margin(margin)
        super().__init__(in_features, num_classes, m, scale, reduction, device, dtype)

    def _target_transform(self, c: Tensor) -> Tensor:
        return _arc(c, self.margin)
