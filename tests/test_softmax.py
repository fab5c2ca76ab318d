"""companion.softmax: agreement with torch, analytic gradient, gradcheck, extremes, bad input."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from companion import softmax as S
from tests.conftest import LOW_PRECISION, REDUCTIONS, assert_finite

# Losses below about 1e-10 are log(1 + delta) with 1 + delta rounded: both implementations carry
# an absolute error of about 1e-16 there, so relative agreement needs a tiny absolute floor.
RTOL, ATOL = 1e-6, 1e-12

logit_values = st.floats(min_value=-60, max_value=60, allow_nan=False)


@st.composite
def problems(draw: st.DrawFn, max_batch: int = 7, max_classes: int = 6) -> dict[str, Any]:
    """A batch of float64 logits with both kinds of target, class weights and a smoothing."""
    batch = draw(st.integers(1, max_batch))
    classes = draw(st.integers(1, max_classes))
    logits = torch.tensor(
        draw(st.lists(logit_values, min_size=batch * classes, max_size=batch * classes)),
        dtype=torch.float64,
    ).reshape(batch, classes)
    index = torch.tensor(
        draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch)),
        dtype=torch.long,
    )
    raw = torch.tensor(
        draw(st.lists(st.floats(0, 1), min_size=batch * classes, max_size=batch * classes)),
        dtype=torch.float64,
    ).reshape(batch, classes)
    raw[torch.arange(batch), index] += 0.1  # every row has some mass
    probs = raw / raw.sum(1, keepdim=True)
    weight = torch.tensor(
        draw(st.lists(st.floats(0.1, 3.0), min_size=classes, max_size=classes)),
        dtype=torch.float64,
    )
    return {
        "logits": logits,
        "index": index,
        "probs": probs,
        "weight": weight,
        "label_smoothing": draw(st.sampled_from([0.0, 0.1, 0.37, 1.0])),
    }


# ------------------------------------------------------------------------------------- softmax


@st.composite
def matrices(draw: st.DrawFn) -> Tensor:
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    values = draw(st.lists(logit_values, min_size=rows * cols, max_size=rows * cols))
    return torch.tensor(values, dtype=torch.float64).reshape(rows, cols)


@given(x=matrices(), dim=st.sampled_from([0, 1, -1]))
def test_softmax_family_agrees_with_torch_in_float64(x: Tensor, dim: int) -> None:
    torch.testing.assert_close(S.softmax(x, dim), torch.softmax(x, dim), rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(
        S.log_softmax(x, dim), torch.log_softmax(x, dim), rtol=1e-12, atol=1e-14
    )
    for keepdim in (False, True):
        torch.testing.assert_close(
            S.logsumexp(x, dim, keepdim), torch.logsumexp(x, dim, keepdim), rtol=1e-12, atol=1e-14
        )


@given(
    values=st.lists(logit_values, min_size=1, max_size=10),
    shift=st.floats(min_value=-1e3, max_value=1e3),
)
def test_softmax_is_invariant_to_a_shared_shift(values: list[float], shift: float) -> None:
    x = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(S.softmax(x + shift), S.softmax(x), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(S.logsumexp(x + shift), S.logsumexp(x) + shift)


def test_softmax_jacobian_is_p_times_delta_minus_p() -> None:
    x = torch.tensor([1.5, -0.3, 0.0, 2.2, -4.0], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(S.softmax, x)
    p = torch.softmax(x, 0)
    torch.testing.assert_close(jac, torch.diag(p) - p[:, None] * p[None, :])
    (grad,) = torch.autograd.grad(S.logsumexp(x.requires_grad_()), x)
    torch.testing.assert_close(grad, p)  # the gradient of log-sum-exp is the softmax


@pytest.mark.parametrize("fn", [S.softmax, S.log_softmax, S.logsumexp])
def test_softmax_family_gradcheck(fn: Callable[..., Tensor]) -> None:
    x = torch.tensor([[-30.0, 0.5, 2.0], [4.0, 4.0, -1.0]], dtype=torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, 1))
    assert torch.autograd.gradgradcheck(fn, (x, 1))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("fn", [S.softmax, S.log_softmax, S.logsumexp])
def test_softmax_family_finite_at_extremes(fn: Callable[..., Tensor], dtype: torch.dtype) -> None:
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 1.0]], dtype=dtype)
    x.requires_grad_(True)
    y = fn(x, -1)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert y.dtype == dtype
    assert_finite(y, grad)
    reference = {S.softmax: torch.softmax, S.log_softmax: torch.log_softmax}.get(
        fn, torch.logsumexp
    )
    want = reference(x.detach().double(), -1)
    torch.testing.assert_close(y.double(), want, rtol=1e-2, atol=1e-6)


def test_naive_forms_break_where_the_stable_ones_do_not() -> None:
    x = torch.tensor([0.0, 200.0])  # float32: e^200 overflows, e^-200 underflows
    naive = torch.exp(x) / torch.exp(x).sum()
    assert torch.isnan(naive).any()
    torch.testing.assert_close(S.softmax(x), torch.tensor([0.0, 1.0]))
    assert torch.isinf(torch.log(S.softmax(x))).any()  # log(softmax) loses the small class
    torch.testing.assert_close(S.log_softmax(x), torch.tensor([-200.0, 0.0]))


def test_logsumexp_handles_infinities_like_torch() -> None:
    inf = float("inf")
    x = torch.tensor([[-inf, -inf], [inf, 0.0], [-inf, 1.0]])
    torch.testing.assert_close(S.logsumexp(x), torch.logsumexp(x, -1))
    assert S.logsumexp(torch.zeros(0, 3)).shape == (0,)  # an empty batch passes through


def test_softmax_family_bad_input() -> None:
    for fn in (S.softmax, S.log_softmax, S.logsumexp):
        with pytest.raises(TypeError, match=r"^input must be a torch.Tensor, got list"):
            fn([1.0, 2.0])
        with pytest.raises(TypeError, match=r"^input must be a floating-point tensor .*int64"):
            fn(torch.tensor([1, 2]))
        with pytest.raises(ValueError, match=r"^input contains NaN"):
            fn(torch.tensor([1.0, float("nan")]))
        with pytest.raises(ValueError, match=r"dim must be in \[-2, 1\] .* got 2"):
            fn(torch.zeros(2, 3), 2)
        with pytest.raises(TypeError, match=r"dim must be an int, got float"):
            fn(torch.zeros(2, 3), 1.0)
        with pytest.raises(ValueError, match=r"^input must have at least one entry along dim 1"):
            fn(torch.zeros(2, 0), 1)
        with pytest.raises(ValueError, match=r"^input must have at least 1 dimension"):
            fn(torch.tensor(1.0))


# ------------------------------------------------------------------------------- cross-entropy


@given(problem=problems())
def test_loss_and_analytic_gradient_agree_with_torch_in_float64(problem: dict[str, Any]) -> None:
    """Every reduction, both target kinds, with and without class weights, with smoothing."""
    logits, eps = problem["logits"], problem["label_smoothing"]
    for kind, reduction, weight in itertools.product(
        ("index", "probs"), REDUCTIONS, (None, problem["weight"])
    ):
        target = problem[kind]
        x = logits.clone().requires_grad_(True)
        ours = S.cross_entropy(x, target, weight, eps, reduction)
        theirs = F.cross_entropy(x, target, weight=weight, label_smoothing=eps, reduction=reduction)
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)
        (ours_autograd,) = torch.autograd.grad(ours.sum(), x)
        (torch_autograd,) = torch.autograd.grad(theirs.sum(), x)
        analytic = S.cross_entropy_grad(logits, target, weight, eps, reduction)
        torch.testing.assert_close(analytic, ours_autograd, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(analytic, torch_autograd, rtol=RTOL, atol=ATOL)


def test_default_gradient_is_that_of_the_mean_and_equals_p_minus_y_over_b() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 3, 1, 1, 2, 0])
    p = torch.softmax(logits, 1)
    y = F.one_hot(target, 4).double()
    torch.testing.assert_close(S.cross_entropy_grad(logits, target), (p - y) / 6)
    torch.testing.assert_close(S.cross_entropy_grad(logits, target, reduction="sum"), p - y)
    # label smoothing replaces y by (1 - eps) y + eps / C
    torch.testing.assert_close(
        S.cross_entropy_grad(logits, target, label_smoothing=0.2, reduction="sum"),
        p - (0.8 * y + 0.05),
    )


def test_one_hot_probability_targets_equal_index_targets() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, generator=g, dtype=torch.float64)
    target = torch.tensor([2, 0, 1, 1, 2])
    one_hot = F.one_hot(target, 3).double()
    for eps in (0.0, 0.3):
        torch.testing.assert_close(
            S.cross_entropy(logits, target, label_smoothing=eps),
            S.cross_entropy(logits, one_hot, label_smoothing=eps),
        )
    # ... but with class weights the two kinds average differently, as in torch
    w = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    by_index = S.cross_entropy(logits, target, w)
    by_probs = S.cross_entropy(logits, one_hot, w)
    torch.testing.assert_close(by_index * w[target].sum() / 5, by_probs)


def test_unbatched_logits() -> None:
    logits = torch.tensor([0.2, -1.0, 3.0], dtype=torch.float64)
    for target in (torch.tensor(2), torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)):
        for reduction in REDUCTIONS:
            ours = S.cross_entropy(logits, target, reduction=reduction)
            theirs = F.cross_entropy(logits, target, reduction=reduction)
            assert ours.shape == theirs.shape == ()
            torch.testing.assert_close(ours, theirs)
        x = logits.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(x, target), x)
        torch.testing.assert_close(S.cross_entropy_grad(logits, target), grad)


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_cross_entropy_gradcheck(kind: str) -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3, generator=g, dtype=torch.float64) * 3
    target = torch.tensor([0, 2, 1, 2]) if kind == "index" else torch.softmax(logits * 0.7, 1)
    weight = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    for reduction in REDUCTIONS:

        def fn(x: Tensor, reduction: str = reduction) -> Tensor:
            return S.cross_entropy(x, target, weight, 0.1, reduction)

        x = logits.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_cross_entropy_finite_at_extremes(kind: str, dtype: torch.dtype) -> None:
    logits = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4], [1e4, -1e4, -1e4]], dtype=dtype
    )
    index = torch.tensor([1, 0, 2, 0])  # includes wrong predictions by a margin of 2e4
    target = index if kind == "index" else F.one_hot(index, 3).to(dtype) * 0.75 + 0.25 / 3
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=dtype)
    for reduction in REDUCTIONS:
        x = logits.clone().requires_grad_(True)
        loss = S.cross_entropy(x, target, weight, 0.1, reduction)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        analytic = S.cross_entropy_grad(logits, target, weight, 0.1, reduction)
        assert loss.dtype == grad.dtype == analytic.dtype == dtype
        assert_finite(loss, grad, analytic)
        want = F.cross_entropy(
            logits.double(),
            target if kind == "index" else target.double(),
            weight=weight.double(),
            label_smoothing=0.1,
            reduction=reduction,
        )
        torch.testing.assert_close(loss.double(), want, rtol=1e-2, atol=1e-6)


def test_zero_class_weights() -> None:
    logits = torch.zeros(3, 2, dtype=torch.float64)
    target = torch.tensor([0, 0, 1])
    weight = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # samples of a zero-weight class drop out of the sum and of the denominator
    torch.testing.assert_close(
        S.cross_entropy(logits, target, weight), F.cross_entropy(logits, target, weight=weight)
    )
    # every target weight zero: the weighted mean is 0 (the package's one rule; torch gives NaN)
    none_weighted = torch.tensor([0, 0, 0])
    assert S.cross_entropy(logits, none_weighted, weight).item() == 0.0
    assert torch.equal(
        S.cross_entropy_grad(logits, none_weighted, weight), torch.zeros(3, 2).double()
    )
    assert F.cross_entropy(logits, none_weighted, weight=weight).isnan()
    zero_sum = S.cross_entropy(logits, torch.tensor([0, 0, 0]), weight, reduction="sum")
    assert float(zero_sum) == 0.0


LOGITS = torch.zeros(4, 3)
BAD_INPUTS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    (
        "mismatched batch sizes (index)",
        {"target": torch.tensor([0, 1, 2])},
        ValueError,
        r"input and target must have the same batch size .* got 4 for input .* 3 for target",
    ),
    (
        "mismatched batch sizes (probabilities)",
        {"target": torch.full((5, 3), 1 / 3)},
        ValueError,
        r"input and target must have the same batch size",
    ),
    (
        "index out of range",
        {"target": torch.tensor([0, 1, 3, 2])},
        ValueError,
        r"target must hold class indices in \[0, 2\] for 3 classes, got 3",
    ),
    (
        "negative index",
        {"target": torch.tensor([0, -1, 2, 2])},
        ValueError,
        r"target must hold class indices in \[0, 2\] for 3 classes, got -1",
    ),
    (
        "float class indices",
        {"target": torch.tensor([0.0, 1.0, 2.0, 1.0])},
        TypeError,
        r"target must hold integer class indices \(torch.long\), got dtype torch.float32 .*"
        r"class probabilities must have the shape of input \(4, 3\)",
    ),
    (
        "boolean class indices",
        {"target": torch.tensor([True, False, True, True])},
        TypeError,
        r"target must hold integer class indices \(torch.int64 or torch.int32\), got dtype torch.bool",  # noqa: E501
    ),
    (
        "probabilities not summing to 1",
        {"target": torch.full((4, 3), 0.3)},
        ValueError,
        r"target must hold probability vectors that sum to 1 along dim 1, .* off by 0.1",
    ),
    (
        "probabilities outside [0, 1]",
        {"target": torch.tensor([[1.5, -0.5, 0.0]] * 4)},
        ValueError,
        r"target must hold probabilities in \[0.0, 1.0\]",
    ),
    (
        "probabilities of the wrong shape",
        {"target": torch.full((4, 2), 0.5)},
        ValueError,
        r"target with class probabilities must have the shape of input \(4, 3\), got \(4, 2\)",
    ),
    (
        "probabilities of the wrong dtype",
        {"target": torch.full((4, 3), 1 / 3, dtype=torch.float64)},
        TypeError,
        r"target must have the same dtype as input \(torch.float32\), got torch.float64",
    ),
    (
        "target of three dimensions",
        {"target": torch.zeros(4, 3, 1)},
        ValueError,
        r"target must have shape \(4,\) \(class indices\) or \(4, 3\) \(class probabilities\)",
    ),
    (
        "empty batch",
        {"input": torch.zeros(0, 3), "target": torch.zeros(0, dtype=torch.long)},
        ValueError,
        r"input must not be empty, got shape \(0, 3\)",
    ),
    (
        "per-position logits",
        {"input": torch.zeros(4, 3, 5), "target": torch.zeros(4, 5, dtype=torch.long)},
        ValueError,
        r"input must have shape \(B, C\) or \(C,\), got \(4, 3, 5\);.*movedim\(1, -1\)",
    ),
    (
        "integer logits",
        {"input": torch.zeros(4, 3, dtype=torch.long)},
        TypeError,
        r"input must be a floating-point tensor",
    ),
    (
        "infinite logits",
        {"input": torch.tensor([[0.0, float("-inf"), 1.0]] * 4)},
        ValueError,
        r"input must be finite",
    ),
    (
        "target not a tensor",
        {"target": [0, 1, 2, 0]},
        TypeError,
        r"target must be a torch.Tensor, got list",
    ),
    (
        "weight of the wrong length",
        {"weight": torch.ones(4)},
        ValueError,
        r"weight must have shape \(3,\), got \(4,\)",
    ),
    (
        "negative weight",
        {"weight": torch.tensor([1.0, -1.0, 1.0])},
        ValueError,
        r"weight must hold non-negative class weights in \[0.0, inf\]",
    ),
    (
        "weight of the wrong dtype",
        {"weight": torch.ones(3, dtype=torch.float64)},
        TypeError,
        r"weight must have the same dtype as input",
    ),
    (
        "label smoothing above 1",
        {"label_smoothing": 1.5},
        ValueError,
        r"label_smoothing must be in \[0, 1\], got 1.5",
    ),
    (
        "label smoothing not a number",
        {"label_smoothing": "0.1"},
        TypeError,
        r"label_smoothing must be a float, got str",
    ),
    (
        "unknown reduction",
        {"reduction": "avg"},
        ValueError,
        r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'",
    ),
    (
        "unbatched logits with a batch of indices",
        {"input": torch.zeros(3), "target": torch.tensor([1])},
        ValueError,
        r"target for unbatched input of shape \(3,\) must be a 0-d class index",
    ),
]


@pytest.mark.parametrize("fn", [S.cross_entropy, S.cross_entropy_grad])
@pytest.mark.parametrize(
    ("case", "kwargs", "error", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input(
    fn: Callable[..., Tensor],
    case: str,
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    args: dict[str, Any] = {"input": LOGITS, "target": torch.tensor([0, 1, 2, 0])}
    args.update(kwargs)
    with pytest.raises(error, match=message):
        fn(**args)
