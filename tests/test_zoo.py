"""companion.zoo: agreement with torch (or the exact difference), derived gradients, gradcheck,
extremes, every reduction, weighting semantics, multi-task weighting, L2, and bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from sklearn.metrics import hinge_loss as sk_hinge_loss
from torch import Tensor, nn

from companion import zoo as Z
from companion.data import ink_width
from tests.conftest import LOW_PRECISION, REDUCTIONS, assert_finite

values = st.floats(min_value=-50, max_value=50, allow_nan=False)


@st.composite
def scores_and_classes(draw: st.DrawFn) -> tuple[Tensor, Tensor]:
    batch = draw(st.integers(1, 6))
    classes = draw(st.integers(2, 6))
    scores = draw(arrays(np.float64, (batch, classes), elements=values))
    target = draw(arrays(np.int64, (batch,), elements=st.integers(0, classes - 1)))
    return torch.from_numpy(scores), torch.from_numpy(target)


@st.composite
def same_shape_pair(draw: st.DrawFn, min_dims: int = 1, min_side: int = 1) -> tuple[Tensor, Tensor]:
    shape = draw(array_shapes(min_dims=min_dims, max_dims=3, min_side=min_side, max_side=5))
    a = draw(arrays(np.float64, shape, elements=values))
    b = draw(arrays(np.float64, shape, elements=values))
    return torch.from_numpy(a), torch.from_numpy(b)


def naive_multiclass_hinge(scores: Tensor, target: Tensor, margin: float, power: int) -> Tensor:
    """The Weston-Watkins sum written as loops, one sample and one class at a time."""
    rows = []
    for i in range(scores.shape[0]):
        y = int(target[i])
        total = 0.0
        for j in range(scores.shape[1]):
            if j != y:
                total += max(0.0, margin + float(scores[i, j]) - float(scores[i, y])) ** power
        rows.append(total)
    return torch.tensor(rows, dtype=scores.dtype)


# ------------------------------------------------------------------------------------------
# Hinge losses
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=scores_and_classes(), margin=st.sampled_from([0.0, 0.5, 1.0, 3.0]))
def test_multiclass_hinge_is_num_classes_times_torch_multi_margin(
    reduction: str, data: tuple[Tensor, Tensor], margin: float
) -> None:
    scores, target = data
    num_classes = scores.shape[1]
    for ours_fn, p in ((Z.multiclass_hinge_loss, 1), (Z.squared_hinge_loss, 2)):
        ours = ours_fn(scores, target, margin=margin, reduction=reduction)
        torch_value = F.multi_margin_loss(scores, target, p=p, margin=margin, reduction=reduction)
        # torch divides each row's sum over the wrong classes by C; nothing else differs
        torch.testing.assert_close(ours, num_classes * torch_value, rtol=1e-12, atol=1e-12)
        naive = naive_multiclass_hinge(scores, target, margin, p)
        torch.testing.assert_close(ours_fn(scores, target, margin, "none"), naive)


def test_multiclass_hinge_excludes_the_target_class() -> None:
    # a perfectly separated row (target beats every other class by more than the margin)
    scores = torch.tensor([[5.0, 0.0, -1.0]])
    target = torch.tensor([0])
    assert Z.multiclass_hinge_loss(scores, target).item() == 0.0
    # had the j = y term been included, it would add exactly the margin
    assert Z.multiclass_hinge_loss(scores, target, margin=2.0).item() == 0.0


@given(data=scores_and_classes(), shift=values)
def test_hinge_is_invariant_to_a_shift_of_each_row(
    data: tuple[Tensor, Tensor], shift: float
) -> None:
    scores, target = data
    for fn in (Z.multiclass_hinge_loss, Z.squared_hinge_loss):
        torch.testing.assert_close(
            fn(scores + shift, target, reduction="none"),
            fn(scores, target, reduction="none"),
            rtol=1e-9,
            atol=1e-9,
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=same_shape_pair(), margin=st.sampled_from([0.0, 1.0, 2.5]))
def test_binary_hinge_is_the_multiclass_hinge_on_zero_and_z(
    reduction: str, data: tuple[Tensor, Tensor], margin: float
) -> None:
    z, u = data
    target = (u > 0).double()
    ours = Z.binary_hinge_loss(z, target, margin=margin, reduction=reduction)
    # TF-Slim's formula: relu(1 - (2y - 1) z), with the margin in place of 1
    want = torch.clamp(margin - (2 * target - 1) * z, min=0)
    want = {"none": want, "mean": want.mean(), "sum": want.sum()}[reduction]
    torch.testing.assert_close(ours, want)
    two_scores = torch.stack([torch.zeros_like(z), z], dim=-1).reshape(-1, 2)
    via_torch = 2 * F.multi_margin_loss(
        two_scores, target.reshape(-1).long(), margin=margin, reduction="none"
    )
    torch.testing.assert_close(
        Z.binary_hinge_loss(z, target, margin, "none").reshape(-1), via_torch
    )
    squared = Z.squared_hinge_loss(two_scores, target.reshape(-1).long(), margin, "none")
    torch.testing.assert_close(
        squared, want_sq := torch.clamp(margin - (2 * target - 1) * z, min=0).square().reshape(-1)
    )
    assert want_sq.shape == squared.shape


def test_binary_hinge_agrees_with_scikit_learn() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(40, generator=g, dtype=torch.float64) * 2
    y = (torch.rand(40, generator=g) < 0.5).double()
    want = sk_hinge_loss(y.numpy(), z.numpy())  # maps {0, 1} to {-1, +1} itself
    assert Z.binary_hinge_loss(z, y).item() == pytest.approx(want, rel=1e-12)


def test_hinge_gradients_equal_the_violation_counts() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (8,), generator=g)
    (grad,) = torch.autograd.grad(Z.multiclass_hinge_loss(scores, target, reduction="sum"), scores)
    s = scores.detach()
    violated = (1 + s - s.gather(1, target[:, None]) > 0).double()
    violated.scatter_(1, target[:, None], 0.0)
    want = violated.clone()
    want.scatter_(1, target[:, None], -violated.sum(1, keepdim=True))
    torch.testing.assert_close(grad, want)
    # squared hinge: 2 * violation instead of 1
    (grad2,) = torch.autograd.grad(Z.squared_hinge_loss(scores, target, reduction="sum"), scores)
    v = torch.clamp(1 + s - s.gather(1, target[:, None]), min=0)
    v.scatter_(1, target[:, None], 0.0)
    want2 = 2 * v
    want2.scatter_(1, target[:, None], -2 * v.sum(1, keepdim=True))
    torch.testing.assert_close(grad2, want2)


# ------------------------------------------------------------------------------------------
# Regression losses
# ------------------------------------------------------------------------------------------

REGRESSION_PAIRS: dict[str, tuple[Callable[..., Tensor], Callable[..., Tensor]]] = {
    "mse_loss": (Z.mse_loss, F.mse_loss),
    "absolute_difference": (Z.absolute_difference, F.l1_loss),
    "huber_loss": (Z.huber_loss, F.huber_loss),
    "huber_loss_delta_0.3": (
        lambda x, y, reduction: Z.huber_loss(x, y, 0.3, reduction),
        lambda x, y, reduction: F.huber_loss(x, y, reduction=reduction, delta=0.3),
    ),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", REGRESSION_PAIRS)
@given(data=same_shape_pair())
def test_regression_losses_agree_with_torch(
    name: str, reduction: str, data: tuple[Tensor, Tensor]
) -> None:
    ours, theirs = REGRESSION_PAIRS[name]
    x, y = data
    torch.testing.assert_close(
        ours(x, y, reduction=reduction), theirs(x, y, reduction=reduction), rtol=1e-12, atol=1e-12
    )


@given(data=same_shape_pair(), beta=st.sampled_from([0.1, 1.0, 4.0]))
def test_smooth_l1_is_huber_divided_by_beta(data: tuple[Tensor, Tensor], beta: float) -> None:
    x, y = data
    torch.testing.assert_close(
        F.smooth_l1_loss(x, y, beta=beta, reduction="none"),
        Z.huber_loss(x, y, delta=beta, reduction="none") / beta,
        rtol=1e-12,
        atol=1e-12,
    )


def test_regression_derivatives() -> None:
    x = torch.linspace(-3, 3, 25, dtype=torch.float64).requires_grad_(True)
    y = torch.full_like(x, 0.2)
    r = x.detach() - y
    derived = {
        "mse": (Z.mse_loss, 2 * r),
        "l1": (Z.absolute_difference, torch.sign(r)),
        "huber": (lambda a, b, reduction: Z.huber_loss(a, b, 0.7, reduction), r.clamp(-0.7, 0.7)),
    }
    for fn, want in derived.values():
        (grad,) = torch.autograd.grad(fn(x, y, reduction="sum"), x)
        torch.testing.assert_close(grad, want)


# ------------------------------------------------------------------------------------------
# Log loss
# ------------------------------------------------------------------------------------------

probabilities = st.floats(min_value=1e-6, max_value=1 - 1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(
    p=st.lists(probabilities, min_size=1, max_size=12),
    seed=st.integers(0, 100),
)
def test_log_loss_agrees_with_binary_cross_entropy(
    reduction: str, p: list[float], seed: int
) -> None:
    probs = torch.tensor(p, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(probs.shape, generator=g, dtype=torch.float64)
    target = torch.where(target < 0.3, 0.0, torch.where(target > 0.7, 1.0, target))
    # with a negligible epsilon the two are the same formula
    torch.testing.assert_close(
        Z.log_loss(probs, target, eps=1e-300, reduction=reduction),
        F.binary_cross_entropy(probs, target, reduction=reduction),
        rtol=1e-12,
        atol=1e-12,
    )
    # with TF's epsilon, the bias of each entry is at most eps / min(p, 1 - p)
    eps = 1e-7
    gap = (
        Z.log_loss(probs, target, eps=eps, reduction="none")
        - F.binary_cross_entropy(probs, target, reduction="none")
    ).abs()
    assert bool((gap <= eps / torch.minimum(probs, 1 - probs) + 1e-15).all())


def test_log_loss_is_tf_slims_formula_and_finite_at_zero_and_one() -> None:
    p = torch.tensor([0.0, 0.3, 1.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    eps = 1e-7
    ours = Z.log_loss(p, y, eps=eps, reduction="none")
    pd = p.detach()
    want = -y * torch.log(pd + eps) - (1 - y) * torch.log(1 - pd + eps)
    torch.testing.assert_close(ours, want)
    assert ours[0].item() == pytest.approx(-math.log(eps))  # not torch's clamp at 100
    assert F.binary_cross_entropy(pd[:1], y[:1]).item() == 100.0
    (grad,) = torch.autograd.grad(ours.sum(), p)
    torch.testing.assert_close(grad, -y / (pd + eps) + (1 - y) / (1 - pd + eps))
    assert_finite(ours, grad)


def test_log_loss_on_softmax_rows_is_not_multiclass_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (6,), generator=g)
    probs = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target, 4).double()
    tf_value = Z.log_loss(probs, one_hot, eps=1e-300)
    ce = F.cross_entropy(logits, target)
    wrong_classes = -(torch.log1p(-probs) * (1 - one_hot)).sum(1).mean()
    # mean over B*C entries of binary cross-entropies: (CE + sum_{j != y} -log(1 - p_j)) / C
    torch.testing.assert_close(tf_value, (ce + wrong_classes) / 4)
    assert abs(tf_value.item() - ce.item()) > 0.1


# ------------------------------------------------------------------------------------------
# Cosine distance
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=same_shape_pair(min_dims=2, min_side=2))
def test_cosine_distance_agrees_with_torch(reduction: str, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    x = x + 0.5  # keep norms away from 0, where the two epsilons differ
    y = y - 0.5
    for dim in range(x.dim()):
        ours = Z.cosine_distance(x, y, dim=dim, reduction=reduction)
        want = 1 - F.cosine_similarity(x, y, dim=dim)
        want = {"none": want, "mean": want.mean(), "sum": want.sum()}[reduction]
        torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    if x.dim() == 2:
        embedding = F.cosine_embedding_loss(x, y, torch.ones(x.shape[0]), reduction=reduction)
        torch.testing.assert_close(Z.cosine_distance(x, y, reduction=reduction), embedding)


def test_cosine_distance_gradient_and_extremes() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(Z.cosine_distance(x, y, reduction="sum"), x)
    xd = x.detach()
    xn, yn = xd.norm(dim=1, keepdim=True), y.norm(dim=1, keepdim=True)
    cos = (xd * y).sum(1, keepdim=True) / (xn * yn)
    torch.testing.assert_close(grad, -(y / yn - cos * xd / xn) / xn)
    for dtype in (torch.float64, *LOW_PRECISION):
        base = torch.randn(4, 3, generator=g).to(dtype)
        for other, want in ((2 * base, 0.0), (-3 * base, 2.0), (torch.zeros_like(base), 1.0)):
            a = base.clone().requires_grad_(True)
            d = Z.cosine_distance(a, other, reduction="none")
            (grad,) = torch.autograd.grad(d.sum(), a)
            assert_finite(d, grad)
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-6
            torch.testing.assert_close(
                d.double(), torch.full((4,), want, dtype=torch.float64), rtol=0, atol=tol
            )
        zero = torch.zeros(2, 3, dtype=dtype, requires_grad=True)
        (grad,) = torch.autograd.grad(Z.cosine_distance(zero, base[:2]).sum(), zero)
        assert_finite(grad)


def test_tf_slim_cosine_distance_needs_unit_vectors() -> None:
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([[6.0, 8.0]], dtype=torch.float64)
    tf_slim = 1 - (x * y).sum(1)  # TF-Slim's formula, no normalisation
    assert tf_slim.item() == -49.0
    assert Z.cosine_distance(x, y).item() == pytest.approx(0.0, abs=1e-15)
    unit = F.normalize(x, dim=1), F.normalize(y, dim=1)
    assert (1 - (unit[0] * unit[1]).sum(1)).item() == pytest.approx(0.0, abs=1e-15)


# ------------------------------------------------------------------------------------------
# Mean pairwise squared error
# ------------------------------------------------------------------------------------------


def naive_pairwise(x: Tensor, y: Tensor) -> Tensor:
    """Mean over unordered pairs j < k of ((x_j - x_k) - (y_j - y_k))^2, per sample."""
    xf, yf = x.flatten(1), y.flatten(1)
    n = xf.shape[1]
    dx = xf[:, :, None] - xf[:, None, :]
    dy = yf[:, :, None] - yf[:, None, :]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return ((dx - dy) ** 2)[:, upper].sum(1) / (n * (n - 1) / 2)


def tf_slim_pairwise(x: Tensor, y: Tensor) -> Tensor:
    """TF-Slim's code (tf.contrib.losses): 2 S2 / n - 2 S1^2 / n^2 per sample, summed."""
    d = (x - y).flatten(1)
    n = d.shape[1]
    return (2 * d.square().sum(1) / n - 2 * d.sum(1).square() / n**2).sum()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=same_shape_pair(min_dims=2, min_side=2), shift=values)
def test_mean_pairwise_squared_error(
    reduction: str, data: tuple[Tensor, Tensor], shift: float
) -> None:
    x, y = data
    ours = Z.mean_pairwise_squared_error(x, y, reduction=reduction)
    naive = naive_pairwise(x, y)
    naive = {"none": naive, "mean": naive.mean(), "sum": naive.sum()}[reduction]
    torch.testing.assert_close(ours, naive, rtol=1e-9, atol=1e-9)
    # adding the same constant to every prediction of a sample changes nothing
    torch.testing.assert_close(
        Z.mean_pairwise_squared_error(x + shift, y, reduction=reduction), ours, rtol=1e-9, atol=1e-8
    )
    # TF-Slim's code divides by n^2 (self-pairs included) and sums over the batch
    n = x[0].numel()
    torch.testing.assert_close(
        tf_slim_pairwise(x, y),
        (n - 1) / n * Z.mean_pairwise_squared_error(x, y, reduction="sum"),
        rtol=1e-8,
        atol=1e-7,
    )


def test_mean_pairwise_gradient_and_shift_in_float32() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(Z.mean_pairwise_squared_error(x, y, reduction="sum"), x)
    d = (x.detach() - y).flatten(1)
    want = 4 / (d.shape[1] - 1) * (d - d.mean(1, keepdim=True))
    torch.testing.assert_close(grad, want.reshape(x.shape))
    # the centred form keeps the shift invariance in float32; the expanded form does not
    x32, y32 = x.detach().float(), y.float()
    shifted = Z.mean_pairwise_squared_error(x32 + 1e4, y32, reduction="none")
    torch.testing.assert_close(
        shifted, Z.mean_pairwise_squared_error(x32, y32, "none"), rtol=1e-3, atol=1e-3
    )
    d32 = (x32 + 1e4 - y32).flatten(1)
    n = d32.shape[1]
    expanded = 2 * d32.square().sum(1) / (n - 1) - 2 * d32.sum(1).square() / (n * (n - 1))
    assert (expanded.double() - naive_pairwise(x.detach(), y)).abs().max() > 1.0


# ------------------------------------------------------------------------------------------
# gradcheck, extremes, shapes
# ------------------------------------------------------------------------------------------

ELEMENTWISE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "binary_hinge_loss": lambda x, y: Z.binary_hinge_loss(x, (y > 0).to(x.dtype), 1.0, "none"),
    "mse_loss": lambda x, y: Z.mse_loss(x, y, "none"),
    "absolute_difference": lambda x, y: Z.absolute_difference(x, y, "none"),
    "huber_loss": lambda x, y: Z.huber_loss(x, y, 1.0, "none"),
    "cosine_distance": lambda x, y: Z.cosine_distance(x, y, 1, 1e-8, "none"),
    "mean_pairwise_squared_error": lambda x, y: Z.mean_pairwise_squared_error(x, y, "none"),
}
CLASSWISE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "multiclass_hinge_loss": lambda s, t: Z.multiclass_hinge_loss(s, t, 1.0, "none"),
    "squared_hinge_loss": lambda s, t: Z.squared_hinge_loss(s, t, 1.0, "none"),
}


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("name", [*ELEMENTWISE, *CLASSWISE])
def test_finite_values_and_gradients_at_extremes(name: str, dtype: torch.dtype) -> None:
    x = torch.tensor([[-1e4, 1e4, 0.0, 3.0], [1e4, -2.0, -1e4, 1e4]], dtype=dtype)
    x.requires_grad_(True)
    if name in CLASSWISE:
        value = CLASSWISE[name](x, torch.tensor([0, 2]))
        reference = CLASSWISE[name](x.detach().double(), torch.tensor([0, 2]))
    else:
        y = torch.tensor([[1e4, -1e4, 1.0, -3.0], [0.0, 1e4, 5.0, -1e4]], dtype=dtype)
        value = ELEMENTWISE[name](x, y)
        reference = ELEMENTWISE[name](x.detach().double(), y.double())
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert value.dtype == dtype
    assert_finite(value, grad)
    rtol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(value.double(), reference, rtol=rtol, atol=1e-3)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_log_loss_low_precision(dtype: torch.dtype) -> None:
    p = torch.tensor([0.0, 1e-3, 0.5, 0.999, 1.0], dtype=dtype, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=dtype)
    value = Z.log_loss(p, y, reduction="none")
    (grad,) = torch.autograd.grad(value.sum(), p)
    assert value.dtype == dtype
    assert_finite(value, grad)


# ------------------------------------------------------------------------------------------
# Weighted losses
# ------------------------------------------------------------------------------------------


def test_weighted_loss_reductions_on_a_worked_example() -> None:
    losses = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    per_sample = torch.tensor([2.0, 0.0], dtype=torch.float64)
    got = {r: Z.weighted_loss(losses, per_sample, r).item() for r in Z.WEIGHTED_REDUCTIONS[1:]}
    # sum(w l) = 2 * (1 + 2) = 6; sum(w) over the 4 elements = 4; 4 elements; 2 non-zero
    assert got == {
        "sum": 6.0,
        "mean": 1.5,
        "mean_over_elements": 1.5,
        "mean_over_nonzero_weights": 3.0,
    }
    torch.testing.assert_close(
        Z.weighted_loss(losses, per_sample, "none"), losses * per_sample[:, None]
    )
    # per-class weights broadcast along a size-1 leading dimension
    per_class = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    assert Z.weighted_loss(losses, per_class, "mean").item() == pytest.approx((1 + 6 + 3 + 12) / 8)
    # TF-Slim: doubling every weight doubles the loss, unlike the weighted mean
    assert Z.weighted_loss(losses, 2 * per_sample, "mean_over_nonzero_weights").item() == 6.0
    assert Z.weighted_loss(losses, 2 * per_sample, "mean").item() == 1.5
    # a scalar weight and the scalar-0 case (0, not NaN, as TensorFlow's safe division)
    assert Z.weighted_loss(losses, 0.5, "mean_over_nonzero_weights").item() == 1.25
    for r in Z.WEIGHTED_REDUCTIONS[1:]:
        zero = Z.weighted_loss(losses, torch.zeros(2, dtype=torch.float64), r)
        assert zero.item() == 0.0


@given(data=scores_and_classes())
def test_weighted_mean_is_torchs_class_weighted_cross_entropy(data: tuple[Tensor, Tensor]) -> None:
    logits, target = data
    class_weight = torch.linspace(0.5, 2.0, logits.shape[1], dtype=torch.float64)
    per_sample = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(
        Z.weighted_loss(per_sample, class_weight[target], "mean"),
        F.cross_entropy(logits, target, weight=class_weight),
    )
    torch.testing.assert_close(
        Z.weighted_loss(per_sample, class_weight[target], "sum"),
        F.cross_entropy(logits, target, weight=class_weight, reduction="sum"),
    )


def test_weighted_loss_gradient_flows_to_losses_and_weights() -> None:
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.5, 1.0, 0.25], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: Z.weighted_loss(a, b, "mean"), (losses, w))
    zero = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(Z.weighted_loss(losses, zero, "mean"), zero)
    assert_finite(grad)


# ------------------------------------------------------------------------------------------
# Multi-task loss and L2 regularisation
# ------------------------------------------------------------------------------------------


def test_multitask_fixed_weights() -> None:
    a, b = torch.tensor(0.7), torch.tensor(2.5)
    assert Z.MultiTaskLoss(["classification", "regression"])([a, b]).item() == pytest.approx(3.2)
    fixed = Z.MultiTaskLoss(["classification", "regression"], weights=[1.0, 0.1])
    assert fixed([a, b]).item() == pytest.approx(0.95)
    assert list(fixed.parameters()) == []
    torch.testing.assert_close(fixed.effective_weights(), torch.tensor([1.0, 0.1]))


def test_multitask_learned_is_kendalls_formula() -> None:
    mtl = Z.MultiTaskLoss(["regression", "classification"], learned=True)
    assert [p.shape for p in mtl.parameters()] == [torch.Size([2])]
    assert mtl.log_variance is not None
    with torch.no_grad():
        mtl.log_variance.copy_(torch.tensor([0.4, -1.1]))
    mse, ce = torch.tensor(0.8), torch.tensor(1.7)
    s1, s2 = 0.4, -1.1
    sigma1, sigma2 = math.exp(s1 / 2), math.exp(s2 / 2)
    want = mse / (2 * sigma1**2) + math.log(sigma1) + ce / sigma2**2 + math.log(sigma2)
    torch.testing.assert_close(mtl([mse, ce]), want)
    torch.testing.assert_close(
        mtl.effective_weights(), torch.tensor([0.5 * math.exp(-s1), math.exp(-s2)])
    )


def test_regression_term_is_the_gaussian_negative_log_likelihood() -> None:
    g = torch.Generator().manual_seed(6)
    pred = torch.randn(50, generator=g, dtype=torch.float64)
    target = torch.randn(50, generator=g, dtype=torch.float64)
    mtl = Z.MultiTaskLoss(["regression"], learned=True).double()
    assert mtl.log_variance is not None
    with torch.no_grad():
        mtl.log_variance.fill_(0.3)
    variance = torch.full_like(pred, math.exp(0.3))
    torch.testing.assert_close(
        mtl([F.mse_loss(pred, target)]), F.gaussian_nll_loss(pred, target, variance)
    )


@pytest.mark.parametrize("kind, factor", [("regression", 0.5), ("classification", 1.0)])
def test_learned_weight_at_its_optimum_is_one_over_twice_the_loss(kind: str, factor: float) -> None:
    loss = torch.tensor(0.37, dtype=torch.float64)
    mtl = Z.MultiTaskLoss([kind], learned=True).double()
    assert mtl.log_variance is not None
    with torch.no_grad():  # the stationary point of c e^{-s} L + s / 2
        mtl.log_variance.fill_(math.log(2 * factor * loss.item()))
    (grad,) = torch.autograd.grad(mtl([loss]), mtl.log_variance)
    assert abs(grad.item()) < 1e-12
    assert mtl.effective_weights().item() == pytest.approx(1 / (2 * loss.item()))


def test_multitask_dtype_and_bad_input() -> None:
    mtl = Z.MultiTaskLoss(["regression", "classification"], learned=True)
    out = mtl([torch.tensor(0.5, dtype=torch.bfloat16), torch.tensor(1.0, dtype=torch.bfloat16)])
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"kinds must hold 'regression' or 'classification'"):
        Z.MultiTaskLoss(["regresion"])
    with pytest.raises(ValueError, match=r"kinds must be a non-empty sequence"):
        Z.MultiTaskLoss([])
    with pytest.raises(ValueError, match=r"weights must be None when learned=True"):
        Z.MultiTaskLoss(["regression"], weights=[1.0], learned=True)
    with pytest.raises(ValueError, match=r"weights must have one entry per task \(2\), got 1"):
        Z.MultiTaskLoss(["regression", "classification"], weights=[1.0])
    with pytest.raises(ValueError, match=r"weights must be a finite non-negative number"):
        Z.MultiTaskLoss(["regression"], weights=[-1.0])
    with pytest.raises(ValueError, match=r"losses must have one entry per task \(2\), got 1"):
        mtl([torch.tensor(1.0)])
    with pytest.raises(TypeError, match=r"losses must be a sequence of scalar tensors"):
        mtl(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"losses\[1\] must be a torch.Tensor, got float"):
        mtl([torch.tensor(1.0), 2.0])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"losses\[0\] must be a floating-point tensor"):
        mtl([torch.tensor(1), torch.tensor(2)])
    with pytest.raises(ValueError, match=r"losses\[1\] must be a scalar \(0-d tensor\)"):
        mtl([torch.tensor(1.0), torch.ones(3)])
    with pytest.raises(ValueError, match=r"losses must be finite"):
        mtl([torch.tensor(float("inf")), torch.tensor(1.0)])
    with pytest.raises(ValueError, match=r"losses must be non-negative with learned weights"):
        mtl([torch.tensor(-0.5), torch.tensor(1.0)])
    with pytest.raises(TypeError, match=r"losses\[1\] must have the same dtype as losses\[0\]"):
        mtl([torch.tensor(1.0), torch.tensor(1.0, dtype=torch.float64)])


def test_l2_regularization_is_half_the_squared_norm_and_matches_weight_decay() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    want = 0.5 * sum(float(p.detach().square().sum()) for p in net.parameters())
    assert Z.l2_regularization(net).item() == pytest.approx(want, rel=1e-12)
    weights_only = [m.weight for m in net if isinstance(m, nn.Linear)]
    assert Z.l2_regularization(weights_only).item() == pytest.approx(
        0.5 * sum(float(w.detach().square().sum()) for w in weights_only), rel=1e-12
    )
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randn(8, 2, dtype=torch.float64)
    lam = 0.3
    for optimizer in (torch.optim.SGD, torch.optim.Adam):
        a = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        b = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        b.load_state_dict(a.state_dict())
        opt_a = optimizer(a.parameters(), lr=0.1, weight_decay=lam)
        opt_b = optimizer(b.parameters(), lr=0.1)
        for _ in range(3):
            opt_a.zero_grad()
            F.mse_loss(a(x), y).backward()
            opt_a.step()
            opt_b.zero_grad()
            (F.mse_loss(b(x), y) + lam * Z.l2_regularization(b)).backward()
            opt_b.step()
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)


def test_l2_regularization_bad_input() -> None:
    with pytest.raises(ValueError, match=r"module_or_params must hold at least one parameter"):
        Z.l2_regularization([])
    with pytest.raises(ValueError, match=r"module_or_params must hold at least one parameter"):
        Z.l2_regularization(nn.ReLU())
    with pytest.raises(TypeError, match=r"module_or_params must be a torch.nn.Module or an"):
        Z.l2_regularization(3.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"module_or_params\[1\] must be a torch.Tensor, got list"):
        Z.l2_regularization([torch.ones(2), [1.0]])  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------
# The image property of the experiment
# ------------------------------------------------------------------------------------------


def test_ink_width() -> None:
    images = torch.zeros(3, 8, 8, dtype=torch.float64)
    images[0, :, 3] = 1.0  # one vertical stroke: width 0
    images[1, :, 2] = 1.0  # two strokes two columns apart: spread 1
    images[1, :, 4] = 1.0
    images[2, 0, 0] = 1.0  # two dots at columns 0 and 6: spread 3
    images[2, 5, 6] = 1.0
    torch.testing.assert_close(ink_width(images), torch.tensor([0.0, 1.0, 3.0]).double())
    torch.testing.assert_close(ink_width(images.reshape(3, 64)), ink_width(images))
    with pytest.raises(ValueError, match=r"images must each contain some ink"):
        ink_width(torch.zeros(1, 64))
    with pytest.raises(ValueError, match=r"images must have shape \(N, 64\) or \(N, 8, 8\)"):
        ink_width(torch.ones(2, 60))
    with pytest.raises(ValueError, match=r"images must hold non-negative intensities"):
        ink_width(-torch.ones(1, 64))


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------

s2 = torch.randn(3, 4)
t2 = torch.tensor([0, 1, 3])
x2, y2 = torch.rand(3, 4), torch.rand(3, 4)

BAD_INPUT: list[tuple[Callable[[], object], type[Exception], str]] = [
    (lambda: Z.multiclass_hinge_loss(s2.tolist(), t2), TypeError, r"input must be a torch.Tensor"),
    (lambda: Z.multiclass_hinge_loss(s2[:, :1], t2), ValueError, r"at least 2 classes"),
    (lambda: Z.multiclass_hinge_loss(s2, t2.float()), TypeError, r"target must hold integer"),
    (lambda: Z.multiclass_hinge_loss(s2, torch.tensor([0, 1, 4])), ValueError, r"\[0, 3\]"),
    (lambda: Z.multiclass_hinge_loss(s2, t2[:2]), ValueError, r"target must have shape \(3,\)"),
    (lambda: Z.multiclass_hinge_loss(s2, t2, margin=-1), ValueError, r"margin must be a finite"),
    (lambda: Z.squared_hinge_loss(s2[0], t2), ValueError, r"input must have 2 dimension"),
    (lambda: Z.multiclass_hinge_loss(s2, t2, reduction="avg"), ValueError, r"reduction must be"),
    (
        lambda: Z.binary_hinge_loss(x2, 2 * y2 - 1),
        ValueError,
        r"target must hold the labels 0 and 1, got",
    ),
    (lambda: Z.binary_hinge_loss(x2, (y2 > 0.5).long()), TypeError, r"target must be a floating"),
    (lambda: Z.mse_loss(x2, y2[:2]), ValueError, r"target must have the same shape as input"),
    (lambda: Z.mse_loss(x2, y2.double()), TypeError, r"target must have the same dtype as input"),
    (lambda: Z.mse_loss(torch.zeros(0), torch.zeros(0)), ValueError, r"input must not be empty"),
    (lambda: Z.absolute_difference(x2 * math.nan, y2), ValueError, r"input contains NaN"),
    (lambda: Z.huber_loss(x2, y2, delta=0.0), ValueError, r"delta must be a finite positive"),
    (lambda: Z.log_loss(x2 + 1, y2), ValueError, r"input must hold probabilities in \[0.0, 1.0\]"),
    (lambda: Z.log_loss(x2, y2 - 2), ValueError, r"target must hold labels or probabilities"),
    (lambda: Z.log_loss(x2, y2, eps=0.0), ValueError, r"eps must be a finite positive"),
    (lambda: Z.cosine_distance(x2, y2, dim=2), ValueError, r"dim must be in \[-2, 1\]"),
    (lambda: Z.cosine_distance(x2, y2, dim=1.0), TypeError, r"dim must be an int"),  # type: ignore[arg-type]
    (lambda: Z.mean_pairwise_squared_error(x2[:, 0], y2[:, 0]), ValueError, r"at least 2 entries"),
    (lambda: Z.mean_pairwise_squared_error(x2[:, :1], y2[:, :1]), ValueError, r"at least 2"),
    (lambda: Z.weighted_loss(x2, torch.ones(4)), ValueError, r"leading dimensions of losses"),
    (
        lambda: Z.weighted_loss(x2, -torch.ones(3)),
        ValueError,
        r"weights must hold non-negative weights .*got -1.0",
    ),
    (lambda: Z.weighted_loss(x2, "1"), TypeError, r"weights must be a number or a torch.Tensor"),  # type: ignore[arg-type]
    (lambda: Z.weighted_loss(x2, torch.ones(3).double()), TypeError, r"weights must have the same"),
    (lambda: Z.weighted_loss(x2, 1.0, "mean_over_batch"), ValueError, r"reduction must be one of"),
    (lambda: Z.weighted_loss(x2, torch.ones(3, 4, 1)), ValueError, r"leading dimensions"),
]


@pytest.mark.parametrize("index", range(len(BAD_INPUT)))
def test_bad_input(index: int) -> None:
    call, error, message = BAD_INPUT[index]
    with pytest.raises(error, match=message):
        call()


def test_cosine_distance_float16_zero_row_is_finite() -> None:
    """Finding 5: eps = 1e-8 rounds to 0 in float16, and a zero row gave 0 / 0."""
    x = torch.randn(3, 4, dtype=torch.float16)
    x[2] = 0
    x.requires_grad_(True)
    loss = Z.cosine_distance(x, torch.randn(3, 4, dtype=torch.float16))
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
