"""companion.imbalance: special cases against torch, outside formulas, gradients, bounds, bad input.

The contract (gradcheck of the defaults, low precision, host syncs, compilation, the bad-input
table) is in tests/test_contract.py; here are the mathematics: each loss against the loss it
reduces to, torchvision's and the ASL authors' formulas written out, the exact gradient at the
limit p_t -> 1 for exponents below 1, and the focal loss's entropy bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import companion
from companion import imbalance as IB
from tests.conftest import REDUCTIONS, assert_finite

F64 = torch.float64


def _logits(b: int, c: int, seed: int = 0, scale: float = 2.0, dtype: torch.dtype = F64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g, dtype=F64) * scale).to(dtype)


def _classes(b: int, c: int, seed: int = 1) -> Tensor:
    return torch.randint(c, (b,), generator=torch.Generator().manual_seed(seed))


def _labels(b: int, c: int, seed: int = 2, rate: float = 0.3, dtype: torch.dtype = F64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, c, generator=g) < rate).to(dtype)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


# ------------------------------------------------------------------------------------------
# outside formulas, written out as their sources write them
# ------------------------------------------------------------------------------------------


def torchvision_sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2, reduction: str = "none"
) -> Tensor:
    """torchvision.ops.sigmoid_focal_loss as its source computes it (torchvision is not a
    dependency here): probabilities first, then BCE, p_t, the factor, alpha_t if alpha >= 0."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


def reference_asymmetric_loss(
    x: Tensor, y: Tensor, gamma_neg: float, gamma_pos: float, clip: float, eps: float = 1e-8
) -> Tensor:
    """The per-element ASL of the authors' AsymmetricLoss (Alibaba-MIIL/ASL), unreduced:
    shifted negative probability clamped at 1, logs of probabilities clamped at eps, one-sided
    focusing weights (their code returns the negated sum)."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        pt = xs_pos * y + xs_neg * (1 - y)
        los = los * torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -los


def naive_focal(x: Tensor, t: Tensor, gamma: float, alpha: Tensor | None = None) -> Tensor:
    p_t = torch.softmax(x, dim=1).gather(1, t[:, None]).squeeze(1)
    loss = -((1 - p_t) ** gamma) * torch.log(p_t)
    return loss if alpha is None else alpha[t] * loss


# ------------------------------------------------------------------------------------------
# focal_loss
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(
    seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 3.0, 30.0]), weighted=st.booleans()
)
def test_focal_with_gamma_zero_is_cross_entropy(
    reduction: str, seed: int, scale: float, weighted: bool
) -> None:
    x, t = _logits(7, 4, seed, scale), _classes(7, 4, seed + 1)
    w = torch.rand(4, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.1
    weight = w if weighted else None
    ours = IB.focal_loss(x, t, gamma=0.0, alpha=weight, reduction=reduction)
    theirs = F.cross_entropy(x, t, weight=weight, reduction=reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0, 2.0, 5.0])
def test_focal_equals_the_naive_formula(gamma: float) -> None:
    x, t = _logits(16, 5), _classes(16, 5)
    alpha = torch.linspace(0.5, 2.0, 5, dtype=F64)
    for a in (None, alpha):
        ours = IB.focal_loss(x, t, gamma=gamma, alpha=a, reduction="none")
        want = naive_focal(x, t, gamma, a)
        torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-15)


def test_focal_mean_with_alpha_is_the_weighted_mean() -> None:
    x, t = _logits(9, 3), _classes(9, 3)
    alpha = torch.tensor([0.2, 1.0, 3.0], dtype=F64)
    none = IB.focal_loss(x, t, alpha=alpha, reduction="none")
    mean = IB.focal_loss(x, t, alpha=alpha)
    torch.testing.assert_close(mean, none.sum() / alpha[t].sum(), rtol=1e-12, atol=0)
    zero = IB.focal_loss(x.requires_grad_(), t, alpha=torch.zeros(3, dtype=F64))
    assert zero.item() == 0.0  # no weight, no loss (torch would return 0 / 0)
    (g,) = torch.autograd.grad(zero, x)
    assert (g == 0).all()


def test_focal_shrinks_easy_examples_more_than_hard_ones() -> None:
    x = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-2.0, 0.0, 0.0]], dtype=F64)
    t = torch.zeros(3, dtype=torch.long)
    ratio = IB.focal_loss(x, t, reduction="none") / F.cross_entropy(x, t, reduction="none")
    p_t = torch.softmax(x, 1)[:, 0]
    torch.testing.assert_close(ratio, (1 - p_t) ** 2)
    assert ratio[0] < ratio[1] < ratio[2]


def test_focal_with_one_class_is_zero_with_a_zero_gradient() -> None:
    x = _logits(4, 1).requires_grad_()
    loss = IB.focal_loss(x, torch.zeros(4, dtype=torch.long), gamma=0.5)
    (g,) = torch.autograd.grad(loss, x)
    assert loss.item() == 0.0 and (g == 0).all()


# ------------------------------------------------------------------------------------------
# the gradient at p_t -> 1 for exponents below 1
# ------------------------------------------------------------------------------------------


def _focal_grad_of_target_logit(log_p: Tensor, gamma: float) -> Tensor:
    """d/dx_t of -(1 - p)^gamma log p for a two-class softmax, in closed form:
    gamma p (1 - p)^gamma log p - (1 - p)^(gamma + 1), with 1 - p = -expm1(log p)."""
    p, q = log_p.exp(), -torch.expm1(log_p)
    return gamma * p * q**gamma * log_p - q ** (gamma + 1)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("margin", [5.0, 30.0, 90.0, 400.0, 1e4])
def test_focal_gradient_is_the_exact_limit_for_gamma_below_one(
    dtype: torch.dtype, gamma: float, margin: float
) -> None:
    """(1 - p)^gamma has an infinite slope at p = 1 when gamma < 1, but the loss's gradient
    tends to 0. Margins where 1 - p is tiny, denormal, or exactly 0 in the dtype: the gradient
    is finite and equals the closed form."""
    x = torch.tensor([[margin, 0.0]], dtype=dtype, requires_grad=True)
    t = torch.tensor([0])
    loss = IB.focal_loss(x, t, gamma=gamma)
    (g,) = torch.autograd.grad(loss, x)
    assert_finite(loss, g)
    log_p = -torch.log1p(torch.exp(torch.tensor(-margin, dtype=F64)))
    want = _focal_grad_of_target_logit(log_p, gamma)
    # 1 - p_t and log p_t keep their relative precision (see the next test): only denormal
    # results lose digits
    atol = torch.finfo(dtype).tiny
    torch.testing.assert_close(g[0, 0].double(), want, rtol=1e-4, atol=atol)
    torch.testing.assert_close(g[0, 1].double(), -want, rtol=1e-4, atol=atol)
    if margin == 1e4:
        assert (g == 0).all()  # 1 - p_t is exactly 0: the exact limit, not NaN


def test_torchvisions_formula_has_a_nan_gradient_where_ours_is_exact() -> None:
    """The point of the log-space factor: at a confident correct label in float32, sigma(x)
    rounds to 1, and (1 - p_t) ** 0.5 has the derivative 0.5 / sqrt(0) = inf, times 0. Ours
    keeps 1 - p_t = sigma(-x) as a log-sigmoid: the gradient is the true, tiny, value."""
    x = torch.tensor([40.0], requires_grad=True)
    y = torch.tensor([1.0])
    (theirs,) = torch.autograd.grad(torchvision_sigmoid_focal_loss(x, y, gamma=0.5).sum(), x)
    (ours,) = torch.autograd.grad(IB.sigmoid_focal_loss(x, y, gamma=0.5, reduction="sum"), x)
    assert torch.isnan(theirs).all()
    # 0.25 sigma(-x)^0.5 softplus(-x) ~ 0.25 e^(-1.5 x), derivative -0.375 e^(-60)
    torch.testing.assert_close(ours.double(), torch.tensor([-0.375 * math.exp(-60)], dtype=F64))


@pytest.mark.parametrize("gamma", [0.1, 0.5])
def test_sigmoid_focal_and_asl_gradients_are_finite_at_extreme_logits(gamma: float) -> None:
    for dtype in (torch.float32, F64, torch.bfloat16, torch.float16):
        x = torch.tensor([[1e4, -1e4, 60.0, -60.0, 0.0]], dtype=dtype, requires_grad=True)
        y = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]], dtype=dtype)
        for loss in (
            IB.sigmoid_focal_loss(x, y, gamma=gamma),
            IB.asymmetric_loss(x, y, gamma_pos=gamma, gamma_neg=gamma, clip=0.0),
            IB.asymmetric_loss(x, y, gamma_pos=gamma, gamma_neg=gamma, clip=0.05),
        ):
            (g,) = torch.autograd.grad(loss, x)
            assert_finite(loss, g)
            assert g[0, 0] == 0 and g[0, 1] == 0  # exactly the limit at |x| = 1e4


def test_asl_is_finite_at_the_edge_of_the_shift() -> None:
    """Negatives whose probability sits at, just above and just below the shift m: the factor
    p_m^gamma with gamma < 1 has an infinite slope at p_m = 0, the loss a zero one."""
    m = 0.05
    edge = math.log(m / (1 - m))
    x = torch.tensor([edge - 1e-9, edge, edge + 1e-9, edge + 1e-6], dtype=F64, requires_grad=True)
    y = torch.zeros(4, dtype=F64)
    loss = IB.asymmetric_loss(x, y, gamma_neg=0.5, clip=m, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert_finite(loss, g)
    assert loss[0] == 0 and g[0] == 0
    assert (loss >= 0).all() and loss[3] < 1e-8


# ------------------------------------------------------------------------------------------
# sigmoid_focal_loss
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [0.25, 0.9, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft targets"])
def test_sigmoid_focal_equals_torchvisions_formula(
    reduction: str, alpha: float, gamma: float, soft: bool
) -> None:
    x = _logits(8, 6, scale=4.0)
    y = torch.rand(8, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    y = y if soft else (y < 0.3).double()
    ours = IB.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction=reduction)
    theirs = torchvision_sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-15)
    # and the gradients, where torchvision's are finite (ordinary logits)
    xg = x.clone().requires_grad_()
    (g_ours,) = torch.autograd.grad(IB.sigmoid_focal_loss(xg, y, alpha, gamma, "sum"), xg)
    (g_theirs,) = torch.autograd.grad(
        torchvision_sigmoid_focal_loss(xg, y, alpha, gamma, "sum"), xg
    )
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-14)


def test_sigmoid_focal_defaults_are_torchvisions_except_the_reduction() -> None:
    x, y = _logits(5, 3), _labels(5, 3)
    torch.testing.assert_close(
        IB.sigmoid_focal_loss(x, y, reduction="none"), torchvision_sigmoid_focal_loss(x, y)
    )
    torch.testing.assert_close(
        IB.sigmoid_focal_loss(x, y), torchvision_sigmoid_focal_loss(x, y).mean()
    )
    torch.testing.assert_close(
        IB.sigmoid_focal_loss(x, y, alpha=None), IB.sigmoid_focal_loss(x, y, alpha=-1.0)
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_focal_with_gamma_zero_is_bce(reduction: str) -> None:
    x, y = _logits(6, 4, scale=10.0), _labels(6, 4)
    ours = IB.sigmoid_focal_loss(x, y, alpha=None, gamma=0.0, reduction=reduction)
    theirs = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    # with alpha: BCE weighted alpha on positives and 1 - alpha on negatives
    weighted = IB.sigmoid_focal_loss(x, y, alpha=0.25, gamma=0.0, reduction=reduction)
    w = 0.25 * y + 0.75 * (1 - y)
    want = F.binary_cross_entropy_with_logits(x, y, weight=w, reduction=reduction)
    torch.testing.assert_close(weighted, want, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------
# asymmetric_loss
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_asl_without_focusing_or_shift_is_bce(reduction: str) -> None:
    x, y = _logits(6, 5, scale=6.0), _labels(6, 5)
    ours = IB.asymmetric_loss(x, y, gamma_pos=0.0, gamma_neg=0.0, clip=0.0, reduction=reduction)
    theirs = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "clip"),
    [(0.0, 4.0, 0.05), (1.0, 4.0, 0.05), (0.0, 2.0, 0.0), (0.5, 0.5, 0.2), (0.0, 0.0, 0.1)],
)
def test_asl_equals_the_authors_formula(gamma_pos: float, gamma_neg: float, clip: float) -> None:
    """At ordinary logits (no probability below their eps = 1e-8) the clamps are inactive."""
    x, y = _logits(10, 8, scale=3.0), _labels(10, 8)
    ours = IB.asymmetric_loss(x, y, gamma_pos, gamma_neg, clip, reduction="none")
    theirs = reference_asymmetric_loss(x, y, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(
        IB.asymmetric_loss(x, y, gamma_pos, gamma_neg, clip, "sum"), theirs.sum()
    )


def test_asl_discards_negatives_below_the_shift_and_spares_positives() -> None:
    x = torch.tensor([-4.0, -2.0, 2.0], dtype=F64)  # p = 0.018, 0.119, 0.881
    negatives = IB.asymmetric_loss(x, torch.zeros(3, dtype=F64), reduction="none")
    assert negatives[0] == 0 and (negatives[1:] > 0).all()
    positives = IB.asymmetric_loss(x, torch.ones(3, dtype=F64), reduction="none")
    torch.testing.assert_close(positives, -F.logsigmoid(x))  # gamma_pos = 0: plain BCE


# ------------------------------------------------------------------------------------------
# logit adjustment and Poly-1
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_logit_adjustment_is_cross_entropy_on_shifted_logits(reduction: str, tau: float) -> None:
    x, t = _logits(12, 4), _classes(12, 4)
    prior = torch.tensor([0.6, 0.25, 0.1, 0.05], dtype=F64)
    ours = IB.logit_adjusted_cross_entropy(x, t, prior, tau=tau, reduction=reduction)
    theirs = F.cross_entropy(x + tau * prior.log(), t, reduction=reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_logit_adjustment_with_tau_one_is_the_balanced_softmax() -> None:
    """Ren et al.'s balanced softmax: -log(n_t e^{x_t} / sum_c n_c e^{x_c})."""
    x, t = _logits(12, 4), _classes(12, 4)
    counts = torch.tensor([500.0, 120.0, 30.0, 3.0], dtype=F64)
    weighted = counts * x.exp()
    balanced = -torch.log(weighted.gather(1, t[:, None]).squeeze(1) / weighted.sum(1))
    ours = IB.logit_adjusted_cross_entropy(x, t, counts / counts.sum(), reduction="none")
    torch.testing.assert_close(ours, balanced, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        IB.logit_adjusted_cross_entropy(x, t, counts / counts.sum(), tau=0.0), F.cross_entropy(x, t)
    )


def test_logit_adjustments_minimiser_is_the_balanced_bayes_classifier() -> None:
    """For one input with class posterior eta, the population minimiser of the adjusted loss
    is x = log eta - log prior + const, whose arg-max is arg-max eta / prior."""
    eta = torch.tensor([0.7, 0.2, 0.1], dtype=F64)
    prior = torch.tensor([0.8, 0.15, 0.05], dtype=F64)
    x = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([x], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        losses = torch.stack(
            [IB.logit_adjusted_cross_entropy(x, torch.tensor([c]), prior) for c in range(3)]
        )
        expected = (eta * losses).sum()
        expected.backward()
        return expected

    opt.step(closure)
    want = eta.log() - prior.log()
    got = x.detach()[0]
    torch.testing.assert_close(got - got.mean(), want - want.mean(), rtol=0, atol=1e-6)
    assert got.argmax() == 2 != eta.argmax()  # the rare class wins the balanced decision


def test_adjust_logits_is_the_post_hoc_shift() -> None:
    x = _logits(5, 3)
    prior = torch.tensor([0.7, 0.2, 0.1], dtype=F64)
    for tau in (0.0, 1.0, 1.5):
        torch.testing.assert_close(IB.adjust_logits(x, prior, tau), x - tau * prior.log())
    torch.testing.assert_close(IB.adjust_logits(x[0], prior), x[0] - prior.log())  # (C,)
    # the post-hoc arg-max equals the balanced Bayes rule on the softmax's posterior
    eta = torch.softmax(x, dim=1)
    assert torch.equal(IB.adjust_logits(x, prior).argmax(1), (eta / prior).argmax(1))
    half = IB.adjust_logits(x.half(), prior.half())
    assert half.dtype == torch.float16


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("epsilon", [-1.0, 0.0, 1.0, 2.5])
def test_poly1_is_cross_entropy_plus_epsilon_one_minus_p(reduction: str, epsilon: float) -> None:
    x, t = _logits(9, 5, scale=5.0), _classes(9, 5)
    ours = IB.poly1_cross_entropy(x, t, epsilon=epsilon, reduction=reduction)
    ce = F.cross_entropy(x, t, reduction="none")
    p_t = torch.softmax(x, 1).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(
        ours, _reduce(ce + epsilon * (1 - p_t), reduction), rtol=1e-12, atol=1e-14
    )
    if epsilon == 0:
        want = F.cross_entropy(x, t, reduction=reduction)
        torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-14)


def test_tiny_losses_keep_their_relative_precision() -> None:
    """At a margin of 40, x_t - logsumexp(x) is exactly 0 in float64 (F.cross_entropy returns
    0), while the true cross-entropy is log1p(2 e^-40) = 8.5e-18; 1 - p_t = 2 e^-40 comes from
    the other classes' log-sum-exp, and log p_t from log1p of it."""
    x = torch.tensor([[40.0, 0.0, 0.0]], dtype=F64)
    t = torch.tensor([0])
    rest = 2 * math.exp(-40)
    ce = math.log1p(rest)
    assert F.cross_entropy(x, t).item() == 0.0
    torch.testing.assert_close(IB.focal_loss(x, t, gamma=0.0), torch.tensor(ce, dtype=F64))
    torch.testing.assert_close(
        IB.focal_loss(x, t, gamma=0.5), torch.tensor(rest**0.5 * ce, dtype=F64)
    )
    torch.testing.assert_close(IB.poly1_cross_entropy(x, t), torch.tensor(ce + rest, dtype=F64))
    uniform = torch.full((3,), 1 / 3, dtype=F64)  # a uniform prior shifts nothing
    torch.testing.assert_close(
        IB.logit_adjusted_cross_entropy(x, t, uniform), torch.tensor(ce, dtype=F64)
    )
    # and the gradient: p - e_t, whose target entry -(1 - p_t) = -2 e^-40 torch rounds to 0
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(IB.focal_loss(xg, t, gamma=0.0), xg)
    torch.testing.assert_close(g[0, 0], torch.tensor(-rest / (1 + rest), dtype=F64))


# ------------------------------------------------------------------------------------------
# class_balanced_weights
# ------------------------------------------------------------------------------------------


def test_class_balanced_weights_by_hand() -> None:
    # beta = 0.5, counts (3, 1): E_3 = 1 + 0.5 + 0.25 = 1.75, E_1 = 1; weights 1/1.75 and 1,
    # normalised to sum to C = 2: (4/7, 1) * 2 / (11/7) = (8/11, 14/11)
    w = IB.class_balanced_weights(torch.tensor([3, 1]), beta=0.5)
    torch.testing.assert_close(w, torch.tensor([8 / 11, 14 / 11]))
    assert w.dtype == torch.get_default_dtype()
    # beta = 0.9, counts (10, 2, 0): E_10 = (1 - 0.9^10) / 0.1, E_2 = 1.9, an empty class gets 0
    counts = torch.tensor([10.0, 2.0, 0.0], dtype=F64)
    e10, e2 = (1 - 0.9**10) / 0.1, 1.9
    raw = torch.tensor([1 / e10, 1 / e2, 0.0], dtype=F64)
    torch.testing.assert_close(IB.class_balanced_weights(counts, 0.9), raw * 3 / raw.sum())


@given(beta=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_class_balanced_weights_properties(beta: float, seed: int) -> None:
    counts = torch.randint(1, 5000, (6,), generator=torch.Generator().manual_seed(seed))
    w = IB.class_balanced_weights(counts.double(), beta)
    assert torch.isfinite(w).all() and (w > 0).all()
    torch.testing.assert_close(w.sum(), torch.tensor(6.0, dtype=F64))
    # rarer classes never get smaller weights
    order = counts.argsort()
    assert (w[order].diff() <= 1e-12).all()
    # the effective number is the geometric series sum_{k < n} beta^k
    n = 7
    series = sum(beta**k for k in range(n))
    one = IB.class_balanced_weights(torch.tensor([n, 1], dtype=F64), beta)
    torch.testing.assert_close(one[1] / one[0], torch.tensor(series, dtype=F64), rtol=1e-9, atol=0)


def test_class_balanced_weights_limits() -> None:
    counts = torch.tensor([400, 40, 4])
    torch.testing.assert_close(IB.class_balanced_weights(counts, 0.0), torch.ones(3))
    inverse = IB.class_balanced_weights(counts, 1.0)
    torch.testing.assert_close(inverse, (1 / counts) / (1 / counts).sum() * 3, check_dtype=False)
    near = IB.class_balanced_weights(counts, 1 - 1e-9)
    torch.testing.assert_close(near, inverse, rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------------
# the focal loss's entropy bound
# ------------------------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**31 - 1),
    gamma=st.floats(0.0, 5.0),
    scale=st.sampled_from([0.3, 2.0, 8.0]),
    c=st.integers(2, 8),
)
def test_focal_is_at_least_cross_entropy_minus_gamma_entropy(
    seed: int, gamma: float, scale: float, c: int
) -> None:
    """Mukhoti et al.'s bound, FL >= CE - gamma H(p), for gamma >= 1 (Bernoulli's inequality);
    it holds for 0 <= gamma < 1 too, through CE - FL <= gamma log p log(1 - p) <= gamma H(p)."""
    x, t = _logits(32, c, seed, scale), _classes(32, c, seed + 1)
    focal = IB.focal_loss(x, t, gamma=gamma, reduction="none")
    ce = F.cross_entropy(x, t, reduction="none")
    log_p = torch.log_softmax(x, dim=1)
    entropy = -(log_p.exp() * log_p).sum(1)
    assert (focal >= ce - gamma * entropy - 1e-12).all()
    log_pt = log_p.gather(1, t[:, None]).squeeze(1)
    tighter = ce - gamma * log_pt * torch.log(-torch.expm1(log_pt))
    assert (focal >= tighter - 1e-12).all()
    assert (focal <= ce + 1e-12).all()


# ------------------------------------------------------------------------------------------
# gradients in float64, low precision
# ------------------------------------------------------------------------------------------


PRIOR4 = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64)
ALPHA4 = torch.tensor([0.5, 1.0, 2.0, 1.0], dtype=F64)
NON_DEFAULT: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "focal 0.5 alpha": lambda x, t, y: IB.focal_loss(x, t, gamma=0.5, alpha=ALPHA4),
    "focal 3 sum": lambda x, t, y: IB.focal_loss(x, t, gamma=3.0, reduction="sum"),
    "sigmoid focal 0.5": lambda x, t, y: IB.sigmoid_focal_loss(x, y, alpha=0.75, gamma=0.5),
    "asl 0.5 shift": lambda x, t, y: IB.asymmetric_loss(x, y, 1.0, 0.5, clip=0.1),
    "asl no shift": lambda x, t, y: IB.asymmetric_loss(x, y, gamma_neg=2.0, clip=0.0),
    "logit adjusted 1.5": lambda x, t, y: IB.logit_adjusted_cross_entropy(x, t, PRIOR4, 1.5),
    "poly1 -1": lambda x, t, y: IB.poly1_cross_entropy(x, t, epsilon=-1.0),
    "adjust_logits": lambda x, t, y: IB.adjust_logits(x, PRIOR4).square().sum(),
}


@pytest.mark.parametrize("name", NON_DEFAULT)
def test_gradcheck_float64_non_default_settings(name: str) -> None:
    call = NON_DEFAULT[name]
    x = _logits(5, 4).requires_grad_()
    t, y = _classes(5, 4), _labels(5, 4, rate=0.5)
    assert torch.autograd.gradcheck(lambda z: call(z, t, y), (x,))
    assert torch.autograd.gradgradcheck(lambda z: call(z, t, y), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_inputs_match_float32(dtype: torch.dtype) -> None:
    x32, t, y = (
        _logits(8, 4, dtype=torch.float32),
        _classes(8, 4),
        _labels(8, 4, dtype=torch.float32),
    )
    prior = torch.tensor([0.4, 0.3, 0.2, 0.1])
    calls = [
        lambda x, y, p: IB.focal_loss(x, t, gamma=0.5),
        lambda x, y, p: IB.sigmoid_focal_loss(x, y),
        lambda x, y, p: IB.asymmetric_loss(x, y),
        lambda x, y, p: IB.logit_adjusted_cross_entropy(x, t, p),
        lambda x, y, p: IB.poly1_cross_entropy(x, t),
    ]
    for call in calls:
        want = call(x32.to(dtype).float(), y, prior)
        got = call(x32.to(dtype), y.to(dtype), prior.to(dtype))
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-3)


# ------------------------------------------------------------------------------------------
# bad input beyond the contract's table
# ------------------------------------------------------------------------------------------


def _raises(error: type[Exception], name: str, fn: object, *args: object, **kwargs: object) -> None:
    assert callable(fn)
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    assert re.match(rf"^{name} (must|contains) ", str(info.value)), str(info.value)


def test_bad_hyper_parameters_and_side_inputs() -> None:
    x, t, y = _logits(4, 3), _classes(4, 3), _labels(4, 3)
    prior = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    _raises(ValueError, "gamma", IB.focal_loss, x, t, gamma=-1.0)
    _raises(TypeError, "gamma", IB.focal_loss, x, t, gamma="2")
    _raises(ValueError, "alpha", IB.focal_loss, x, t, alpha=torch.ones(4, dtype=F64))
    _raises(
        ValueError, "alpha", IB.focal_loss, x, t, alpha=torch.tensor([1.0, -1.0, 1.0], dtype=F64)
    )
    _raises(TypeError, "alpha", IB.focal_loss, x, t, alpha=torch.ones(3))  # float32 vs float64
    _raises(ValueError, "alpha", IB.sigmoid_focal_loss, x, y, alpha=1.5)
    _raises(ValueError, "target", IB.sigmoid_focal_loss, x, y * 2)
    _raises(ValueError, "target", IB.sigmoid_focal_loss, x, y[:, :2])
    _raises(TypeError, "target", IB.sigmoid_focal_loss, x, y.float())
    _raises(ValueError, "target", IB.asymmetric_loss, x, y * 0.5)
    _raises(ValueError, "clip", IB.asymmetric_loss, x, y, clip=1.0)
    _raises(ValueError, "gamma_neg", IB.asymmetric_loss, x, y, gamma_neg=-0.5)
    _raises(ValueError, "prior", IB.logit_adjusted_cross_entropy, x, t, prior * 2)
    _raises(
        ValueError,
        "prior",
        IB.logit_adjusted_cross_entropy,
        x,
        t,
        torch.tensor([0.5, 0.5, 0.0], dtype=F64),
    )
    _raises(ValueError, "prior", IB.logit_adjusted_cross_entropy, x, t, prior[:2])
    _raises(ValueError, "tau", IB.logit_adjusted_cross_entropy, x, t, prior, tau=-1.0)
    _raises(ValueError, "prior", IB.adjust_logits, x, prior.flip(0)[:2])
    _raises(ValueError, "epsilon", IB.poly1_cross_entropy, x, t, epsilon=math.nan)
    _raises(ValueError, "counts", IB.class_balanced_weights, torch.tensor([3, -1]), 0.9)
    _raises(ValueError, "counts", IB.class_balanced_weights, torch.tensor([0, 0]), 0.9)
    _raises(ValueError, "counts", IB.class_balanced_weights, torch.tensor([[3, 1]]), 0.9)
    _raises(TypeError, "counts", IB.class_balanced_weights, torch.tensor([True, False]), 0.9)
    _raises(TypeError, "counts", IB.class_balanced_weights, [3, 1], 0.9)
    _raises(ValueError, "beta", IB.class_balanced_weights, torch.tensor([3, 1]), 1.5)


def test_value_checks_off_skip_the_value_checks_only() -> None:
    x, t = _logits(4, 3), _classes(4, 3)
    unnormalised = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    with companion.value_checks(False):
        IB.logit_adjusted_cross_entropy(x, t, unnormalised)  # a sum of 3 is not looked for
        with pytest.raises(ValueError, match=r"^prior must have shape"):
            IB.logit_adjusted_cross_entropy(x, t, unnormalised[:2])  # metadata: still checked


def test_reexported_at_the_top() -> None:
    for name in IB.__all__:
        assert getattr(companion, name) is getattr(IB, name)
