"""companion.invented: naive-formula agreement, the alpha -> 0 limit, gradients, extremes, input."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from companion import invented as I
from tests.conftest import LOW_PRECISION, REDUCTIONS, assert_finite

Loss = Callable[..., Tensor]


def _power(alpha: float) -> Loss:
    def loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        return I.inverse_power_loss(input, target, alpha=alpha, reduction=reduction)

    return loss


# Each loss with its naive float64 formula in terms of p_y (fine for moderate logits) and the
# per-example weight w(p_y) that multiplies the cross-entropy gradient p - e_y.
CASES: dict[str, tuple[Loss, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "dot_product": (I.dot_product_loss, lambda p: -p, lambda p: p),
    "inverse": (I.inverse_loss, lambda p: 1 / p, lambda p: 1 / p),
    "power_0.2": (_power(0.2), lambda p: (p**-0.2 - 1) / 0.2, lambda p: p**-0.2),
    "power_1": (_power(1.0), lambda p: 1 / p - 1, lambda p: 1 / p),
    "power_-0.5": (_power(-0.5), lambda p: (p**0.5 - 1) / -0.5, lambda p: p**0.5),
    "power_-1": (_power(-1.0), lambda p: 1 - p, lambda p: p),
    "power_0": (_power(0.0), lambda p: -torch.log(p), lambda p: torch.ones_like(p)),
}


def naive_target_prob(logits: Tensor, target: Tensor) -> Tensor:
    """p_y from the textbook softmax formula, in float64 (no stabilisation)."""
    z = logits.double()
    p = torch.exp(z) / torch.exp(z).sum(dim=1, keepdim=True)
    return p[torch.arange(len(target)), target]


@st.composite
def logits_and_target(draw: st.DrawFn, bound: float = 20.0) -> tuple[Tensor, Tensor]:
    batch = draw(st.integers(1, 6))
    classes = draw(st.integers(1, 5))
    values = draw(
        st.lists(
            st.floats(-bound, bound, allow_nan=False),
            min_size=batch * classes,
            max_size=batch * classes,
        )
    )
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch))
    return (
        torch.tensor(values, dtype=torch.float64).reshape(batch, classes),
        torch.tensor(labels, dtype=torch.long),
    )


@pytest.mark.parametrize("name", CASES)
@given(data=logits_and_target())
def test_agrees_with_the_naive_formula_in_float64(name: str, data: tuple[Tensor, Tensor]) -> None:
    loss, formula, _ = CASES[name]
    logits, target = data
    want = formula(naive_target_prob(logits, target))
    torch.testing.assert_close(loss(logits, target, reduction="none"), want, rtol=1e-9, atol=1e-12)


@given(data=logits_and_target())
def test_target_log_prob_is_log_softmax_at_the_target(data: tuple[Tensor, Tensor]) -> None:
    logits, target = data
    want = torch.log(naive_target_prob(logits, target))
    torch.testing.assert_close(I.target_log_prob(logits, target), want, rtol=1e-9, atol=1e-12)


def test_alpha_zero_is_cross_entropy_and_the_limit_approaches_it() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(64, 7, dtype=torch.float64, generator=gen)
    target = torch.randint(0, 7, (64,), generator=gen)
    ce = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(
        I.inverse_power_loss(logits, target, alpha=0.0, reduction="none"), ce, rtol=1e-14, atol=0
    )
    previous = math.inf
    for alpha in (0.5, 0.1, 1e-2, 1e-3, 1e-4, -1e-4, -1e-2):
        got = I.inverse_power_loss(logits, target, alpha=alpha, reduction="none")
        gap = (got - ce).abs().max().item()
        if abs(alpha) <= 1e-2:
            # (e^(a l) - 1)/a - l = a l^2/2 (1 + a l/3 + ...): the first-order term dominates
            rtol = abs(alpha) * ce.max().item()
            torch.testing.assert_close(got - ce, alpha * ce**2 / 2, rtol=rtol, atol=1e-12)
        if alpha > 0:
            assert gap < previous
            previous = gap
    assert previous < 1e-4 * ce.max().item() ** 2  # the last positive alpha was 1e-4


def test_special_members_of_the_power_family() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(32, 5, dtype=torch.float64, generator=gen)
    target = torch.randint(0, 5, (32,), generator=gen)
    inv = I.inverse_loss(logits, target, reduction="none")
    dot = I.dot_product_loss(logits, target, reduction="none")
    torch.testing.assert_close(
        I.inverse_power_loss(logits, target, alpha=1, reduction="none"), inv - 1
    )
    torch.testing.assert_close(
        I.inverse_power_loss(logits, target, alpha=-1, reduction="none"), dot + 1
    )
    # the source's raw power p_y^(-alpha) is 1 + alpha * L_alpha
    raw = naive_target_prob(logits, target) ** -0.2
    torch.testing.assert_close(
        1 + 0.2 * I.inverse_power_loss(logits, target, reduction="none"), raw
    )


@pytest.mark.parametrize("name", CASES)
def test_gradient_is_the_cross_entropy_gradient_times_a_weight(name: str) -> None:
    loss, _, weight = CASES[name]
    gen = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(16, 6, dtype=torch.float64, generator=gen)).requires_grad_(True)
    target = torch.randint(0, 6, (16,), generator=gen)
    (grad,) = torch.autograd.grad(loss(logits, target, reduction="sum"), logits)
    p = torch.softmax(logits.detach(), dim=1)
    p_y = p[torch.arange(16), target]
    want = weight(p_y)[:, None] * (p - F.one_hot(target, 6).double())
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("name", CASES)
def test_finite_values_and_gradients_at_extremes(name: str, dtype: torch.dtype) -> None:
    loss, formula, _ = CASES[name]
    logits = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0], [1e4, 1e4, -1e4], [1.0, -2.0, 0.5]],
        dtype=dtype,
        requires_grad=True,
    )
    target = torch.tensor([0, 0, 2, 1, 2])
    for reduction in REDUCTIONS:
        value = loss(logits, target, reduction=reduction)
        (grad,) = torch.autograd.grad(value.sum(), logits)
        assert value.dtype == dtype and grad.dtype == dtype
        assert_finite(value, grad)
    # rows whose loss is representable agree with the float64 formula
    moderate = [0, 2, 3, 4]
    got = loss(logits.detach()[moderate], target[moderate], reduction="none")
    reference = torch.log_softmax(logits.detach()[moderate].double(), dim=1)  # stable
    want = formula(reference[torch.arange(len(moderate)), target[moderate]].exp())
    torch.testing.assert_close(
        got.double(), want, rtol=2e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_loss_continues_linearly_beyond_the_threshold(dtype: torch.dtype) -> None:
    c = I.exponent_threshold(dtype)
    assert c == pytest.approx(0.5 * math.log(torch.finfo(dtype).max))
    # two classes, target 0: -log p_0 = softplus(z_1 - z_0) ~ z_1 - z_0 for a large gap
    gaps = torch.tensor([c - 5, c - 1e-3, c + 1e-3, c + 5, 2e4], dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(gaps), gaps], dim=1).to(dtype).requires_grad_(True)
    target = torch.zeros(5, dtype=torch.long)
    value = I.inverse_loss(logits, target, reduction="none")
    (grad,) = torch.autograd.grad(value.sum(), logits)
    nll = F.cross_entropy(logits.detach().double(), target, reduction="none")
    exact = torch.exp(nll.clamp(max=c))
    tail = math.exp(c) * (1 + nll - c)
    want = torch.where(nll <= c, exact, tail)
    torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=0)
    # continuous at the threshold, and the slope there is e^c on both sides
    assert value[1].item() == pytest.approx(value[2].item(), rel=1e-2)
    slope = torch.full((4,), math.exp(c), dtype=torch.float64)
    torch.testing.assert_close(grad[1:, 1].double(), slope, rtol=1e-2, atol=0)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    assert (grad[:, 1] > 0).all()  # still pushes the wrong logit down


@given(data=logits_and_target(bound=10.0), bump=st.floats(0.1, 5.0))
def test_every_loss_falls_when_the_target_logit_rises(
    data: tuple[Tensor, Tensor], bump: float
) -> None:
    logits, target = data
    if logits.shape[1] == 1:  # one class: p_y = 1 whatever the logit
        return
    raised = logits.clone()
    raised[torch.arange(len(target)), target] += bump
    for loss, _, _ in CASES.values():
        before = loss(logits, target, reduction="none")
        after = loss(raised, target, reduction="none")
        assert (after < before).all()


@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.0, 0.2, 1.0])
def test_expected_loss_is_stationary_at_the_tempered_distribution(alpha: float) -> None:
    # minimising sum_k q_k L(z, k) over the logits gives p proportional to q^(1 / (1 + alpha))
    # (alpha > -1); only alpha = 0 (cross-entropy) recovers q itself.
    q = torch.tensor([0.6, 0.25, 0.1, 0.05], dtype=torch.float64)
    classes = torch.arange(4)

    def expected(z: Tensor) -> Tensor:
        rows = z.expand(4, 4)
        return (q * I.inverse_power_loss(rows, classes, alpha=alpha, reduction="none")).sum()

    if alpha > -1:
        z_star = (torch.log(q) / (1 + alpha)).requires_grad_(True)
        (grad,) = torch.autograd.grad(expected(z_star), z_star)
        torch.testing.assert_close(grad, torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-14)
    z_true = torch.log(q).requires_grad_(True)
    (grad,) = torch.autograd.grad(expected(z_true), z_true)
    assert (grad.abs().max().item() < 1e-14) == (alpha == 0.0)


GOOD_LOGITS = torch.zeros(3, 4)
GOOD_TARGET = torch.tensor([0, 1, 3])

BAD_INPUTS: list[tuple[dict[str, object], type[Exception], str]] = [
    ({"input": [[0.0, 1.0]]}, TypeError, r"input must be a torch.Tensor, got list"),
    ({"input": torch.zeros(3, 4, dtype=torch.long)}, TypeError, r"input must be a floating"),
    ({"input": torch.zeros(4)}, ValueError, r"input must have 2 dimension\(s\), got 1"),
    (
        {"input": torch.zeros(0, 4), "target": torch.zeros(0, dtype=torch.long)},
        ValueError,
        r"input must not be empty",
    ),
    ({"input": torch.tensor([[0.0, float("nan")]] * 3)}, ValueError, r"input contains NaN"),
    ({"input": torch.tensor([[0.0, float("inf")]] * 3)}, ValueError, r"input must be finite"),
    ({"target": torch.tensor([0.0, 1.0, 3.0])}, TypeError, r"target must hold integer class"),
    ({"target": [0, 1, 3]}, TypeError, r"target must be a torch.Tensor of class indices"),
    (
        {"target": torch.tensor([0, 1, 4])},
        ValueError,
        r"target must hold class indices in \[0, 3\]",
    ),
    ({"target": torch.tensor([0, -1, 2])}, ValueError, r"class indices in \[0, 3\].*got -1"),
    ({"target": torch.tensor([0, 1])}, ValueError, r"target must have shape \(3,\), got \(2,\)"),
    ({"target": torch.tensor([[0], [1], [3]])}, ValueError, r"target must have shape \(3,\)"),
    ({"reduction": "avg"}, ValueError, r"reduction must be one of .*got 'avg'"),
]


@pytest.mark.parametrize("name", ["dot_product", "inverse", "power_0.2"])
@pytest.mark.parametrize(("change", "error", "message"), BAD_INPUTS)
def test_bad_input(
    name: str, change: dict[str, object], error: type[Exception], message: str
) -> None:
    loss, _, _ = CASES[name]
    kwargs: dict[str, object] = {"input": GOOD_LOGITS, "target": GOOD_TARGET, "reduction": "mean"}
    kwargs.update(change)
    with pytest.raises(error, match=message):
        loss(**kwargs)


@pytest.mark.parametrize(
    ("alpha", "error", "message"),
    [
        ("0.2", TypeError, r"alpha must be a real number \(int or float\), got str"),
        (True, TypeError, r"alpha must be a real number .*got bool"),
        (torch.tensor(0.2), TypeError, r"alpha must be a real number .*got Tensor"),
        (float("nan"), ValueError, r"alpha must be a finite number, got nan"),
        (float("inf"), ValueError, r"alpha must be a finite number, got inf"),
    ],
)
def test_bad_alpha(alpha: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        I.inverse_power_loss(GOOD_LOGITS, GOOD_TARGET, alpha=alpha)  # type: ignore[arg-type]
