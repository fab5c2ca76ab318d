"""companion.linear_cross_entropy against torch and against naive formulas.

Every option it shares with ``F.cross_entropy(F.linear(...))`` and ``F.linear_cross_entropy``
(class weights, ignore_index, label smoothing, each reduction, a bias) under every chunking, in
float64 to 1e-10 and float32 to 1e-5, values and the gradients of the input, the weight and the
bias; the z-loss and soft-capping against their formulas; gradcheck; leading batch shapes; half
precision; the all-ignored batch; targets out of range with value checks off; host syncs;
compile. The vocabulary split over processes is in tests/test_distributed_contract.py.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from torch import Tensor

import companion
from companion.linear import LinearCrossEntropyLoss, linear_cross_entropy, vocab_shard_range
from tests.host_syncs import count_host_syncs

F64 = torch.float64
N, V, D = 9, 13, 6

CHUNKINGS: dict[str, dict[str, int]] = {
    "automatic": {},
    "tokens": {"chunk_size": 4},
    "vocabulary": {"vocab_chunk_size": 5},
    "both": {"chunk_size": 2, "vocab_chunk_size": 3},
    "larger than the input": {"chunk_size": 100, "vocab_chunk_size": 100},
}
SHARED = list(itertools.product(["mean", "sum", "none"], [0.0, 0.2], [False, True], [False, True]))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _problem(
    dtype: torch.dtype, bias: bool, class_weight: bool, seed: int = 0, ignore: int = -100
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    g = _gen(seed)
    x = torch.randn(2, N, D, generator=g, dtype=F64).to(dtype).requires_grad_()
    w = torch.randn(V, D, generator=g, dtype=F64).to(dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=F64).to(dtype).requires_grad_() if bias else None
    cw = torch.rand(V, generator=g, dtype=F64).to(dtype) + 0.1 if class_weight else None
    y = torch.randint(V, (2, N), generator=g)
    y[0, :3] = ignore
    return x, w, y, b, cw


def _torch_reference(x: Tensor, w: Tensor, y: Tensor, b: Tensor | None, **kw: Any) -> Tensor:
    out = F.cross_entropy(F.linear(x, w, b).flatten(0, -2), y.flatten(), **kw)
    return out.reshape(y.shape) if kw.get("reduction") == "none" else out


def _leaves(*ts: Tensor | None) -> list[Tensor]:
    return [t for t in ts if t is not None]


def _compare(got: Tensor, want: Tensor, leaves: list[Tensor], tol: float) -> None:
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    up = torch.randn(got.shape, generator=_gen(9), dtype=F64).to(got.dtype)
    grads = torch.autograd.grad((got * up).sum(), leaves)
    wants = torch.autograd.grad((want * up).sum(), leaves)
    for g, w in zip(grads, wants, strict=True):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------
# equal to torch for every option they share
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize(("reduction", "smoothing", "class_weight", "bias"), SHARED)
def test_equals_cross_entropy_of_linear_float64(
    reduction: str, smoothing: float, class_weight: bool, bias: bool, chunking: str
) -> None:
    x, w, y, b, cw = _problem(F64, bias, class_weight)
    kw: dict[str, Any] = {"weight": cw, "reduction": reduction, "label_smoothing": smoothing}
    got = linear_cross_entropy(x, w, y, linear_bias=b, **kw, **CHUNKINGS[chunking])
    want = _torch_reference(x, w, y, b, **kw)
    _compare(got, want, _leaves(x, w, b), 1e-10)


@pytest.mark.parametrize("chunking", ["automatic", "vocabulary"])
@pytest.mark.parametrize(("reduction", "smoothing", "class_weight", "bias"), SHARED)
def test_equals_cross_entropy_of_linear_float32(
    reduction: str, smoothing: float, class_weight: bool, bias: bool, chunking: str
) -> None:
    x, w, y, b, cw = _problem(torch.float32, bias, class_weight, seed=1)
    kw: dict[str, Any] = {"weight": cw, "reduction": reduction, "label_smoothing": smoothing}
    got = linear_cross_entropy(x, w, y, linear_bias=b, **kw, **CHUNKINGS[chunking])
    want = _torch_reference(x, w, y, b, **kw)
    _compare(got, want, _leaves(x, w, b), 1e-5)


@pytest.mark.parametrize("chunked", [False, True], ids=["reference path", "chunked path"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_equals_torch_linear_cross_entropy(reduction: str, chunked: bool) -> None:
    """torch 2.13's own function (2-D input only), with its reference and its chunked path."""
    x, w, y, b, cw = _problem(F64, True, True, seed=2)
    x2 = x.detach().flatten(0, 1).requires_grad_()
    y2 = y.flatten()
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=4) if chunked else None
    # torch's chunked path has no label smoothing (it would fall back to its reference path)
    smoothing = 0.0 if chunked else 0.1
    kw: dict[str, Any] = {"weight": cw, "reduction": reduction, "label_smoothing": smoothing}
    got = linear_cross_entropy(x2, w, y2, linear_bias=b, **kw, options=options)
    want = F.linear_cross_entropy(x2, w, y2, linear_bias=b, **kw, options=options)
    _compare(got, want, _leaves(x2, w, b), 1e-10)


@pytest.mark.parametrize("ignore_index", [3, None, -1])
def test_ignore_index(ignore_index: int | None) -> None:
    x, w, y, b, _ = _problem(F64, True, False, seed=3, ignore=3 if ignore_index == 3 else -1)
    if ignore_index is None:
        y[y == -1] = -100  # None means torch's -100
    for reduction in ("mean", "none"):
        got = linear_cross_entropy(
            x, w, y, linear_bias=b, ignore_index=ignore_index, reduction=reduction, chunk_size=4
        )
        want = _torch_reference(
            x, w, y, b, ignore_index=-100 if ignore_index is None else ignore_index,
            reduction=reduction,
        )  # fmt: skip
        _compare(got, want, _leaves(x, w, b), 1e-10)


@pytest.mark.parametrize("chunking", ["automatic", "vocabulary"])
def test_every_target_ignored_gives_zero_where_torch_gives_nan(chunking: str) -> None:
    x, w, y, b, _ = _problem(F64, True, False)
    y = torch.full_like(y, -100)
    got = linear_cross_entropy(x, w, y, linear_bias=b, z_loss=0.1, **CHUNKINGS[chunking])
    assert got.item() == 0.0
    assert math.isnan(F.linear_cross_entropy(x.flatten(0, 1), w, y.flatten()).item())
    for g in torch.autograd.grad(got, (x, w, b)):
        assert torch.equal(g, torch.zeros_like(g))
    none = linear_cross_entropy(x, w, y, reduction="none")
    assert torch.equal(none, torch.zeros_like(none))


# ------------------------------------------------------------------------------------------
# z-loss and soft-capping against their formulas
# ------------------------------------------------------------------------------------------


def _naive(
    x: Tensor,
    w: Tensor,
    y: Tensor,
    b: Tensor | None,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    weight: Tensor | None = None,
) -> Tensor:
    u = F.linear(x, w, b).flatten(0, -2)
    z = softcap * torch.tanh(u / softcap) if softcap is not None else u
    keep = (y.flatten() != -100).to(z.dtype)
    safe = torch.where(keep > 0, y.flatten(), 0)
    lse = torch.logsumexp(z, dim=1)
    omega = weight[safe] if weight is not None else torch.ones_like(lse)
    ce = keep * omega * (lse - z[torch.arange(z.shape[0]), safe])
    zl = keep * z_loss * lse**2
    if reduction == "none":
        return (ce + zl).reshape(y.shape)
    if reduction == "sum":
        return ce.sum() + zl.sum()
    return ce.sum() / (keep * omega).sum() + zl.sum() / keep.sum()


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    ("z_loss", "softcap"), [(0.05, None), (0.0, 2.5), (0.05, 2.5)], ids=["z", "cap", "both"]
)
def test_z_loss_and_softcap_against_their_formulas(
    z_loss: float, softcap: float | None, reduction: str, chunking: str
) -> None:
    x, w, y, b, cw = _problem(F64, True, True, seed=4)
    got = linear_cross_entropy(
        x, w, y, linear_bias=b, weight=cw, z_loss=z_loss, softcap=softcap, reduction=reduction,
        **CHUNKINGS[chunking],
    )  # fmt: skip
    want = _naive(x, w, y, b, z_loss, softcap, reduction, cw)
    _compare(got, want, _leaves(x, w, b), 1e-10)


def test_z_loss_gradient_is_two_z_lse_times_softmax() -> None:
    """d(z L^2)/dz_j = 2 z L p_j: the derivation of the chapter, checked on one row."""
    x = torch.randn(1, D, dtype=F64, generator=_gen(5), requires_grad=True)
    w = torch.randn(V, D, dtype=F64, generator=_gen(6))
    y = torch.tensor([2])
    with_z = linear_cross_entropy(x, w, y, z_loss=0.3)
    without = linear_cross_entropy(x, w, y)
    (g,) = torch.autograd.grad(with_z - without, x)
    logits = (x @ w.T).detach()
    lse = torch.logsumexp(logits, dim=1)
    want = (2 * 0.3 * lse * torch.softmax(logits, dim=1)) @ w
    torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [{}, {"vocab_chunk_size": 4}, {"reduction": "none", "chunk_size": 3}],
    ids=["fused", "vocabulary tiles", "per token"],
)
def test_gradcheck(options: dict[str, Any]) -> None:
    x, w, y, b, cw = _problem(F64, True, True, seed=7)

    def fn(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        out: Tensor = linear_cross_entropy(
            x, w, y, linear_bias=b, weight=cw, label_smoothing=0.1, z_loss=0.01, softcap=3.0,
            **options,
        )  # fmt: skip
        return out

    assert b is not None
    assert torch.autograd.gradcheck(fn, (x, w, b))


# ------------------------------------------------------------------------------------------
# shapes, dtypes, the log-sum-exp, the module
# ------------------------------------------------------------------------------------------


def test_any_leading_shape() -> None:
    g = _gen(8)
    w = torch.randn(V, D, generator=g, dtype=F64)
    for shape in [(), (5,), (2, 3, 4)]:
        x = torch.randn(*shape, D, generator=g, dtype=F64)
        y = torch.randint(V, shape, generator=g)
        got = linear_cross_entropy(x, w, y, reduction="none")
        assert got.shape == y.shape
        want = F.cross_entropy(F.linear(x, w).reshape(-1, V), y.reshape(-1), reduction="none")
        torch.testing.assert_close(got.reshape(-1), want, rtol=1e-12, atol=1e-12)
        mean = linear_cross_entropy(x, w, y)
        torch.testing.assert_close(mean, want.mean(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunking", ["automatic", "vocabulary"])
def test_return_lse(chunking: str) -> None:
    x, w, y, b, _ = _problem(F64, True, False)
    loss, lse = linear_cross_entropy(
        x, w, y, linear_bias=b, softcap=4.0, return_lse=True, **CHUNKINGS[chunking]
    )
    assert lse.shape == y.shape and not lse.requires_grad
    logits = 4.0 * torch.tanh(F.linear(x, w, b) / 4.0)
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=-1).detach())
    torch.testing.assert_close(loss, _naive(x, w, y, b, 0.0, 4.0, "mean"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("chunking", ["automatic", "vocabulary"])
def test_half_precision(dtype: torch.dtype, chunking: str) -> None:
    g = _gen(10)
    x32 = torch.randn(64, 32, generator=g)
    w32 = torch.randn(500, 32, generator=g) * 0.3
    y = torch.randint(500, (64,), generator=g)
    xh, wh = (t.to(dtype).requires_grad_() for t in (x32, w32))
    ref = [t.detach().to(dtype).float().requires_grad_() for t in (x32, w32)]
    loss, lse = linear_cross_entropy(xh, wh, y, z_loss=1e-3, return_lse=True, **CHUNKINGS[chunking])
    assert loss.dtype == dtype and lse.dtype == torch.float32
    want = linear_cross_entropy(*ref, y, z_loss=1e-3)
    torch.testing.assert_close(loss.float(), want, rtol=1e-2, atol=1e-2)
    grads, refs = torch.autograd.grad(loss, (xh, wh)), torch.autograd.grad(want, ref)
    for gh, gr in zip(grads, refs, strict=True):
        assert gh.dtype == dtype
        torch.testing.assert_close(gh.float(), gr, rtol=5e-2, atol=2e-3)


def test_bfloat16_features_and_a_float32_head() -> None:
    """The AMP pattern: the head computes in float32; the features' gradient is bfloat16."""
    g = _gen(11)
    x = torch.randn(10, D, generator=g).bfloat16().requires_grad_()
    w = torch.randn(V, D, generator=g, requires_grad=True)
    y = torch.randint(V, (10,), generator=g)
    loss = linear_cross_entropy(x, w, y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(x.float() @ w.T, y))
    gx, gw = torch.autograd.grad(loss, (x, w))
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.float32
    with pytest.raises(TypeError, match=r"^input must have the same dtype"):
        linear_cross_entropy(x.double(), w, y)


def test_module_calls_the_function() -> None:
    x, w, y, b, cw = _problem(F64, True, True)
    assert cw is not None
    module = LinearCrossEntropyLoss(cw, label_smoothing=0.1, z_loss=0.01, chunk_size=4)
    want = linear_cross_entropy(
        x, w, y, linear_bias=b, weight=cw, label_smoothing=0.1, z_loss=0.01, chunk_size=4
    )
    torch.testing.assert_close(module(x, w, y, b), want, rtol=0, atol=0)
    assert "z_loss=0.01" in repr(module) and module.weight is not None
    assert [vocab_shard_range(23, 3, r) for r in range(3)] == [(0, 8), (8, 16), (16, 23)]


# ------------------------------------------------------------------------------------------
# the contract: bad inputs, targets out of range with checks off, host syncs, compile
# ------------------------------------------------------------------------------------------


def _good() -> dict[str, Any]:
    x, w, y, b, cw = _problem(F64, True, True)
    return {"input": x, "linear_weight": w, "target": y, "linear_bias": b, "weight": cw}


BAD: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("wrong feature size", {"input": torch.randn(2, N, D + 1, dtype=F64)}, ValueError, "input"),
    ("target shape", {"target": torch.zeros(2, N + 1, dtype=torch.long)}, ValueError, "target"),
    ("float target", {"target": torch.zeros(2, N, dtype=F64)}, TypeError, "target"),
    ("1-D weights", {"linear_weight": torch.randn(V, dtype=F64)}, ValueError, "linear_weight"),
    ("bias shape", {"linear_bias": torch.randn(V + 1, dtype=F64)}, ValueError, "linear_bias"),
    ("class weights shape", {"weight": torch.rand(V - 1, dtype=F64)}, ValueError, "weight"),
    ("smoothing above 1", {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ("negative z-loss", {"z_loss": -0.1}, ValueError, "z_loss"),
    ("zero softcap", {"softcap": 0.0}, ValueError, "softcap"),
    ("chunk of 0", {"chunk_size": 0}, ValueError, "chunk_size"),
    ("vocabulary chunk not an int", {"vocab_chunk_size": 2.5}, TypeError, "vocab_chunk_size"),
    ("options of the wrong type", {"options": {"batch_chunk_size": 4}}, TypeError, "options"),
    ("group without torch.distributed", {"group": object(), "num_classes": V}, ValueError, "group"),
    ("batch_sizes without group", {"batch_sizes": [18]}, ValueError, "batch_sizes"),
    ("NaN in the input", {"input": torch.full((2, N, D), math.nan)}, ValueError, "input"),
]


@pytest.mark.parametrize(("row", "change", "error", "name"), BAD, ids=[r[0] for r in BAD])
def test_bad_input(row: str, change: dict[str, Any], error: type[Exception], name: str) -> None:
    kw = {**_good(), **change}
    with pytest.raises(error, match=f"^{name} "):
        linear_cross_entropy(kw.pop("input"), kw.pop("linear_weight"), kw.pop("target"), **kw)


@pytest.mark.parametrize("checks", [True, False], ids=["checks on", "checks off"])
@pytest.mark.parametrize("bad", [V, -1, -101], ids=["V", "-1", "-101"])
@pytest.mark.parametrize("chunking", ["automatic", "vocabulary"])
def test_target_out_of_range_raises_even_with_checks_off(
    bad: int, checks: bool, chunking: str
) -> None:
    x, w, y, _, _ = _problem(F64, False, False)
    y[1, 2] = bad
    with companion.value_checks(checks), pytest.raises(ValueError, match=r"^target must hold"):
        linear_cross_entropy(x, w, y, **CHUNKINGS[chunking])


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("chunking", ["automatic", "vocabulary"])
def test_zero_host_syncs_with_ignored_targets(reduction: str, chunking: str) -> None:
    x, w, y, b, cw = _problem(torch.float32, True, True)
    with companion.value_checks(False), count_host_syncs() as syncs:
        loss = linear_cross_entropy(
            x, w, y, linear_bias=b, weight=cw, label_smoothing=0.1, z_loss=1e-3, softcap=5.0,
            reduction=reduction, **CHUNKINGS[chunking],
        )  # fmt: skip
        loss.sum().backward()
    assert syncs() == 0
    assert x.grad is not None and w.grad is not None


def test_double_backward_is_refused() -> None:
    x, w, y, _, _ = _problem(F64, False, False)
    loss = linear_cross_entropy(x, w, y)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiles_once_for_many_batch_sizes(reduction: str) -> None:
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    def step(x: Tensor, w: Tensor, y: Tensor) -> Tensor:
        out: Tensor = linear_cross_entropy(
            x, w, y, z_loss=1e-3, label_smoothing=0.1, chunk_size=4, reduction=reduction
        )
        return out.sum()

    compiled = torch.compile(step, backend=counter, fullgraph=True)
    g = _gen(12)
    w = torch.randn(V, D, generator=g, dtype=F64, requires_grad=True)
    after_two = 0
    for batch in range(3, 15):
        if batch == 5:
            after_two = counter.frame_count
        x = torch.randn(batch, D, generator=g, dtype=F64, requires_grad=True)
        y = torch.randint(V, (batch,), generator=g)
        y[0] = -100
        with companion.value_checks(False):
            got, want = compiled(x, w, y), step(x, w, y)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for a, b in zip(
            torch.autograd.grad(got, (x, w)), torch.autograd.grad(want, (x, w)), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert counter.frame_count == after_two, f"recompiled: {counter.frame_count} > {after_two}"


def test_compiles_when_the_vocabulary_size_changes() -> None:
    """A symbolic vocabulary size (a second size makes it dynamic) traces too."""
    torch._dynamo.reset()
    compiled = torch.compile(linear_cross_entropy, fullgraph=True, backend="aot_eager")
    g = _gen(13)
    x = torch.randn(7, D, generator=g, dtype=F64)
    for vocab in (11, 17, 23):
        w = torch.randn(vocab, D, generator=g, dtype=F64)
        y = torch.randint(vocab, (7,), generator=g)
        with companion.value_checks(False):
            got = compiled(x, w, y, chunk_size=3)
        torch.testing.assert_close(got, F.cross_entropy(x @ w.T, y), rtol=1e-12, atol=1e-12)
