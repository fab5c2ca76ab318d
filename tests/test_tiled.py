"""The tiled engine (companion/_tiled.py) against a naive full-matrix reference.

Every option (bias, a scale with a gradient, a soft cap, normalised weights, a weighted row sum,
the column statistics, rows left out with ``owned``) under every chunking (rows, columns, both,
chunks that do not divide N or V, a chunk larger than the input, one row or column per tile), in
float64 to 1e-10; gradcheck; half precision against float32; autocast; compile with changing
batch sizes; double backward; host syncs.
"""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch._dynamo.testing
from torch import Tensor

import companion
from companion import _tiled as T
from tests.host_syncs import count_host_syncs

F64 = torch.float64
N, V, D = 7, 11, 5

CHUNKINGS = {
    "automatic": (None, None),
    "rows": (3, None),
    "columns": (None, 4),
    "both": (3, 4),
    "one by one": (1, 1),
    "larger than the input": (100, 100),
    "rows of one, all columns": (1, None),
}

OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "bias": {"bias": True},
    "scale tensor": {"scale": True},
    "softcap": {"softcap": 3.0},
    "normalised weight": {"normalize": True},
    "row sum": {"rowsum": True},
    "weighted row sum": {"rowsum": "weighted"},
    "everything": {
        "softcap": 2.0,
        "rowsum": "weighted",
        "bias": True,
        "scale": True,
        "normalize": True,
    },
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normalised(w: Tensor) -> Tensor:
    norm = w.norm(dim=1, keepdim=True)
    return w / torch.where(norm > 0, norm, torch.ones_like(norm))


def _naive_logits(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    scale: float | Tensor,
    softcap: float | None,
    normalize: bool,
) -> Tensor:
    u = scale * (x @ (_normalised(w) if normalize else w).T)
    if bias is not None:
        u = u + bias
    return softcap * torch.tanh(u / softcap) if softcap is not None else u


def _naive_statistics(
    z: Tensor, target: Tensor, owned: Tensor, v: Tensor | None, columns: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    rows = torch.arange(z.shape[0])
    excluded = torch.zeros_like(z, dtype=torch.bool)
    excluded[rows, target] = owned
    masked = z.masked_fill(excluded, -math.inf)
    rest = torch.logsumexp(masked, dim=1)
    tgt = torch.where(owned, z[rows, target], torch.zeros_like(rest))
    rowsum = (z * (v if v is not None else 1)).sum(dim=1)
    return rest, tgt, rowsum, torch.logsumexp(masked, dim=0) if columns else None


class Problem:
    """One engine call's inputs, its naive reference and a random projection of the outputs."""

    def __init__(self, options: dict[str, Any], columns: bool, seed: int = 0) -> None:
        g = _gen(seed)
        v = N if columns else V
        self.columns = columns
        self.x = torch.randn(N, D, generator=g, dtype=F64).requires_grad_()
        w = torch.randn(v, D, generator=g, dtype=F64)
        if options.get("normalize"):
            w[2] = 0  # a zero row: divided by 1
        self.w = w.requires_grad_()
        self.target = (
            torch.randperm(N, generator=g) if columns else torch.randint(v, (N,), generator=g)
        )
        self.owned = torch.rand(N, generator=g) < 0.7
        self.bias = (
            torch.randn(v, generator=g, dtype=F64).requires_grad_() if options.get("bias") else None
        )
        self.scale: float | Tensor = (
            torch.tensor(1.7, dtype=F64, requires_grad=True) if options.get("scale") else 1.3
        )
        self.softcap: float | None = options.get("softcap")
        self.normalize = bool(options.get("normalize"))
        kind = options.get("rowsum")
        self.v = torch.rand(v, generator=g, dtype=F64) + 0.1 if kind == "weighted" else None
        self.rowsum: bool | Tensor = self.v if self.v is not None else bool(kind)
        self.upstream = [torch.randn(N, generator=g, dtype=F64) for _ in range(3)]
        self.upstream.append(torch.randn(v, generator=g, dtype=F64))

    def leaves(self) -> list[Tensor]:
        return [t for t in (self.x, self.w, self.bias, self.scale) if isinstance(t, Tensor)]

    def engine(self, row_chunk: int | None, column_chunk: int | None) -> T.RowStatistics:
        return T.row_statistics(
            self.x,
            self.w,
            self.target,
            self.owned,
            bias=self.bias,
            scale=self.scale,
            softcap=self.softcap,
            normalize_weight=self.normalize,
            rowsum=self.rowsum,
            columns=self.columns,
            row_chunk=row_chunk,
            column_chunk=column_chunk,
        )

    def reference(self) -> T.RowStatistics:
        z = _naive_logits(self.x, self.w, self.bias, self.scale, self.softcap, self.normalize)
        rest, tgt, rowsum, colrest = _naive_statistics(
            z, self.target, self.owned, self.v, self.columns
        )
        return T.RowStatistics(rest, tgt, rowsum if self.rowsum is not False else None, colrest)

    def project(self, stats: T.RowStatistics) -> Tensor:
        """A random linear function of every output (so every upstream gradient is exercised)."""
        out = (stats.rest * self.upstream[0]).sum() + (stats.target * self.upstream[1]).sum()
        if stats.rowsum is not None:
            out = out + (stats.rowsum * self.upstream[2]).sum()
        if stats.colrest is not None:
            out = out + (stats.colrest * self.upstream[3]).sum()
        return out


def _close(got: Tensor, want: Tensor, what: str, rtol: float = 1e-10) -> None:
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol, msg=what)


# ------------------------------------------------------------------------------------------
# row_statistics against the full matrix
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [False, True], ids=["rows", "rows and columns"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_row_statistics_equal_the_full_matrix(chunking: str, option: str, columns: bool) -> None:
    p = Problem(OPTIONS[option], columns)
    got = p.engine(*CHUNKINGS[chunking])
    want = p.reference()
    for name in ("rest", "target", "rowsum", "colrest"):
        g, w = getattr(got, name), getattr(want, name)
        assert (g is None) == (w is None), name
        if g is not None:
            _close(g, w, name)
    grads = torch.autograd.grad(p.project(got), p.leaves())
    wants = torch.autograd.grad(p.project(want), p.leaves())
    for g, w, name in zip(grads, wants, ("x", "w", "bias/scale", "scale"), strict=False):
        _close(g, w, f"gradient of {name}")


def test_a_row_with_nothing_but_its_target_has_rest_minus_inf() -> None:
    x = torch.randn(3, 2, dtype=F64, requires_grad=True)
    w = torch.randn(1, 2, dtype=F64, requires_grad=True)
    owned = torch.tensor([True, False, True])
    st = T.row_statistics(x, w, torch.zeros(3, dtype=torch.long), owned, row_chunk=2)
    assert st.rest.tolist()[0] == -math.inf and st.rest.tolist()[2] == -math.inf
    loss = (torch.logaddexp(st.rest, st.target) - st.target).sum()
    gx, gw = torch.autograd.grad(loss, (x, w))
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()
    torch.testing.assert_close(gx[0], torch.zeros(2, dtype=F64))


def test_retain_graph_gives_the_same_gradients_twice() -> None:
    """The forward's last tile is read, never overwritten, by the backward pass."""
    p = Problem(OPTIONS["everything"], columns=True)
    out = p.project(p.engine(3, None))
    first = torch.autograd.grad(out, p.leaves(), retain_graph=True)
    second = torch.autograd.grad(out, p.leaves())
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_gradcheck_row_statistics() -> None:
    p = Problem(OPTIONS["everything"], columns=True)
    scale = p.scale
    assert isinstance(scale, Tensor) and p.bias is not None
    with torch.no_grad():  # normalisation is not differentiable at the zero row
        p.w[2] = torch.randn(D, generator=_gen(9), dtype=F64)

    def fn(x: Tensor, w: Tensor, bias: Tensor, s: Tensor) -> Tensor:
        st = T.row_statistics(
            x,
            w,
            p.target,
            p.owned,
            bias=bias,
            scale=s,
            softcap=p.softcap,
            normalize_weight=True,
            rowsum=p.rowsum,
            columns=True,
            row_chunk=3,
            column_chunk=4,
        )
        assert st.rowsum is not None and st.colrest is not None
        return torch.cat([st.rest, st.target, st.rowsum, st.colrest])

    assert torch.autograd.gradcheck(fn, (p.x, p.w, p.bias, scale))


# ------------------------------------------------------------------------------------------
# fused_row_loss against the full matrix
# ------------------------------------------------------------------------------------------

FUSED_OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "bias": {"bias": True},
    "scale tensor": {"scale": True},
    "softcap": {"softcap": 3.0},
    "lse squared": {"square": True},
    "row sum": {"rowsum": True},
    "everything": {"rowsum": True, "softcap": 2.0, "bias": True, "scale": True, "square": True},
}
FUSED_CHUNKS = {"automatic": None, "one row": 1, "3 rows": 3, "larger than the input": 100}


class FusedProblem:
    def __init__(self, options: dict[str, Any], seed: int = 0) -> None:
        g = _gen(seed)
        self.x = torch.randn(N, D, generator=g, dtype=F64).requires_grad_()
        self.w = torch.randn(V, D, generator=g, dtype=F64).requires_grad_()
        self.target = torch.randint(V, (N,), generator=g)
        self.bias = (
            torch.randn(V, generator=g, dtype=F64).requires_grad_() if options.get("bias") else None
        )
        self.scale: float | Tensor = (
            torch.tensor(1.7, dtype=F64, requires_grad=True) if options.get("scale") else 1.3
        )
        self.softcap: float | None = options.get("softcap")
        self.a = torch.rand(N, generator=g, dtype=F64)
        self.d = torch.rand(N, generator=g, dtype=F64)
        self.q = torch.rand(N, generator=g, dtype=F64) if options.get("square") else None
        self.e = torch.rand(N, generator=g, dtype=F64) if options.get("rowsum") else None
        self.v = torch.rand(V, generator=g, dtype=F64) if options.get("rowsum") else None

    def leaves(self) -> list[Tensor]:
        return [t for t in (self.x, self.w, self.bias, self.scale) if isinstance(t, Tensor)]

    def engine(self, row_chunk: int | None, **kw: Any) -> tuple[Tensor, Tensor]:
        x, w = kw.pop("x", self.x), kw.pop("w", self.w)
        return T.fused_row_loss(
            x,
            w,
            self.target,
            lse_coef=self.a,
            target_coef=self.d,
            lse_square_coef=self.q,
            rowsum_coef=self.e,
            rowsum_weight=self.v,
            bias=self.bias,
            scale=self.scale,
            softcap=self.softcap,
            row_chunk=row_chunk,
        )

    def reference(self) -> tuple[Tensor, Tensor]:
        z = _naive_logits(self.x, self.w, self.bias, self.scale, self.softcap, False)
        lse = torch.logsumexp(z, dim=1)
        t = z[torch.arange(N), self.target]
        total = (self.a * lse - self.d * t).sum()
        if self.q is not None:
            total = total + (self.q * lse * lse).sum()
        if self.e is not None and self.v is not None:
            total = total - (self.e * (z * self.v).sum(dim=1)).sum()
        return total, lse


@pytest.mark.parametrize("option", FUSED_OPTIONS)
@pytest.mark.parametrize("chunk", FUSED_CHUNKS)
def test_fused_row_loss_equals_the_full_matrix(chunk: str, option: str) -> None:
    p = FusedProblem(FUSED_OPTIONS[option])
    total, lse = p.engine(FUSED_CHUNKS[chunk])
    want, want_lse = p.reference()
    _close(total, want, "value")
    _close(lse, want_lse.detach(), "lse")
    assert not lse.requires_grad
    upstream = 2.5  # the backward pass scales the gradients formed in the forward pass
    grads = torch.autograd.grad(total * upstream, p.leaves())
    wants = torch.autograd.grad(want * upstream, p.leaves())
    for g, w in zip(grads, wants, strict=True):
        _close(g, w, "gradient")


def test_fused_backward_twice_through_a_kept_graph() -> None:
    """retain_graph=True keeps the saved gradients intact (a scaled copy); without it they are
    scaled in place and handed over (no second weight-sized buffer)."""
    p = FusedProblem(FUSED_OPTIONS["everything"])
    total, _ = p.engine(3)
    want = torch.autograd.grad(p.reference()[0], p.leaves())
    first = torch.autograd.grad(total, p.leaves(), retain_graph=True)
    second = torch.autograd.grad(total * 3.0, p.leaves())
    for a, b, w in zip(first, second, want, strict=True):
        _close(a, w, "first backward")
        _close(b, 3.0 * w, "second backward")


def test_fused_gradcheck() -> None:
    p = FusedProblem(FUSED_OPTIONS["everything"])
    assert p.bias is not None and isinstance(p.scale, Tensor)

    def fn(x: Tensor, w: Tensor, bias: Tensor, s: Tensor) -> Tensor:
        p.bias, p.scale = bias, s
        return p.engine(3, x=x, w=w)[0]

    assert torch.autograd.gradcheck(fn, (p.x, p.w, p.bias, p.scale))


def test_fused_only_some_inputs_need_a_gradient() -> None:
    p = FusedProblem(FUSED_OPTIONS["everything"])
    assert p.bias is not None and isinstance(p.scale, Tensor)
    p.w.requires_grad_(False)
    p.bias.requires_grad_(False)
    total, _ = p.engine(3)
    want, _ = p.reference()
    for g, w in zip(
        torch.autograd.grad(total, (p.x, p.scale)),
        torch.autograd.grad(want, (p.x, p.scale)),
        strict=True,
    ):
        _close(g, w, "gradient")
    with torch.no_grad():
        total, _ = p.engine(3)
    _close(total, want.detach(), "value without grad")


# ------------------------------------------------------------------------------------------
# precision: half inputs, autocast
# ------------------------------------------------------------------------------------------


def _cross_entropy_rows(x: Tensor, w: Tensor, target: Tensor, **kw: Any) -> Tensor:
    st = T.row_statistics(x, w, target, torch.ones_like(target, dtype=torch.bool), **kw)
    return torch.logaddexp(st.rest, st.target) - st.target


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_inputs_accumulate_in_float32(dtype: torch.dtype) -> None:
    g = _gen(3)
    x32 = torch.randn(64, 16, generator=g) * 2
    w32 = torch.randn(300, 16, generator=g)
    target = torch.randint(300, (64,), generator=g)
    bias32 = torch.randn(300, generator=g) * 0.1
    xh, wh, bh = (t.to(dtype).requires_grad_() for t in (x32, w32, bias32))
    ref_in = [t.detach().to(dtype).float().requires_grad_() for t in (x32, w32, bias32)]
    loss = _cross_entropy_rows(xh, wh, target, bias=bh, row_chunk=10, column_chunk=64)
    assert loss.dtype == torch.float32
    ref = _cross_entropy_rows(*ref_in[:2], target, bias=ref_in[2], row_chunk=10, column_chunk=64)
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=5e-2)
    grads = torch.autograd.grad(loss.mean(), (xh, wh, bh))
    refs = torch.autograd.grad(ref.mean(), ref_in)
    for gh, gr in zip(grads, refs, strict=True):
        assert gh.dtype == dtype and torch.isfinite(gh.float()).all()
        torch.testing.assert_close(gh.float(), gr, rtol=5e-2, atol=5e-3)
    # the fused path too
    mean = torch.full((64,), 1 / 64)
    total, _ = T.fused_row_loss(xh, wh, target, lse_coef=mean, target_coef=mean, row_chunk=10)
    assert total.dtype == torch.float32
    torch.testing.assert_close(total, ref.mean(), rtol=2e-2, atol=2e-2)
    for gh, gr in zip(torch.autograd.grad(total, (xh, wh)), refs[:2], strict=True):
        assert gh.dtype == dtype
        torch.testing.assert_close(gh.float(), gr, rtol=5e-2, atol=5e-3)


def test_bfloat16_cross_entropy_is_never_negative() -> None:
    """The target logit and the log-sum-exp come from the same rounded tile (issue 17, #3)."""
    g = _gen(4)
    x = torch.nn.functional.normalize(torch.randn(256, 32, generator=g), dim=1)
    w = torch.nn.functional.normalize(x + 0.01 * torch.randn(256, 32, generator=g), dim=1)
    loss = _cross_entropy_rows(
        x.bfloat16(), w.bfloat16(), torch.arange(256), scale=100.0, row_chunk=32
    )
    assert (loss >= 0).all()


def test_autocast_changes_nothing() -> None:
    """Inside autocast the engine computes as outside, forward and backward (issue 17, #5)."""
    g = _gen(5)
    x = torch.randn(40, 16, generator=g, requires_grad=True)
    w = torch.randn(90, 16, generator=g, requires_grad=True)
    target = torch.randint(90, (40,), generator=g)
    mean = torch.full((40,), 1 / 40)

    def both() -> tuple[Tensor, Tensor]:
        rows = _cross_entropy_rows(x, w, target, row_chunk=16, column_chunk=32).mean()
        fused, _ = T.fused_row_loss(x, w, target, lse_coef=mean, target_coef=mean, row_chunk=16)
        return rows, fused

    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = both()
    outside = both()
    for a, b in zip(inside, outside, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        for ga, gb in zip(
            torch.autograd.grad(a, (x, w)), torch.autograd.grad(b, (x, w)), strict=True
        ):
            assert ga.dtype == torch.float32
            torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-7)


def test_a_float32_head_fed_bfloat16_features_computes_in_float32() -> None:
    g = _gen(6)
    x = torch.randn(20, 8, generator=g).bfloat16().requires_grad_()
    w = torch.randn(30, 8, generator=g, requires_grad=True)
    target = torch.randint(30, (20,), generator=g)
    loss = _cross_entropy_rows(x, w, target, row_chunk=8).mean()
    want = torch.nn.functional.cross_entropy(x.float() @ w.T, target)
    torch.testing.assert_close(loss, want)
    gx, gw = torch.autograd.grad(loss, (x, w))
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.float32


# ------------------------------------------------------------------------------------------
# the production contract: double backward, host syncs, compile
# ------------------------------------------------------------------------------------------


def test_double_backward_is_refused() -> None:
    p = Problem(OPTIONS["everything"], columns=True)
    out = p.project(p.engine(3, 4))
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out, p.x, create_graph=True)
    q = FusedProblem(FUSED_OPTIONS["everything"])
    total, _ = q.engine(3)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(total, q.x, create_graph=True)


@pytest.mark.parametrize("engine", ["row_statistics", "fused_row_loss"])
def test_zero_host_syncs(engine: str) -> None:
    if engine == "row_statistics":
        p = Problem(OPTIONS["everything"], columns=True)
        with count_host_syncs() as syncs:
            p.project(p.engine(3, 4)).backward()
    else:
        q = FusedProblem(FUSED_OPTIONS["everything"])
        with count_host_syncs() as syncs:
            q.engine(3)[0].backward()
    assert syncs() == 0


def _clip_like(x: Tensor, w: Tensor, scale: Tensor) -> Tensor:
    """A CLIP-shaped use: square, rows and columns, a learned scale; then a cross-entropy."""
    target = torch.arange(x.shape[0], device=x.device)
    owned = torch.ones_like(target, dtype=torch.bool)
    st = T.row_statistics(x, w, target, owned, scale=scale, columns=True, row_chunk=4)
    assert st.colrest is not None
    rows = torch.logaddexp(st.rest, st.target) - st.target
    cols = torch.logaddexp(st.colrest, st.target) - st.target
    return (rows.sum() + cols.sum()) / (2 * x.shape[0])


def _lm_like(x: Tensor, w: Tensor, target: Tensor) -> Tensor:
    mean = torch.full_like(x[:, 0], 1.0 / x.shape[0])
    total, _ = T.fused_row_loss(x, w, target, lse_coef=mean, target_coef=mean, row_chunk=4)
    return total


@pytest.mark.parametrize("use", ["clip", "language model"])
def test_compiles_once_for_twelve_batch_sizes(use: str) -> None:
    """fullgraph, equal to eager, and no recompilation per batch size (issue 17, #6)."""
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    fn: Callable[..., Tensor] = _clip_like if use == "clip" else _lm_like
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    g = _gen(7)
    w_lm = torch.randn(13, 6, generator=g, dtype=F64, requires_grad=True)
    after_two = 0
    for batch in range(3, 15):
        if batch == 5:
            after_two = counter.frame_count
        x = torch.randn(batch, 6, generator=g, dtype=F64, requires_grad=True)
        if use == "clip":
            w = torch.randn(batch, 6, generator=g, dtype=F64, requires_grad=True)
            args: tuple[Any, ...] = (x, w, torch.tensor(2.0, dtype=F64, requires_grad=True))
        else:
            args = (x, w_lm, torch.randint(13, (batch,), generator=g))
        with companion.value_checks(False):
            got = compiled(*args)
            want = fn(*args)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        leaves = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
        for a, b in zip(
            torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # a static graph for the first size, a dynamic one at the second, none after that
    assert counter.frame_count == after_two, f"recompiled: {counter.frame_count} > {after_two}"


# ------------------------------------------------------------------------------------------
# the tile choice and the module's examples
# ------------------------------------------------------------------------------------------


def test_automatic_tiles_depend_on_the_columns_only() -> None:
    rows, cols = T.resolve_chunks(None, None, 131072)
    assert cols == 0 and rows * 131072 * 4 <= T.TILE_BYTES
    assert T.resolve_chunks(None, None, T.TILE_BYTES) == (1, T.TILE_BYTES // 4)
    assert T.resolve_chunks(7, None, 10) == (7, 0) and T.resolve_chunks(None, 7, 10) == (0, 7)


def test_doctests() -> None:
    result = doctest.testmod(T, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 3


# ------------------------------------------------------------------------------------------
# the compiled element-wise kernels of large tiles
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("option", ["plain", "everything"])
@pytest.mark.parametrize("columns", [False, True], ids=["rows", "rows and columns"])
def test_compiled_kernels_equal_the_eager_ones(
    monkeypatch: pytest.MonkeyPatch, option: str, columns: bool
) -> None:
    """Large tiles run their element-wise work in compiled kernels: the same values."""
    p = Problem(OPTIONS[option], columns)
    for chunking in ("rows", "columns"):
        monkeypatch.setattr(T, "FUSE_MIN_ELEMENTS", 1 << 40)
        want = p.engine(*CHUNKINGS[chunking])
        wants = torch.autograd.grad(p.project(want), p.leaves())
        monkeypatch.setattr(T, "FUSE_MIN_ELEMENTS", 0)
        got = p.engine(*CHUNKINGS[chunking])
        grads = torch.autograd.grad(p.project(got), p.leaves())
        assert not T._FAILED, f"a kernel failed to compile: {T._FAILED}"
        for g, w in zip(got, want, strict=True):
            if g is not None and w is not None:
                _close(g, w, f"{chunking}: statistics")
        for g, w in zip(grads, wants, strict=True):
            _close(g, w, f"{chunking}: gradient")
