"""companion.partial_fc: equal to the margin heads and to pytorch-metric-learning, sampled right.

The multi-process tests are in tests/test_distributed_contract.py; the end of this file runs
the torchrun example for a few steps.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._inductor.config as inductor_config
from hypothesis import given
from hypothesis import strategies as st
from pytorch_metric_learning import losses as pml

import companion
from companion import margin as M
from companion import partial_fc as P
from tests.conftest import REDUCTIONS, assert_finite
from tests.host_syncs import count_host_syncs

F64 = torch.float64
B, D, C = 11, 6, 37
ROOT = Path(__file__).resolve().parents[1]


def _data(seed: int, dtype: torch.dtype = F64, classes: int = C) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=gen, dtype=dtype)
    y = torch.randint(classes, (B,), generator=gen)
    w = torch.randn(classes, D, generator=gen, dtype=dtype)
    return x, y, w


def _grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss.sum(), inputs)


CHUNKS = [None, 1, 7, C, 100]
HEADS = {
    "arcface": (M.ArcFaceLoss, (1.0, 0.5, 0.0), {"margin": 0.5}),
    "cosface": (M.AMSoftmaxLoss, (1.0, 0.0, 0.35), {"margin": 0.35}),
}


# ------------------------------------------------------------------------------------------
# sample_rate = 1 equals companion.margin's heads and pytorch-metric-learning
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_equals_the_margin_heads(name: str, chunk: int | None, reduction: str) -> None:
    make, margin, kw = HEADS[name]
    x, y, w = _data(1)
    x.requires_grad_(True)
    ref = make(D, C, scale=12.0, reduction=reduction, dtype=F64, **kw)
    ref.weight.data = w.clone()
    want = ref(x, y)
    want_grads = _grads(want, x, ref.weight)
    ours = P.PartialFC(
        D, C, margin=margin, scale=12.0, chunk_size=chunk, reduction=reduction, dtype=F64
    )
    ours.weight.data = w.clone()
    got = ours(x, y)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, h in zip(_grads(got, x, ours.weight), want_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


def _pml(name: str) -> pml.LargeMarginSoftmaxLoss:
    if name == "arcface":
        return pml.ArcFaceLoss(num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=12)
    return pml.CosFaceLoss(num_classes=C, embedding_size=D, margin=0.35, scale=12)


@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pytorch_metric_learning(name: str, chunk: int | None, seed: int) -> None:
    x, y, w = _data(seed)
    x.requires_grad_(True)
    theirs = _pml(name).to(F64)
    theirs.W.data = w.t().clone()  # theirs is (D, C)
    want = theirs(x, y)
    want_gx, want_gw = _grads(want, x, theirs.W)
    wp = w.clone().requires_grad_(True)
    got = P.partial_fc_loss(x, wp, y, margin=HEADS[name][1], scale=12.0, chunk_size=chunk)
    gx, gw = _grads(got, x, wp)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, want_gx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, want_gw.t(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("m1", [1.0, 2.0, 3.0, 2.5])
@pytest.mark.parametrize("chunk", [None, 4])
def test_multiplicative_margin_equals_the_naive_formula(m1: float, chunk: int | None) -> None:
    x, y, w = _data(3)
    x.requires_grad_(True)
    wp = w.clone().requires_grad_(True)
    got = P.partial_fc_loss(x, wp, y, margin=(m1, 0.0, 0.1), scale=5.0, chunk_size=chunk)
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(wp, dim=1).T
    rows = torch.arange(B)
    target = 5.0 * (M.multiplicative_angular_margin(cos[rows, y], m1) - 0.1)
    logits = (5.0 * cos).index_put((rows, y), target)
    want = torch.nn.functional.cross_entropy(logits, y)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, h in zip(_grads(got, x, wp), _grads(want, x, wp), strict=True):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "margin", [(1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (3.0, 0.0, 0.0), (1.0, 0.3, 0.2)]
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunked_gradcheck(margin: tuple[float, float, float], reduction: str) -> None:
    x, y, w = _data(4)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return P.partial_fc_loss(
            x, w, y, margin=margin, scale=4.0, chunk_size=6, reduction=reduction
        )

    assert torch.autograd.gradcheck(f, (x, w))


def test_chunked_gradcheck_sampled() -> None:
    x, y, w = _data(5)
    x.requires_grad_(True)
    w.requires_grad_(True)

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        return P.partial_fc_loss(x, w, y, scale=4.0, sample_rate=0.4, chunk_size=5, generator=gen)

    assert torch.autograd.gradcheck(f, (x, w))


def test_chunked_matches_unchunked_at_a_zero_centre() -> None:
    x, y, w = _data(5)
    w[3] = 0.0  # a centre at the origin: both paths divide it by 1 (F.normalize's eps would
    y[0] = 3  # give it a gradient of 1e12), so value and gradients stay finite and agree
    results = []
    for chunk in (None, 5):
        wp = w.clone().requires_grad_(True)
        loss = P.partial_fc_loss(x, wp, y, scale=4.0, chunk_size=chunk)
        results.append((loss, *_grads(loss, wp)))
    assert_finite(*results[0])
    assert_finite(*results[1])
    assert results[0][1][3].abs().max() < 1e3  # the zero centre's gradient: finite, modest
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


def test_combined_margin_reuses_the_margin_transforms_and_refuses_m1_with_m2() -> None:
    c = torch.linspace(-1, 1, 41, dtype=F64)
    assert torch.equal(P.combined_margin(c, (1, 0.5, 0)), M.additive_angular_margin(c, 0.5))
    assert torch.equal(
        P.combined_margin(c, (4, 0, 0.1)), M.multiplicative_angular_margin(c, 4) - 0.1
    )
    assert torch.equal(P.combined_margin(c, (1, 0, 0.35)), c - 0.35)
    with pytest.raises(ValueError, match=r"m1 != 1 .* m2 != 0"):
        P.combined_margin(c, (2, 0.1, 0))
    with pytest.raises(ValueError, match=r"m1 != 1 .* m2 != 0"):
        P.PartialFC(D, C, margin=(1.5, 0.2, 0.0))


@pytest.mark.parametrize("chunk", [None, 8])
def test_finite_at_cosine_one_and_in_bfloat16(chunk: int | None) -> None:
    w = torch.randn(C, D, dtype=F64)
    x = (w[:B] * 3.0).clone().requires_grad_(True)  # each feature on its class centre: cos = 1
    y = torch.arange(B)
    wp = w.clone().requires_grad_(True)
    loss = P.partial_fc_loss(x, wp, y, scale=64.0, chunk_size=chunk)
    assert_finite(loss, *_grads(loss, x, wp))
    xb, yb, wb = _data(6, torch.float32)
    ref = P.partial_fc_loss(xb, wb, yb, scale=32.0, chunk_size=chunk)
    wb16 = wb.bfloat16().requires_grad_(True)
    low = P.partial_fc_loss(xb.bfloat16(), wb16, yb, scale=32.0, chunk_size=chunk)
    assert low.dtype == torch.bfloat16
    assert_finite(low, *_grads(low, wb16))
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)


# ------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 10_000), rate=st.sampled_from([0.05, 0.2, 0.5, 0.9, 1.0]))
def test_sampling_keeps_every_positive_and_the_exact_count(seed: int, rate: float) -> None:
    x, y, w = _data(seed, classes=200)
    y[:4] = y[0]  # repeated positives count once
    gen = torch.Generator().manual_seed(seed)
    _, kept = P.partial_fc_loss(
        x, w, y, sample_rate=rate, generator=gen, return_sampled=True, chunk_size=50
    )
    assert kept.shape == (P.num_sampled_classes(200, rate, B),)
    assert kept.shape[0] == min(200, max(math.ceil(rate * 200), B))
    assert torch.isin(y, kept).all()
    assert torch.equal(kept, torch.sort(kept).values) and kept.unique().numel() == kept.numel()


def test_count_is_raised_to_the_batch_so_positives_always_fit() -> None:
    assert P.num_sampled_classes(1000, 0.001, 64) == 64
    assert P.num_sampled_classes(1000, 0.1, 64) == 100
    assert P.num_sampled_classes(50, 0.1, 64) == 50
    x = torch.randn(64, D, dtype=F64)
    y = torch.randperm(1000)[:64]  # 64 distinct positives, more than ceil(0.001 * 1000) = 1
    _, kept = P.partial_fc_loss(
        x, torch.randn(1000, D, dtype=F64), y, sample_rate=0.001, return_sampled=True
    )
    assert torch.equal(kept, torch.sort(y).values)


def test_draw_is_reproducible_with_a_generator_and_varies_without() -> None:
    x, y, w = _data(7, classes=500)
    draws = []
    for seed in (3, 3, 4):
        gen = torch.Generator().manual_seed(seed)
        draws.append(
            P.partial_fc_loss(x, w, y, sample_rate=0.1, generator=gen, return_sampled=True)
        )
    torch.testing.assert_close(draws[0][0], draws[1][0], rtol=0, atol=0)
    assert torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][1], draws[2][1])


@pytest.mark.parametrize("chunk", [None, 9])
def test_unsampled_rows_get_exactly_zero_gradient_and_loss_is_the_kept_softmax(
    chunk: int | None,
) -> None:
    x, y, w = _data(8, classes=300)
    x.requires_grad_(True)
    head = P.PartialFC(D, 300, scale=10.0, sample_rate=0.1, chunk_size=chunk, dtype=F64)
    head.weight.data = w.clone()
    loss = head(x, y, generator=torch.Generator().manual_seed(0))
    loss.backward()
    kept = head.last_sampled
    assert kept is not None and kept.shape == (30,)
    dropped = torch.ones(300, dtype=torch.bool)
    dropped[kept] = False
    assert torch.count_nonzero(head.weight.grad[dropped]) == 0
    assert (head.weight.grad[kept].abs().sum(1) > 0).all()
    # the sampled loss is the ArcFace loss over the kept centres alone
    ref = M.ArcFaceLoss(D, 30, margin=0.5, scale=10.0, dtype=F64)
    ref.weight.data = w[kept].clone()
    remapped = torch.searchsorted(kept, y)
    xr = x.detach().clone().requires_grad_(True)
    want = ref(xr, remapped)
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    (want_gx,) = torch.autograd.grad(want, xr)
    torch.testing.assert_close(x.grad, want_gx, rtol=1e-10, atol=1e-12)


def test_momentum_keeps_moving_rows_that_were_not_drawn() -> None:
    """Documented behaviour: zero gradient is not zero update for an optimiser with state."""
    x, y, _ = _data(9, classes=400)
    head = P.PartialFC(D, 400, scale=10.0, sample_rate=0.05, dtype=F64)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    head(x, y, generator=torch.Generator().manual_seed(0)).backward()
    opt.step()
    first = head.last_sampled
    assert first is not None
    opt.zero_grad()
    before = head.weight.detach().clone()
    y2 = torch.full_like(y, int(torch.isin(torch.arange(400), first, invert=True).nonzero()[0]))
    head(x, y2, generator=torch.Generator().manual_seed(1)).backward()
    second = head.last_sampled
    assert second is not None
    only_first = first[~torch.isin(first, second)]
    assert only_first.numel() > 0
    assert torch.count_nonzero(head.weight.grad[only_first]) == 0
    opt.step()
    moved = (head.weight.detach() - before)[only_first].abs().sum(1)
    assert (moved > 0).all()  # momentum moved them with zero gradient


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument() -> None:
    x, y, w = _data(10)
    cases = [
        (lambda: P.partial_fc_loss(x, w, y + C), ValueError, "target"),
        (lambda: P.partial_fc_loss(x, w, -y - 1), ValueError, "target"),
        (lambda: P.partial_fc_loss(x, w, y.float()), TypeError, "target"),
        (lambda: P.partial_fc_loss(x, w, y[:-1]), ValueError, "target"),
        (lambda: P.partial_fc_loss(x, w, y, sample_rate=0.0), ValueError, "sample_rate"),
        (lambda: P.partial_fc_loss(x, w, y, sample_rate=1.5), ValueError, "sample_rate"),
        (lambda: P.PartialFC(D, C, sample_rate=-0.1), ValueError, "sample_rate"),
        (lambda: P.partial_fc_loss(x[:, :-1], w, y), ValueError, "features"),
        (lambda: P.PartialFC(D, C, dtype=F64)(x[:, :-1], y), ValueError, "features"),
        (lambda: P.PartialFC(D, C)(x, y), TypeError, "features"),  # float32 head, float64 x
        (lambda: P.partial_fc_loss(x, w, y, num_classes=C + 1), ValueError, "weight"),
        (lambda: P.partial_fc_loss(x, w, y, chunk_size=0), ValueError, "chunk_size"),
        (lambda: P.partial_fc_loss(x, w, y, scale=0.0), ValueError, "scale"),
        (lambda: P.partial_fc_loss(x, w, y, margin=(1, 0.5)), TypeError, "margin"),
        (lambda: P.partial_fc_loss(x, w, y, margin=(0.5, 0, 0)), ValueError, "m1"),
        (lambda: P.partial_fc_loss(x, w, y, margin=(1, 4.0, 0)), ValueError, "m2"),
        (lambda: P.partial_fc_loss(x, w, y, reduction="avg"), ValueError, "reduction"),
        (lambda: P.shard_range(3, 4, 0), ValueError, "group"),
        (lambda: P.PartialFC(D, C, group=object()), ValueError, "group"),
    ]
    for call, error, name in cases:
        with pytest.raises(error, match=re.escape(name)):
            call()
    x_nan = x.clone()
    x_nan[0, 0] = math.nan
    with pytest.raises(ValueError, match="features"):
        P.partial_fc_loss(x_nan, w, y)


def test_shard_range_covers_the_classes_contiguously() -> None:
    for classes, world in [(10, 3), (12, 4), (7, 7), (1000, 6)]:
        ranges = [P.shard_range(classes, world, r) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == classes
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        sizes = [b - a for a, b in ranges]
        assert max(sizes) - min(sizes) <= 1


# ------------------------------------------------------------------------------------------
# the production contract: zero host syncs, torch.compile(fullgraph=True)
# ------------------------------------------------------------------------------------------

CONTRACT = [(1.0, None), (1.0, 7), (0.3, None), (0.3, 7)]


@pytest.mark.parametrize(("rate", "chunk"), CONTRACT)
def test_zero_host_syncs_with_value_checks_off(rate: float, chunk: int | None) -> None:
    x, y, _ = _data(11, torch.float32, classes=50)
    x.requires_grad_(True)
    head = P.PartialFC(D, 50, scale=16.0, sample_rate=rate, chunk_size=chunk)
    with companion.value_checks(False), count_host_syncs() as syncs:
        head(x, y).backward()
    assert syncs() == 0


@pytest.mark.parametrize(("rate", "chunk"), [(1.0, None), (0.3, 7)])
def test_compiles_with_fullgraph_and_matches_eager(rate: float, chunk: int | None) -> None:
    torch._dynamo.reset()
    x, y, _ = _data(12, torch.float32, classes=50)
    x.requires_grad_(True)
    head = P.PartialFC(D, 50, scale=16.0, sample_rate=rate, chunk_size=chunk)
    compiled = torch.compile(head, fullgraph=True)
    # fallback_random: the same random draw in the compiled graph as in eager mode
    with companion.value_checks(False), inductor_config.patch(fallback_random=True):
        torch.manual_seed(5)
        want = head(x, y)
        want_grads = _grads(want, x, head.weight)
        torch.manual_seed(5)
        got = compiled(x, y)
        got_grads = _grads(got, x, head.weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, h in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-5 * float(h.abs().max()))


# ------------------------------------------------------------------------------------------
# the torchrun example, for a few steps (real gloo processes)
# ------------------------------------------------------------------------------------------


def test_torchrun_example_trains_for_a_few_steps() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(ROOT / "examples" / "train_partial_fc.py"),
        "--steps",
        "40",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"loss (\S+) -> (\S+)", done.stdout)
    assert match, done.stdout
    first, last = float(match.group(1)), float(match.group(2))
    assert last < 0.8 * first, done.stdout
