r"""The logistic sigmoid, its derivatives and its logarithms, computed stably.

Every function here is elementwise, accepts a floating tensor of any shape (float32, float64,
bfloat16, float16, on any device) and returns a tensor of the same shape, dtype and device.
Gradients come from autograd and stay finite for every finite input, including
:math:`|x| = 10^4`. At :math:`\pm\infty` each function returns its exact limit (for example
:math:`\sigma(\infty) = 1`, :math:`\operatorname{softplus}(-\infty) = 0`,
:math:`\log\sigma(-\infty) = -\infty`) with a finite gradient; NaN is refused while value checks
are on.

The trick used throughout is to never evaluate :math:`e^{t}` for a large positive :math:`t`:
all exponentials are of :math:`-|x|`, which lies in :math:`(0, 1]`.

torch ships all of these (:func:`torch.sigmoid`, :func:`torch.nn.functional.logsigmoid`,
:func:`torch.nn.functional.softplus`, :func:`torch.logit`); the versions here are the readable
from-scratch ones the book derives, and the tests prove they agree with torch's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from companion._validate import check_in_range, check_positive, check_tensor

__all__ = ["log1m_sigmoid", "log_sigmoid", "logit", "sigmoid", "sigmoid_grad", "softplus"]


def _neg_abs(x: Tensor) -> Tensor:
    """:math:`-|x|`, written so that its derivative at 0 is the one-sided value -1.

    ``where(x >= 0, -x, x)`` equals ``-|x|`` (and is ``-inf`` at both infinities, where
    ``x - 2 * max(x, 0)`` would be ``inf - inf = NaN``); its derivative at 0 is -1. Combined
    with ``clamp(x, min=0)`` in :func:`softplus`, whose gradient torch passes at the boundary,
    this gives the exact derivative 1/2 at 0 (``abs`` would give 0 there).
    """
    return torch.where(x >= 0, -x, x)


def sigmoid(input: Tensor) -> Tensor:
    r"""The logistic sigmoid :math:`\sigma(x) = 1 / (1 + e^{-x})`.

    Computed as :math:`1/(1+z)` for :math:`x \ge 0` and :math:`z/(1+z)` for :math:`x < 0`,
    with :math:`z = e^{-|x|} \in (0, 1]`, so no exponential overflows.

    Args:
        input: :math:`x`, a floating tensor of any shape.

    Returns:
        :math:`\sigma(x)`, same shape, dtype and device as ``input``.

    Shape:
        - input: ``(*)``, any shape.
        - output: ``(*)``, the shape of ``input``.

    Examples:
        >>> import torch
        >>> from companion.sigmoid import sigmoid
        >>> sigmoid(torch.tensor([0.0, 2.0, float("inf"), -float("inf")]))
        tensor([0.5000, 0.8808, 1.0000, 0.0000])
        >>> x = torch.linspace(-30.0, 30.0, 7)
        >>> torch.allclose(sigmoid(x), torch.sigmoid(x))
        True
    """
    check_tensor(input, "input", allow_empty=True, allow_inf=True)
    z = torch.exp(_neg_abs(input))
    return torch.where(input >= 0, 1 / (1 + z), z / (1 + z))


def sigmoid_grad(input: Tensor) -> Tensor:
    r"""The derivative :math:`\sigma'(x) = \sigma(x)\,(1 - \sigma(x)) = \sigma(x)\,\sigma(-x)`.

    The product :math:`\sigma(x)\sigma(-x)` is used instead of :math:`\sigma(1-\sigma)`: for
    large :math:`x`, :math:`1 - \sigma(x)` rounds to 0 while :math:`\sigma(-x)` keeps its
    relative precision.

    Args:
        input: :math:`x`, a floating tensor of any shape.

    Shape:
        - input: ``(*)``, any shape.
        - output: ``(*)``, the shape of ``input``.

    Examples:
        >>> import torch
        >>> from companion.sigmoid import sigmoid, sigmoid_grad
        >>> sigmoid_grad(torch.tensor([0.0]))
        tensor([0.2500])
        >>> x = torch.linspace(-5.0, 5.0, 11, requires_grad=True)
        >>> sigmoid(x).sum().backward()
        >>> torch.allclose(sigmoid_grad(x.detach()), x.grad)
        True
    """
    check_tensor(input, "input", allow_empty=True, allow_inf=True)
    return sigmoid(input) * sigmoid(-input)


def softplus(input: Tensor) -> Tensor:
    r"""The softplus :math:`\log(1 + e^{x}) = \max(x, 0) + \log(1 + e^{-|x|})`.

    The right-hand form never overflows; its derivative is :math:`\sigma(x)`.

    Args:
        input: :math:`x`, a floating tensor of any shape.

    Shape:
        - input: ``(*)``, any shape.
        - output: ``(*)``, the shape of ``input``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.sigmoid import softplus
        >>> softplus(torch.tensor([0.0, 100.0]))  # log 2, and no overflow: e^100 is inf
        tensor([  0.6931, 100.0000])
        >>> x = torch.linspace(-10.0, 10.0, 9)
        >>> torch.allclose(softplus(x), F.softplus(x))
        True
    """
    check_tensor(input, "input", allow_empty=True, allow_inf=True)
    out: Tensor = _Softplus.apply(input)  # type: ignore[no-untyped-call]
    return out


def softplus_values(x: Tensor) -> Tensor:
    """The values of :func:`softplus` with no check and no autograd graph, for the hand-written
    backward passes of the sampled losses (their inputs are checked once, at the boundary)."""
    # log(e^x + e^0), which torch.logaddexp evaluates as max(x, 0) + log1p(e^{-|x|}), the
    # formula above, in one pass over x
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


class _Softplus(torch.autograd.Function):
    """softplus with its derivative written out: sigma(x), one kernel in the backward pass.

    The forward pass is the stable formula; autograd through it would record and replay a
    chain of six elementwise steps, which dominates a loss such as NCE over a million
    logits. The backward pass is itself differentiable, so second derivatives work.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return softplus_values(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)  # exact at +-inf too: 1 and 0


def log_sigmoid(input: Tensor) -> Tensor:
    r"""The log-sigmoid :math:`\log \sigma(x) = -\operatorname{softplus}(-x)`.

    Its derivative is :math:`1 - \sigma(x) = \sigma(-x)`. Evaluating ``log(sigmoid(x))``
    instead returns ``-inf`` once :math:`\sigma(x)` underflows to 0 (below about
    :math:`x = -88` for ``torch.sigmoid`` in float32), and its gradient becomes NaN.

    Args:
        input: :math:`x`, a floating tensor of any shape.

    Shape:
        - input: ``(*)``, any shape.
        - output: ``(*)``, the shape of ``input``.

    Examples:
        >>> import torch
        >>> from companion.sigmoid import log_sigmoid
        >>> x = torch.tensor([-1000.0])
        >>> log_sigmoid(x), torch.log(torch.sigmoid(x))
        (tensor([-1000.]), tensor([-inf]))
        >>> torch.allclose(log_sigmoid(torch.tensor([0.0])), -torch.log(torch.tensor([2.0])))
        True
    """
    check_tensor(input, "input", allow_empty=True, allow_inf=True)
    return -softplus(-input)


def log1m_sigmoid(input: Tensor) -> Tensor:
    r"""The log of the complement, :math:`\log(1 - \sigma(x)) = -\operatorname{softplus}(x)`.

    It equals :math:`\log \sigma(-x)`; its derivative is :math:`-\sigma(x)`. This is the
    log-probability of the negative class in logistic regression.

    Args:
        input: :math:`x`, a floating tensor of any shape.

    Shape:
        - input: ``(*)``, any shape.
        - output: ``(*)``, the shape of ``input``.

    Examples:
        >>> import torch
        >>> from companion.sigmoid import log1m_sigmoid, log_sigmoid
        >>> log1m_sigmoid(torch.tensor([0.0, 100.0]))
        tensor([  -0.6931, -100.0000])
        >>> x = torch.linspace(-5.0, 5.0, 11)
        >>> torch.equal(log1m_sigmoid(x), log_sigmoid(-x))
        True
    """
    check_tensor(input, "input", allow_empty=True, allow_inf=True)
    return -softplus(input)


def logit(input: Tensor, eps: float | None = None) -> Tensor:
    r"""The inverse of the sigmoid, the log-odds :math:`\log p - \log(1 - p)`.

    Args:
        input: :math:`p`, a floating tensor of probabilities in :math:`[0, 1]`.
        eps: if given, ``input`` is first clamped to :math:`[\epsilon, 1 - \epsilon]` so the result
            is finite (as :func:`torch.logit` does); without it, 0 and 1 map to :math:`\mp\infty`.

    Raises:
        ValueError: if ``input`` has entries outside :math:`[0, 1]` or ``eps`` is not in
            :math:`(0, 0.5)`.

    Shape:
        - input: ``(*)``, any shape.
        - output: ``(*)``, the shape of ``input``.

    Examples:
        >>> import torch
        >>> from companion.sigmoid import logit, sigmoid
        >>> logit(torch.tensor([0.5, 0.0, 1.0]))
        tensor([0., -inf, inf])
        >>> logit(torch.tensor([0.0, 1.0], dtype=torch.float64), eps=1e-6)
        tensor([-13.8155,  13.8155], dtype=torch.float64)
        >>> x = torch.tensor([-3.0, 0.5, 4.0], dtype=torch.float64)
        >>> torch.allclose(logit(sigmoid(x)), x)
        True
    """
    check_tensor(input, "input", allow_empty=True)
    check_in_range(input, "input", 0.0, 1.0, what="probabilities")
    if eps is not None:
        check_positive(eps, "eps")
        if eps >= 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        input = torch.clamp(input, eps, 1 - eps)
    return torch.log(input) - torch.log1p(-input)
