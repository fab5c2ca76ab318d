"""companion.nce: samplers, agreement with explicit formulas, exact limits, gradients, bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import companion
from companion import nce as N
from tests.conftest import LOW_PRECISION, REDUCTIONS, assert_finite
from tests.host_syncs import count_host_syncs

SAMPLED_LOSSES: dict[str, Callable[..., Tensor]] = {
    "nce": N.nce_loss,
    "negative_sampling": N.negative_sampling_loss,
    "sampled_softmax": N.sampled_softmax_loss,
}


def make_layer(
    batch: int = 6,
    num_classes: int = 15,
    dim: int = 4,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(num_classes, dim, generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(num_classes, generator=gen, dtype=torch.float64).to(dtype)
    t = torch.randint(num_classes, (batch,), generator=gen)
    return x, w.requires_grad_(), b.requires_grad_(), t


def samplers(num_classes: int) -> list[N.CandidateSampler]:
    counts = torch.arange(1, num_classes + 1, dtype=torch.float64) ** 1.5
    return [
        N.UniformSampler(num_classes),
        N.UnigramSampler(counts, power=0.75),
        N.LogUniformSampler(num_classes),
    ]


class EveryClassOnce(N.UniformSampler):
    """Draws every class exactly once; with S = C each expected count S q(w) is 1."""

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        assert num_samples == self.num_classes
        return torch.randperm(self.num_classes, generator=generator, device=self.device)


# ---------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("sampler", samplers(12), ids=lambda s: type(s).__name__)
def test_sampler_frequencies_match_log_prob(sampler: N.CandidateSampler) -> None:
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    drawn = sampler.sample(n, generator=gen)
    assert drawn.dtype == torch.long and drawn.shape == (n,) and drawn.device == sampler.device
    assert int(drawn.min()) >= 0 and int(drawn.max()) < sampler.num_classes
    freq = torch.bincount(drawn, minlength=sampler.num_classes).double() / n
    q = sampler.probs()
    torch.testing.assert_close(q.sum(), torch.tensor(1.0, dtype=torch.float64))
    # 5 binomial standard deviations at the largest q: a real mismatch is far bigger
    assert (freq - q).abs().max() < 5 * math.sqrt(0.25 / n)
    classes = torch.arange(sampler.num_classes)
    log_q = sampler.log_prob(classes)
    assert log_q.dtype == torch.float64
    torch.testing.assert_close(log_q, q.log(), rtol=1e-12, atol=1e-12)
    again = sampler.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, sampler.sample(50, generator=torch.Generator().manual_seed(3)))


def test_log_uniform_is_tensorflows_zipf_formula() -> None:
    c = 1000
    k = torch.arange(c, dtype=torch.float64)
    want = (torch.log(k + 2) - torch.log(k + 1)) / math.log(c + 1)
    torch.testing.assert_close(N.LogUniformSampler(c).probs(), want, rtol=1e-12, atol=0)


def test_unigram_power_flattens_the_counts() -> None:
    counts = torch.tensor([1.0, 10.0, 100.0, 1000.0])
    for power in (0.0, 0.75, 1.0):
        q = N.UnigramSampler(counts, power=power).probs()
        want = counts.double() ** power / (counts.double() ** power).sum()
        torch.testing.assert_close(q, want, rtol=1e-12, atol=0)
    assert N.UnigramSampler([3, 1, 2]).num_classes == 3  # a plain sequence works too


# ------------------------------------------------------------------- agreement with formulas


@given(
    batch=st.integers(1, 6),
    num_classes=st.integers(2, 12),
    seed=st.integers(0, 10_000),
    use_bias=st.booleans(),
)
def test_full_softmax_equals_torch_cross_entropy(
    batch: int, num_classes: int, seed: int, use_bias: bool
) -> None:
    x, w, b, t = make_layer(batch, num_classes, 3, seed=seed)
    bias = b if use_bias else None
    for reduction in REDUCTIONS:
        got = N.full_softmax_loss(x, w, t, reduction=reduction, bias=bias)
        want = F.cross_entropy(F.linear(x, w, bias), t, reduction=reduction)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def reference_parts(
    x: Tensor, w: Tensor, b: Tensor, t: Tensor, sampler: N.CandidateSampler, s: int, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scores of targets and negatives computed naively from the full logit matrix."""
    negatives = sampler.sample(s, generator=torch.Generator().manual_seed(seed))
    logits = F.linear(x, w, b)  # (B, C), fine at this size
    true = logits.gather(1, t[:, None]).squeeze(1)
    neg = logits[:, negatives]
    log_count = lambda c: sampler.log_prob(c).double() + math.log(s)  # noqa: E731
    return true, neg, log_count(t), log_count(negatives)


@pytest.mark.parametrize("sampler", samplers(15), ids=lambda s: type(s).__name__)
def test_binary_losses_equal_bce_with_logits(sampler: N.CandidateSampler) -> None:
    x, w, b, t = make_layer()
    s = 9
    true, neg, lc_true, lc_neg = reference_parts(x, w, b, t, sampler, s, seed=1)
    for name, shift_true, shift_neg in (
        ("nce", lc_true, lc_neg),
        ("negative_sampling", torch.zeros_like(lc_true), torch.zeros_like(lc_neg)),
    ):
        delta_true, delta_neg = true - shift_true, neg - shift_neg[None, :]
        want = F.binary_cross_entropy_with_logits(
            delta_true, torch.ones_like(delta_true), reduction="none"
        ) + F.binary_cross_entropy_with_logits(
            delta_neg, torch.zeros_like(delta_neg), reduction="none"
        ).sum(1)
        gen = torch.Generator().manual_seed(1)
        got = SAMPLED_LOSSES[name](x, w, t, sampler, s, reduction="none", generator=gen, bias=b)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        (g_got,) = torch.autograd.grad(got.sum(), w)
        (g_want,) = torch.autograd.grad(want.sum(), w, retain_graph=True)
        torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler", samplers(15), ids=lambda s: type(s).__name__)
def test_sampled_softmax_equals_cross_entropy_over_the_sampled_logits(
    sampler: N.CandidateSampler,
) -> None:
    x, w, b, t = make_layer()
    s = 9
    negatives = sampler.sample(s, generator=torch.Generator().manual_seed(2))
    true, neg, _, lc_neg = reference_parts(x, w, b, t, sampler, s, seed=2)
    neg = neg - lc_neg[None, :]
    neg = torch.where(negatives[None, :] == t[:, None], -1e300, neg)  # accidental hits out
    logits = torch.cat([true[:, None], neg], dim=1)
    want = F.cross_entropy(logits, torch.zeros_like(t))
    got = N.sampled_softmax_loss(
        x, w, t, sampler, s, generator=torch.Generator().manual_seed(2), bias=b
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_without_bias_or_correction_equals_the_naive_formulas() -> None:
    # the path with no additive shift at all (no bias, no log q)
    x, w, _, t = make_layer()
    sampler = N.LogUniformSampler(15)
    negatives = torch.tensor([1, 4, 4, 9, int(t[0])])
    logits = x @ w.T
    true, neg = logits.gather(1, t[:, None]).squeeze(1), logits[:, negatives]
    hits = negatives[None, :] == t[:, None]
    want_ns = F.softplus(-true) + F.softplus(neg).sum(1)
    got_ns = N.negative_sampling_loss(x, w, t, sampler, 5, negatives=negatives)
    torch.testing.assert_close(got_ns, want_ns.mean(), rtol=1e-12, atol=1e-12)
    masked = torch.cat([true[:, None], neg.masked_fill(hits, -math.inf)], 1)
    want_ss = torch.logsumexp(masked, 1) - true
    got_ss = N.sampled_softmax_loss(
        x, w, t, sampler, 5, subtract_log_q=False, negatives=negatives, reduction="none"
    )
    torch.testing.assert_close(got_ss, want_ss, rtol=1e-12, atol=1e-12)
    for got, want in ((got_ns, want_ns.mean()), (got_ss.sum(), want_ss.sum())):
        g_got = torch.autograd.grad(got, w)
        g_want = torch.autograd.grad(want, w, retain_graph=True)
        torch.testing.assert_close(g_got[0], g_want[0], rtol=1e-12, atol=1e-12)


def test_sampled_softmax_with_every_class_once_is_the_full_softmax() -> None:
    x, w, b, t = make_layer(batch=8, num_classes=11)
    sampler = EveryClassOnce(11)
    full = N.full_softmax_loss(x, w, t, bias=b)
    sampled = N.sampled_softmax_loss(x, w, t, sampler, 11, bias=b)
    torch.testing.assert_close(sampled, full, rtol=1e-12, atol=1e-12)
    grads_full = torch.autograd.grad(full, (w, b))
    grads_sampled = torch.autograd.grad(sampled, (w, b))
    for g_s, g_f in zip(grads_sampled, grads_full, strict=True):
        torch.testing.assert_close(g_s, g_f, rtol=1e-12, atol=1e-12)
    # Keeping the accidental hit puts the target in the softmax twice: the loss is larger.
    kept = N.sampled_softmax_loss(x, w, t, sampler, 11, remove_accidental_hits=False, bias=b)
    assert float(kept.detach()) > float(full.detach()) + 0.1


def test_accidental_hits_are_masked_with_finite_values_and_zero_gradient() -> None:
    x, w, b, t = make_layer(batch=5, num_classes=4)
    t = torch.tensor([0, 1, 2, 3, 0])
    sampler = EveryClassOnce(4)
    for name, loss_fn in SAMPLED_LOSSES.items():
        rows = []
        for i in range(5):  # one row at a time: the reference drops the hit explicitly
            gen = torch.Generator().manual_seed(7)
            negatives = sampler.sample(4, generator=gen)
            keep = negatives[negatives != t[i]]
            logits = F.linear(x[i : i + 1], w, b)[0]
            neg = logits[keep]
            if name == "negative_sampling":
                rows.append(F.softplus(-logits[t[i]]) + F.softplus(neg).sum())
            elif name == "nce":  # S q(w) = 1 for every class here, so log(S q) = 0
                rows.append(F.softplus(-logits[t[i]]) + F.softplus(neg).sum())
            else:
                rows.append(torch.logsumexp(torch.cat([logits[t[i]][None], neg]), 0) - logits[t[i]])
        want = torch.stack(rows)
        gen = torch.Generator().manual_seed(7)
        got = loss_fn(
            x,
            w,
            t,
            sampler,
            4,
            remove_accidental_hits=True,
            reduction="none",
            generator=gen,
            bias=b,
        )
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        (grad,) = torch.autograd.grad(got.sum(), w)
        (grad_want,) = torch.autograd.grad(want.sum(), w)
        assert_finite(got, grad)
        torch.testing.assert_close(grad, grad_want, rtol=1e-12, atol=1e-12)


def test_expected_sampled_softmax_gradient_approaches_the_full_gradient() -> None:
    """Monte Carlo over 300 seeded draws. The relative error of the averaged gradient is about
    0.25 with S = 4 negatives (the bias of the sampled loss) and about 0.01 with S = 512 (what
    remains is mostly Monte Carlo noise: 0.003 to 0.013 for generator seeds 0 to 3); the
    thresholds 0.15 and 0.04 leave a wide margin on both sides."""
    x, w, b, t = make_layer(batch=4, num_classes=20, dim=3)
    sampler = N.LogUniformSampler(20)
    (g_full,) = torch.autograd.grad(N.full_softmax_loss(x, w, t, bias=b), w)

    def relative_error(num_samples: int, draws: int = 300) -> float:
        gen = torch.Generator().manual_seed(0)
        total = sum(
            N.sampled_softmax_loss(x, w, t, sampler, num_samples, generator=gen, bias=b)
            for _ in range(draws)
        )
        (g,) = torch.autograd.grad(total / draws, w)
        return float((g - g_full).norm() / g_full.norm())

    small, large = relative_error(4), relative_error(512)
    assert small > 0.15
    assert large < 0.04


# --------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", SAMPLED_LOSSES)
def test_gradcheck_float64(name: str) -> None:
    x, w, b, t = make_layer(batch=3, num_classes=7, dim=2)
    x.requires_grad_(True)
    sampler = N.UnigramSampler(torch.arange(1.0, 8.0))

    def fn(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        gen = torch.Generator().manual_seed(5)  # the same negatives on every call
        return SAMPLED_LOSSES[name](
            x, w, t, sampler, 5, remove_accidental_hits=True, generator=gen, bias=b
        )

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradcheck(
        lambda x, w, b: N.full_softmax_loss(x, w, t, reduction="sum", bias=b), (x, w, b)
    )


@pytest.mark.parametrize("name", SAMPLED_LOSSES)
def test_sparse_weight_gradient_equals_the_dense_one(name: str) -> None:
    x, w, b, t = make_layer()
    sampler = N.LogUniformSampler(15)
    grads = []
    for sparse in (False, True):
        gen = torch.Generator().manual_seed(4)
        loss = SAMPLED_LOSSES[name](x, w, t, sampler, 6, sparse=sparse, generator=gen, bias=b)
        (g,) = torch.autograd.grad(loss, w)
        grads.append(g)
    assert grads[1].is_sparse and not grads[0].is_sparse
    torch.testing.assert_close(grads[1].to_dense(), grads[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("name", [*SAMPLED_LOSSES, "full"])
def test_finite_values_and_gradients_at_extremes(name: str, dtype: torch.dtype) -> None:
    # scores of +-1e4: every softplus and logsumexp is far outside exp's range
    x = torch.tensor([[100.0, 0.0], [-100.0, 0.0], [0.0, 100.0]], dtype=dtype)
    w = torch.tensor([[100.0, 0.0], [-100.0, 0.0], [0.0, 100.0], [0.0, -100.0]], dtype=dtype)
    w.requires_grad_(True)
    b = torch.zeros(4, dtype=dtype, requires_grad=True)
    t = torch.tensor([1, 0, 3])  # every target scored -1e4: the worst case
    if name == "full":
        loss = N.full_softmax_loss(x, w, t, bias=b)
    else:
        gen = torch.Generator().manual_seed(0)
        loss = SAMPLED_LOSSES[name](
            x, w, t, N.UniformSampler(4), 6, remove_accidental_hits=True, generator=gen, bias=b
        )
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert loss.dtype == dtype
    assert_finite(loss, gw, gb)
    assert float(loss.detach()) > 1e3  # the loss sees the bad targets


@pytest.mark.parametrize("name", [*SAMPLED_LOSSES, "full"])
def test_reductions(name: str) -> None:
    x, w, b, t = make_layer()

    def loss(reduction: str) -> Tensor:
        if name == "full":
            return N.full_softmax_loss(x, w, t, reduction=reduction, bias=b)
        gen = torch.Generator().manual_seed(0)
        return SAMPLED_LOSSES[name](
            x, w, t, N.UniformSampler(15), 5, reduction=reduction, generator=gen, bias=b
        )

    none = loss("none")
    assert none.shape == (6,) and bool((none > 0).all())
    torch.testing.assert_close(loss("sum"), none.sum())
    torch.testing.assert_close(loss("mean"), none.mean())


def test_without_bias_and_in_bfloat16() -> None:
    x, w, _, t = make_layer(dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    loss = N.nce_loss(x, w, t, N.LogUniformSampler(15), 8, generator=gen)
    (g,) = torch.autograd.grad(loss, w)
    assert loss.dtype == torch.bfloat16 and g.dtype == torch.bfloat16
    x64, w64, _, _ = make_layer()
    gen = torch.Generator().manual_seed(0)
    want = N.nce_loss(x64, w64, t, N.LogUniformSampler(15), 8, generator=gen)
    torch.testing.assert_close(loss.double(), want, rtol=3e-2, atol=3e-2)


# --------------------------------------------------------------------------------- bad input


def test_bad_sampler_arguments() -> None:
    with pytest.raises(
        ValueError, match=r"counts must be positive for every class, got 0 for class 1"
    ):
        N.UnigramSampler(torch.tensor([3.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"counts must be positive .* got -2 for class 2"):
        N.UnigramSampler([3.0, 1.0, -2.0])
    with pytest.raises(ValueError, match=r"counts contains NaN"):
        N.UnigramSampler(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"counts must be finite"):
        N.UnigramSampler([1.0, float("inf")])
    with pytest.raises(ValueError, match=r"counts must have 1 dimension"):
        N.UnigramSampler(torch.ones(2, 2))
    with pytest.raises(TypeError, match=r"counts must be a 1-d tensor or a sequence"):
        N.UnigramSampler(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"power must be a finite non-negative number, got -1"):
        N.UnigramSampler([1.0, 2.0], power=-1.0)
    with pytest.raises(TypeError, match=r"power must be a real number .* got str"):
        N.UnigramSampler([1.0, 2.0], power="0.75")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"power must be a real number .* got bool"):
        N.UnigramSampler([1.0, 2.0], power=True)
    with pytest.raises(TypeError, match=r"num_samples must be an int, got bool"):
        N.UniformSampler(3).sample(True)
    with pytest.raises(ValueError, match=r"num_classes must be at least 1, got 0"):
        N.UniformSampler(0)
    sampler = N.LogUniformSampler(5)
    with pytest.raises(ValueError, match=r"num_samples must be at least 1, got 0"):
        sampler.sample(0)
    with pytest.raises(TypeError, match=r"num_samples must be an int, got float"):
        sampler.sample(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"classes must hold class indices in \[0, 4\]"):
        sampler.log_prob(torch.tensor([1, 5]))


@pytest.mark.parametrize("name", SAMPLED_LOSSES)
def test_bad_loss_arguments(name: str) -> None:
    fn = SAMPLED_LOSSES[name]
    x, w, b, t = make_layer()
    s = N.UniformSampler(15)
    cases: list[tuple[type[Exception], str, Callable[[], object]]] = [
        (
            ValueError,
            r"target must hold class indices in \[0, 14\] .* got 15",
            lambda: fn(x, w, torch.tensor([0, 1, 2, 3, 4, 15]), s, 4, bias=b),
        ),
        (
            ValueError,
            r"target must hold class indices .* got -1",
            lambda: fn(x, w, torch.tensor([0, 1, 2, 3, 4, -1]), s, 4, bias=b),
        ),
        (
            TypeError,
            r"target must hold integer class indices",
            lambda: fn(x, w, t.double(), s, 4, bias=b),
        ),
        (
            ValueError,
            r"target must have shape \(6,\), got \(5,\)",
            lambda: fn(x, w, t[:5], s, 4, bias=b),
        ),
        (ValueError, r"num_samples must be at least 1, got 0", lambda: fn(x, w, t, s, 0, bias=b)),
        (TypeError, r"num_samples must be an int", lambda: fn(x, w, t, s, 2.5, bias=b)),
        (
            ValueError,
            r"weight must have shape \(15, 4\), got \(15, 3\)",
            lambda: fn(x, w[:, :3], t, s, 4, bias=b),
        ),
        (
            TypeError,
            r"weight must have the same dtype as input",
            lambda: fn(x, w.float(), t, s, 4, bias=b),
        ),
        (
            ValueError,
            r"bias must have shape \(15,\), got \(14,\)",
            lambda: fn(x, w, t, s, 4, bias=b[:14]),
        ),
        (
            ValueError,
            r"input must have 2 dimension\(s\), got 1",
            lambda: fn(x[0], w, t, s, 4, bias=b),
        ),
        (
            ValueError,
            r"sampler must cover the 15 classes of weight, got a sampler over 9",
            lambda: fn(x, w, t, N.UniformSampler(9), 4, bias=b),
        ),
        (
            TypeError,
            r"sampler must be a companion.nce.CandidateSampler, got str",
            lambda: fn(x, w, t, "uniform", 4, bias=b),
        ),
        (
            ValueError,
            r"reduction must be one of",
            lambda: fn(x, w, t, s, 4, reduction="avg", bias=b),
        ),
        (ValueError, r"input must be finite", lambda: fn(x * float("nan"), w, t, s, 4, bias=b)),
        (
            ValueError,
            r"weight \(the rows this batch uses\) must be finite",
            lambda: fn(x, w.detach().index_fill(0, t[:1], float("nan")), t, s, 4, bias=b),
        ),
        (
            TypeError,
            r"remove_accidental_hits must be a bool, got str",
            lambda: fn(x, w, t, s, 4, remove_accidental_hits="yes", bias=b),
        ),
        (TypeError, r"sparse must be a bool, got int", lambda: fn(x, w, t, s, 4, sparse=1, bias=b)),
        (
            ValueError,
            r"negatives must have shape \(4,\), got \(3,\)",
            lambda: fn(x, w, t, s, 4, negatives=torch.tensor([0, 1, 2]), bias=b),
        ),
        (
            ValueError,
            r"negatives must hold class indices in \[0, 14\] .* got 15",
            lambda: fn(x, w, t, s, 2, negatives=torch.tensor([0, 15]), bias=b),
        ),
        (
            TypeError,
            r"negatives must hold integer class indices",
            lambda: fn(x, w, t, s, 2, negatives=torch.tensor([True, False]), bias=b),
        ),
        (
            ValueError,
            r"generator must be None when negatives are given",
            lambda: fn(x, w, t, s, 2, negatives=t[:2], generator=torch.Generator(), bias=b),
        ),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


def test_bad_full_softmax_arguments() -> None:
    x, w, b, t = make_layer()
    with pytest.raises(ValueError, match=r"target must hold class indices .* got 20"):
        N.full_softmax_loss(x, w, torch.full((6,), 20), bias=b)
    with pytest.raises(ValueError, match=r"weight must be finite"):
        N.full_softmax_loss(x, w.detach() * float("nan"), t, bias=b)
    with pytest.raises(ValueError, match=r"bias must be finite"):
        N.full_softmax_loss(x, w, t, bias=b.detach() - float("inf"))
    with pytest.raises(ValueError, match=r"input must be finite"):
        N.full_softmax_loss(x * float("inf"), w, t, bias=b)


@pytest.mark.parametrize("name", [*SAMPLED_LOSSES, "full"])
@pytest.mark.parametrize("bias", ["tensor", "None"])
def test_the_old_argument_order_is_refused(name: str, bias: str) -> None:
    """0.1.0's ``(input, weight, bias, target, ...)`` raises naming target, not a wrong loss."""
    x, w, b, t = make_layer()
    old_bias = b if bias == "tensor" else None
    message = r"^target must (hold integer class indices|be a torch.Tensor of class indices)"
    with pytest.raises(TypeError, match=message):
        if name == "full":
            N.full_softmax_loss(x, w, old_bias, t)  # type: ignore[arg-type]
        else:
            SAMPLED_LOSSES[name](x, w, old_bias, t, N.UniformSampler(15), 4)


# ------------------------------------------------------------------ infinities (issue 11, 4.4)


@pytest.mark.parametrize("where", ["input", "weight", "bias"])
@pytest.mark.parametrize("value", [float("inf"), -float("inf")])
@pytest.mark.parametrize("name", SAMPLED_LOSSES)
def test_infinite_inputs_are_refused_with_the_argument_named(
    name: str, value: float, where: str
) -> None:
    # before: sampled_softmax_loss returned NaN (inf - inf) or inf with no error
    x, w, b, t = make_layer()
    args = {"input": x, "weight": w.detach().clone(), "bias": b.detach().clone()}
    if where == "input":
        args["input"] = x.index_fill(0, torch.tensor([2]), value)
    else:  # a row or entry that this batch uses: the target of row 0
        args[where] = args[where].index_fill(0, t[:1], value)
    call = lambda: SAMPLED_LOSSES[name](  # noqa: E731
        args["input"], args["weight"], t, N.UniformSampler(15), 4, bias=args["bias"]
    )
    with pytest.raises(ValueError, match=rf"^{where}\b.* must be finite"):
        call()
    with companion.value_checks(False):  # the production setting: not read, not refused
        call()


def test_unused_rows_of_the_layer_are_not_read() -> None:
    # a NaN in a row that no target and no negative uses does not change anything
    x, w, b, t = make_layer()
    negatives = torch.tensor([0, 1, 2])
    unused = next(c for c in range(15) if c not in set(t.tolist()) | {0, 1, 2})
    w_nan = w.detach().index_fill(0, torch.tensor([unused]), float("nan"))
    for fn in SAMPLED_LOSSES.values():
        sampler = N.UniformSampler(15)
        got = fn(x, w_nan, t, sampler, 3, negatives=negatives, bias=b)
        want = fn(x, w.detach(), t, sampler, 3, negatives=negatives, bias=b)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# ------------------------------------------------------------- the hand-written backward


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("name", SAMPLED_LOSSES)
def test_second_derivatives_are_exact(name: str, sparse: bool) -> None:
    # the hand-written backward recomputes differentiably under create_graph=True
    x, w, b, t = make_layer(batch=3, num_classes=7, dim=2)
    x.requires_grad_(True)
    sampler = N.UnigramSampler(torch.arange(1.0, 8.0))
    negatives = torch.tensor([0, t[0].item(), 4, 4, 6])

    def fn(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        loss = SAMPLED_LOSSES[name](
            x, w, t, sampler, 5, remove_accidental_hits=True, negatives=negatives, bias=b
        )
        return loss

    assert torch.autograd.gradgradcheck(fn, (x, w, b))
    # a gradient penalty through the sparse path agrees with the dense one
    penalties = []
    for sparse_ in (False, sparse):
        loss = SAMPLED_LOSSES[name](
            x, w, t, sampler, 5, sparse=sparse_, negatives=negatives, bias=b
        )
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        penalties.append(torch.autograd.grad(gx.square().sum(), (x, b)))
    for got, want in zip(*penalties, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SAMPLED_LOSSES)
def test_given_negatives_equal_the_drawn_ones(name: str) -> None:
    x, w, b, t = make_layer()
    sampler = N.LogUniformSampler(15)
    drawn = sampler.sample(7, generator=torch.Generator().manual_seed(3))
    got = SAMPLED_LOSSES[name](x, w, t, sampler, 7, negatives=drawn, reduction="none", bias=b)
    gen = torch.Generator().manual_seed(3)
    want = SAMPLED_LOSSES[name](x, w, t, sampler, 7, generator=gen, reduction="none", bias=b)
    assert torch.equal(got, want)
    # int32 targets and negatives are taken as class indices too
    got32 = SAMPLED_LOSSES[name](
        x, w, t.int(), sampler, 7, negatives=drawn.int(), reduction="none", bias=b
    )
    assert torch.equal(got32, want)


# ------------------------------------------------------- the production contract (issue 11)

STEP_OPTIONS = [
    pytest.param(name, sparse, hits, id=f"{name}-{'sparse' if sparse else 'dense'}-hits{hits}")
    for name in SAMPLED_LOSSES
    for sparse in (False, True)
    for hits in (False, True)
]


def counts(c: int) -> Tensor:
    return torch.arange(1, c + 1, dtype=torch.float64) ** 1.5


@pytest.mark.parametrize(("name", "sparse", "hits"), STEP_OPTIONS)
def test_zero_host_syncs_with_value_checks_off(name: str, sparse: bool, hits: bool) -> None:
    # before: 4 to 6 per step (the NaN check of the used rows, the sampler's range check ...)
    x, w, b, t = make_layer(dtype=torch.float32)
    x.requires_grad_(True)
    extra = {"subtract_log_q": False} if name == "sampled_softmax" else {}
    for sampler in samplers(15):
        kwargs = {"sparse": sparse, "remove_accidental_hits": hits}
        with companion.value_checks(False), count_host_syncs() as syncs:
            loss = SAMPLED_LOSSES[name](x, w, t, sampler, 6, **kwargs, bias=b)
            loss.backward()
            if extra:
                SAMPLED_LOSSES[name](x, w, t, sampler, 6, **kwargs, **extra).backward()
        assert syncs() == 0, type(sampler).__name__
        assert w.grad is not None and w.grad.is_sparse == sparse
        x.grad = w.grad = b.grad = None
    with count_host_syncs() as syncs:  # value checks on: they read the data, and say so
        SAMPLED_LOSSES[name](x, w, t, samplers(15)[0], 6, bias=b).backward()
    assert syncs() > 0


def test_full_softmax_makes_no_host_sync_with_value_checks_off() -> None:
    x, w, b, t = make_layer(dtype=torch.float32)
    with companion.value_checks(False), count_host_syncs() as syncs:
        N.full_softmax_loss(x, w, t, bias=b).backward()
    assert syncs() == 0


def values_and_grads(fn: Callable[..., Tensor], *inputs: Tensor) -> list[Tensor]:
    leaves = [a.detach().clone().requires_grad_(True) for a in inputs]
    loss = fn(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    return [loss.detach(), *(g.to_dense() if g.is_sparse else g for g in grads)]


COMPILED_OPTIONS = [
    pytest.param(name, sparse, id=f"{name}-{'sparse' if sparse else 'dense'}")
    for name in SAMPLED_LOSSES
    for sparse in (False, True)
]


@pytest.mark.parametrize(("name", "sparse"), COMPILED_OPTIONS)
def test_compiles_as_one_graph_and_equals_eager(name: str, sparse: bool) -> None:
    """A fixed draw of negatives (a generator cannot enter a graph); every sampler's log q."""
    x, w, b, t = make_layer(batch=5, num_classes=12, dim=3, dtype=torch.float32)
    negatives = torch.tensor([0, 3, 3, t[0].item(), 11, 7])  # a repeat and an accidental hit

    options = {"remove_accidental_hits": True, "sparse": sparse, "negatives": negatives}
    noise = samplers(12)

    def step(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return sum(  # type: ignore[return-value]
            SAMPLED_LOSSES[name](x, w, t, sampler, 6, **options, bias=b) for sampler in noise
        )

    torch._dynamo.reset()
    with companion.value_checks(False):
        eager = values_and_grads(step, x, w, b)
    compiled_step = torch.compile(step, fullgraph=True, backend="aot_eager")
    compiled = values_and_grads(compiled_step, x, w, b)  # value checks skipped while tracing
    for what, e, c in zip(("loss", "d input", "d weight", "d bias"), eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6, msg=what)


def test_compiles_with_inductor_and_equals_eager() -> None:
    # one graph holding the three losses: the generated kernels, not only the traced graph
    x, w, b, t = make_layer(batch=5, num_classes=12, dim=3, dtype=torch.float32)
    sampler = N.UnigramSampler(counts(12))
    negatives = torch.tensor([0, 3, 3, 11, 7])

    def step(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return sum(  # type: ignore[return-value]
            fn(x, w, t, sampler, 5, negatives=negatives, bias=b) for fn in SAMPLED_LOSSES.values()
        )

    torch._dynamo.reset()
    with companion.value_checks(False):
        eager = values_and_grads(step, x, w, b)
    compiled = values_and_grads(torch.compile(step, fullgraph=True), x, w, b)
    for what, e, c in zip(("loss", "d input", "d weight", "d bias"), eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6, msg=what)


@pytest.mark.parametrize("sampler", samplers(12), ids=lambda s: type(s).__name__)
def test_samplers_draw_inside_a_compiled_graph(sampler: N.CandidateSampler) -> None:
    # with generator=None the draw comes from the global random state, inside the graph
    x, w, b, t = make_layer(batch=5, num_classes=12, dim=3, dtype=torch.float32)

    def step(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return sum(  # type: ignore[return-value]
            fn(x, w, t, sampler, 6, remove_accidental_hits=True, bias=b)
            for fn in SAMPLED_LOSSES.values()
        )

    torch._dynamo.reset()
    loss, *grads = values_and_grads(
        torch.compile(step, fullgraph=True, backend="aot_eager"), x, w, b
    )
    assert_finite(loss, *grads)


def test_docstring_examples_run() -> None:
    import doctest

    result = doctest.testmod(N, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
    for name in N.__all__:
        doc = getattr(N, name).__doc__ or ""
        assert "Examples:" in doc and ">>>" in doc, name
        assert "Shape:" in doc, name
