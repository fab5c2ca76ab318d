r"""Home-made classification losses: functions of the target class's softmax probability.

Cross-entropy scores a prediction by :math:`-\log p_y`, where :math:`p = \operatorname{softmax}(z)`
and :math:`y` is the target class. Any other decreasing function of :math:`p_y` gives a loss with
the same best prediction (:math:`p_y = 1`); this module holds three such "invented" losses and
the family that connects them to cross-entropy:

* :func:`dot_product_loss`: :math:`-p_y`, the negative dot product of the one-hot target with
  :math:`p`;
* :func:`inverse_loss`: :math:`1 / p_y`;
* :func:`inverse_power_loss`: :math:`(p_y^{-\alpha} - 1) / \alpha`, the Box-Cox transform of
  :math:`1/p_y`. It equals :math:`1/p_y - 1` at :math:`\alpha = 1`, :math:`1 - p_y` at
  :math:`\alpha = -1`, and tends to the cross-entropy :math:`-\log p_y` as :math:`\alpha \to 0`.
  For :math:`\alpha \in (-1, 0)` it is the generalized cross-entropy of Zhang and Sabuncu (2018)
  with :math:`q = -\alpha`.

Every loss takes logits ``(B, C)`` and integer class indices ``(B,)``, computes
:math:`\ell = -\log p_y` with ``log_softmax`` (never ``log(softmax)``) and exponentiates
:math:`\ell`, so no probability is formed before its logarithm is taken. Each gradient is the
cross-entropy gradient :math:`p - e_y` scaled per example by a weight that depends only on
:math:`p_y` (:math:`p_y`, :math:`1/p_y`, :math:`p_y^{-\alpha}`).

Overflow. :math:`1/p_y = e^{\ell}` exceeds every floating-point range once a prediction is wrong
enough (in float32, :math:`\ell > 88.7`, i.e. :math:`p_y < 3 \cdot 10^{-39}`). So that values
and gradients stay finite, :func:`inverse_loss` and :func:`inverse_power_loss` (for
:math:`\alpha > 0`) continue the exponential *linearly* beyond the point where the exponent
reaches :math:`t_{\max} = \tfrac12 \log(\text{largest finite number of the dtype})` (44.4 in
float32 and bfloat16, 354.9 in float64): :math:`e^{t}` is replaced by
:math:`e^{t_{\max}}\,(1 + t - t_{\max})` there. The continuation has the same value and slope at
:math:`t_{\max}`, so the loss is continuous with a continuous gradient, and the gradient keeps
pointing the right way (it never becomes zero, unlike a clamp). Below the threshold, which is
every case a float32 training run can meaningfully distinguish, the losses are exact.

These losses are teaching material: the book's experiment shows how they train compared with
cross-entropy (``torch.nn.functional.cross_entropy``), which remains the loss to use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from companion._validate import (
    Reduction,
    check_class_index,
    check_finite,
    check_reduction,
    check_tensor,
    reduce_loss,
)

__all__ = [
    "dot_product_loss",
    "exponent_threshold",
    "inverse_loss",
    "inverse_power_loss",
    "target_log_prob",
]


def _check_inputs(input: Tensor, target: Tensor, reduction: str) -> None:
    check_tensor(input, "input", ndim=2)
    check_finite(input, "input")
    check_class_index(target, "target", input.shape[1], batch_shape=(input.shape[0],))
    if target.device != input.device:
        raise ValueError(
            f"target must be on the same device as input ({input.device}), got {target.device}"
        )
    check_reduction(reduction)


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise TypeError(f"alpha must be a real number (int or float), got {type(alpha).__name__}")
    value = float(alpha)
    if not math.isfinite(value):
        raise ValueError(f"alpha must be a finite number, got {value}")
    return value


def exponent_threshold(dtype: torch.dtype) -> float:
    r"""The exponent :math:`t_{\max}` above which :math:`e^{t}` is continued linearly.

    Half the natural log of the largest finite number of ``dtype``: 44.36 for float32 and
    bfloat16, 354.89 for float64. Then :math:`e^{t_{\max}}` is the square root of that number,
    so a whole batch of losses (and their gradients) can be summed without overflow.

    Examples:
        >>> import torch
        >>> from companion.invented import exponent_threshold
        >>> round(exponent_threshold(torch.float32), 2), round(exponent_threshold(torch.float64), 2)
        (44.36, 354.89)
    """
    return 0.5 * math.log(torch.finfo(dtype).max)


def _expm1_linear_tail(t: Tensor) -> Tensor:
    r""":math:`e^{t} - 1`, continued by its tangent line above :func:`exponent_threshold`.

    Written as ``expm1(min(t, c)) + e^c * max(t - c, 0)``: exact (with ``expm1``'s precision
    near 0) for :math:`t \le c`, and :math:`e^{c}(1 + t - c) - 1` above, with slope
    :math:`e^{c}` there. Neither branch can overflow, so no NaN reaches the gradient.
    """
    c = exponent_threshold(t.dtype)
    return torch.expm1(t.clamp(max=c)) + math.exp(c) * (t - c).clamp(min=0)


def target_log_prob(input: Tensor, target: Tensor) -> Tensor:
    r"""The log-probability of each row's target class, :math:`\log p_y = z_y - \log\sum_j e^{z_j}`.

    Args:
        input: the logits :math:`z`, a ``(B, C)`` floating tensor.
        target: ``(B,)`` integer class indices in ``[0, C)``.

    Returns:
        ``(B,)`` tensor of :math:`\log p_y \le 0`, from ``log_softmax`` (finite for finite
        logits; its gradient is :math:`e_y - p`).

    Shape:
        - input: ``(B, C)``.
        - target: ``(B,)``.
        - output: ``(B,)``.

    Examples:
        >>> import torch
        >>> from companion.invented import target_log_prob
        >>> logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
        >>> target_log_prob(logits, torch.tensor([0, 1]))  # log(1/2), -log(1 + e^2)
        tensor([-0.6931, -2.1269])
    """
    _check_inputs(input, target, "none")
    return _target_log_prob(input, target)


def _target_log_prob(input: Tensor, target: Tensor) -> Tensor:
    return F.log_softmax(input, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)


def dot_product_loss(input: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    r"""The negative dot product of the one-hot target and the softmax: :math:`-p_y`.

    :math:`L = -\langle e_y, \operatorname{softmax}(z) \rangle = -p_y`, computed as
    :math:`-\exp(\log p_y)`. It lies in :math:`[-1, 0)`. Its gradient with respect to the logits
    is :math:`p_y\,(p - e_y)`: the cross-entropy gradient scaled by :math:`p_y`, so an example
    the model gets badly wrong (small :math:`p_y`) contributes almost nothing. Up to the
    constant 1 it is :math:`1 - p_y`, half the mean absolute error between :math:`e_y` and
    :math:`p` studied by Ghosh, Kumar and Sastry (AAAI 2017), and ``inverse_power_loss`` with
    ``alpha=-1``.

    Args:
        input: the logits :math:`z`, a ``(B, C)`` floating tensor (float32, float64 or
            bfloat16), finite.
        target: ``(B,)`` integer class indices in ``[0, C)``, on the same device.
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` or ``"sum"``.

    Returns:
        The loss, in the dtype and on the device of ``input``.

    Shape:
        - input: ``(B, C)``.
        - target: ``(B,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.invented import dot_product_loss
        >>> dot_product_loss(torch.zeros(2, 4), torch.tensor([1, 3]), reduction="none")  # -1/4
        tensor([-0.2500, -0.2500])
        >>> z, y = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([0])
        >>> torch.allclose(dot_product_loss(z, y), -torch.softmax(z, dim=1)[0, 0])
        True
    """
    _check_inputs(input, target, reduction)
    loss = -torch.exp(_target_log_prob(input, target))
    return reduce_loss(loss, reduction)


def inverse_loss(input: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    r"""The inverse of the target probability: :math:`1 / p_y = e^{-\log p_y}`.

    Its minimum is 1 (at :math:`p_y = 1`); its gradient with respect to the logits is
    :math:`(p - e_y) / p_y`, the cross-entropy gradient scaled by :math:`1/p_y`, which grows
    without bound for confidently wrong predictions.

    For :math:`\ell = -\log p_y` above :func:`exponent_threshold` (44.4 in float32: only when
    :math:`p_y < 5 \cdot 10^{-20}`) the value is continued linearly,
    :math:`e^{t_{\max}}(1 + \ell - t_{\max})`, instead of overflowing to ``inf``; values and
    gradients stay finite for every finite input. It equals ``inverse_power_loss(..., alpha=1)
    + 1``.

    Args:
        input: the logits :math:`z`, a ``(B, C)`` floating tensor (float32, float64 or
            bfloat16), finite.
        target: ``(B,)`` integer class indices in ``[0, C)``, on the same device.
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` or ``"sum"``.

    Shape:
        - input: ``(B, C)``.
        - target: ``(B,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.invented import inverse_loss
        >>> inverse_loss(torch.zeros(2, 4), torch.tensor([1, 3]), reduction="none")  # 1 / (1/4)
        tensor([4., 4.])
        >>> far_off = inverse_loss(torch.tensor([[0.0, 100.0]]), torch.tensor([0]))  # e^100
        >>> torch.isfinite(far_off)  # continued linearly above exponent_threshold
        tensor(True)
    """
    _check_inputs(input, target, reduction)
    nll = -_target_log_prob(input, target)
    loss = 1 + _expm1_linear_tail(nll)
    return reduce_loss(loss, reduction)


def inverse_power_loss(
    input: Tensor, target: Tensor, alpha: float = 0.2, reduction: Reduction = "mean"
) -> Tensor:
    r"""The power family :math:`(p_y^{-\alpha} - 1)/\alpha`; cross-entropy at :math:`\alpha = 0`.

    .. math::

        L_\alpha = \frac{p_y^{-\alpha} - 1}{\alpha}
                 = \frac{e^{\alpha \ell} - 1}{\alpha}, \quad \ell = -\log p_y,
        \qquad L_0 = \ell = -\log p_y .

    Subtracting 1 and dividing by :math:`\alpha` turns the raw power :math:`p_y^{-\alpha}` into a
    loss that is 0 at :math:`p_y = 1` and whose gradient,
    :math:`p_y^{-\alpha}\,(p - e_y)`, is the cross-entropy gradient scaled per example by
    :math:`p_y^{-\alpha}`. The raw power equals :math:`1 + \alpha L_\alpha`: same minimiser,
    gradient :math:`\alpha` times smaller. As :math:`\alpha \to 0`,
    :math:`L_\alpha = \ell + \alpha\ell^2/2 + O(\alpha^2)` tends to cross-entropy, and
    ``alpha=0`` returns it exactly. Special cases: ``alpha=1`` is :math:`1/p_y - 1`
    (:func:`inverse_loss` minus 1); ``alpha=-1`` is :math:`1 - p_y` (:func:`dot_product_loss`
    plus 1); :math:`\alpha \in (-1, 0)` is the generalized cross-entropy
    :math:`(1 - p_y^{q})/q`, :math:`q = -\alpha`, of Zhang and Sabuncu (NeurIPS 2018).

    Computed as ``expm1(alpha * ell) / alpha`` (accurate for small ``alpha * ell``); for
    ``alpha > 0`` the exponential is continued linearly above :func:`exponent_threshold`, so
    values and gradients stay finite for every finite input.

    Args:
        input: the logits :math:`z`, a ``(B, C)`` floating tensor (float32, float64 or
            bfloat16), finite.
        target: ``(B,)`` integer class indices in ``[0, C)``, on the same device.
        alpha: any finite real number; 0.2 is the value tried in the source this comes from.
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` or ``"sum"``.

    Shape:
        - input: ``(B, C)``.
        - target: ``(B,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.invented import inverse_power_loss
        >>> z, y = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]), torch.tensor([0, 2])
        >>> torch.allclose(inverse_power_loss(z, y, alpha=0.0), F.cross_entropy(z, y))
        True
        >>> inverse_power_loss(torch.zeros(1, 4), torch.tensor([0]), alpha=-1.0)  # 1 - p_y
        tensor(0.7500)
    """
    a = _check_alpha(alpha)
    _check_inputs(input, target, reduction)
    nll = -_target_log_prob(input, target)
    loss = nll if a == 0.0 else _expm1_linear_tail(a * nll) / a
    return reduce_loss(loss, reduction)
