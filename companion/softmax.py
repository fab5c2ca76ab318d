r"""Softmax, log-sum-exp and softmax cross-entropy, computed stably, with the analytic gradient.

For a vector of logits :math:`s \in \mathbb{R}^C` the softmax is
:math:`p_i = e^{s_i} / \sum_j e^{s_j}`, and the cross-entropy of a target distribution
:math:`q` is :math:`L = -\sum_i q_i \log p_i`. Its gradient with respect to the logits is
:math:`\partial L / \partial s_i = p_i - q_i` (Bridle, 1990, *Probabilistic interpretation of
feedforward classification network outputs*).

Numerics: every function subtracts the maximum logit before exponentiating (the log-sum-exp
trick), so no exponential overflows, and :func:`log_softmax` is computed as
:math:`(s - m) - \log\sum_j e^{s_j - m}`, never as the logarithm of a softmax. Inputs in
bfloat16 or float16 are computed in float32 internally (as torch does) and the result is
returned in the input's dtype.

torch ships all of these (:func:`torch.softmax`, :func:`torch.log_softmax`,
:func:`torch.logsumexp`, :func:`torch.nn.functional.cross_entropy`); the versions here are the
readable from-scratch ones the book derives, and the tests prove they agree with torch's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from companion._numerics import compute_dtype
from companion._validate import (
    Reduction,
    check_batch_size,
    check_class_index,
    check_finite,
    check_in_range,
    check_int,
    check_probabilities,
    check_reduction,
    check_same_dtype_device,
    check_shape,
    check_tensor,
)

__all__ = ["cross_entropy", "cross_entropy_grad", "log_softmax", "logsumexp", "softmax"]


def _check_dim(x: object, dim: object, name: str = "input") -> tuple[Tensor, int]:
    """Validate ``x`` and ``dim`` for a reduction over ``dim``; return the non-negative dim."""
    x = check_tensor(x, name, allow_empty=True, allow_inf=True)
    dim = check_int(dim, "dim")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(
            f"dim must be in [{-x.dim()}, {x.dim() - 1}] for {name} of shape {tuple(x.shape)}, "
            f"got {dim}"
        )
    dim = dim % x.dim()
    if x.shape[dim] == 0:
        raise ValueError(
            f"{name} must have at least one entry along dim {dim}, got shape {tuple(x.shape)}"
        )
    return x, dim


def _shift_and_log_norm(x: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Return :math:`m`, :math:`x - m` and :math:`\log \sum_j e^{x_j - m}` along ``dim``.

    :math:`m` is the maximum along ``dim`` (kept as a dimension of size 1), detached from
    autograd: the result does not depend on it mathematically, and detaching it makes the
    gradient flow only through the exponentials, which gives exactly the softmax. Rows whose
    maximum is infinite use :math:`m = 0`, so that ``inf - inf`` never appears.
    """
    m = x.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    shifted = x - m
    log_norm = torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))
    return m, shifted, log_norm


def logsumexp(input: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    r"""The log-sum-exp :math:`\log \sum_j e^{x_j}` along ``dim``, without overflow.

    Computed as :math:`m + \log \sum_j e^{x_j - m}` with :math:`m = \max_j x_j`: every
    exponential is of a non-positive number, and the largest one is exactly 1, so the sum is in
    :math:`[1, C]`. Its gradient is the softmax.

    Args:
        input: floating tensor with at least one dimension (float32, float64, bfloat16...).
        dim: the dimension to reduce.
        keepdim: keep ``dim`` as a dimension of size 1.

    Returns:
        ``input``'s shape without ``dim`` (or with it of size 1), in ``input``'s dtype and device.

    Shape:
        - input: ``(*, C, *)``, at least one dimension, ``C >= 1`` along ``dim``.
        - output: ``input``'s shape without ``dim``; with ``keepdim=True``, ``dim`` of size 1.

    Examples:
        >>> import torch
        >>> from companion.softmax import logsumexp
        >>> logsumexp(torch.tensor([100.0, 100.0]))  # 100 + log 2, though e^100 is inf
        tensor(100.6931)
        >>> x = torch.tensor([[1.0, 2.0, 3.0], [-5.0, 0.0, 5.0]])
        >>> torch.allclose(logsumexp(x, dim=1), torch.logsumexp(x, dim=1))
        True
        >>> logsumexp(x, dim=0, keepdim=True).shape
        torch.Size([1, 3])
    """
    input, d = _check_dim(input, dim)
    m, _, log_norm = _shift_and_log_norm(input.to(compute_dtype(input.dtype)), d)
    out = m + log_norm
    if not keepdim:
        out = out.squeeze(d)
    return out.to(input.dtype)


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:
    r"""The log-softmax :math:`\log p_i = x_i - \log \sum_j e^{x_j}` along ``dim``.

    Computed as :math:`(x_i - m) - \log\sum_j e^{x_j - m}`; it stays finite (and accurate) where
    ``log(softmax(x))`` returns ``-inf`` because a probability underflowed to 0.

    Args:
        input: floating tensor with at least one dimension.
        dim: the dimension along which the probabilities sum to one.

    Returns:
        same shape, dtype and device as ``input``.

    Shape:
        - input: ``(*)``, at least one dimension.
        - output: ``(*)``, the shape of ``input``.

    Examples:
        >>> import torch
        >>> from companion.softmax import log_softmax
        >>> x = torch.tensor([0.0, 200.0])
        >>> log_softmax(x), torch.log(torch.softmax(x, dim=0))
        (tensor([-200.,    0.]), tensor([-inf, 0.]))
        >>> x = torch.tensor([[1.0, 2.0, 3.0], [-5.0, 0.0, 5.0]])
        >>> torch.allclose(log_softmax(x, dim=1), torch.log_softmax(x, dim=1))
        True
    """
    input, d = _check_dim(input, dim)
    _, shifted, log_norm = _shift_and_log_norm(input.to(compute_dtype(input.dtype)), d)
    return (shifted - log_norm).to(input.dtype)


def softmax(input: Tensor, dim: int = -1) -> Tensor:
    r"""The softmax :math:`p_i = e^{x_i} / \sum_j e^{x_j}` along ``dim``.

    Computed as :math:`e^{x_i - m} / \sum_j e^{x_j - m}` with :math:`m = \max_j x_j`, which is
    the same number (softmax is invariant to adding a constant to every logit) but never
    overflows. Its Jacobian is :math:`\partial p_i / \partial x_k = p_i(\delta_{ik} - p_k)`.

    Args:
        input: floating tensor with at least one dimension.
        dim: the dimension along which the probabilities sum to one.

    Returns:
        same shape, dtype and device as ``input``; entries in :math:`[0, 1]`, summing to 1 along
        ``dim``.

    Shape:
        - input: ``(*)``, at least one dimension.
        - output: ``(*)``, the shape of ``input``.

    Examples:
        >>> import torch
        >>> from companion.softmax import softmax
        >>> softmax(torch.tensor([0.0, 0.0, 0.0, 0.0]))
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
        >>> softmax(torch.tensor([1000.0, 1000.0]))  # shifted by the maximum: no inf / inf
        tensor([0.5000, 0.5000])
        >>> x = torch.tensor([[1.0, 2.0, 3.0], [-5.0, 0.0, 5.0]])
        >>> torch.allclose(softmax(x, dim=1), torch.softmax(x, dim=1))
        True
    """
    input, d = _check_dim(input, dim)
    _, shifted, _ = _shift_and_log_norm(input.to(compute_dtype(input.dtype)), d)
    e = torch.exp(shifted)
    return (e / e.sum(dim=d, keepdim=True)).to(input.dtype)


# ---------------------------------------------------------------------------------------------
# Cross-entropy
# ---------------------------------------------------------------------------------------------


def _check_label_smoothing(label_smoothing: object) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, int | float):
        raise TypeError(f"label_smoothing must be a float, got {type(label_smoothing).__name__}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {eps}")
    return eps


def _prepare(
    input: object, target: object, weight: object, label_smoothing: object
) -> tuple[Tensor, Tensor, Tensor | None, float, bool, bool]:
    """Validate the arguments of :func:`cross_entropy` and bring them to the batched form.

    Returns ``(input, target, weight, label_smoothing, is_index_target, unbatched)`` with
    ``input`` of shape (B, C) and ``target`` of shape (B,) (indices) or (B, C) (probabilities).
    """
    if isinstance(input, Tensor) and input.dim() > 2:
        c = input.shape[1]
        raise ValueError(
            f"input must have shape (B, C) or (C,), got {tuple(input.shape)}; for per-position "
            f"logits (B, C, d1, ...) move the classes last and flatten: "
            f"input.movedim(1, -1).reshape(-1, {c}) and target.reshape(-1)"
        )
    input = check_tensor(input, "input", ndim=(1, 2))
    check_finite(input, "input")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    eps = _check_label_smoothing(label_smoothing)

    unbatched = input.dim() == 1
    if unbatched:
        want_probs = tuple(input.shape)
        if target.is_floating_point() and target.dim() == 1:
            target = target[None]
        elif target.is_floating_point() or target.dim() != 0:
            raise ValueError(
                f"target for unbatched input of shape {want_probs} must be a 0-d class index "
                f"or a probability vector of shape {want_probs}, got dtype {target.dtype} and "
                f"shape {tuple(target.shape)}"
            )
        else:
            target = target[None]
        input = input[None]

    num_classes = input.shape[1]
    check_batch_size(input, "input", target, "target")
    if target.dim() == 2:
        # class probabilities: a floating tensor shaped like the input
        if target.shape != input.shape:
            raise ValueError(
                f"target with class probabilities must have the shape of input "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
        check_tensor(target, "target")
        check_same_dtype_device(input, "input", target, "target")
        check_finite(target, "target")
        # each entry is rounded to the target's precision, so allow one machine epsilon of slack
        tol = max(1e-4, float(torch.finfo(target.dtype).eps))
        check_probabilities(target, "target", dim=1, atol=tol)
        is_index = False
    elif target.dim() == 1:
        if target.is_floating_point():
            raise TypeError(
                f"target must hold integer class indices (torch.long), got dtype {target.dtype} "
                f"with shape {tuple(target.shape)}; class probabilities must have the shape of "
                f"input {tuple(input.shape)}"
            )
        check_class_index(target, "target", num_classes, batch_shape=(input.shape[0],))
        if target.device != input.device:
            raise ValueError(
                f"target must be on the same device as input ({input.device}), got {target.device}"
            )
        is_index = True
    else:
        raise ValueError(
            f"target must have shape ({input.shape[0]},) (class indices) or "
            f"{tuple(input.shape)} (class probabilities), got {tuple(target.shape)}"
        )

    if weight is not None:
        weight = check_tensor(weight, "weight", ndim=1)
        check_shape(weight, "weight", (num_classes,))
        check_same_dtype_device(input, "input", weight, "weight")
        check_finite(weight, "weight")
        check_in_range(weight, "weight", 0.0, float("inf"), what="non-negative class weights")
    return input, target, weight, eps, is_index, unbatched


def _coefficients(
    target: Tensor,
    weight: Tensor | None,
    eps: float,
    is_index: bool,
    num_classes: int,
    like: Tensor,
) -> tuple[Tensor, Tensor | None]:
    r"""The matrix :math:`a` with :math:`\ell_b = -\sum_c a_{bc} \log p_{bc}`, and the
    per-sample weights :math:`w_{y_b}` that the weighted mean divides by (index targets with a
    weight only; ``None`` otherwise).

    Index targets: :math:`a_{bc} = (1-\varepsilon)\,w_{y_b}[c = y_b] + (\varepsilon/C)\,w_c`.
    Probability targets: :math:`a_{bc} = w_c\,((1-\varepsilon)\,q_{bc} + \varepsilon/C)`.
    """
    w = weight.to(like.dtype) if weight is not None else None
    if is_index:
        a = torch.zeros_like(like).scatter_(1, target[:, None], 1.0 - eps)
        sample_weight = w[target] if w is not None else None
        if sample_weight is not None:
            a = a * sample_weight[:, None]
        if eps > 0:
            a = a + (eps / num_classes) * (w[None, :] if w is not None else 1.0)
        return a, sample_weight
    a = target.to(like.dtype)
    if eps > 0:
        a = a * (1.0 - eps) + eps / num_classes
    if w is not None:
        a = a * w[None, :]
    return a, None


def _denominator(batch: int, sample_weight: Tensor | None) -> Tensor | int:
    """What ``reduction="mean"`` divides by: the batch size, or the sum of the target weights.

    Where every target weight is zero the weighted mean is 0 (the package's one rule, see
    :func:`companion._validate.weighted_mean`); torch returns NaN there.
    """
    if sample_weight is None:
        return batch
    total = sample_weight.sum()
    return torch.where(total > 0, total, torch.ones_like(total))


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Softmax cross-entropy between logits and a target, with the semantics of
    :func:`torch.nn.functional.cross_entropy`.

    With :math:`\log p_{bc}` = ``log_softmax(input)[b, c]``, the loss of sample :math:`b` is

    * **class indices** :math:`y_b`:
      :math:`\ell_b = (1-\varepsilon)\, w_{y_b} (-\log p_{b y_b})
      + \frac{\varepsilon}{C} \sum_c w_c (-\log p_{bc})`;
    * **class probabilities** :math:`q_{bc}`:
      :math:`\ell_b = -\sum_c w_c \bigl((1-\varepsilon) q_{bc} + \varepsilon/C\bigr) \log p_{bc}`,

    where :math:`\varepsilon` is ``label_smoothing`` (Szegedy et al., 2016) and :math:`w` the
    class weights (all ones by default). ``reduction="mean"`` divides the sum of the
    :math:`\ell_b` by :math:`\sum_b w_{y_b}` for index targets (the weighted mean, which is the
    plain mean without weights) and by the batch size B for probability targets, exactly as torch
    does; ``"sum"`` sums; ``"none"`` returns the :math:`\ell_b`.

    Args:
        input: (B, C) floating tensor of unnormalised scores (logits), finite; or (C,) for
            one sample. Per-position logits (B, C, d1, ...) are not supported: move the class
            dimension last and flatten them to (B * d1 * ..., C).
        target: (B,) integer class indices in [0, C) (0-d for unbatched logits), or (B, C)
            class probabilities (same dtype as ``input``; entries in [0, 1], rows summing to 1).
            torch's ``ignore_index`` is not supported: drop those rows instead.
        weight: optional (C,) non-negative class weights, same dtype and device as ``input``.
        label_smoothing: :math:`\varepsilon \in [0, 1]`, the weight of the uniform distribution
            mixed into the target.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        a scalar, or (B,) per-sample losses for ``reduction="none"`` (0-d for unbatched logits),
        in ``input``'s dtype.

    Raises:
        TypeError: non-tensors, integer logits, floating class indices, mismatched dtypes.
        ValueError: wrong shapes, mismatched batch sizes, an empty batch, indices out of range,
            targets that are not probability vectors, negative weights, non-finite logits, a
            ``label_smoothing`` outside [0, 1], or a weighted mean whose weights are all zero.

    Shape:
        - input: ``(B, C)``, or ``(C,)`` for one sample.
        - target: ``(B,)`` class indices (``()`` for unbatched logits), or ``(B, C)`` class
          probabilities (``(C,)`` for unbatched logits).
        - weight: ``(C,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"`` (``()`` for unbatched logits).

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.softmax import cross_entropy
        >>> cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))  # uniform: log 4
        tensor(1.3863)
        >>> z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
        >>> y = torch.tensor([0, 2])
        >>> w = torch.tensor([1.0, 2.0, 0.5])
        >>> ours = cross_entropy(z, y, weight=w, label_smoothing=0.1)
        >>> torch.allclose(ours, F.cross_entropy(z, y, weight=w, label_smoothing=0.1))
        True
    """
    input, target, weight, eps, is_index, unbatched = _prepare(
        input, target, weight, label_smoothing
    )
    check_reduction(reduction)
    batch, num_classes = input.shape
    log_p = log_softmax(input.to(compute_dtype(input.dtype)), dim=1)
    w = weight.to(log_p.dtype) if weight is not None else None
    sample_weight: Tensor | None = None
    if is_index:
        # gather the target column rather than multiplying a one-hot matrix: cheaper and exact
        nll = -log_p.gather(1, target[:, None]).squeeze(1)
        if w is not None:
            sample_weight = w[target]
            nll = nll * sample_weight
        loss = (1.0 - eps) * nll
        if eps > 0:
            smooth = -(log_p * w[None, :]).sum(1) if w is not None else -log_p.sum(1)
            loss = loss + (eps / num_classes) * smooth
    else:
        a, _ = _coefficients(target, w, eps, False, num_classes, log_p)
        loss = -(a * log_p).sum(1)

    if reduction == "none":
        out = loss.squeeze(0) if unbatched else loss
    elif reduction == "sum":
        out = loss.sum()
    else:
        out = loss.sum() / _denominator(batch, sample_weight)
    return out.to(input.dtype)


def cross_entropy_grad(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The analytic gradient of :func:`cross_entropy` with respect to ``input``.

    Writing each sample's loss as :math:`\ell_b = -\sum_c a_{bc} \log p_{bc}` (see
    :func:`cross_entropy` for the coefficients :math:`a`), the derivative through the softmax
    Jacobian is

    .. math::
        \frac{\partial \ell_b}{\partial s_{bk}} = p_{bk} \sum_c a_{bc} - a_{bk},

    which is :math:`p_{bk} - y_{bk}` for a one-hot (or any probability) target without weights
    or smoothing, and :math:`p_{bk} - \bigl((1-\varepsilon) y_{bk} + \varepsilon / C\bigr)`
    with label smoothing.

    Which gradient: with the default ``reduction="mean"`` this is the gradient of
    ``cross_entropy(input, target)`` itself, the mean over the batch, so each row is
    :math:`(p_b - y_b) / B` (divided by :math:`\sum_b w_{y_b}` instead of B for weighted index
    targets). With ``reduction="sum"`` it is the gradient of the sum, each row
    :math:`p_b - y_b`; ``reduction="none"`` returns the same matrix, read as the per-sample
    gradients (row b is the gradient of :math:`\ell_b`, which depends on row b only).

    Args:
        input, target, weight, label_smoothing, reduction: as for :func:`cross_entropy`.

    Returns:
        a tensor of ``input``'s shape, dtype and device.

    Shape:
        - input, target, weight: as for :func:`cross_entropy`.
        - output: the shape of ``input``, ``(B, C)`` or ``(C,)``.

    Examples:
        >>> import torch
        >>> from companion.softmax import cross_entropy, cross_entropy_grad
        >>> cross_entropy_grad(torch.zeros(1, 4), torch.tensor([1]))  # p - y, p uniform
        tensor([[ 0.2500, -0.7500,  0.2500,  0.2500]])
        >>> z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], requires_grad=True)
        >>> y = torch.tensor([0, 2])
        >>> cross_entropy(z, y, label_smoothing=0.1).backward()
        >>> torch.allclose(cross_entropy_grad(z.detach(), y, label_smoothing=0.1), z.grad)
        True
    """
    out_dtype = input.dtype
    input, target, weight, eps, is_index, unbatched = _prepare(
        input, target, weight, label_smoothing
    )
    check_reduction(reduction)
    batch, num_classes = input.shape
    p = softmax(input.to(compute_dtype(input.dtype)), dim=1)
    a, sample_weight = _coefficients(target, weight, eps, is_index, num_classes, p)
    grad = p * a.sum(1, keepdim=True) - a
    if reduction == "mean":
        grad = grad / _denominator(batch, sample_weight)
    if unbatched:
        grad = grad.squeeze(0)
    return grad.to(out_dtype)
