"""companion.contrastive: references, derived gradients, the tiled CLIP loss, extremes, bad input.

The multi-process test of the distributed CLIP loss is in test_distributed_contract.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import ContrastiveLoss as PMLContrastiveLoss
from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss
from pytorch_metric_learning.losses import TripletMarginLoss as PMLTripletMarginLoss
from pytorch_metric_learning.reducers import DoNothingReducer
from torch import Tensor, nn

import companion
from companion import contrastive as C
from companion.data import paired_views
from companion.metrics import retrieval_accuracy
from tests.conftest import LOW_PRECISION, REDUCTIONS, assert_finite
from tests.host_syncs import count_host_syncs

F64 = torch.float64


def unit(b: int, d: int, seed: int, dtype: torch.dtype = F64) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=gen, dtype=F64), dim=1).to(dtype)


def naive_clip(image: Tensor, text: Tensor, scale: Tensor | float) -> Tensor:
    """The CLIP loss written as directly as possible: diagonal of two log-softmaxes."""
    logits = scale * image @ text.T
    rows = -torch.log_softmax(logits, dim=1).diagonal()
    columns = -torch.log_softmax(logits, dim=0).diagonal()
    return (rows.mean() + columns.mean()) / 2


def values_and_grads(fn: Callable[..., Tensor], *inputs: Tensor) -> tuple[Tensor, ...]:
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    value = fn(*leaves)
    return (value.detach(), *torch.autograd.grad(value, leaves))


# --------------------------------------------------------------------------------------------
# CLIP: agreement, the tiled version, the derived gradient
# --------------------------------------------------------------------------------------------


@given(
    b=st.integers(1, 12),
    d=st.integers(1, 6),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**16),
    chunk=st.one_of(st.none(), st.integers(1, 13)),
)
def test_clip_agrees_with_the_naive_reference(
    b: int, d: int, scale: float, seed: int, chunk: int | None
) -> None:
    image, text = unit(b, d, seed), unit(b, d, seed + 1)
    got = C.clip_loss(image, text, scale, chunk_size=chunk)
    torch.testing.assert_close(got, naive_clip(image, text, scale), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("batch", "chunk"), [(37, 8), (10, 3), (5, 1), (7, 7), (6, 100), (1, 1)])
def test_tiled_equals_full_values_and_gradients(batch: int, chunk: int) -> None:
    image, text = unit(batch, 5, 0), unit(batch, 5, 1)
    scale = torch.tensor(7.3, dtype=F64)
    full = values_and_grads(lambda i, t, s: C.clip_loss(i, t, s), image, text, scale)
    tiled = values_and_grads(lambda i, t, s: C.clip_loss(i, t, s, chunk), image, text, scale)
    for name, f, t in zip(("loss", "d image", "d text", "d scale"), full, tiled, strict=True):
        torch.testing.assert_close(t, f, rtol=1e-6, atol=1e-6, msg=name)
        torch.testing.assert_close(t, f, rtol=1e-12, atol=1e-13, msg=name)  # in fact much closer


def test_tiled_gradient_of_upstream_factor_and_partial_requires_grad() -> None:
    image, text = unit(9, 4, 2), unit(9, 4, 3)
    text_leaf = text.clone().requires_grad_(True)
    loss = 3.5 * C.clip_loss(image, text_leaf, 4.0, chunk_size=4)  # only text needs a gradient
    (got,) = torch.autograd.grad(loss, text_leaf)
    text_ref = text.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(3.5 * naive_clip(image, text_ref, 4.0), text_ref)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)


def test_clip_gradient_equals_the_derived_formula() -> None:
    # dL/dlogits = (softmax_rows + softmax_columns) / (2B) - I / B; logits = s I T^T
    b, s = 11, 5.0
    image, text = unit(b, 6, 4), unit(b, 6, 5)
    _, d_image, d_text = values_and_grads(lambda i, t: C.clip_loss(i, t, s, 4), image, text)
    logits = s * image @ text.T
    g = (torch.softmax(logits, 1) + torch.softmax(logits, 0)) / (2 * b) - torch.eye(
        b, dtype=F64
    ) / b
    torch.testing.assert_close(d_image, s * g @ text, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d_text, s * g.T @ image, rtol=1e-12, atol=1e-14)
    scale = torch.tensor(s, dtype=F64, requires_grad=True)
    (d_scale,) = torch.autograd.grad(C.clip_loss(image, text, scale, 3), scale)
    torch.testing.assert_close(d_scale, (g * (image @ text.T)).sum(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [None, 3])
def test_clip_gradcheck(chunk: int | None) -> None:
    image, text = unit(7, 3, 6), unit(7, 3, 7)
    scale = torch.tensor(2.5, dtype=F64)
    inputs = tuple(x.requires_grad_() for x in (image, text, scale))
    assert torch.autograd.gradcheck(lambda i, t, s: C.clip_loss(i, t, s, chunk), inputs)


def test_tiled_version_refuses_double_backward_loudly() -> None:
    image = unit(5, 3, 8).requires_grad_()
    with pytest.raises(RuntimeError, match=r"does not support double backward"):
        torch.autograd.grad(C.clip_loss(image, unit(5, 3, 9), 2.0, 2), image, create_graph=True)


def test_gradient_penalty_through_the_tiles_is_an_error_not_a_wrong_answer() -> None:
    # issue 11, finding 6: a gradient penalty on an encoder whose loss also has a term of its own
    # used to drop the tiled loss's second-order term silently; the full matrix supports it
    gen = torch.Generator().manual_seed(40)
    x, y = torch.randn(2, 6, 4, generator=gen, dtype=F64)
    weight = torch.randn(4, 3, generator=gen, dtype=F64, requires_grad=True)

    def penalty(chunk: int | None) -> Tensor:
        loss = C.clip_loss(x @ weight, y @ weight, 2.0, chunk) + (weight**3).sum()
        (g,) = torch.autograd.grad(loss, weight, create_graph=True)
        return g.pow(2).sum()

    (second_order,) = torch.autograd.grad(penalty(None), weight)
    (without_clip,) = torch.autograd.grad(
        torch.autograd.grad((weight**3).sum(), weight, create_graph=True)[0].pow(2).sum(), weight
    )
    assert not torch.allclose(second_order, without_clip)  # the CLIP term matters
    with pytest.raises(RuntimeError, match=r"double backward .* chunk_size=None"):
        penalty(3)


def test_clip_is_symmetric_info_nce_and_does_not_normalise() -> None:
    gen = torch.Generator().manual_seed(10)
    image = torch.randn(8, 5, generator=gen, dtype=F64) * 3  # not unit vectors
    text = torch.randn(8, 5, generator=gen, dtype=F64) * 0.5
    s = 4.0
    want = (C.info_nce_loss(image, text, 1 / s) + C.info_nce_loss(text, image, 1 / s)) / 2
    for chunk in (None, 3):
        got = C.clip_loss(image, text, s, chunk)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        normalised = C.clip_loss(F.normalize(image, dim=1), F.normalize(text, dim=1), s, chunk)
        assert not torch.isclose(got, normalised)  # the caller normalises, not the loss
    # swapping the modalities transposes the matrix: the loss is unchanged
    torch.testing.assert_close(C.clip_loss(text, image, s), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("chunk", [None, 5])
def test_clip_finite_at_extremes(dtype: torch.dtype, chunk: int | None) -> None:
    # logits of size 1e4 (features of norm 100, scale 1) and the largest CLIP scale, 100
    for norm, scale in ((100.0, 1.0), (1.0, 100.0)):
        image = (unit(12, 4, 11) * norm).to(dtype).requires_grad_()
        text = (unit(12, 4, 12) * norm).to(dtype).requires_grad_()
        s = torch.tensor(scale, requires_grad=True)
        loss = C.clip_loss(image, text, s, chunk)
        grads = torch.autograd.grad(loss, (image, text, s))
        assert loss.dtype == dtype
        assert_finite(loss, *grads)
        want = naive_clip(image.detach().double(), text.detach().double(), scale)
        tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(loss.double(), want, rtol=tol, atol=tol * norm * scale)


def test_clip_bfloat16_tiled_close_to_full() -> None:
    image, text = unit(20, 8, 13, torch.bfloat16), unit(20, 8, 14, torch.bfloat16)
    full = values_and_grads(lambda i, t: C.clip_loss(i, t, 10.0), image, text)
    tiled = values_and_grads(lambda i, t: C.clip_loss(i, t, 10.0, 6), image, text)
    for f, t in zip(full, tiled, strict=True):
        assert t.dtype == torch.bfloat16
        torch.testing.assert_close(t.float(), f.float(), rtol=3e-2, atol=3e-3)


def test_clip_loss_module_temperature() -> None:
    module = C.ClipLoss()
    torch.testing.assert_close(module.logit_scale, torch.tensor(1 / 0.07))
    assert module.log_scale.requires_grad
    image, text = unit(6, 3, 15, torch.float32), unit(6, 3, 16, torch.float32)
    loss = module(image, text)
    torch.testing.assert_close(loss, C.clip_loss(image, text, 1 / 0.07))
    loss.backward()
    assert module.log_scale.grad is not None and module.log_scale.grad != 0
    # above the clamp the scale is 100 and the temperature gets no gradient
    with torch.no_grad():
        module.log_scale.fill_(math.log(250.0))
    module.zero_grad()
    module(image, text).backward()
    assert float(module.logit_scale.detach()) == 100.0
    assert module.log_scale.grad == 0
    fixed = C.ClipLoss(temperature=0.5, learn_temperature=False, chunk_size=4)
    assert not fixed.log_scale.requires_grad
    assert "chunk_size=4" in repr(fixed) and "temperature=0.5" in repr(fixed)
    torch.testing.assert_close(fixed(image, text), C.clip_loss(image, text, 2.0))


# --------------------------------------------------------------------------------------------
# Soft targets
# --------------------------------------------------------------------------------------------


def test_soft_target_clip_matches_its_formula_and_detaches_targets() -> None:
    image, text = unit(7, 4, 17), unit(7, 4, 18)
    s, t = 6.0, 3.0

    def explicit(i: Tensor, x: Tensor) -> Tensor:
        q = torch.softmax(t * (i @ i.T + x @ x.T).detach() / 2, dim=1)
        logits = s * i @ x.T
        rows = -(q * torch.log_softmax(logits, dim=1)).sum(1).mean()
        cols = -(q * torch.log_softmax(logits.T, dim=1)).sum(1).mean()
        return (rows + cols) / 2

    got = values_and_grads(lambda i, x: C.soft_target_clip_loss(i, x, s, t), image, text)
    want = values_and_grads(explicit, image, text)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


def test_soft_targets_tend_to_the_hard_loss() -> None:
    image, text = unit(9, 6, 19), unit(9, 6, 20)
    sharp = C.soft_target_clip_loss(image, text, 5.0, target_scale=1e4)
    torch.testing.assert_close(sharp, C.clip_loss(image, text, 5.0), rtol=1e-10, atol=1e-12)
    # by default the targets use the logit scale: not the hard loss
    assert not torch.isclose(C.soft_target_clip_loss(image, text, 5.0), sharp)


def test_soft_targets_stop_pushing_near_duplicates_apart() -> None:
    # well-aligned pairs, but pair 1 is a near-duplicate of pair 0
    gen = torch.Generator().manual_seed(21)
    image = F.normalize(torch.randn(6, 5, generator=gen, dtype=F64), dim=1)
    image[1] = F.normalize(image[0] + 0.05 * torch.randn(5, generator=gen, dtype=F64), dim=0)
    text = F.normalize(image + 0.02 * torch.randn(6, 5, generator=gen, dtype=F64), dim=1)
    hard = values_and_grads(lambda i, t: C.clip_loss(i, t, 20.0), image, text)
    soft = values_and_grads(lambda i, t: C.soft_target_clip_loss(i, t, 20.0), image, text)
    # the hard loss pays about log 2 on the two duplicate rows and columns, and its gradient
    # drives the duplicates apart; the soft targets share the credit, so the push nearly vanishes
    assert hard[0] > (4 / 12) * math.log(2) * 0.8
    assert soft[1][:2].norm() < 0.3 * hard[1][:2].norm()
    assert soft[2][:2].norm() < 0.3 * hard[2][:2].norm()


# --------------------------------------------------------------------------------------------
# InfoNCE, contrastive, triplet
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_info_nce_is_cross_entropy_over_the_keys(reduction: str) -> None:
    q, k = unit(9, 4, 22), unit(9, 4, 23)
    want = F.cross_entropy(q @ k.T / 0.1, torch.arange(9), reduction=reduction)
    torch.testing.assert_close(C.info_nce_loss(q, k, 0.1, reduction), want, rtol=1e-12, atol=0)
    per_query = torch.logsumexp(q @ k.T / 0.1, dim=1) - (q * k).sum(1) / 0.1
    assert C.info_nce_loss(q, k, 0.1, "none").shape == (9,)
    torch.testing.assert_close(C.info_nce_loss(q, k, 0.1, "none"), per_query)


def naive_contrastive(x1: Tensor, x2: Tensor, same: Tensor, margin: float) -> Tensor:
    d = ((x1 - x2) ** 2).sum(1).sqrt()
    return torch.where(same.bool(), d**2 / 2, torch.clamp(margin - d, min=0) ** 2 / 2)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(seed=st.integers(0, 2**16), margin=st.floats(0.1, 5.0))
def test_contrastive_agrees_with_formula_and_pml(reduction: str, seed: int, margin: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(2, 10, 3, generator=gen, dtype=F64)
    same = torch.rand(10, generator=gen) < 0.5
    got = C.contrastive_loss(x1, x2, same, margin, reduction)
    per_pair = naive_contrastive(x1, x2, same, margin)
    want = {"none": per_pair, "mean": per_pair.mean(), "sum": per_pair.sum()}[reduction]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # pytorch-metric-learning's ContrastiveLoss is the unsquared form: relu(d), relu(m - d)
    pml = PMLContrastiveLoss(
        pos_margin=0.0,
        neg_margin=margin,
        distance=LpDistance(normalize_embeddings=False),
        reducer=DoNothingReducer(),
    )
    idx = torch.arange(10)
    out: Any = pml(
        torch.cat([x1, x2]), indices_tuple=(idx[same], idx[same] + 10, idx[~same], idx[~same] + 10)
    )
    per_pair_pml = torch.zeros(10, dtype=F64)
    if same.any():
        per_pair_pml[same] = out["pos_loss"]["losses"] ** 2 / 2
    if (~same).any():
        per_pair_pml[~same] = out["neg_loss"]["losses"] ** 2 / 2
    torch.testing.assert_close(C.contrastive_loss(x1, x2, same, margin, "none"), per_pair_pml)


def test_contrastive_gradient_equals_the_derived_formula() -> None:
    gen = torch.Generator().manual_seed(24)
    x1, x2 = torch.randn(2, 12, 3, generator=gen, dtype=F64)
    same = torch.arange(12) % 2 == 0
    m = 2.0
    _, g1, g2 = values_and_grads(lambda a, b: C.contrastive_loss(a, b, same, m, "sum"), x1, x2)
    diff = x1 - x2
    d = diff.norm(dim=1, keepdim=True)
    want = torch.where(same[:, None], diff, -torch.clamp(m - d, min=0) * diff / d)
    torch.testing.assert_close(g1, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g2, -want, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(
        lambda a, b: C.contrastive_loss(a, b, same, m),
        (x1.requires_grad_(), x2.requires_grad_()),
    )


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_contrastive_finite_at_zero_distance_and_extremes(dtype: torch.dtype) -> None:
    x1 = torch.tensor([[0.0, 0.0], [1e4, -1e4], [1.0, 2.0]], dtype=dtype, requires_grad=True)
    x2 = torch.tensor([[0.0, 0.0], [-1e4, 1e4], [1.0, 2.0]], dtype=dtype, requires_grad=True)
    same = torch.tensor([False, False, True])  # identical negatives: the norm is 0
    loss = C.contrastive_loss(x1, x2, same, margin=1.0)
    assert_finite(loss, *torch.autograd.grad(loss, (x1, x2)))
    torch.testing.assert_close(loss.float(), torch.tensor(1 / 6), rtol=1e-2, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triplet_agrees_with_torch_and_pml(reduction: str) -> None:
    gen = torch.Generator().manual_seed(25)
    a, p, n = torch.randn(3, 16, 4, generator=gen, dtype=F64)
    got = C.triplet_loss(a, p, n, 1.0, reduction)
    # torch adds eps = 1e-6 inside the distance; the difference is of that order
    want = F.triplet_margin_loss(a, p, n, margin=1.0, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * (16 if reduction == "sum" else 1))
    pml = PMLTripletMarginLoss(
        margin=1.0, distance=LpDistance(normalize_embeddings=False), reducer=DoNothingReducer()
    )
    idx = torch.arange(16)
    out: Any = pml(torch.cat([a, p, n]), indices_tuple=(idx, idx + 16, idx + 32))
    torch.testing.assert_close(C.triplet_loss(a, p, n, 1.0, "none"), out["loss"]["losses"])
    squared = C.triplet_loss(a, p, n, 0.2, "none", squared=True)
    naive = ((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1) + 0.2
    torch.testing.assert_close(squared, naive.clamp(min=0))


def test_triplet_gradient_and_gradcheck() -> None:
    gen = torch.Generator().manual_seed(26)
    a, p, n = torch.randn(3, 10, 3, generator=gen, dtype=F64)
    _, ga, gp, gn = values_and_grads(lambda x, y, z: C.triplet_loss(x, y, z, 2.0, "sum"), a, p, n)
    dp, dn = (a - p).norm(dim=1, keepdim=True), (a - n).norm(dim=1, keepdim=True)
    active = (dp - dn + 2.0 > 0).double()
    assert 0 < active.sum() < 10  # some triplets active, some not: both branches checked
    torch.testing.assert_close(ga, active * ((a - p) / dp - (a - n) / dn), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gp, -active * (a - p) / dp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gn, active * (a - n) / dn, rtol=1e-12, atol=1e-14)
    inputs = tuple(x.requires_grad_() for x in (a, p, n))
    assert torch.autograd.gradcheck(lambda x, y, z: C.triplet_loss(x, y, z, 2.0), inputs)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_triplet_and_info_nce_finite_at_extremes(dtype: torch.dtype) -> None:
    big = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [0.0, 0.0]], dtype=dtype)
    a, p, n = (big.roll(k, 0).clone().requires_grad_() for k in range(3))
    loss = C.triplet_loss(a, p, n) + C.info_nce_loss(a, p, temperature=1.0)
    assert_finite(loss, *torch.autograd.grad(loss, (a, p, n)))


# --------------------------------------------------------------------------------------------
# Data and retrieval
# --------------------------------------------------------------------------------------------


def test_paired_views_and_retrieval() -> None:
    a, b, group = paired_views(50, dims=(7, 5), generator=torch.Generator().manual_seed(0))
    assert a.shape == (50, 7) and b.shape == (50, 5) and a.dtype == torch.float32
    assert group.tolist() == list(range(50))
    a2, b2, _ = paired_views(50, dims=(7, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, a2) and torch.equal(b, b2)
    # the modalities (fixed maps) do not depend on the data generator
    clean1, _, _ = paired_views(3, noise=0.0, generator=torch.Generator().manual_seed(1))
    clean2, _, _ = paired_views(3, noise=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(clean1, clean2)
    _, _, groups = paired_views(40, n_latents=5, generator=torch.Generator().manual_seed(2))
    assert groups.max() < 5 and len(groups.unique()) > 1
    x = unit(6, 3, 27, torch.float32)
    assert retrieval_accuracy(x, x) == 1.0
    assert retrieval_accuracy(x, x.roll(1, 0)) == 0.0
    assert retrieval_accuracy(x, x.roll(1, 0), group=torch.zeros(6, dtype=torch.long)) == 1.0


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

GOOD = unit(4, 3, 28)
BAD_CLIP: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"text_features": unit(5, 3, 0)}, ValueError, r"same batch size .* 4 .* 5"),
    (
        {"text_features": unit(4, 2, 0)},
        ValueError,
        r"text_features must have the same shape .*\(4, 3\), got \(4, 2\)",
    ),
    ({"image_features": GOOD[0]}, ValueError, r"image_features must have 2 dimension\(s\), got 1"),
    (
        {"image_features": GOOD[:0], "text_features": GOOD[:0]},
        ValueError,
        r"image_features must not be empty",
    ),
    ({"image_features": GOOD.long()}, TypeError, r"image_features must be a floating-point tensor"),
    ({"text_features": GOOD.float()}, TypeError, r"text_features must have the same dtype"),
    (
        {"image_features": GOOD.clone().fill_(math.inf)},
        ValueError,
        r"image_features must be finite",
    ),
    ({"logit_scale": 0.0}, ValueError, r"logit_scale must be a finite positive number, got 0.0"),
    ({"logit_scale": -2.0}, ValueError, r"logit_scale must be a finite positive number, got -2.0"),
    ({"logit_scale": torch.tensor(-1.0)}, ValueError, r"logit_scale must be a finite positive"),
    ({"logit_scale": math.nan}, ValueError, r"logit_scale must be a finite positive number"),
    (
        {"logit_scale": torch.ones(2)},
        ValueError,
        r"logit_scale must be a scalar .* got shape \(2,\)",
    ),
    ({"logit_scale": "10"}, TypeError, r"logit_scale must be a float or a scalar tensor, got str"),
    ({"chunk_size": 0}, ValueError, r"chunk_size must be at least 1, got 0"),
    ({"chunk_size": 2.0}, TypeError, r"chunk_size must be an int, got float"),
]


BAD_CLIP_CASES = [(C.clip_loss, *case) for case in BAD_CLIP] + [
    (C.soft_target_clip_loss, *case) for case in BAD_CLIP if "chunk_size" not in case[0]
]


@pytest.mark.parametrize(("fn", "change", "error", "match"), BAD_CLIP_CASES)
def test_clip_bad_input(
    fn: Callable[..., Tensor], change: dict[str, Any], error: type[Exception], match: str
) -> None:
    kwargs: dict[str, Any] = {
        "image_features": GOOD,
        "text_features": unit(4, 3, 29),
        "logit_scale": 10.0,
    }
    kwargs.update(change)
    with pytest.raises(error, match=match):
        fn(**kwargs)


def test_other_bad_input() -> None:
    x = unit(4, 3, 30)
    with pytest.raises(ValueError, match=r"target must hold the labels 0 and 1"):
        C.contrastive_loss(x, x, torch.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"target must have shape \(4,\), got \(3,\)"):
        C.contrastive_loss(x, x, torch.ones(3))
    with pytest.raises(TypeError, match=r"target must be a torch.Tensor, got list"):
        C.contrastive_loss(x, x, [1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"margin must be a finite positive number, got -1.0"):
        C.triplet_loss(x, x, x, margin=-1.0)
    with pytest.raises(ValueError, match=r"negative must have the same shape"):
        C.triplet_loss(x, x, unit(4, 2, 0))
    with pytest.raises(ValueError, match=r"temperature must be a finite positive number, got 0.0"):
        C.info_nce_loss(x, x, temperature=0.0)
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        C.info_nce_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match=r"target_scale must be a finite positive number"):
        C.soft_target_clip_loss(x, x, 1.0, target_scale=0.0)
    with pytest.raises(ValueError, match=r"temperature must be a finite positive number"):
        C.ClipLoss(temperature=0.0)
    with pytest.raises(ValueError, match=r"n_latents must be at least 1"):
        paired_views(4, n_latents=0)


def test_retrieval_group_of_the_wrong_length_is_a_clear_error() -> None:
    # issue 11, finding 10: used to be a raw IndexError
    x = unit(6, 3, 31, torch.float32)
    with pytest.raises(ValueError, match=r"group must have shape \(6,\), got \(4,\)"):
        retrieval_accuracy(x, x, group=torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"group must hold integer labels"):
        retrieval_accuracy(x, x, group=torch.zeros(6))


def test_a_log_parameter_is_not_taken_for_the_scale() -> None:
    # open_clip's model.logit_scale is nn.Parameter(log(1 / 0.07)): passing it means s = 2.66
    image, text = unit(4, 3, 32), unit(4, 3, 33)
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), dtype=F64))
    with pytest.raises(TypeError, match=r"logit_scale is an nn.Parameter.*\.exp\(\)"):
        C.clip_loss(image, text, log_scale)
    torch.testing.assert_close(
        C.clip_loss(image, text, log_scale.exp()), C.clip_loss(image, text, 1 / 0.07)
    )
    assert C.ClipLoss.forward.__doc__ and "optimiser" in (C.ClipLoss.__doc__ or "")


# --------------------------------------------------------------------------------------------
# The production contract: no host sync, torch.compile, doctests
# --------------------------------------------------------------------------------------------

CHUNKED_MODULE, FULL_MODULE = C.ClipLoss(chunk_size=4), C.ClipLoss()
CLIP_CALLS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "clip_loss full": lambda i, t, s: C.clip_loss(i, t, s),
    "clip_loss chunked": lambda i, t, s: C.clip_loss(i, t, s, chunk_size=3),
    "ClipLoss": lambda i, t, s: CHUNKED_MODULE(i, t) * s,
    "ClipLoss full": lambda i, t, s: FULL_MODULE(i, t) * s,
}


@pytest.mark.parametrize("name", list(CLIP_CALLS))
def test_no_host_sync_with_value_checks_off(name: str) -> None:
    # issue 11, item 1: 4 (full) and 6 (chunked) host syncs per step before
    fn = CLIP_CALLS[name]
    image = unit(10, 4, 34, torch.float32).requires_grad_()
    text = unit(10, 4, 35, torch.float32).requires_grad_()
    scale = torch.tensor(5.0, requires_grad=True)
    with companion.value_checks(False), count_host_syncs() as syncs:
        fn(image, text, scale).backward()
    assert syncs() == 0
    with count_host_syncs() as syncs:  # value checks on: they do read the data
        fn(image, text, scale).backward()
    assert syncs() > 0


@pytest.mark.parametrize("name", list(CLIP_CALLS))
def test_compiles_as_one_graph_and_equals_eager(name: str) -> None:
    fn = CLIP_CALLS[name]
    inputs = (unit(10, 4, 36, torch.float32), unit(10, 4, 37, torch.float32), torch.tensor(5.0))
    torch._dynamo.reset()
    with companion.value_checks(False):
        eager = values_and_grads(fn, *inputs)
        compiled = values_and_grads(torch.compile(fn, fullgraph=True, backend="aot_eager"), *inputs)
    for name_, e, c in zip(("loss", "d image", "d text", "d scale"), eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6, msg=name_)


def test_chunked_clip_compiles_with_inductor_and_equals_eager() -> None:
    def fn(i: Tensor, t: Tensor, s: Tensor) -> Tensor:
        return C.clip_loss(i, t, s, chunk_size=4)

    inputs = (unit(9, 4, 38, torch.float32), unit(9, 4, 39, torch.float32), torch.tensor(3.0))
    torch._dynamo.reset()
    eager = values_and_grads(fn, *inputs)
    compiled = values_and_grads(torch.compile(fn, fullgraph=True), *inputs)  # checks skipped
    for e, c in zip(eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def test_docstring_examples_run() -> None:
    import doctest

    result = doctest.testmod(C, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
    public = [getattr(C, name) for name in C.__all__]
    for obj in public:
        assert "Examples:" in (obj.__doc__ or ""), obj.__name__
        assert "Shape:" in (obj.__doc__ or ""), obj.__name__


# --------------------------------------------------------------------------------------------
# Supervised contrastive loss
# --------------------------------------------------------------------------------------------


def naive_supcon(z: Tensor, labels: Tensor, tau: float) -> Tensor:
    """L_out written with Python loops over anchors and positives (0 for no positive)."""
    n = z.shape[0]
    out = []
    for i in range(n):
        others = [a for a in range(n) if a != i]
        denominator = torch.logsumexp(torch.stack([z[i] @ z[a] / tau for a in others]), 0)
        positives = [p for p in others if labels[p] == labels[i]]
        terms = [z[i] @ z[p] / tau - denominator for p in positives]
        out.append(-torch.stack(terms).mean() if terms else z.new_zeros(()))
    return torch.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_equals_pml_supconloss_with_gradients(seed: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(14, 5, generator=gen, dtype=F64) * 2
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4, 5, 6])  # 4, 5, 6: no positive
    # PML's cosine similarity normalises inside: normalise ours too, then compare d/d raw
    ours = values_and_grads(
        lambda x: C.supervised_contrastive_loss(F.normalize(x, dim=1), labels, temperature), raw
    )
    theirs = values_and_grads(lambda x: PMLSupConLoss(temperature=temperature)(x, labels), raw)
    z = F.normalize(raw, dim=1)
    for o, t in zip(ours, theirs, strict=True):
        torch.testing.assert_close(o, t, rtol=1e-10, atol=1e-12)
    per_anchor = C.supervised_contrastive_loss(z, labels, temperature, "none")
    torch.testing.assert_close(per_anchor, naive_supcon(z, labels, temperature))
    assert per_anchor[-3:].eq(0).all()
    torch.testing.assert_close(
        C.supervised_contrastive_loss(z, labels, temperature, "sum"), per_anchor.sum()
    )


def test_supcon_with_each_label_twice_is_simclr_info_nce() -> None:
    # two views of 6 samples: the positive of view 1 of sample n is view 2 of sample n, and the
    # denominator runs over the other 2N - 1 views (NT-Xent)
    views = unit(12, 4, 41).reshape(6, 2, 4)
    labels = torch.arange(6)
    got = C.supervised_contrastive_loss(views, labels, 0.2, "none")
    z = torch.cat([views[:, 0], views[:, 1]])  # view-major
    logits = (z @ z.T / 0.2).masked_fill(torch.eye(12, dtype=torch.bool), -math.inf)
    partner = torch.cat([torch.arange(6, 12), torch.arange(6)])
    torch.testing.assert_close(got, F.cross_entropy(logits, partner, reduction="none"))
    # the same through the 2-D form with the labels written out
    flat = C.supervised_contrastive_loss(z, torch.cat([labels, labels]), 0.2)
    torch.testing.assert_close(flat, got.mean())


def test_supcon_without_positives_is_zero_and_gradcheck() -> None:
    z = unit(5, 3, 42).requires_grad_()
    loss = C.supervised_contrastive_loss(z, torch.arange(5))
    assert loss == 0
    (g,) = torch.autograd.grad(loss, z)
    assert g.eq(0).all()
    labels = torch.tensor([0, 1, 0, 1, 2], dtype=torch.int32)
    assert torch.autograd.gradcheck(
        lambda x: C.supervised_contrastive_loss(x, labels, 0.3), (unit(5, 3, 43).requires_grad_(),)
    )


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_supcon_finite_in_low_precision(dtype: torch.dtype) -> None:
    z = unit(8, 4, 44, dtype).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = C.supervised_contrastive_loss(z, labels, 0.05)
    assert loss.dtype == dtype
    assert_finite(loss, *torch.autograd.grad(loss, z))
    want = C.supervised_contrastive_loss(z.detach().double(), labels, 0.05)
    torch.testing.assert_close(loss.double(), want, rtol=3e-2, atol=3e-2)


def test_supcon_no_host_sync_and_compiles() -> None:
    z = unit(8, 4, 45, torch.float32).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    with companion.value_checks(False), count_host_syncs() as syncs:
        C.supervised_contrastive_loss(z, labels).backward()
    assert syncs() == 0

    def fn(x: Tensor) -> Tensor:
        return C.supervised_contrastive_loss(x, labels)

    torch._dynamo.reset()
    eager = values_and_grads(fn, z)
    compiled = values_and_grads(torch.compile(fn, fullgraph=True, backend="aot_eager"), z)
    for e, c in zip(eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def test_supcon_bad_input() -> None:
    z = unit(4, 3, 46)
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"target must have shape \(4,\), got \(3,\)"):
        C.supervised_contrastive_loss(z, labels[:3])
    with pytest.raises(TypeError, match=r"target must hold integer labels, got dtype torch.float"):
        C.supervised_contrastive_loss(z, labels.float())
    with pytest.raises(TypeError, match=r"target must hold integer labels, got dtype torch.bool"):
        C.supervised_contrastive_loss(z, labels.bool())
    with pytest.raises(ValueError, match=r"features must have 2 or 3 dimension"):
        C.supervised_contrastive_loss(z[0], labels)
    with pytest.raises(ValueError, match=r"temperature must be a finite positive number"):
        C.supervised_contrastive_loss(z, labels, temperature=0.0)
    with pytest.raises(TypeError, match=r"temperature must be a real number"):
        C.supervised_contrastive_loss(z, labels, temperature="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"features contains NaN"):
        C.supervised_contrastive_loss(z.clone().fill_(math.nan), labels)
    with pytest.raises(ValueError, match=r"features must be finite"):
        C.supervised_contrastive_loss(z.clone().fill_(math.inf), labels)
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        C.supervised_contrastive_loss(z, labels, reduction="avg")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# issue 17: mined pairs that are empty, float16 means, reductions
# ------------------------------------------------------------------------------------------


def _mined_losses(embeddings: Tensor, index: Tensor, reduction: str) -> dict[str, Tensor]:
    """The pair and triplet losses on the rows a miner picked (``index``, maybe empty)."""
    picked = embeddings[index]
    same = torch.ones(index.shape[0], dtype=torch.bool)
    return {
        "contrastive_loss": C.contrastive_loss(picked, picked.flip(0), same, reduction=reduction),
        "triplet_loss": C.triplet_loss(picked, picked, picked.flip(0), reduction=reduction),
        "triplet_loss, squared": C.triplet_loss(
            picked, picked, picked.flip(0), reduction=reduction, squared=True
        ),
    }


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_mined_pairs_give_a_zero_loss_connected_to_the_graph(reduction: str) -> None:
    """A miner that finds nothing must not stop training: zero loss, zero gradients."""
    embeddings = unit(8, 4, 50).requires_grad_(True)
    nothing = torch.zeros(0, dtype=torch.long)
    for name, loss in _mined_losses(embeddings, nothing, reduction).items():
        if reduction == "none":
            assert loss.shape == (0,), name
        else:
            assert loss.shape == () and loss.item() == 0.0, name
        (g,) = torch.autograd.grad(loss.sum(), embeddings, retain_graph=True)
        assert torch.equal(g, torch.zeros_like(embeddings)), name
    # and the same code path with pairs found is the ordinary loss
    some = torch.tensor([0, 3, 5])
    for loss in _mined_losses(embeddings, some, reduction).values():
        assert loss.shape == ((3,) if reduction == "none" else ())


def test_empty_feature_dimension_is_still_refused() -> None:
    empty = torch.zeros(3, 0)
    with pytest.raises(ValueError, match=r"^input1 must not be empty"):
        C.contrastive_loss(empty, empty, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^anchor must not be empty"):
        C.triplet_loss(empty, empty, empty)
    with pytest.raises(ValueError, match=r"^target must have shape \(0,\)"):
        C.contrastive_loss(torch.zeros(0, 2), torch.zeros(0, 2), torch.ones(1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^query must not be empty"):
        C.info_nce_loss(torch.zeros(0, 2), torch.zeros(0, 2))  # not a mined-pairs loss


def _anti_aligned_pairs(n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Pairs (2k, 2k + 1) share a label and point in opposite directions: a large loss each."""
    z = torch.zeros(n, 2, dtype=dtype)
    z[0::2, 0] = 1.0
    z[1::2, 0] = -1.0
    return z, torch.arange(n) // 2


def test_supcon_float16_mean_is_finite_when_the_batch_sum_passes_65504() -> None:
    """2,048 anchors with a loss of about 47 each: a sum of 96,000, a mean of 47."""
    z, labels = _anti_aligned_pairs(2048, torch.float16)
    per_anchor = C.supervised_contrastive_loss(z.float(), labels, 0.05, reduction="none")
    assert per_anchor.sum().item() > 65_504
    want = C.supervised_contrastive_loss(z.float(), labels, 0.05)
    got = C.supervised_contrastive_loss(z, labels, 0.05)
    assert got.dtype == torch.float16 and torch.isfinite(got)
    torch.testing.assert_close(got, want.half(), rtol=1e-3, atol=0)
    # a bfloat16 sum of 2,048 values rounds badly; the mean is as good as one value
    got_bf16 = C.supervised_contrastive_loss(z.bfloat16(), labels, 0.05)
    torch.testing.assert_close(got_bf16, want.bfloat16(), rtol=0, atol=0)


def test_pair_losses_float16_mean_is_finite_when_the_batch_sum_passes_65504() -> None:
    """contrastive_loss, triplet_loss and info_nce_loss average in float32 too."""
    n = 8192
    x1 = torch.zeros(n, 2, dtype=torch.float16)
    x2 = torch.zeros(n, 2, dtype=torch.float16)
    x2[:, 0] = 4.0  # each matching pair is 4 apart: a loss of 8 each, 65,536 in all
    same = torch.ones(n, dtype=torch.bool)
    assert C.contrastive_loss(x1, x2, same).item() == 8.0
    assert C.triplet_loss(x1, x2, x1, margin=4.0).item() == 8.0
    q, k = _anti_aligned_pairs(512, torch.float16)[0], -_anti_aligned_pairs(512, torch.float16)[0]
    want = C.info_nce_loss(q.float(), k.float(), 0.01)
    assert want.item() * 512 > 65_504
    torch.testing.assert_close(C.info_nce_loss(q, k, 0.01), want.half(), rtol=1e-3, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_target_clip_loss_reductions(reduction: str) -> None:
    image, text = unit(6, 4, 51), unit(6, 4, 52)
    per_pair = C.soft_target_clip_loss(image, text, 10.0, reduction="none")
    assert per_pair.shape == (6,)
    value = C.soft_target_clip_loss(image, text, 10.0, reduction=reduction)
    want = {"none": per_pair, "mean": per_pair.mean(), "sum": per_pair.sum()}[reduction]
    torch.testing.assert_close(value, want, rtol=1e-12, atol=1e-12)
    # the default is the mean, the value it always had: half of each direction's mean
    logits = 10.0 * image @ text.T
    targets = torch.softmax(10.0 * (image @ image.T + text @ text.T) / 2, dim=1)
    by_hand = (
        -(
            (targets * logits.log_softmax(1)).sum(1).mean()
            + (targets * logits.T.log_softmax(1)).sum(1).mean()
        )
        / 2
    )
    torch.testing.assert_close(C.soft_target_clip_loss(image, text, 10.0), by_hand)
