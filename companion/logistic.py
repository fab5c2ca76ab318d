r"""Logistic regression from scratch: the loss, its analytic gradient, and a fitted model.

The model scores a feature vector :math:`x \in \mathbb{R}^d` with a linear function and reads the
score as log-odds:

.. math::

    P(y = 1 \mid x) = \sigma(\theta^\top \tilde x), \qquad
    P(y = 0 \mid x) = 1 - \sigma(\theta^\top \tilde x) = \sigma(-\theta^\top \tilde x),

where :math:`\tilde x = (1, x_1, \dots, x_d)` carries a constant 1 so that :math:`\theta_0` is the
bias (:func:`add_intercept` builds :math:`\tilde X`). The negative log-likelihood of one sample
with logit :math:`z = \theta^\top \tilde x` is

.. math::

    \ell(z, y) = -y \log \sigma(z) - (1 - y) \log \sigma(-z)
               = \operatorname{softplus}(z) - y z,

and its gradient with respect to :math:`\theta`, averaged over :math:`N` samples, is
:math:`\tilde X^\top (\sigma(\tilde X \theta) - y) / N`. The model is due to
Cox (1958), "The Regression Analysis of Binary Sequences".

torch ships the loss as :func:`torch.nn.functional.binary_cross_entropy_with_logits`, and
scikit-learn ships the model as :class:`sklearn.linear_model.LogisticRegression`; use those in
production. The versions here are the readable ones the book derives, and the tests prove they
agree with both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from companion._validate import (
    Reduction,
    check_batch_size,
    check_binary,
    check_in_range,
    check_int,
    check_positive,
    check_reduction,
    check_same_dtype_device,
    check_same_shape,
    check_shape,
    check_tensor,
    reduce_loss,
)
from companion.sigmoid import log1m_sigmoid, log_sigmoid, sigmoid, softplus

__all__ = ["LogisticRegression", "add_intercept", "logistic_gradient", "logistic_loss"]


def logistic_loss(input: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    r"""The logistic loss (binary cross-entropy on logits), elementwise, then reduced.

    .. math::

        \ell(z, y) = -y \log \sigma(z) - (1 - y) \log\bigl(1 - \sigma(z)\bigr)

    computed as ``-(y * log_sigmoid(z) + (1 - y) * log1m_sigmoid(z))``, so that no probability
    is formed and then logged: values and gradients stay finite for every finite logit. Its
    derivative with respect to :math:`z` is :math:`\sigma(z) - y`.

    This is :func:`torch.nn.functional.binary_cross_entropy_with_logits` without its ``weight``
    and ``pos_weight`` options.

    Args:
        input: floating tensor of any non-empty shape, the log-odds :math:`z`.
        target: tensor of the same shape, dtype and device: hard labels 0.0 / 1.0, or
            probabilities in :math:`[0, 1]` (soft labels), for which both terms contribute.
        reduction: ``"none"`` (same shape as ``input``), ``"mean"`` or ``"sum"``.

    Raises:
        TypeError: if an argument is not a floating tensor, or the dtypes differ.
        ValueError: on an empty input, differing shapes, a target outside :math:`[0, 1]`, NaN,
            or an unknown ``reduction``.

    Shape:
        - input: ``(*)``, any non-empty shape.
        - target: ``(*)``, the shape of ``input``.
        - output: scalar, or ``(*)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.logistic import logistic_loss
        >>> logistic_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))  # log 2
        tensor(0.6931)
        >>> z, y = torch.tensor([-2.0, 0.5, 3.0]), torch.tensor([0.0, 1.0, 0.3])
        >>> torch.allclose(logistic_loss(z, y), F.binary_cross_entropy_with_logits(z, y))
        True
    """
    check_reduction(reduction)
    check_tensor(input, "input")
    check_tensor(target, "target")
    check_same_shape(input, "input", target, "target")
    check_same_dtype_device(input, "input", target, "target")
    check_in_range(target, "target", 0.0, 1.0, what="probabilities")
    return reduce_loss(_elementwise_loss(input, target), reduction)


def _elementwise_loss(z: Tensor, y: Tensor) -> Tensor:
    """The unreduced loss, without input checks (callers have validated)."""
    return -(y * log_sigmoid(z) + (1 - y) * log1m_sigmoid(z))


def add_intercept(x: Tensor) -> Tensor:
    r"""Prepend a column of ones: :math:`\tilde X = [\mathbf{1}, X]`, shape ``(N, d + 1)``.

    With it, :math:`\theta_0` multiplies the constant 1 and acts as the bias, so
    :math:`\theta^\top \tilde x = \theta_0 + \theta_1 x_1 + \dots + \theta_d x_d`.

    Args:
        x: floating tensor of shape ``(N, d)``.

    Shape:
        - x: ``(N, d)``.
        - output: ``(N, d + 1)``.

    Examples:
        >>> import torch
        >>> from companion.logistic import add_intercept
        >>> add_intercept(torch.tensor([[2.0, 3.0], [4.0, 5.0]]))
        tensor([[1., 2., 3.],
                [1., 4., 5.]])
    """
    check_tensor(x, "x", ndim=2)
    return torch.cat([torch.ones_like(x[:, :1]), x], dim=1)


def _as_design(X: object, y: object) -> tuple[Tensor, Tensor]:
    """NumPy arrays to tensors, and bool / integer labels to ``X``'s floating dtype."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X if np.issubdtype(X.dtype, np.floating) else X.astype(np.float64))
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(X, Tensor):
        raise TypeError(f"X must be a torch.Tensor or a NumPy array, got {type(X).__name__}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor or a NumPy array, got {type(y).__name__}")
    if X.is_floating_point() and not y.is_floating_point():
        if y.is_complex():
            raise TypeError(f"y must hold 0/1 labels, got dtype {y.dtype}")
        check_binary(y, "y")
        y = y.to(dtype=X.dtype, device=X.device)
    return X, y


def _check_design(x: Tensor, y: Tensor) -> None:
    check_tensor(x, "X", ndim=2)
    check_tensor(y, "y", ndim=1)
    check_batch_size(x, "X", y, "y")
    check_same_dtype_device(x, "X", y, "y")
    check_in_range(y, "y", 0.0, 1.0, what="labels or probabilities")


def logistic_gradient(X: Tensor, y: Tensor, theta: Tensor) -> Tensor:
    r"""The analytic gradient of the mean logistic loss, :math:`X^\top(\sigma(X\theta) - y)/N`.

    It is the gradient of ``logistic_loss(X @ theta, y)`` with respect to ``theta``. ``theta``
    has one entry per column of ``X`` and nothing else: there is no separate bias. To fit a
    bias, pass ``add_intercept(X)``, whose first column is all ones, and read ``theta[0]`` as
    the bias. No penalty is included; an L2 term :math:`\lambda\lVert w\rVert^2/2` adds
    :math:`\lambda w` (see :class:`LogisticRegression`).

    Args:
        X: floating tensor of shape ``(N, d)``, one sample per row.
        y: tensor of shape ``(N,)``, labels 0.0 / 1.0 or probabilities in :math:`[0, 1]`.
        theta: tensor of shape ``(d,)``, same dtype and device as ``X``.

    Returns:
        Tensor of shape ``(d,)``.

    Shape:
        - X: ``(N, d)``; y: ``(N,)``; theta: ``(d,)``.
        - output: ``(d,)``.

    Examples:
        >>> import torch
        >>> from companion.logistic import logistic_gradient, logistic_loss
        >>> X = torch.tensor([[1.0, 2.0], [1.0, -1.0], [1.0, 0.5]], dtype=torch.float64)
        >>> y = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
        >>> logistic_gradient(X, y, torch.zeros(2, dtype=torch.float64))  # X^T (1/2 - y) / N
        tensor([-0.1667, -0.5833], dtype=torch.float64)
        >>> theta = torch.tensor([0.1, -0.3], dtype=torch.float64, requires_grad=True)
        >>> logistic_loss(X @ theta, y).backward()
        >>> torch.allclose(logistic_gradient(X, y, theta.detach()), theta.grad)
        True
    """
    _check_design(X, y)
    check_tensor(theta, "theta", ndim=1)
    check_shape(theta, "theta", (X.shape[1],))
    check_same_dtype_device(X, "X", theta, "theta")
    return _gradient(X, y, theta)


def _gradient(x: Tensor, y: Tensor, theta: Tensor) -> Tensor:
    """The analytic gradient, without input checks (callers have validated)."""
    return x.T @ (sigmoid(x @ theta) - y) / x.shape[0]


class LogisticRegression:
    r"""Binary logistic regression with an optional L2 penalty, fitted by gradient descent.

    Minimises, over the weights :math:`w \in \mathbb{R}^d` and the bias :math:`b`,

    .. math::

        J(b, w) = \frac{1}{N} \sum_{i=1}^{N} \ell(b + w^\top x_i, y_i)
                  + \frac{1}{2 C N} \lVert w \rVert^2,

    which is scikit-learn's objective :math:`\tfrac12\lVert w\rVert^2 + C\sum_i \ell_i` divided by
    :math:`CN`: the same minimiser, so ``C`` means what it means in
    :class:`sklearn.linear_model.LogisticRegression`. As there, the bias is not penalised.
    ``C=None`` fits the unpenalised maximum-likelihood model (which does not exist when the
    classes are linearly separable: the weights then grow without bound until ``max_iter``).

    Training uses only the analytic gradient :func:`logistic_gradient` plus the penalty's
    :math:`w / (CN)`. The step is :math:`1/L` with
    :math:`L = \lVert \tilde X\rVert_2^2 / (4N) + 1/(CN)`, a bound on the curvature of
    :math:`J` (the logistic loss's second derivative is at most 1/4). With ``accelerate=True``
    the steps use Nesterov momentum with gradient-based adaptive restart (O'Donoghue and
    Candès, 2015), which needs far fewer iterations on ill-conditioned data; with
    ``accelerate=False`` it is plain gradient descent. Both stop once every entry of the
    gradient of :math:`J` is at most ``tol`` in absolute value.

    Attributes:
        coef\_: the weights :math:`w`, shape ``(d,)`` (set by :meth:`fit`, like the others).
        intercept\_: the bias :math:`b`, a 0-d tensor (0 when ``fit_intercept=False``).
        n_iter\_: the number of gradient steps taken.
        converged\_: whether the gradient test passed before ``max_iter``.
        objective\_: :math:`J` at each iterate, starting from :math:`\theta = 0`.
        lipschitz\_: the curvature bound :math:`L` used for the step.

    Args:
        C: inverse regularisation strength (positive), or ``None`` for no penalty.
        fit_intercept: learn a bias (prepends a column of ones internally).
        accelerate: Nesterov momentum with adaptive restart instead of plain descent.
        max_iter: the most gradient steps.
        tol: stop when the largest absolute entry of the gradient is at most this.

    Shape:
        - X: ``(N, d)``; y: ``(N,)``.
        - output: :meth:`decision_function` and :meth:`predict` ``(N,)``, :meth:`predict_proba`
          ``(N, 2)``.

    Examples:
        >>> import torch
        >>> from companion.logistic import LogisticRegression
        >>> X = torch.tensor([[-2.0], [-1.0], [0.0], [1.0], [2.0]], dtype=torch.float64)
        >>> model = LogisticRegression(C=1.0).fit(X, torch.tensor([0, 0, 1, 0, 1]))
        >>> model.converged_, model.predict(X)
        (True, tensor([0., 0., 0., 1., 1.], dtype=torch.float64))
        >>> model.predict_proba(X).sum(dim=1)
        tensor([1., 1., 1., 1., 1.], dtype=torch.float64)
    """

    def __init__(
        self,
        C: float | None = 1.0,
        *,
        fit_intercept: bool = True,
        accelerate: bool = True,
        max_iter: int = 20_000,
        tol: float = 1e-8,
    ) -> None:
        self.C = None if C is None else check_positive(C, "C")
        self.fit_intercept = bool(fit_intercept)
        self.accelerate = bool(accelerate)
        self.max_iter = check_int(max_iter, "max_iter", minimum=1)
        self.tol = check_positive(tol, "tol")
        self.coef_: Tensor | None = None
        self.intercept_: Tensor | None = None
        self.n_iter_ = 0
        self.converged_ = False
        self.objective_: list[float] = []
        self.lipschitz_ = float("nan")

    def _design(self, x: Tensor) -> Tensor:
        return add_intercept(x) if self.fit_intercept else x

    def fit(self, X: Tensor | np.ndarray, y: Tensor | np.ndarray) -> LogisticRegression:
        """Fit to features ``X`` of shape ``(N, d)`` and targets ``y`` of shape ``(N,)``.

        Takes what scikit-learn takes: ``X`` a floating tensor or a NumPy array (integer
        arrays become float64); ``y`` 0/1 labels as a bool, integer or floating tensor or
        array (probabilities in [0, 1] are accepted too), converted to ``X``'s dtype and
        device. Returns ``self``.
        """
        X, y = _as_design(X, y)
        _check_design(X, y)
        xt = self._design(X)
        n = xt.shape[0]
        # lam = 1 / (C N) multiplies the weights in the gradient; the bias entry is masked out.
        lam = 0.0 if self.C is None else 1.0 / (self.C * n)
        mask = torch.ones(xt.shape[1], dtype=xt.dtype, device=xt.device)
        if self.fit_intercept:
            mask[0] = 0.0
        spectral = float(torch.linalg.matrix_norm(xt.double(), ord=2))
        lipschitz = spectral**2 / (4 * n) + lam
        step = 1.0 / lipschitz

        def gradient(theta: Tensor) -> Tensor:
            return _gradient(xt, y, theta) + lam * mask * theta

        def objective(theta: Tensor) -> float:
            # l(z, y) = softplus(z) - y z: the same loss with a single softplus
            z = xt @ theta
            penalty = 0.5 * lam * float(((mask * theta) ** 2).sum())
            return float((softplus(z) - y * z).mean()) + penalty

        theta = previous = torch.zeros(xt.shape[1], dtype=xt.dtype, device=xt.device)
        g = gradient(theta)
        self.objective_ = [objective(theta)]
        self.n_iter_ = momentum_age = 0
        while float(g.abs().max()) > self.tol and self.n_iter_ < self.max_iter:
            if self.accelerate:
                # step from a point extrapolated along the last step (Nesterov)
                look_ahead = theta + (momentum_age / (momentum_age + 3)) * (theta - previous)
                g_look = gradient(look_ahead)
            else:
                look_ahead, g_look = theta, g
            new = look_ahead - step * g_look
            # restart the momentum when it points uphill (O'Donoghue and Candes, 2015)
            momentum_age = 0 if float(g_look @ (new - theta)) > 0 else momentum_age + 1
            previous, theta = theta, new
            g = gradient(theta)
            self.objective_.append(objective(theta))
            self.n_iter_ += 1
        self.converged_ = float(g.abs().max()) <= self.tol
        self.lipschitz_ = lipschitz
        if self.fit_intercept:
            self.intercept_, self.coef_ = theta[0], theta[1:].clone()
        else:
            self.intercept_, self.coef_ = torch.zeros((), dtype=xt.dtype, device=xt.device), theta
        return self

    def _fitted(self) -> tuple[Tensor, Tensor]:
        if self.coef_ is None or self.intercept_ is None:
            raise RuntimeError("this LogisticRegression is not fitted yet; call fit(X, y) first")
        return self.coef_, self.intercept_

    def decision_function(self, X: Tensor) -> Tensor:
        r"""The logits :math:`b + Xw`, shape ``(N,)``."""
        coef, intercept = self._fitted()
        check_tensor(X, "X", ndim=2)
        check_shape(X, "X", (X.shape[0], coef.shape[0]))
        check_same_dtype_device(coef, "coef_", X, "X")
        return X @ coef + intercept

    def predict_proba(self, X: Tensor) -> Tensor:
        r"""Class probabilities, shape ``(N, 2)``: columns :math:`\sigma(-z)` and :math:`\sigma(z)`.

        Column 0 is :math:`P(y = 0 \mid x)`, column 1 is :math:`P(y = 1 \mid x)`, as in
        scikit-learn.
        """
        z = self.decision_function(X)
        return torch.stack([sigmoid(-z), sigmoid(z)], dim=1)

    def predict(self, X: Tensor) -> Tensor:
        """Predicted labels, 1.0 where the logit is positive (probability above 1/2), else 0.0.

        Returns a tensor of shape ``(N,)`` with the dtype of ``X``.
        """
        return (self.decision_function(X) > 0).to(X.dtype)
