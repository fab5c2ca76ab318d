"""companion.sigmoid: agreement with torch, exact derivatives, gradcheck, extremes, bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from companion import sigmoid as S
from tests.conftest import LOW_PRECISION, assert_finite

# Each companion function next to torch's built-in for the same quantity.
PAIRS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "sigmoid": (S.sigmoid, torch.sigmoid),
    "sigmoid_grad": (S.sigmoid_grad, lambda x: torch.sigmoid(x) * torch.sigmoid(-x)),
    # F.softplus returns x above threshold=20 (an approximation); logaddexp is exact
    "softplus": (S.softplus, lambda x: torch.logaddexp(x, torch.zeros_like(x))),
    "log_sigmoid": (S.log_sigmoid, F.logsigmoid),
    "log1m_sigmoid": (S.log1m_sigmoid, lambda x: F.logsigmoid(-x)),
}
# The derivative each function should have, written with torch's sigmoid.
DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)),
    "softplus": torch.sigmoid,
    "log_sigmoid": lambda x: 1 - torch.sigmoid(x),
    "log1m_sigmoid": lambda x: -torch.sigmoid(x),
}

finite_floats = st.floats(min_value=-800, max_value=800, allow_nan=False)


@pytest.mark.parametrize("name", PAIRS)
@given(values=st.lists(finite_floats, min_size=1, max_size=50))
def test_agrees_with_torch_in_float64(name: str, values: list[float]) -> None:
    ours, theirs = PAIRS[name]
    x = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("name", DERIVATIVES)
def test_autograd_derivative_equals_the_derived_formula(name: str) -> None:
    fn, _ = PAIRS[name]
    # includes 0 exactly, where a naive |x| would give the wrong one-sided derivative
    x = torch.cat([torch.linspace(-30, 30, 241, dtype=torch.float64), torch.zeros(1)])
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x).sum(), x)
    torch.testing.assert_close(grad, DERIVATIVES[name](x.detach()), rtol=1e-12, atol=1e-15)


def test_sigmoid_grad_is_the_derivative_of_sigmoid() -> None:
    x = torch.linspace(-40, 40, 161, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(S.sigmoid(x).sum(), x)
    torch.testing.assert_close(S.sigmoid_grad(x.detach()), grad, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("name", PAIRS)
def test_gradcheck_float64(name: str) -> None:
    fn, _ = PAIRS[name]
    x = torch.tensor([-50.0, -3.0, -0.5, 0.0, 0.7, 4.0, 60.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(),))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("name", PAIRS)
def test_finite_values_and_gradients_at_extremes(name: str, dtype: torch.dtype) -> None:
    fn, reference = PAIRS[name]
    x = torch.tensor([-1e4, -100.0, -1.0, 0.0, 1.0, 100.0, 1e4], dtype=dtype, requires_grad=True)
    y = fn(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert y.dtype == dtype
    assert_finite(y, grad)
    want = reference(x.detach().double())
    torch.testing.assert_close(
        y.double(), want, rtol=2e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-30
    )


def test_log_sigmoid_where_the_naive_form_breaks() -> None:
    x = torch.tensor([-120.0], requires_grad=True)
    naive = torch.log(torch.sigmoid(x))
    assert torch.isinf(naive).all()  # the failure the chapter shows
    (naive_grad,) = torch.autograd.grad(naive.sum(), x)
    assert torch.isnan(naive_grad).all()  # and the NaN gradient the docstring promises
    stable = S.log_sigmoid(x)
    (grad,) = torch.autograd.grad(stable.sum(), x)
    torch.testing.assert_close(stable, torch.tensor([-120.0]))
    torch.testing.assert_close(grad, torch.tensor([1.0]))


def test_symmetry_and_inverse() -> None:
    x = torch.linspace(-20, 20, 81, dtype=torch.float64)
    torch.testing.assert_close(S.sigmoid(-x), 1 - S.sigmoid(x), rtol=0, atol=1e-15)
    torch.testing.assert_close(S.logit(S.sigmoid(x)), x, rtol=1e-8, atol=1e-8)
    p = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(S.logit(p, eps=1e-6), torch.logit(p, eps=1e-6))
    assert S.logit(p).tolist() == [float("-inf"), 0.0, float("inf")]


def test_preserves_shape_dtype_and_empty_input() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    for fn, _ in PAIRS.values():
        y = fn(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert fn(torch.zeros(0)).shape == (0,)


@pytest.mark.parametrize(
    "fn", [S.sigmoid, S.sigmoid_grad, S.softplus, S.log_sigmoid, S.log1m_sigmoid, S.logit]
)
def test_bad_input(fn: Callable[..., Tensor]) -> None:
    with pytest.raises(TypeError, match=r"^input must be a torch.Tensor, got float"):
        fn(0.5)
    with pytest.raises(TypeError, match=r"^input must be a floating-point tensor .*int64"):
        fn(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"^input contains NaN"):
        fn(torch.tensor([0.5, float("nan")]))


def test_logit_rejects_values_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match=r"^input must hold probabilities in \[0.0, 1.0\]"):
        S.logit(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"eps must be in \(0, 0.5\), got 0.7"):
        S.logit(torch.tensor([0.5]), eps=0.7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_exact_limits_at_infinity(dtype: torch.dtype) -> None:
    """At +-inf every function returns its limit (not NaN), with a finite gradient."""
    x = torch.tensor([math.inf, -math.inf], dtype=dtype, requires_grad=True)
    inf = math.inf
    want = {
        S.sigmoid: ([1.0, 0.0], [0.0, 0.0]),
        S.sigmoid_grad: ([0.0, 0.0], [0.0, 0.0]),
        S.softplus: ([inf, 0.0], [1.0, 0.0]),
        S.log_sigmoid: ([0.0, -inf], [0.0, 1.0]),
        S.log1m_sigmoid: ([-inf, 0.0], [-1.0, 0.0]),
    }
    for fn, (value, slope) in want.items():
        y = fn(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert y.tolist() == value, fn.__name__
        assert g.tolist() == slope, fn.__name__
