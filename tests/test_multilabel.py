"""companion.multilabel: agreement with torch and scikit-learn, gradients, extremes, bad input."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics
from torch import Tensor

from companion import multilabel as M
from tests.conftest import LOW_PRECISION, REDUCTIONS, assert_finite

# torch's fused kernel computes (1 - y) x + (1 + (p - 1) y) softplus(-x), which cancels to 0 for
# y = 0 and very negative x (true loss e^x, below 1e-12 once x < -28); the companion keeps those
# tiny values exactly, so elementwise comparisons need this absolute floor.
ATOL = 1e-12


@st.composite
def logits_and_targets(draw: st.DrawFn) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random (N, C) logits, soft or hard targets, an (N, 1) weight and a (C,) pos_weight."""
    n = draw(st.integers(1, 6))
    c = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 3.0, 40.0]))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    target = torch.rand(n, c, generator=g, dtype=torch.float64)
    if draw(st.booleans()):
        target = target.round()
    weight = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2
    pos_weight = torch.rand(c, generator=g, dtype=torch.float64) * 5
    return logits, target, weight, pos_weight


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=logits_and_targets(), use_weight=st.booleans(), use_pos_weight=st.booleans())
def test_bce_agrees_with_torch_in_float64(
    reduction: str,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    use_weight: bool,
    use_pos_weight: bool,
) -> None:
    logits, target, weight, pos_weight = data
    kwargs = {
        "weight": weight if use_weight else None,
        "pos_weight": pos_weight if use_pos_weight else None,
        "reduction": reduction,
    }
    ours = M.binary_cross_entropy_with_logits(logits, target, **kwargs)
    theirs = F.binary_cross_entropy_with_logits(logits, target, **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=ATOL)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=logits_and_targets())
def test_soft_margin_agrees_with_torch_in_float64(
    reduction: str, data: tuple[Tensor, Tensor, Tensor, Tensor]
) -> None:
    logits, target, _, _ = data
    ours = M.multilabel_soft_margin_loss(logits, target, reduction=reduction)
    theirs = F.multilabel_soft_margin_loss(logits, target, reduction=reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=ATOL)


@given(data=logits_and_targets())
def test_soft_margin_is_bce_reduced_per_sample(data: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
    logits, target, _, _ = data
    c = logits.shape[1]
    bce = M.binary_cross_entropy_with_logits
    sm = M.multilabel_soft_margin_loss
    torch.testing.assert_close(sm(logits, target), bce(logits, target), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        sm(logits, target, reduction="sum"), bce(logits, target, reduction="sum") / c
    )
    torch.testing.assert_close(
        sm(logits, target, reduction="none"), bce(logits, target, reduction="none").mean(dim=1)
    )


def test_the_worked_three_by_three_example() -> None:
    logits = torch.tensor(
        [[-0.4089, -1.2471, 0.5907], [-0.4897, -0.8267, -0.7349], [0.5241, -0.1246, -0.4751]],
        dtype=torch.float64,
    )
    target = torch.tensor([[0.0, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=torch.float64)
    per_sample = M.multilabel_soft_margin_loss(logits, target, reduction="none")
    torch.testing.assert_close(
        per_sample, torch.tensor([0.8166, 0.6558, 0.6855], dtype=torch.float64), atol=1e-4, rtol=0
    )
    total = M.binary_cross_entropy_with_logits(logits, target)
    assert round(float(total), 4) == 0.7193
    assert float(total) == pytest.approx(float(M.multilabel_soft_margin_loss(logits, target)))


def test_gradient_is_sigma_minus_y_and_pos_weight_formula() -> None:
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(5, 4, generator=g, dtype=torch.float64) * 5).requires_grad_()
    target = torch.rand(5, 4, generator=g, dtype=torch.float64)
    pos_weight = torch.tensor([0.5, 1.0, 2.0, 7.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(
        M.binary_cross_entropy_with_logits(logits, target, reduction="sum"), logits
    )
    x = logits.detach()
    torch.testing.assert_close(grad, torch.sigmoid(x) - target, rtol=1e-12, atol=1e-15)
    (grad,) = torch.autograd.grad(
        M.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="sum"),
        logits,
    )
    want = (1 - target) * torch.sigmoid(x) - pos_weight * target * torch.sigmoid(-x)
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-15)


def test_pos_weight_shifts_the_optimal_logit_by_its_log() -> None:
    # expected loss for a label that is present with probability q, as a function of the logit
    q = torch.tensor([0.05, 0.3, 0.5, 0.9], dtype=torch.float64)
    p = torch.tensor([3.0, 0.5, 1.0, 10.0], dtype=torch.float64)
    best = torch.logit(q) + torch.log(p)
    x = best.clone().requires_grad_()
    loss = M.binary_cross_entropy_with_logits(x, q, pos_weight=p, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-12)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "bce": M.binary_cross_entropy_with_logits,
    "bce_pos_weight": lambda x, y, reduction: M.binary_cross_entropy_with_logits(
        x, y, pos_weight=torch.tensor([3.0, 0.5], dtype=x.dtype), reduction=reduction
    ),
    "soft_margin": M.multilabel_soft_margin_loss,
}
TORCH_LOSSES: dict[str, Callable[..., Tensor]] = {
    "bce": F.binary_cross_entropy_with_logits,
    "bce_pos_weight": lambda x, y, reduction: F.binary_cross_entropy_with_logits(
        x, y, pos_weight=torch.tensor([3.0, 0.5], dtype=x.dtype), reduction=reduction
    ),
    "soft_margin": F.multilabel_soft_margin_loss,
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("name", LOSSES)
def test_finite_values_and_gradients_at_extremes(
    name: str, dtype: torch.dtype, reduction: str
) -> None:
    logits = torch.tensor(
        [[-1e4, 1e4], [1e4, -1e4], [-1e4, -1e4], [1e4, 1e4], [0.0, 5.0]], dtype=dtype
    ).requires_grad_()
    target = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.5], [1.0, 0.0], [0.3, 1.0]], dtype=dtype)
    loss = LOSSES[name](logits, target, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert_finite(loss, grad)
    want = TORCH_LOSSES[name](logits.detach().double(), target.double(), reduction=reduction)
    rtol = 2e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(loss.double(), want, rtol=rtol, atol=1e-6)


def test_tiny_losses_keep_their_relative_precision() -> None:
    x = torch.tensor([-20.0, -40.0, 20.0])
    y = torch.tensor([0.0, 0.0, 1.0])
    exact = torch.log1p(torch.exp(-x.double().abs()))  # the true loss in each case
    ours = M.binary_cross_entropy_with_logits(x, y, reduction="none")
    torch.testing.assert_close(ours.double(), exact)
    # pos_weight scales only the positive (last) element
    ours = M.binary_cross_entropy_with_logits(
        x, y, pos_weight=torch.tensor([2.0]), reduction="none"
    )
    torch.testing.assert_close(ours.double(), exact * torch.tensor([1.0, 1.0, 2.0]).double())
    # torch's fused form loses the negatives' tiny losses entirely (returns exactly 0)
    assert (F.binary_cross_entropy_with_logits(x, y, reduction="none")[:2] == 0).all()


def test_weight_broadcasting_and_weighted_mean_is_plain_mean() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 3, generator=g)
    target = torch.rand(4, 3, generator=g)
    for shape in [(3,), (4, 1), (1, 3), (4, 3), ()]:
        weight = torch.rand(shape, generator=g)
        ours = M.binary_cross_entropy_with_logits(logits, target, weight=weight)
        plain = (
            weight * M.binary_cross_entropy_with_logits(logits, target, reduction="none")
        ).mean()
        torch.testing.assert_close(ours, plain)
        torch.testing.assert_close(
            ours, F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        )


def test_any_shape_and_dtype_preserved() -> None:
    logits = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    target = torch.rand(2, 3, 4).to(torch.bfloat16)
    loss = M.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert loss.shape == (2, 3, 4) and loss.dtype == torch.bfloat16
    one = M.binary_cross_entropy_with_logits(torch.tensor([2.0]), torch.tensor([1.0]))
    torch.testing.assert_close(one, F.softplus(torch.tensor(-2.0)))


# ---------------------------------------------------------------- predictions and metrics


def test_predict_labels_thresholds_probabilities() -> None:
    logits = torch.tensor([[-2.0, 0.0, 0.3, 30.0], [1.0, -0.1, -30.0, 2.0]])
    probabilities = torch.sigmoid(logits.double())
    for t in (0.0, 0.2, 0.5, 0.7, 0.95, 1.0):
        assert torch.equal(M.predict_labels(logits, t), probabilities >= t)
    per_label = torch.tensor([0.1, 0.5, 0.6, 0.99])
    assert torch.equal(M.predict_labels(logits, per_label), probabilities >= per_label.double())
    # exact where the rounded probability is not: sigmoid(30) is 1.0 in float32
    assert torch.sigmoid(torch.tensor(30.0)) == 1.0
    assert not M.predict_labels(torch.tensor([30.0]), 1.0).any()
    assert M.predict_labels(torch.tensor([-30.0]), 0.0).all()
    assert M.predict_labels(logits.to(torch.bfloat16)).dtype == torch.bool


def _random_labels(seed: int, n: int = 40, c: int = 5) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, c, generator=g) < 0.35
    flip = torch.rand(n, c, generator=g) < 0.2
    predicted = target ^ flip
    predicted[:, 0] = False  # a label never predicted
    target[:, 4] = False  # a label never present
    predicted[:, 4] = False  # ... nor predicted: F1 is 0/0 there
    return predicted, target


@given(seed=st.integers(0, 10_000))
def test_metrics_agree_with_sklearn(seed: int) -> None:
    predicted, target = _random_labels(seed)
    p, t = predicted.numpy().astype(int), target.numpy().astype(int)
    assert M.subset_accuracy(predicted, target) == pytest.approx(metrics.accuracy_score(t, p))
    assert M.hamming_loss(predicted, target) == pytest.approx(metrics.hamming_loss(t, p))
    for zero_division in (0.0, 1.0):
        ours = M.per_label_f1(predicted, target, zero_division=zero_division).numpy()
        theirs = metrics.f1_score(t, p, average=None, zero_division=zero_division)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_metrics_accept_float_and_integer_labels() -> None:
    predicted, target = _random_labels(0)
    for cast in (torch.float32, torch.long):
        assert M.hamming_loss(predicted.to(cast), target.to(cast)) == M.hamming_loss(
            predicted, target
        )
    assert M.subset_accuracy(target, target) == 1.0
    assert M.hamming_loss(target, ~target) == 1.0


# ---------------------------------------------------------------- bad input


def _x() -> Tensor:
    return torch.zeros(4, 3)


BAD_BCE: list[tuple[str, dict[str, object], type[Exception], str]] = [
    ("input not a tensor", {"input": [[0.0]]}, TypeError, "input must be a torch.Tensor"),
    (
        "integer target",
        {"target": torch.zeros(4, 3, dtype=torch.long)},
        TypeError,
        "target must be a floating-point tensor .*int64.*float()",
    ),
    (
        "batch mismatch",
        {"target": torch.zeros(5, 3)},
        ValueError,
        r"input and target must have the same batch size .* got 4 .* and 5",
    ),
    (
        "label count mismatch",
        {"target": torch.zeros(4, 2)},
        ValueError,
        r"target must have the same shape as input \(4, 3\), got \(4, 2\)",
    ),
    (
        "target above 1",
        {"target": torch.full((4, 3), 2.0)},
        ValueError,
        r"target must hold labels or probabilities in \[0.0, 1.0\], got 2.0",
    ),
    (
        "negative target",
        {"target": torch.full((4, 3), -1.0)},
        ValueError,
        r"target must hold labels or probabilities in \[0.0, 1.0\], got -1.0",
    ),
    (
        "empty batch",
        {"input": torch.zeros(0, 3), "target": torch.zeros(0, 3)},
        ValueError,
        r"input must not be empty, got shape \(0, 3\)",
    ),
    (
        "NaN logits",
        {"input": torch.tensor([[0.0, float("nan"), 0.0]] * 4)},
        ValueError,
        "input contains NaN",
    ),
    (
        "infinite logits",
        {"input": torch.tensor([[0.0, float("inf"), 0.0]] * 4)},
        ValueError,
        "input must be finite",
    ),
    (
        "dtype mismatch",
        {"target": torch.zeros(4, 3, dtype=torch.float64)},
        TypeError,
        r"target must have the same dtype as input \(torch.float32\), got torch.float64",
    ),
    (
        "pos_weight wrong length",
        {"pos_weight": torch.ones(4)},
        ValueError,
        r"pos_weight must broadcast to the shape of input \(4, 3\), got shape \(4,\)",
    ),
    (
        "weight enlarges the output",
        {"weight": torch.ones(2, 4, 3)},
        ValueError,
        r"weight must broadcast to the shape of input \(4, 3\), got shape \(2, 4, 3\)",
    ),
    (
        "negative pos_weight",
        {"pos_weight": torch.tensor([1.0, -2.0, 1.0])},
        ValueError,
        r"pos_weight must hold non-negative weights in \[0.0, inf\], got -2.0",
    ),
    ("unknown reduction", {"reduction": "avg"}, ValueError, "reduction must be one of"),
]


@pytest.mark.parametrize(
    ("case", "kwargs", "error", "message"), BAD_BCE, ids=[c[0] for c in BAD_BCE]
)
def test_bce_bad_input(
    case: str, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    args: dict[str, object] = {"input": _x(), "target": _x(), **kwargs}
    with pytest.raises(error, match=message):
        M.binary_cross_entropy_with_logits(**args)  # type: ignore[arg-type]


def test_soft_margin_bad_input() -> None:
    with pytest.raises(ValueError, match=r"input must have 2 dimension\(s\), got 1"):
        M.multilabel_soft_margin_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="input and target must have the same batch size"):
        M.multilabel_soft_margin_loss(torch.zeros(3, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"target must hold labels or probabilities in \[0.0, 1"):
        M.multilabel_soft_margin_loss(torch.zeros(3, 2), torch.full((3, 2), 1.5))
    with pytest.raises(ValueError, match=r"input must not be empty"):
        M.multilabel_soft_margin_loss(torch.zeros(0, 2), torch.zeros(0, 2))


def test_predict_labels_bad_input() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\], got 1.5"):
        M.predict_labels(x, 1.5)
    with pytest.raises(TypeError, match="threshold must be a float or a tensor of shape"):
        M.predict_labels(x, "0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("threshold must have shape (3,) (one per")):
        M.predict_labels(x, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"threshold must hold probabilities in \[0.0, 1.0\]"):
        M.predict_labels(x, torch.tensor([0.5, -0.1, 0.5]))
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        M.predict_labels(torch.zeros(2, 3, dtype=torch.long))


def test_metrics_bad_input() -> None:
    target = torch.zeros(4, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"predicted must hold the labels 0 and 1, got 0\.69999"):
        M.hamming_loss(torch.full((4, 3), 0.7), target)
    with pytest.raises(ValueError, match="predicted and target must have the same batch size"):
        M.subset_accuracy(torch.zeros(5, 3, dtype=torch.bool), target)
    with pytest.raises(ValueError, match=r"target must have the same shape as predicted"):
        M.per_label_f1(torch.zeros(4, 2, dtype=torch.bool), target)
    with pytest.raises(ValueError, match=r"predicted must have 2 dimension\(s\)"):
        M.hamming_loss(torch.zeros(4, dtype=torch.bool), target)
    with pytest.raises(ValueError, match=r"predicted must not be empty"):
        M.hamming_loss(torch.zeros(0, 3, dtype=torch.bool), torch.zeros(0, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"zero_division must be in \[0, 1\], got 2"):
        M.per_label_f1(target, target, zero_division=2.0)
