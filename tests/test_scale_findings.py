"""The scale paths as practitioners run them: one test per finding of the review of issue 17.

Each test failed before the rebuild on the tiled engine and the distributed layer: float16 sums
that overflowed, a negative bfloat16 cross-entropy, out-of-range classes accepted with value checks
off, a bfloat16 forward with a float32 backward under autocast, a recompilation for every batch
size, an unclear error for a generator under compilation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import companion
from companion.contrastive import ClipLoss, clip_loss
from companion.partial_fc import PartialFC, partial_fc_loss
from companion.siglip import SigLipLoss, siglip_loss


def _pairs(
    batch: int, dim: int, dtype: torch.dtype, seed: int = 0, noise: float = 0.3
) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    text = F.normalize(image + noise * torch.randn(batch, dim, generator=gen), dim=1)
    return image.to(dtype), text.to(dtype)


@pytest.mark.parametrize("chunk", [None, 1024])
def test_float16_clip_and_siglip_means_do_not_overflow(chunk: int | None) -> None:
    """Finding 2: at B = 4,096 the float16 sum of the per-pair losses passes 65,504."""
    image, text = _pairs(4096, 16, torch.float16, noise=100.0)  # barely related: a mean of ~16
    want = clip_loss(image.float(), text.float(), 1 / 0.07, chunk)
    got = clip_loss(image, text, 1 / 0.07, chunk)
    assert got.dtype == torch.float16 and torch.isfinite(got)
    assert 2 * want * 4096 > 65504  # the sum over both directions does overflow float16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=0)
    want = siglip_loss(image.float(), text.float(), 10.0, 10.0, chunk)
    got = siglip_loss(image, text, 10.0, 10.0, chunk)
    assert want * 4096 > 65504 and torch.isfinite(got)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=0)


def test_bfloat16_chunked_clip_is_never_negative() -> None:
    """Finding 3: the positive logit and the log-sum-exp come from the same rounded tile."""
    image, _ = _pairs(64, 8, torch.bfloat16, seed=3)
    for chunk in (None, 7, 64):
        losses = clip_loss(image, image, 1 / 0.01, chunk, reduction="none")
        assert (losses >= 0).all(), chunk


@pytest.mark.parametrize("chunk", [None, 4])
def test_out_of_range_classes_raise_with_value_checks_off(chunk: int | None) -> None:
    """Finding 1: targets 10, -1 and -100 for 10 classes were scored as if their logit were 0."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 8, generator=gen), torch.randn(10, 8, generator=gen)
    for bad in (10, -1, -100):
        target = torch.tensor([1, bad, 2])
        with companion.value_checks(False), pytest.raises(ValueError, match=r"^target"):
            partial_fc_loss(x, w, target, chunk_size=chunk)
        with companion.value_checks(False), pytest.raises(ValueError, match=r"^target"):
            partial_fc_loss(x, w, target, sample_rate=0.5, chunk_size=chunk)


def test_chunked_partial_fc_under_autocast_matches_its_bfloat16_reference() -> None:
    """Finding 5: under autocast the chunked forward ran in bfloat16 and its backward in float32."""
    torch.manual_seed(0)
    head = PartialFC(16, 50, scale=16.0, chunk_size=7)
    x = torch.randn(12, 16, requires_grad=True)
    y = torch.randint(50, (12,))
    errors = {}
    for chunk in (None, 7):
        head.chunk_size = chunk
        with torch.autocast("cpu", torch.bfloat16):
            loss = head(x, y)
        grad = torch.autograd.grad(loss, x)[0]
        exact = torch.autograd.grad(head(x.double().float(), y), x)[0]
        errors[chunk] = float((grad - exact).abs().max() / exact.abs().max())
    assert errors[7] < 3 * errors[None] + 1e-3, errors


def _count_compiles(fn: object, calls: list[tuple[Tensor, ...]]) -> int:
    counted = {"n": 0}

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> object:
        counted["n"] += 1
        return gm.forward

    compiled = torch.compile(fn, fullgraph=True, backend=backend, dynamic=True)  # type: ignore[call-overload]
    for args in calls:
        out = compiled(*args)
        out.backward()
    torch._dynamo.reset()
    return counted["n"]


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_chunked_pair_losses_compile_once_for_twelve_batch_sizes(loss: str) -> None:
    """Finding 6: the chunked CLIP and SigLIP losses recompiled for every new batch size and hit
    the recompile limit at the ninth (with dynamic=True too)."""
    module = ClipLoss(chunk_size=4) if loss == "clip" else SigLipLoss(chunk_size=4)
    calls = []
    for batch in range(5, 17):
        image, text = _pairs(batch, 8, torch.float32, seed=batch)
        calls.append((image.requires_grad_(True), text.requires_grad_(True)))
    with companion.value_checks(False):
        compiles = _count_compiles(module, calls)
        eager = module(*calls[-1])
    assert compiles <= 2, compiles  # a static first graph, then one dynamic graph
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager", dynamic=True)
    with companion.value_checks(False):
        torch.testing.assert_close(compiled(*calls[-1]), eager)
    torch._dynamo.reset()


def test_a_generator_under_compile_is_a_clear_error() -> None:
    """Finding 11: a compiled sampled Partial FC with a generator failed with an unclear error."""
    head = PartialFC(8, 100, sample_rate=0.2, chunk_size=16)
    x, y = torch.randn(4, 8), torch.randint(100, (4,))
    gen = torch.Generator().manual_seed(0)
    compiled = torch.compile(lambda x, y: head(x, y, generator=gen), fullgraph=True)
    with pytest.raises(Exception, match=r"generator is not supported under torch\.compile"):
        compiled(x, y)
    torch._dynamo.reset()


def test_amp_features_reach_a_float32_partial_fc_head() -> None:
    """Finding 8 (Partial FC): bfloat16 features from an autocast backbone, float32 head."""
    torch.manual_seed(0)
    head = PartialFC(16, 30, scale=16.0, chunk_size=8)
    x = torch.randn(6, 16).bfloat16().requires_grad_(True)
    y = torch.randint(30, (6,))
    loss = head(x, y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, head(x.detach().float(), y))


def test_group_none_inside_a_process_group_is_one_process() -> None:
    """The old gather=True switched itself on once a default process group existed; distribution
    now happens only with group=, so the loss of the given batch is what it says."""
    image, text = _pairs(8, 4, torch.float64)
    want = clip_loss(image, text, 5.0)
    assert math.isfinite(float(want))
    import inspect

    assert "gather" not in inspect.signature(clip_loss).parameters
    assert "ring" not in inspect.signature(siglip_loss).parameters
