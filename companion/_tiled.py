r"""The one tiled engine: per-row statistics of a product :math:`x W^\top`, never materialised.

Every loss of the package over a big product (the chunked CLIP loss, Partial FC's class chunks,
the language-model head of :func:`companion.linear_cross_entropy`) needs the same few numbers of
each row of the logits

.. math::

    z_{ij} = \operatorname{cap}\bigl(s\,\langle x_i, \hat w_j\rangle + b_j\bigr), \qquad
    \operatorname{cap}(u) = c \tanh(u / c) \ (\text{with a soft cap } c;\ u \text{ without}),

where :math:`x` is ``(N, D)``, :math:`W` is ``(V, D)``, :math:`\hat w_j = w_j / \lVert w_j\rVert`
with ``normalize_weight`` (a zero row is divided by 1, as :func:`companion._numerics.normalize`
does) and :math:`w_j` itself otherwise, :math:`s` a scale (a number, or a 0-d tensor that may
require a gradient) and :math:`b` an optional bias. The ``(N, V)`` matrix is built one tile of
at most ``row_chunk x column_chunk`` at a time, in the forward and in the backward pass.

Two entry points:

:func:`row_statistics` returns, per row :math:`i` (with :math:`y_i` = ``target[i]`` and
``owned[i]`` saying whether that column lives in this :math:`W`: False for a row whose target is
held by another process, or for a row the caller wants to leave out),

.. math::

    r_i = \log\!\!\sum_{j:\ \neg(\text{owned}_i \wedge j = y_i)}\!\! e^{z_{ij}}, \qquad
    t_i = z_{i y_i}\ (\text{0 where not owned}), \qquad
    \rho_i = \sum_j v_j z_{ij}\ (\text{optional}),

and, optionally (the square CLIP case), the column statistics
:math:`\kappa_j = \log \sum_{i:\ \neg(\text{owned}_i \wedge y_i = j)} e^{z_{ij}}`, from the
SAME sweep over the tiles. The loss then combines these vectors with ordinary autograd:
cross-entropy is ``logaddexp(r, t) - t``; a margin head replaces :math:`t` by :math:`h(t)` (the
one thing a margin changes); label smoothing uses :math:`\rho`; a sharded vocabulary combines
:math:`r` and :math:`t` over processes first. The backward pass receives the gradients
:math:`g^r, g^t, g^\rho` (and :math:`g^\kappa`) of these statistics and rebuilds
each tile's gradient

.. math::

    G_{ij} = g^r_i\,e^{z_{ij} - r_i}[j \text{ kept}]
    + g^\kappa_j\,e^{z_{ij} - \kappa_j}[i \text{ kept}]
    + g^t_i\,[\text{owned}_i \wedge j = y_i] + g^\rho_i v_j,

times :math:`1 - (z_{ij}/c)^2` under a soft cap; then :math:`\partial x = s\,G\hat W`,
:math:`\partial\hat W = s\,G^\top x` (and through the normalisation),
:math:`\partial b = \sum_i G_{ij}`, :math:`\partial s = \sum_i x_i\cdot(G\hat W)_i`.
**Products**: one in the forward pass and three in the backward pass (the rebuilt tile, then
:math:`G\hat W` and :math:`G^\top x`), where a full-matrix reference does three; the forward's
last tile is kept and reused, so with :math:`n` tiles it is :math:`3 + (n - 1)/n` (the forward pass
runs over the tiles backwards and ends on the first one, whose shape, ``min(row_chunk, N)`` rows,
needs no guard on the batch size under compile; the backward pass starts there). The rebuild is
what an arbitrary upstream gradient needs: the column statistics (CLIP) or the per-row weights of
the loss are only known once every tile has been seen.

:func:`fused_row_loss` is the exception that reaches the floor of three products: for a scalar
loss of the form

.. math::

    S = \sum_i \bigl(a_i\,\ell_i + q_i\,\ell_i^2 - d_i\,t_i - e_i\,\rho_i\bigr),
    \qquad \ell_i = \log\sum_j e^{z_{ij}},

with coefficients :math:`a, q, d, e` known in the forward pass (cross-entropy with class weights,
``ignore_index`` and label smoothing, the z-loss, any mean or sum), each tile holds whole rows, so
its gradient :math:`G_{ij} = (a_i + 2 q_i \ell_i)\,p_{ij} - d_i[j = y_i] - e_i v_j` is known as soon
as the tile's rows are: the forward pass forms :math:`\partial x`, :math:`\partial W`,
:math:`\partial b` and :math:`\partial s` tile by tile (one product forward, two for the
gradients: three in all) and the backward pass only multiplies them by the upstream scalar
:math:`g = \partial L/\partial S`. That is exact only because :math:`S` is the LAST operation
before the loss (a scalar whose gradient is one number): a per-row output with an arbitrary
upstream vector (``reduction="none"``), or a statistic that needs every tile first (CLIP's
columns, a vocabulary split over processes), has to rebuild its tiles.

Both are :func:`torch.library.custom_op` s (namespace ``companion``) with shape-only fake
implementations and a backward that is itself a custom op, so ``torch.compile(fullgraph=True)``
sees one opaque node per pass: it neither unrolls a tile loop whose length depends on the batch
size nor recompiles for every new one.

**Precision.** float16 and bfloat16 inputs run the products in their own dtype; the tiles, the
log-sum-exps, the sums and the gradient of :math:`W` accumulate in float32
(:func:`companion._numerics.compute_dtype`); the statistics come out in float32 and the gradients
in each input's dtype. The target logit and the log-sum-exp are read from the same rounded tile,
so ``logaddexp(r, t) - t`` is never negative. **Autocast** changes nothing: the products run in
the promotion of the two operands' dtypes (:func:`product_inputs`) and the tile loops run with
autocast off, so the forward and the backward pass see the same dtypes inside
``torch.autocast`` or not (a head computes in its own precision, as everywhere in the package).
**No host sync**: no ``.item()``, no boolean-mask indexing; rows are left out with masks.
**Double backward** is refused with a clear error.

**Tile sizes.** ``row_chunk`` rows and ``column_chunk`` columns per tile; ``None`` for both picks
whole rows and as many of them as fit in :data:`TILE_BYTES` (64 MiB) of float32 (one row at least;
a row wider than the budget is split into column chunks); ``None`` for one of them means all the
rows (or all the columns). The automatic choice depends only on the number of columns, never on
the batch size. The element-wise work of a tile runs on the whole tile at once (each operation one
parallel region): blocks of rows small enough to stay in a core's cache were measured slower on a
shared two-core machine, where every parallel region waits for its slowest thread. On tiles of at
least :data:`FUSE_MIN_ELEMENTS` elements that work (the rows' and columns' log-sum-exps, the
gradient tile :math:`g^r e^{z - r} + g^\kappa e^{z - \kappa}`) runs in kernels that
:func:`torch.compile` builds once per process (a few seconds, then cached on disk): one fused pass
over the tile where eager mode makes four to six, about half the element-wise time of the chunked
CLIP loss. Where they cannot be compiled (no C++ compiler for the CPU, no Triton for a GPU) a
warning says so once and eager operations take over; :data:`FUSED_KERNELS` turns them off.

Buffers: two tiles in the forward pass (the logits and a scratch tile); in the backward pass the
kept tile, the rebuilt one and the gradient (the gradient tile only where it is not formed in
place), and a fourth scratch tile only under a soft cap with column statistics.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor

from companion._numerics import autocast_disabled, compute_dtype, refuse_double_backward

__all__ = [
    "TILE_BYTES",
    "RowStatistics",
    "fused_row_loss",
    "product_inputs",
    "resolve_chunks",
    "row_statistics",
]

#: What the double-backward error calls a loss that runs on this engine.
_TILED_LOSS = "a tiled loss (chunk_size, or linear_cross_entropy)"
#: The automatic tile: whole rows, as many as fit in this many bytes of float32.
TILE_BYTES = 64 * 2**20

#: Tiles of at least this many elements run their element-wise work in kernels compiled once by
#: :func:`torch.compile` (Inductor: one fused pass instead of a chain of eager operations; a
#: C++ compiler on the CPU, Triton on a GPU). Smaller tiles, or a failed compilation, use eager
#: operations (same values up to rounding).
FUSE_MIN_ELEMENTS = 1 << 22
#: Set to False to never compile the element-wise kernels.
FUSED_KERNELS = True

_softmax_out = torch.ops.aten._softmax.out


def _k_row_logsumexp(z: Tensor, out: Tensor) -> None:
    top = z.amax(dim=1, keepdim=True)
    out.copy_(torch.exp(z - top).sum(dim=1).log() + top[:, 0])


def _k_columns(z: Tensor, col_max: Tensor, col_sum: Tensor) -> None:
    new = torch.maximum(col_max, z.amax(dim=0))
    safe = torch.where(new == -math.inf, torch.zeros_like(new), new)
    col_sum.copy_(col_sum * torch.exp(col_max - safe) + torch.exp(z - safe).sum(dim=0))
    col_max.copy_(new)


def _k_exp_rows(z: Tensor, rows: Tensor, out: Tensor) -> None:
    out.copy_(torch.exp(z - rows[:, None]))


def _k_rows_and_columns(
    z: Tensor, rows: Tensor, g_rows: Tensor, cols: Tensor, g_cols: Tensor, out: Tensor
) -> None:
    out.copy_(g_rows[:, None] * torch.exp(z - rows[:, None]) + g_cols * torch.exp(z - cols))


_KERNELS: dict[str, Any] = {
    "row_logsumexp": _k_row_logsumexp,
    "columns": _k_columns,
    "exp_rows": _k_exp_rows,
    "rows_and_columns": _k_rows_and_columns,
}
_COMPILED: dict[str, Any] = {}
_FAILED: set[str] = set()


def _run_kernel(name: str, z: Tensor, *args: Tensor) -> bool:
    """Run the compiled element-wise kernel ``name`` on a large tile ``z``; False: do it eagerly.

    A kernel that fails to compile is not tried again (with one warning)."""
    if not FUSED_KERNELS or z.numel() < FUSE_MIN_ELEMENTS or name in _FAILED:
        return False
    try:
        kernel = _COMPILED.get(name)
        if kernel is None:
            kernel = _COMPILED[name] = torch.compile(_KERNELS[name], dynamic=True)
        kernel(z, *args)
    except Exception as error:  # no compiler for the device, an unsupported dtype
        _FAILED.add(name)
        warnings.warn(
            f"companion's tiled engine could not compile its {name!r} kernel ({error}); "
            "using eager operations for it",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


class RowStatistics(NamedTuple):
    """What :func:`row_statistics` returns; each field ``(N,)`` (``colrest`` ``(V,)``)."""

    rest: Tensor
    target: Tensor
    rowsum: Tensor | None
    colrest: Tensor | None


# --------------------------------------------------------------------------------------------
# tiles
# --------------------------------------------------------------------------------------------


def resolve_chunks(
    row_chunk: int | None, column_chunk: int | None, columns: int
) -> tuple[int, int]:
    """The ``(rows, columns)`` per tile given to the kernels; 0 means all of them.

    Both None: whole rows (0 columns per tile means all), ``TILE_BYTES // (4 * columns)`` of them
    (at least one); a row wider than the budget is cut into ``TILE_BYTES // 4`` columns. One None:
    all the rows, or all the columns. Depends on the number of columns only (never on the batch
    size, which would make a compiled graph specialise on it).

    Examples:
        >>> resolve_chunks(None, None, 32768)
        (512, 0)
        >>> resolve_chunks(128, None, 32768), resolve_chunks(None, 1000, 32768)
        ((128, 0), (0, 1000))
    """
    if row_chunk is None and column_chunk is None:
        per_row = 4 * columns
        if per_row <= TILE_BYTES:
            return TILE_BYTES // per_row, 0
        return 1, TILE_BYTES // 4
    return (row_chunk or 0), (column_chunk or 0)


def _spans(total: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the chunks of ``range(total)``, ``chunk`` at a time (0: one chunk)."""
    if chunk <= 0 or chunk >= total:
        return [(0, total)]
    return [(start, min(start + chunk, total)) for start in range(0, total, chunk)]


def _first_extent(total: Any, chunk: int) -> Any:
    """The size of the first chunk (works on symbolic sizes: no branch on ``total``)."""
    if chunk <= 0:
        return total
    return torch.sym_min(chunk, total)


def _safe(stat: Tensor) -> Tensor:
    """A log-sum-exp with its -inf entries (nothing to sum) replaced by 0, to subtract safely."""
    return torch.where(stat == -math.inf, torch.zeros_like(stat), stat)


class _Weights:
    """The columns ``[c0, c1)`` of the weight, normalised if asked, in the product dtype."""

    def __init__(self, w: Tensor, normalize: bool) -> None:
        self.w, self.normalize = w, normalize

    def tile(self, c0: int, c1: int) -> tuple[Tensor, Tensor | None]:
        wt = self.w[c0:c1]
        if not self.normalize:
            return wt, None
        norms = torch.linalg.vector_norm(wt, dim=1, keepdim=True, dtype=compute_dtype(wt.dtype))
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        return (wt / norms.to(wt.dtype)), norms


def _logits(
    xs: Tensor,
    wt: Tensor,
    bias: Tensor | None,
    softcap: float | None,
    out: Tensor,
) -> Tensor:
    """``cap(xs @ wt.T + bias)`` written into ``out`` (in the accumulation dtype)."""
    if out.dtype == xs.dtype:
        if bias is None:
            torch.mm(xs, wt.T, out=out)
        else:
            torch.addmm(bias, xs, wt.T, out=out)
    else:
        out.copy_(torch.mm(xs, wt.T))
        if bias is not None:
            out.add_(bias)
    if softcap is not None:
        out.div_(softcap).tanh_().mul_(softcap)
    return out


def _target_entries(
    target: Tensor, owned: Tensor, c0: int, width: int, rows: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, columns, inside)``: each row's target column in a tile starting at ``c0``."""
    local = target - c0
    inside = owned & (local >= 0) & (local < width)
    return rows, local.clamp(0, width - 1), inside


def _buffer(flat: Tensor, rows: int, cols: int) -> Tensor:
    """A contiguous ``(rows, cols)`` view of the start of a flat buffer."""
    return flat[: rows * cols].view(rows, cols)


def _tile_logsumexp_rows(z: Tensor, work: Tensor) -> Tensor:
    """The log-sum-exp of each row of ``z`` (``work``: scratch of the same shape).

    A fused softmax writes :math:`e^{z - m}/S` (one pass in the cache per row); its largest entry
    is :math:`1/S`, so the log-sum-exp is :math:`m - \\log \\max_j p_j`. Needs rows with a finite
    entry (at most one entry per row is masked, so two columns suffice).
    """
    if z.shape[1] == 1:
        return z[:, 0].clone()
    top = z.amax(dim=1)
    _softmax_out(z, 1, False, out=work)
    return top - work.amax(dim=1).log_()


def _update_columns(z: Tensor, work: Tensor, col_max: Tensor, col_sum: Tensor) -> None:
    """Online log-sum-exp of the columns: merge the rows of ``z`` into ``(col_max, col_sum)``."""
    new = torch.maximum(col_max, z.amax(dim=0))
    safe = _safe(new)
    torch.sub(z, safe, out=work).exp_()
    col_sum.mul_(torch.exp(col_max - safe)).add_(work.sum(dim=0))
    col_max.copy_(new)


# --------------------------------------------------------------------------------------------
# row_statistics: forward kernel
# --------------------------------------------------------------------------------------------


def _stats_forward_impl(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    owned: Tensor,
    bias: Tensor | None,
    scale: Tensor | None,
    scale_value: float,
    rowsum_weight: Tensor | None,
    softcap: float | None,
    normalize: bool,
    columns: bool,
    rowsum: bool,
    row_chunk: int,
    column_chunk: int,
    keep_tile: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc = compute_dtype(x.dtype)
    device = x.device
    n, v = x.shape[0], w.shape[0]
    with autocast_disabled(x):
        s = scale.to(x.dtype) if scale is not None else scale_value
        xs = x * s
        weights = _Weights(w, normalize)
        b = bias.to(acc) if bias is not None else None
        vw = _rowsum_weight(rowsum_weight, v, acc, device) if rowsum else None
        row_spans, col_spans = _spans(n, row_chunk), _spans(v, column_chunk)
        rc = row_spans[0][1]
        cc = col_spans[0][1]
        rest = torch.full((n,), -math.inf, dtype=acc, device=device)
        tgt = torch.zeros(n, dtype=acc, device=device)
        rsum = torch.zeros(n if rowsum else 0, dtype=acc, device=device)
        col_max = torch.full((v if columns else 0,), -math.inf, dtype=acc, device=device)
        col_sum = torch.zeros(v if columns else 0, dtype=acc, device=device)
        zflat = torch.empty(rc * cc, dtype=acc, device=device)
        wflat = torch.empty(rc * cc, dtype=acc, device=device)
        lse_buf = torch.empty(rc, dtype=acc, device=device)
        arange = torch.arange(rc, device=device)
        minus_inf = torch.tensor(-math.inf, dtype=acc, device=device)
        z = zflat[:0]
        # backwards, so that the tile left in the buffer is the first one (see the docstring)
        for c0, c1 in reversed(col_spans):
            wt, _ = weights.tile(c0, c1)
            bt = b[c0:c1] if b is not None else None
            width = c1 - c0
            for r0, r1 in reversed(row_spans):
                rows = r1 - r0
                z = _logits(xs[r0:r1], wt, bt, softcap, _buffer(zflat, rows, width))
                ri, ci, inside = _target_entries(
                    target[r0:r1], owned[r0:r1], c0, width, arange[:rows]
                )
                picked = z[ri, ci]
                tgt[r0:r1] += torch.where(inside, picked, torch.zeros_like(picked))
                if vw is not None:
                    rsum[r0:r1] += torch.mv(z, vw[c0:c1])
                z.index_put_((ri, ci), torch.where(inside, minus_inf, picked))
                work = _buffer(wflat, rows, width)
                lse = lse_buf[:rows]
                if width < 2 or not _run_kernel("row_logsumexp", z, lse):
                    lse.copy_(_tile_logsumexp_rows(z, work))
                if len(col_spans) == 1:
                    rest[r0:r1] = lse
                else:
                    torch.logaddexp(rest[r0:r1], lse, out=rest[r0:r1])
                if columns and not _run_kernel("columns", z, col_max[c0:c1], col_sum[c0:c1]):
                    _update_columns(z, work, col_max[c0:c1], col_sum[c0:c1])
        colrest = _safe(col_max) + col_sum.log() if columns else col_max
        tile = z if keep_tile else zflat.new_empty((0, 0))
    return rest, tgt, rsum, colrest, tile


def _rowsum_weight(weight: Tensor | None, v: int, acc: torch.dtype, device: torch.device) -> Tensor:
    if weight is None:
        return torch.ones(v, dtype=acc, device=device)
    return weight.to(acc)


# Inductor's on-disk graph cache does not key on a custom op's fake implementation: give an op a
# new name whenever the shapes its fake implementation returns change.
@torch.library.custom_op("companion::row_statistics", mutates_args=())
def _stats_forward(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    owned: Tensor,
    bias: Tensor | None,
    scale: Tensor | None,
    scale_value: float,
    rowsum_weight: Tensor | None,
    softcap: float | None,
    normalize: bool,
    columns: bool,
    rowsum: bool,
    row_chunk: int,
    column_chunk: int,
    keep_tile: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _stats_forward_impl(
        x,
        w,
        target,
        owned,
        bias,
        scale,
        scale_value,
        rowsum_weight,
        softcap,
        normalize,
        columns,
        rowsum,
        row_chunk,
        column_chunk,
        keep_tile,
    )


@_stats_forward.register_fake
def _(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    owned: Tensor,
    bias: Tensor | None,
    scale: Tensor | None,
    scale_value: float,
    rowsum_weight: Tensor | None,
    softcap: float | None,
    normalize: bool,
    columns: bool,
    rowsum: bool,
    row_chunk: int,
    column_chunk: int,
    keep_tile: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc = compute_dtype(x.dtype)
    n, v = x.shape[0], w.shape[0]
    rows = x.new_empty((n,), dtype=acc)
    tile_shape = (
        (_first_extent(n, row_chunk), _first_extent(v, column_chunk)) if keep_tile else (0, 0)
    )
    return (
        rows,
        x.new_empty((n,), dtype=acc),
        x.new_empty((n if rowsum else 0,), dtype=acc),
        x.new_empty((v if columns else 0,), dtype=acc),
        x.new_empty(tile_shape, dtype=acc),
    )


# --------------------------------------------------------------------------------------------
# row_statistics: backward kernel
# --------------------------------------------------------------------------------------------


def _stats_backward_impl(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    owned: Tensor,
    bias: Tensor | None,
    scale: Tensor | None,
    scale_value: float,
    rowsum_weight: Tensor | None,
    rest: Tensor,
    tgt: Tensor,
    colrest: Tensor,
    tile: Tensor,
    g_rest: Tensor,
    g_target: Tensor,
    g_rowsum: Tensor,
    g_colrest: Tensor,
    softcap: float | None,
    normalize: bool,
    columns: bool,
    rowsum: bool,
    row_chunk: int,
    column_chunk: int,
    need_x: bool,
    need_w: bool,
    need_bias: bool,
    need_scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    acc = compute_dtype(x.dtype)
    prod = x.dtype
    device = x.device
    n, v, d = x.shape[0], w.shape[0], x.shape[1]
    with autocast_disabled(x):
        s = scale.to(prod) if scale is not None else scale_value
        xs = x * s
        weights = _Weights(w, normalize)
        b = bias.to(acc) if bias is not None else None
        vw = _rowsum_weight(rowsum_weight, v, acc, device) if rowsum else None
        row_spans, col_spans = _spans(n, row_chunk), _spans(v, column_chunk)
        rc, cc = row_spans[0][1], col_spans[0][1]
        full_rows = len(col_spans) == 1
        g_r = g_rest.to(acc)
        r_safe = _safe(rest)
        g_c = g_colrest.to(acc) if columns else None
        c_safe = _safe(colrest) if columns else None
        # the target entries' gradient (a sparse term, added outside the tiles)
        g_t = torch.where(owned, g_target.to(acc), torch.zeros_like(g_r))
        if softcap is not None:
            g_t = g_t * (1 - (tgt / softcap) ** 2)
        g_rs = g_rowsum.to(acc) if rowsum else None
        # G is formed explicitly where the row weights cannot be folded into the small operands
        explicit = columns or softcap is not None
        want_dx = need_x or need_scale
        gx = torch.zeros((n, d), dtype=acc, device=device) if want_dx else None  # G W_hat
        dw = torch.empty((v, d), dtype=acc, device=device) if need_w else None
        db = torch.zeros(v, dtype=acc, device=device) if need_bias else None
        zflat = torch.empty(rc * cc, dtype=acc, device=device)
        gflat = torch.empty(rc * cc if explicit else 0, dtype=acc, device=device)
        wflat = torch.empty(
            rc * cc if (softcap is not None and columns) else 0, dtype=acc, device=device
        )
        arange = torch.arange(rc, device=device)
        minus_inf = torch.tensor(-math.inf, dtype=acc, device=device)
        xs_r = xs if explicit else None
        if not explicit:
            xs_r = xs * g_r.to(prod)[:, None]  # the row weights folded into x for dW
        assert xs_r is not None
        u = (
            torch.zeros(d, dtype=acc, device=device)
            if (g_rs is not None and softcap is None)
            else None
        )
        first = tile.numel() > 0
        for c0, c1 in col_spans:
            wt, norms = weights.tile(c0, c1)
            bt = b[c0:c1] if b is not None else None
            width = c1 - c0
            dwt = torch.zeros((width, d), dtype=acc, device=device) if dw is not None else None
            for r0, r1 in row_spans:
                rows = r1 - r0
                ri, ci, inside = _target_entries(
                    target[r0:r1], owned[r0:r1], c0, width, arange[:rows]
                )
                scratch = _buffer(zflat, rows, width)
                if first:
                    z = tile  # the forward pass's last tile (the first one), read only
                    first = False
                else:
                    z = _logits(xs[r0:r1], wt, bt, softcap, scratch)  # rebuilt, then reused
                    picked = z[ri, ci]
                    z.index_put_((ri, ci), torch.where(inside, minus_inf, picked))
                g = _buffer(gflat, rows, width) if explicit else scratch
                gt = torch.where(inside, g_t[r0:r1], torch.zeros_like(g_t[r0:r1]))
                fused_both = (
                    g_c is not None
                    and c_safe is not None
                    and softcap is None
                    and _run_kernel(
                        "rows_and_columns",
                        z,
                        r_safe[r0:r1],
                        g_r[r0:r1],
                        c_safe[c0:c1],
                        g_c[c0:c1],
                        g,
                    )
                )  # G = g_r e^{z - r} + g_c e^{z - c} in one pass
                if not fused_both:
                    # the rows' term e^{z - r} (a softmax where the tile holds whole rows)
                    if not _run_kernel("exp_rows", z, r_safe[r0:r1], g):
                        if full_rows and width >= 2:
                            _softmax_out(z, 1, False, out=g)
                        else:
                            torch.sub(z, r_safe[r0:r1, None], out=g).exp_()
                    if explicit:
                        g.mul_(g_r[r0:r1, None])
                    if g_c is not None and c_safe is not None:
                        e = _buffer(wflat, rows, width) if softcap is not None else scratch
                        torch.sub(z, c_safe[c0:c1], out=e).exp_()
                        g.addcmul_(e, g_c[c0:c1])
                if explicit:
                    if softcap is not None:
                        if g_rs is not None and vw is not None:
                            g.addr_(g_rs[r0:r1], vw[c0:c1])
                        square = torch.mul(z, z, out=scratch)
                        # the masked target entries hold -inf: their square is t^2
                        t2 = tgt[r0:r1] * tgt[r0:r1]
                        square.index_put_((ri, ci), torch.where(inside, t2, square[ri, ci]))
                        g.addcmul_(g, square, value=-1.0 / (softcap * softcap))
                    # the sparse target term: g_t at (i, y_i) for the rows owned in this tile
                    g.index_put_((ri, ci), gt, accumulate=True)
                g_mm = g if prod == acc else g.to(prod)
                if gx is not None:
                    if explicit and prod == acc:
                        gx[r0:r1].addmm_(g_mm, wt)
                    elif explicit:
                        gx[r0:r1] += torch.mm(g_mm, wt).to(acc)
                    else:
                        gx[r0:r1].addcmul_(torch.mm(g_mm, wt).to(acc), g_r[r0:r1, None])
                if dwt is not None:
                    if prod == acc:
                        dwt.addmm_(g_mm.T, xs_r[r0:r1])
                    else:
                        dwt.add_(torch.mm(g_mm.T, xs_r[r0:r1]))
                if db is not None:
                    if explicit:
                        db[c0:c1] += g.sum(dim=0)
                    else:
                        db[c0:c1] += torch.mv(g.T, g_r[r0:r1])
                if explicit:
                    continue
                # folded: the target term is added to the small operands
                if gx is not None:
                    gx[r0:r1] += gt[:, None] * wt[ci].to(acc)
                if dwt is not None:
                    dwt.index_put_((ci,), gt[:, None] * xs[r0:r1].to(acc), accumulate=True)
                if db is not None:
                    db[c0:c1].index_put_((ci,), gt, accumulate=True)
            # the smoothing term without a cap is rank one: g_rs_i v_j
            if g_rs is not None and vw is not None and softcap is None:
                vt = vw[c0:c1]
                if u is not None:
                    u += vt @ wt.to(acc)
                if dwt is not None:
                    dwt.addr_(vt, g_rs @ xs.to(acc))
                if db is not None:
                    db[c0:c1] += vt * g_rs.sum()
            if dw is not None and dwt is not None:
                if norms is not None:
                    w_hat = wt.to(acc)
                    radial = (dwt * w_hat).sum(dim=1, keepdim=True)
                    dwt = (dwt - radial * w_hat) / norms
                dw[c0:c1] = dwt
        if gx is not None and u is not None and g_rs is not None:
            gx.addr_(g_rs, u)
        dx = x.new_empty((0, 0))
        ds = x.new_empty((0,))
        if gx is not None:
            if need_scale:
                ds = (x.to(acc) * gx).sum().reshape(1)
            if need_x:
                dx = (gx * (s if isinstance(s, float) else s.to(acc))).to(x.dtype)
        dw_out = dw.to(w.dtype) if dw is not None else w.new_empty((0, 0))
        db_out = db.to(bias.dtype) if (db is not None and bias is not None) else x.new_empty((0,))
    return dx, dw_out, db_out, ds


@torch.library.custom_op("companion::row_statistics_backward", mutates_args=())
def _stats_backward(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    owned: Tensor,
    bias: Tensor | None,
    scale: Tensor | None,
    scale_value: float,
    rowsum_weight: Tensor | None,
    rest: Tensor,
    tgt: Tensor,
    colrest: Tensor,
    tile: Tensor,
    g_rest: Tensor,
    g_target: Tensor,
    g_rowsum: Tensor,
    g_colrest: Tensor,
    softcap: float | None,
    normalize: bool,
    columns: bool,
    rowsum: bool,
    row_chunk: int,
    column_chunk: int,
    need_x: bool,
    need_w: bool,
    need_bias: bool,
    need_scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _stats_backward_impl(
        x,
        w,
        target,
        owned,
        bias,
        scale,
        scale_value,
        rowsum_weight,
        rest,
        tgt,
        colrest,
        tile,
        g_rest,
        g_target,
        g_rowsum,
        g_colrest,
        softcap,
        normalize,
        columns,
        rowsum,
        row_chunk,
        column_chunk,
        need_x,
        need_w,
        need_bias,
        need_scale,
    )


@_stats_backward.register_fake
def _(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    owned: Tensor,
    bias: Tensor | None,
    scale: Tensor | None,
    scale_value: float,
    rowsum_weight: Tensor | None,
    rest: Tensor,
    tgt: Tensor,
    colrest: Tensor,
    tile: Tensor,
    g_rest: Tensor,
    g_target: Tensor,
    g_rowsum: Tensor,
    g_colrest: Tensor,
    softcap: float | None,
    normalize: bool,
    columns: bool,
    rowsum: bool,
    row_chunk: int,
    column_chunk: int,
    need_x: bool,
    need_w: bool,
    need_bias: bool,
    need_scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    acc = compute_dtype(x.dtype)
    return (
        torch.empty_like(x) if need_x else x.new_empty((0, 0)),
        torch.empty_like(w) if need_w else w.new_empty((0, 0)),
        torch.empty_like(bias) if (need_bias and bias is not None) else x.new_empty((0,)),
        x.new_empty((1,), dtype=acc) if need_scale else x.new_empty((0,)),
    )


_STATS_TENSORS = ("x", "w", "target", "owned", "bias", "scale", "rowsum_weight")


def _stats_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    (x, w, target, owned, bias, scale, scale_value, vw, softcap, normalize, columns, rowsum,
     row_chunk, column_chunk, _keep) = inputs  # fmt: skip
    rest, tgt, _rsum, colrest, tile = output
    ctx.mark_non_differentiable(tile)
    ctx.set_materialize_grads(False)  # else a zero "gradient" of the kept tile, tile-sized
    ctx.save_for_backward(x, w, target, owned, bias, scale, vw, rest, tgt, colrest, tile)
    ctx.options = (scale_value, softcap, normalize, columns, rowsum, row_chunk, column_chunk)


def _zeros_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


def _stats_autograd(
    ctx: Any,
    g_rest: Tensor | None,
    g_target: Tensor | None,
    g_rowsum: Tensor | None,
    g_colrest: Tensor | None,
    _g_tile: Tensor | None,
) -> tuple[Tensor | None, ...]:
    refuse_double_backward(_TILED_LOSS)
    x, w, target, owned, bias, scale, vw, rest, tgt, colrest, tile = ctx.saved_tensors
    scale_value, softcap, normalize, columns, rowsum, row_chunk, column_chunk = ctx.options
    need = ctx.needs_input_grad
    need_x, need_w, need_bias, need_scale = need[0], need[1], need[4], need[5]
    dx, dw, db, ds = _stats_backward(
        x,
        w,
        target,
        owned,
        bias,
        scale,
        scale_value,
        vw,
        rest,
        tgt,
        colrest,
        tile,
        _zeros_if_none(g_rest, rest),
        _zeros_if_none(g_target, tgt),
        _zeros_if_none(g_rowsum, rest) if rowsum else rest.new_empty((0,)),
        _zeros_if_none(g_colrest, colrest),
        softcap,
        normalize,
        columns,
        rowsum,
        row_chunk,
        column_chunk,
        bool(need_x),
        bool(need_w),
        bool(need_bias),
        bool(need_scale),
    )
    return (
        dx if need_x else None,
        dw if need_w else None,
        None,
        None,
        db if need_bias else None,
        ds.reshape(()).to(scale.dtype) if need_scale else None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


_stats_forward.register_autograd(_stats_autograd, setup_context=_stats_setup_context)


# --------------------------------------------------------------------------------------------
# fused_row_loss: gradients formed in the forward pass
# --------------------------------------------------------------------------------------------


def _fused_impl(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    bias: Tensor | None,
    scale: Tensor | None,
    scale_value: float,
    rowsum_weight: Tensor | None,
    lse_coef: Tensor,
    lse_square_coef: Tensor | None,
    target_coef: Tensor,
    rowsum_coef: Tensor | None,
    softcap: float | None,
    row_chunk: int,
    need_x: bool,
    need_w: bool,
    need_bias: bool,
    need_scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc = compute_dtype(x.dtype)
    prod = x.dtype
    device = x.device
    n, v, d = x.shape[0], w.shape[0], x.shape[1]
    with autocast_disabled(x):
        s = scale.to(prod) if scale is not None else scale_value
        xs = x * s
        b = bias.to(acc) if bias is not None else None
        a = lse_coef.to(acc)
        q = lse_square_coef.to(acc) if lse_square_coef is not None else None
        dc = target_coef.to(acc)
        e = rowsum_coef.to(acc) if rowsum_coef is not None else None
        vw = _rowsum_weight(rowsum_weight, v, acc, device) if e is not None else None
        want_dx = need_x or need_scale
        want_grad = want_dx or need_w or need_bias
        row_spans = _spans(n, row_chunk)
        rc = row_spans[0][1]
        lse = torch.empty(n, dtype=acc, device=device)
        total = torch.zeros((), dtype=acc, device=device)
        gx = torch.empty((n, d), dtype=acc, device=device) if want_dx else None
        dw = torch.zeros((v, d), dtype=acc, device=device) if need_w else None
        db = torch.zeros(v, dtype=acc, device=device) if need_bias else None
        zflat = torch.empty(rc * v, dtype=acc, device=device)
        pflat = torch.empty(rc * v, dtype=acc, device=device) if softcap is not None else zflat
        arange = torch.arange(rc, device=device)
        # without a cap, the smoothing term is linear in the logits: rho = x_s . u + v . b
        u = vw @ w.to(acc) if (vw is not None and softcap is None) else None
        for r0, r1 in row_spans:
            rows = r1 - r0
            z = _logits(xs[r0:r1], w, b, softcap, _buffer(zflat, rows, v))
            ri, ti = arange[:rows], target[r0:r1]
            t = z[ri, ti]
            if e is not None and vw is not None:
                if u is not None:
                    rho = xs[r0:r1].to(acc) @ u
                    if b is not None:
                        rho = rho + vw @ b
                else:
                    rho = torch.mv(z, vw)
            p = _buffer(pflat, rows, v)
            # a fused softmax (in place without a cap); its largest entry is 1 / sum
            top = z.amax(dim=1)
            _softmax_out(z, 1, False, out=p)
            lse[r0:r1] = top - p.amax(dim=1).log_()
            ell = lse[r0:r1]
            ar, dr = a[r0:r1], dc[r0:r1]
            part = ar * ell - dr * t
            coef = ar
            if q is not None:
                qr = q[r0:r1]
                part = part + qr * ell * ell
                coef = ar + 2 * qr * ell
            if e is not None:
                part = part - e[r0:r1] * rho
            total += part.sum()
            if not want_grad:
                continue
            # G = coef_i p_ij - d_i [j = y_i] - e_i v_j
            er = e[r0:r1] if e is not None else None
            if softcap is not None:
                g = p
                g.mul_(coef[:, None])
                g.index_put_((ri, ti), -dr, accumulate=True)
                if er is not None and vw is not None:
                    g.addr_(er, vw, alpha=-1.0)
                square = z.mul_(z)  # the logits are not needed any more
                g.addcmul_(g, square, value=-1.0 / (softcap * softcap))
                g_mm = g if prod == acc else g.to(prod)
                if gx is not None:
                    if prod == acc:
                        torch.mm(g_mm, w, out=gx[r0:r1])
                    else:
                        gx[r0:r1] = torch.mm(g_mm, w)
                if dw is not None:
                    if prod == acc:
                        dw.addmm_(g_mm.T, xs[r0:r1])
                    else:
                        dw.add_(torch.mm(g_mm.T, xs[r0:r1]))
                if db is not None:
                    db += g.sum(dim=0)
                continue
            # no cap: the row weights fold into the small operands, p is used as it is
            p_mm = p if prod == acc else p.to(prod)
            if gx is not None:
                gxr = torch.mm(p_mm, w).to(acc).mul_(coef[:, None])
                gxr.addcmul_(w[ti].to(acc), dr[:, None], value=-1.0)
                if er is not None and u is not None:
                    gxr.addr_(er, u, alpha=-1.0)
                gx[r0:r1] = gxr
            if dw is not None:
                xr = xs[r0:r1]
                if prod == acc:
                    dw.addmm_(p_mm.T, xr * coef[:, None])
                else:
                    dw.add_(torch.mm(p_mm.T, xr * coef.to(prod)[:, None]))
                dw.index_put_((ti,), xr.to(acc) * (-dr)[:, None], accumulate=True)
            if db is not None:
                db += torch.mv(p.T, coef)
                db.index_put_((ti,), -dr, accumulate=True)
        if e is not None and vw is not None and softcap is None:
            if dw is not None:
                dw.addr_(vw, e @ xs.to(acc), alpha=-1.0)
            if db is not None:
                db.sub_(vw * e.sum())
        dx = x.new_empty((0, 0), dtype=acc)
        ds = x.new_empty((0,), dtype=acc)
        if gx is not None:
            if need_scale:
                ds = (x.to(acc) * gx).sum().reshape(1)
            if need_x:
                dx = gx.mul_(s if isinstance(s, float) else s.to(acc))
        dw_out = dw if dw is not None else w.new_empty((0, 0), dtype=acc)
        db_out = db if db is not None else x.new_empty((0,), dtype=acc)
    return total, lse, dx, dw_out, db_out, ds


@torch.library.custom_op("companion::fused_row_loss", mutates_args=())
def _fused(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    bias: Tensor | None,
    scale: Tensor | None,
    scale_value: float,
    rowsum_weight: Tensor | None,
    lse_coef: Tensor,
    lse_square_coef: Tensor | None,
    target_coef: Tensor,
    rowsum_coef: Tensor | None,
    softcap: float | None,
    row_chunk: int,
    need_x: bool,
    need_w: bool,
    need_bias: bool,
    need_scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _fused_impl(
        x,
        w,
        target,
        bias,
        scale,
        scale_value,
        rowsum_weight,
        lse_coef,
        lse_square_coef,
        target_coef,
        rowsum_coef,
        softcap,
        row_chunk,
        need_x,
        need_w,
        need_bias,
        need_scale,
    )


@_fused.register_fake
def _(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    bias: Tensor | None,
    scale: Tensor | None,
    scale_value: float,
    rowsum_weight: Tensor | None,
    lse_coef: Tensor,
    lse_square_coef: Tensor | None,
    target_coef: Tensor,
    rowsum_coef: Tensor | None,
    softcap: float | None,
    row_chunk: int,
    need_x: bool,
    need_w: bool,
    need_bias: bool,
    need_scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc = compute_dtype(x.dtype)
    n = x.shape[0]
    want_dx = need_x
    return (
        x.new_empty((), dtype=acc),
        x.new_empty((n,), dtype=acc),
        x.new_empty(tuple(x.shape), dtype=acc) if want_dx else x.new_empty((0, 0), dtype=acc),
        w.new_empty(tuple(w.shape), dtype=acc) if need_w else w.new_empty((0, 0), dtype=acc),
        x.new_empty((w.shape[0],), dtype=acc) if need_bias else x.new_empty((0,), dtype=acc),
        x.new_empty((1,), dtype=acc) if need_scale else x.new_empty((0,), dtype=acc),
    )


def _fused_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, w, _t, bias, scale = inputs[:5]
    _total, lse, dx, dw, db, ds = output
    ctx.mark_non_differentiable(lse, dx, dw, db, ds)
    ctx.set_materialize_grads(False)  # else a zero "gradient" of dw: a weight-sized buffer
    ctx.save_for_backward(dx, dw, db, ds)
    ctx.dtypes = (x.dtype, w.dtype, bias.dtype if bias is not None else None,
                  scale.dtype if scale is not None else None)  # fmt: skip


def _graph_is_kept() -> bool:
    """Whether the running backward pass keeps the graph (``retain_graph=True``); True when
    it cannot be told (then the saved gradients are never modified)."""
    try:
        return bool(torch._C._autograd._get_current_graph_task_keep_graph())
    except Exception:
        return True


def _fused_autograd(ctx: Any, g_total: Tensor | None, _g_lse: Tensor | None, *_: Any) -> Any:
    refuse_double_backward(_TILED_LOSS)
    dx, dw, db, ds = ctx.saved_tensors
    x_dtype, w_dtype, b_dtype, s_dtype = ctx.dtypes
    need = ctx.needs_input_grad
    g = g_total if g_total is not None else dx.new_zeros(())
    g = g.to(dx.dtype)
    # In place unless the graph is kept for another backward pass: the weight's gradient is as
    # large as the weight, and a scaled copy would double the memory the tiles saved.
    scale = torch.mul if _graph_is_kept() else Tensor.mul_
    out: list[Tensor | None] = [None] * 17
    if need[0]:
        out[0] = scale(dx, g).to(x_dtype)
    if need[1]:
        out[1] = scale(dw, g).to(w_dtype)
    if need[3] and b_dtype is not None:
        out[3] = scale(db, g).to(b_dtype)
    if need[4] and s_dtype is not None:
        out[4] = (ds * g).reshape(()).to(s_dtype)
    return tuple(out)


_fused.register_autograd(_fused_autograd, setup_context=_fused_setup_context)


# --------------------------------------------------------------------------------------------
# the entry points
# --------------------------------------------------------------------------------------------


def product_inputs(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """The two operands of the product in one dtype: the promotion of theirs.

    A float32 head fed bfloat16 features (the standard AMP pattern) computes in float32; the casts
    are ordinary autograd ops, so the gradients come back in each input's own dtype. An enclosing
    :func:`torch.autocast` changes nothing: the tile loops run with autocast off, so the forward
    and the backward pass see the same dtypes (the package's rule that a head computes in its own
    precision, :func:`companion._numerics.head_dtype_input`). A bias is added in the accumulation
    dtype whatever its own.

    Examples:
        >>> a, b = product_inputs(torch.ones(2, 3, dtype=torch.bfloat16), torch.ones(4, 3))
        >>> a.dtype, b.dtype
        (torch.float32, torch.float32)
    """
    dtype = torch.promote_types(x.dtype, w.dtype)
    return (x if x.dtype == dtype else x.to(dtype)), (w if w.dtype == dtype else w.to(dtype))


def _scale_args(scale: float | Tensor) -> tuple[Tensor | None, float]:
    if isinstance(scale, Tensor):
        return scale.reshape(()), 1.0
    return None, float(scale)


def _needs(t: Tensor | None) -> bool:
    return t is not None and t.requires_grad and torch.is_grad_enabled()


def row_statistics(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    owned: Tensor,
    *,
    bias: Tensor | None = None,
    scale: float | Tensor = 1.0,
    softcap: float | None = None,
    normalize_weight: bool = False,
    rowsum: bool | Tensor = False,
    columns: bool = False,
    row_chunk: int | None = None,
    column_chunk: int | None = None,
) -> RowStatistics:
    r"""Per-row (and per-column) statistics of :math:`\operatorname{cap}(s x\hat W^\top + b)`.

    See the module's docstring for the formulas. Products: one in the forward pass, three in the
    backward pass (the tiles are rebuilt, except the forward's last one, which is kept).

    Args:
        x: ``(N, D)`` rows (features, hidden states); floating.
        w: ``(V, D)`` columns (class centres, vocabulary, the other modality), same ``D``.
        target: ``(N,)`` int64 column of each row, already in ``[0, V)`` (clamp the rows you
            leave out, and set ``owned`` False for them).
        owned: ``(N,)`` bool: the rows whose target column is in ``w`` (excluded from ``rest``
            and read into ``target``).
        bias: optional ``(V,)`` added to every row.
        scale: :math:`s`, a number or a 0-d tensor (which then receives a gradient).
        softcap: :math:`c` of the soft cap :math:`c\tanh(u/c)`, or None.
        normalize_weight: divide each row of ``w`` by its norm (tile by tile).
        rowsum: True for :math:`\rho_i = \sum_j z_{ij}`, a ``(V,)`` tensor ``v`` for
            :math:`\sum_j v_j z_{ij}`, False for none.
        columns: also the column statistics :math:`\kappa` (rows and columns excluded at the
            same target entries: the square CLIP case with distinct targets).
        row_chunk, column_chunk: the tile; see :func:`resolve_chunks`.

    Returns:
        :class:`RowStatistics` ``(rest, target, rowsum, colrest)`` in
        ``compute_dtype(x.dtype)`` (``rowsum`` / ``colrest`` None unless asked for).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, w = torch.randn(5, 3, generator=g), torch.randn(7, 3, generator=g)
        >>> y = torch.tensor([0, 6, 2, 2, 1])
        >>> st = row_statistics(x, w, y, torch.ones(5, dtype=torch.bool), row_chunk=2)
        >>> loss = torch.logaddexp(st.rest, st.target) - st.target
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(x @ w.T, y, reduction="none"))
        True
    """
    x_c, w_c = product_inputs(x, w)
    scale_t, scale_v = _scale_args(scale)
    rc, cc = resolve_chunks(row_chunk, column_chunk, w_c.shape[0])
    want_rowsum = rowsum is not False
    vw = rowsum if isinstance(rowsum, Tensor) else None
    keep = any(_needs(t) for t in (x_c, w_c, bias, scale_t))
    rest, tgt, rsum, colrest, _tile = _stats_forward(
        x_c,
        w_c,
        target,
        owned,
        bias,
        scale_t,
        scale_v,
        vw,
        softcap,
        normalize_weight,
        columns,
        want_rowsum,
        rc,
        cc,
        keep,
    )
    return RowStatistics(rest, tgt, rsum if want_rowsum else None, colrest if columns else None)


def fused_row_loss(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    *,
    lse_coef: Tensor,
    target_coef: Tensor,
    lse_square_coef: Tensor | None = None,
    rowsum_coef: Tensor | None = None,
    rowsum_weight: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | Tensor = 1.0,
    softcap: float | None = None,
    row_chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The scalar :math:`\sum_i (a_i\ell_i + q_i\ell_i^2 - d_i t_i - e_i\rho_i)`, fused.

    :math:`\ell_i` is the log-sum-exp of the whole row :math:`i` of
    :math:`z = \operatorname{cap}(s\,xW^\top + b)` (nothing excluded), :math:`t_i = z_{i y_i}`,
    :math:`\rho_i = \sum_j v_j z_{ij}`. Three products in all (see the module's docstring for
    why this is exact only for a scalar loss whose coefficients are known now). The gradients
    are held from the forward to the backward pass (as much memory as the gradients themselves)
    and scaled there, in place unless the graph is kept (``retain_graph=True``).

    Args:
        x: ``(N, D)``; w: ``(V, D)``; target: ``(N,)`` int64 in ``[0, V)``.
        lse_coef, target_coef: :math:`a`, :math:`d`, ``(N,)``, no gradient.
        lse_square_coef: :math:`q` ``(N,)`` (the z-loss), or None.
        rowsum_coef: :math:`e` ``(N,)`` (label smoothing), or None; ``rowsum_weight`` is
            :math:`v` ``(V,)`` (ones by default).
        bias, scale, softcap: as in :func:`row_statistics`.
        row_chunk: rows per tile (whole rows always); None: :data:`TILE_BYTES` of them.

    Returns:
        ``(S, lse)``: the scalar, and each row's :math:`\ell_i` (no gradient; for logging), in
        ``compute_dtype(x.dtype)``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, w = torch.randn(6, 4, generator=g), torch.randn(9, 4, generator=g)
        >>> y = torch.randint(9, (6,), generator=g)
        >>> mean = torch.full((6,), 1 / 6)
        >>> total, lse = fused_row_loss(x, w, y, lse_coef=mean, target_coef=mean, row_chunk=4)
        >>> torch.allclose(total, torch.nn.functional.cross_entropy(x @ w.T, y))
        True
    """
    x_c, w_c = product_inputs(x, w)
    scale_t, scale_v = _scale_args(scale)
    rc, cc = resolve_chunks(row_chunk, None, w_c.shape[0])
    if row_chunk is None and cc != 0:
        rc = 1  # a row wider than the budget: one row per tile (whole rows are needed here)
    total, lse, _dx, _dw, _db, _ds = _fused(
        x_c,
        w_c,
        target,
        bias,
        scale_t,
        scale_v,
        rowsum_weight,
        lse_coef,
        lse_square_coef,
        target_coef,
        rowsum_coef,
        softcap,
        rc,
        _needs(x_c),
        _needs(w_c),
        _needs(bias),
        _needs(scale_t),
    )
    return total, lse
