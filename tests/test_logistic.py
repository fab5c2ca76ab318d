"""companion.logistic: the loss against torch, the analytic gradient, the fitted model against
scikit-learn, extremes, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from torch import Tensor

from companion import logistic as L
from companion.data import load_breast_cancer, two_gaussians
from companion.logistic import (
    LogisticRegression,
    add_intercept,
    logistic_gradient,
    logistic_loss,
)
from tests.conftest import LOW_PRECISION, REDUCTIONS, assert_finite

logit_values = st.floats(min_value=-500, max_value=500, allow_nan=False)
probabilities = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def logits_and_targets(draw: st.DrawFn) -> tuple[Tensor, Tensor]:
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    logits = draw(arrays(np.float64, shape, elements=logit_values))
    hard = draw(st.booleans())
    target = draw(
        arrays(np.float64, shape, elements=st.sampled_from([0.0, 1.0]) if hard else probabilities)
    )
    return torch.from_numpy(logits), torch.from_numpy(target)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=logits_and_targets())
def test_loss_agrees_with_torch_in_float64(reduction: str, data: tuple[Tensor, Tensor]) -> None:
    logits, target = data
    ours = logistic_loss(logits, target, reduction=reduction)
    theirs = F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-12)


@given(data=logits_and_targets())
def test_derivative_in_the_logit_is_sigmoid_minus_target(data: tuple[Tensor, Tensor]) -> None:
    logits, target = data
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(logistic_loss(logits, target, reduction="sum"), logits)
    torch.testing.assert_close(grad, torch.sigmoid(logits.detach()) - target, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_finite_values_and_gradients_at_extremes(dtype: torch.dtype, reduction: str) -> None:
    z = torch.tensor([-1e4, -1e4, -1e4, 0.0, 1e4, 1e4, 1e4], dtype=dtype, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 0.5], dtype=dtype)
    loss = logistic_loss(z, y, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert loss.dtype == dtype
    assert_finite(loss, grad)
    want = F.binary_cross_entropy_with_logits(z.detach().double(), y.double(), reduction=reduction)
    torch.testing.assert_close(
        loss.double(), want, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-6
    )


def test_loss_is_zero_only_for_confident_correct_predictions() -> None:
    z = torch.tensor([50.0, -50.0, 0.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    loss = logistic_loss(z, y, reduction="none")
    assert loss[:2].max() < 1e-20
    torch.testing.assert_close(loss[2], torch.log(torch.tensor(2.0, dtype=torch.float64)))


@given(
    n=st.integers(1, 12),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    soft=st.booleans(),
)
def test_analytic_gradient_equals_autograd(n: int, d: int, seed: int, soft: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3
    y = torch.rand(n, generator=g, dtype=torch.float64)
    y = y if soft else (y > 0.5).double()
    theta = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(logistic_loss(x @ theta, y), theta)
    analytic = logistic_gradient(x, y, theta.detach())
    torch.testing.assert_close(analytic, auto, rtol=1e-10, atol=1e-12)
    # and the explicit sum over samples, written out naively in NumPy
    xn, yn, tn = x.numpy(), y.numpy(), theta.detach().numpy()
    naive = sum((1 / (1 + np.exp(-xn[i] @ tn)) - yn[i]) * xn[i] for i in range(n)) / n
    np.testing.assert_allclose(analytic.numpy(), naive, rtol=1e-10, atol=1e-12)


def test_add_intercept_makes_theta0_the_bias() -> None:
    x = torch.tensor([[2.0, 3.0], [-1.0, 0.5]], dtype=torch.float64)
    theta = torch.tensor([0.7, 1.0, -2.0], dtype=torch.float64)
    xt = add_intercept(x)
    assert xt.shape == (2, 3) and torch.equal(xt[:, 0], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(xt @ theta, 0.7 + x @ theta[1:])


@pytest.fixture(scope="module")
def breast_cancer_models() -> tuple[LogisticRegression, SkLogisticRegression]:
    split = load_breast_cancer()
    ours = LogisticRegression(C=1.0).fit(split.x_train, split.y_train)
    theirs = SkLogisticRegression(C=1.0, tol=1e-10, max_iter=10_000)
    theirs.fit(split.x_train.numpy(), split.y_train.numpy())
    return ours, theirs


def test_matches_scikit_learn_on_breast_cancer(
    breast_cancer_models: tuple[LogisticRegression, SkLogisticRegression],
) -> None:
    ours, theirs = breast_cancer_models
    split = load_breast_cancer()
    assert ours.converged_
    assert ours.coef_ is not None and ours.intercept_ is not None
    np.testing.assert_allclose(ours.coef_.numpy(), theirs.coef_[0], rtol=0, atol=1e-3)
    assert abs(float(ours.intercept_) - float(theirs.intercept_[0])) < 1e-3
    x_test = split.x_test
    assert torch.equal(ours.predict(x_test), torch.from_numpy(theirs.predict(x_test.numpy())))
    np.testing.assert_allclose(
        ours.predict_proba(x_test).numpy(), theirs.predict_proba(x_test.numpy()), atol=1e-5
    )


def test_plain_descent_decreases_the_objective_and_reaches_the_same_point() -> None:
    # with the step 1/L, plain gradient descent never increases a convex L-smooth objective
    x, y = two_gaussians(60, distance=1.5, generator=torch.Generator().manual_seed(1))
    plain = LogisticRegression(C=0.5, accelerate=False, tol=1e-9).fit(x, y)
    fast = LogisticRegression(C=0.5, accelerate=True, tol=1e-9).fit(x, y)
    steps = torch.tensor(plain.objective_).diff()
    assert (steps <= 1e-15).all()
    assert plain.converged_ and fast.converged_ and fast.n_iter_ < plain.n_iter_
    assert plain.coef_ is not None and fast.coef_ is not None
    torch.testing.assert_close(plain.coef_, fast.coef_, rtol=0, atol=1e-7)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_unpenalised_and_no_intercept_match_scikit_learn(fit_intercept: bool) -> None:
    x, y = two_gaussians(80, distance=1.0, dim=3, generator=torch.Generator().manual_seed(2))
    ours = LogisticRegression(C=None, fit_intercept=fit_intercept).fit(x, y)
    theirs = SkLogisticRegression(C=np.inf, fit_intercept=fit_intercept, tol=1e-10, max_iter=10_000)
    theirs.fit(x.numpy(), y.numpy())
    assert ours.coef_ is not None and ours.intercept_ is not None
    np.testing.assert_allclose(ours.coef_.numpy(), theirs.coef_[0], atol=1e-5)
    want_intercept = float(theirs.intercept_[0]) if fit_intercept else 0.0
    assert abs(float(ours.intercept_) - want_intercept) < 1e-5


def test_gradient_vanishes_at_the_fitted_point_with_soft_targets() -> None:
    x, _ = two_gaussians(30, generator=torch.Generator().manual_seed(3))
    y = torch.sigmoid(x @ torch.tensor([1.5, -0.5], dtype=torch.float64) + 0.2)  # soft labels
    model = LogisticRegression(C=None, tol=1e-10).fit(x, y)
    assert model.coef_ is not None and model.intercept_ is not None
    theta = torch.cat([model.intercept_.reshape(1), model.coef_])
    assert logistic_gradient(add_intercept(x), y, theta).abs().max() <= 1e-10
    # the labels were generated by a logistic model, so the fit recovers it exactly
    torch.testing.assert_close(theta, torch.tensor([0.2, 1.5, -0.5], dtype=torch.float64))


def test_predictions_are_consistent() -> None:
    x, y = two_gaussians(40, generator=torch.Generator().manual_seed(4))
    model = LogisticRegression().fit(x, y)
    proba = model.predict_proba(x)
    assert proba.shape == (80, 2)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(80, dtype=torch.float64))
    assert torch.equal(model.predict(x), (proba[:, 1] > 0.5).double())
    assert model.predict(x).dtype == x.dtype


def test_max_iter_stops_an_unconverged_fit() -> None:
    x, y = two_gaussians(40, generator=torch.Generator().manual_seed(5))
    model = LogisticRegression(max_iter=3).fit(x, y)
    assert model.n_iter_ == 3 and not model.converged_ and len(model.objective_) == 4


F64 = torch.float64


def _t(*values: float, dtype: torch.dtype = F64) -> Tensor:
    return torch.tensor(values, dtype=dtype)


LOSS_BAD_INPUT = [
    ((0.5, _t(1.0)), TypeError, r"input must be a torch.Tensor, got float"),
    ((_t(0.5), torch.tensor([1])), TypeError, r"target must be a floating-point tensor .*int64"),
    ((_t(0.5, 1.0), _t(1.0)), ValueError, r"target must have the same shape as input \(2,\)"),
    ((_t(), _t()), ValueError, r"input must not be empty"),
    ((_t(0.5), _t(1.5)), ValueError, r"target must hold probabilities in \[0.0, 1.0\].*1.5"),
    ((_t(0.5), _t(-0.1)), ValueError, r"target must hold probabilities in \[0.0, 1.0\]"),
    ((_t(float("nan")), _t(1.0)), ValueError, r"input contains NaN"),
    ((_t(0.5), _t(1.0, dtype=torch.float32)), TypeError, r"target must have the same dtype"),
]


@pytest.mark.parametrize(("args", "error", "message"), LOSS_BAD_INPUT)
def test_loss_bad_input(args: tuple[object, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        logistic_loss(*args)  # type: ignore[arg-type]


def test_loss_bad_reduction() -> None:
    with pytest.raises(ValueError, match=r"reduction must be one of .*got 'avg'"):
        logistic_loss(_t(0.5), _t(1.0), reduction="avg")


X3 = torch.zeros(3, 2, dtype=F64)
GRADIENT_BAD_INPUT = [
    ((X3[0], _t(0, 1, 0), _t(0, 0)), ValueError, r"X must have 2 dimension\(s\), got 1"),
    ((X3, _t(0, 1), _t(0, 0)), ValueError, r"X and y must have the same batch size .*got 3.*2"),
    ((X3, _t(0, 1, 2), _t(0, 0)), ValueError, r"y must hold labels or probabilities in \[0.0"),
    ((X3, _t(0, 1, 0), _t(0, 0, 0)), ValueError, r"theta must have shape \(2,\), got \(3,\)"),
    ((X3[:0], _t(), _t(0, 0)), ValueError, r"X must not be empty"),
    ((X3, _t(0, 1, 0), _t(0, 0, dtype=torch.float32)), TypeError, r"theta must have the same"),
    ((X3.long(), _t(0, 1, 0), _t(0, 0)), TypeError, r"X must be a floating-point tensor"),
]


@pytest.mark.parametrize(("args", "error", "message"), GRADIENT_BAD_INPUT)
def test_gradient_bad_input(
    args: tuple[object, object, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        logistic_gradient(*args)  # type: ignore[arg-type]


def test_model_bad_input() -> None:
    with pytest.raises(ValueError, match=r"C must be a finite positive number, got -1.0"):
        LogisticRegression(C=-1.0)
    with pytest.raises(ValueError, match=r"max_iter must be at least 1, got 0"):
        LogisticRegression(max_iter=0)
    with pytest.raises(RuntimeError, match=r"not fitted yet"):
        LogisticRegression().predict(X3)
    model = LogisticRegression().fit(X3 + torch.eye(3, 2, dtype=F64), _t(0, 1, 0))
    with pytest.raises(ValueError, match=r"X must have shape \(3, 2\), got \(3, 5\)"):
        model.predict(torch.zeros(3, 5, dtype=F64))
    with pytest.raises(TypeError, match=r"X must have the same dtype as coef_"):
        model.predict_proba(X3.float())
    with pytest.raises(ValueError, match=r"y must hold labels or probabilities"):
        LogisticRegression().fit(X3, _t(0, 1, 3))


def test_fit_takes_what_scikit_learn_takes() -> None:
    """0/1 labels as bool, int or float tensors and NumPy arrays all give the same fit."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g, dtype=torch.float64)
    labels = (X[:, 0] + 0.3 * torch.randn(40, generator=g, dtype=torch.float64) > 0).double()
    want = L.LogisticRegression().fit(X, labels).coef_
    for y in (labels.bool(), labels.long(), labels.int(), labels.numpy(), labels.long().numpy()):
        got = L.LogisticRegression().fit(X, y).coef_
        assert got is not None and want is not None
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    from_numpy = L.LogisticRegression().fit(X.numpy(), labels.numpy()).coef_
    assert from_numpy is not None and want is not None
    torch.testing.assert_close(from_numpy, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="y must hold the labels 0 and 1, got 2"):
        L.LogisticRegression().fit(X, labels.long() * 2)


def test_fit_with_inf_names_the_argument() -> None:
    """Finding 7: inf in X used to end in 'x contains NaN', an internal variable."""
    X = torch.ones(4, 2, dtype=torch.float64)
    X[1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"^X must be finite"):
        L.LogisticRegression().fit(X, torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64))
