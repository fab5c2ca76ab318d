r"""The sigmoid loss for image-text pairs (SigLIP): full, chunked, and in a ring of processes.

SigLIP (Zhai, Mustafa, Kolesnikov and Beyer, *Sigmoid Loss for Language Image Pre-Training*,
ICCV 2023) scores every image-text pair of a batch as an independent binary label: the
``B`` matching pairs are positives, the other ``B^2 - B`` pairs negatives. With the logits
:math:`L_{ij} = t\, x_i \cdot y_j + b` and :math:`z_{ij} = +1` if :math:`i = j`, else
:math:`-1`,

.. math::

    \mathcal L = -\frac{1}{B} \sum_{i=1}^{B} \sum_{j=1}^{B} \log \sigma(z_{ij} L_{ij}),

the multi-label binary cross-entropy applied to CLIP's similarity matrix (open_clip's
convention: summed over the pairs, divided by the number of images). There is no softmax, so no
statistic couples a row (or a column) to the rest of the matrix. That is what makes the loss
cheap to tile and to spread over processes:

* :func:`siglip_loss` with ``chunk_size`` never holds more than ``chunk_size x B`` of the
  matrix; because each entry's gradient :math:`\sigma(L_{ij}) - \mathbb 1[i = j]` is known the
  moment the entry is, the tiles compute value and gradients in one sweep (three
  ``B x B x D`` products in all, the same as an implementation that keeps the matrix).
* Under :mod:`torch.distributed` the text blocks travel around a ring of ranks
  (point-to-point ``isend``/``irecv``), so no rank holds more than its own features and one
  neighbour's block; in the backward pass the text blocks travel again, carrying their gradient
  home. Values and gradients equal those of one process holding the whole batch.

:class:`SigLipLoss` owns the learnable log-scale :math:`t' = \log t` and bias :math:`b`,
initialised as in the paper (:math:`t' = \log 10`, :math:`b = -10`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from companion._distributed import (
    ProcessGroup,
    all_gather_rows,
    gather_rows,
    local_batch_sizes,
    replicated,
    resolve_group,
    sum_over_ranks,
)
from companion._numerics import compute_dtype, refuse_double_backward
from companion._validate import (
    Reduction,
    check_choice,
    check_chunk_size,
    check_real,
    check_reduction,
    scalar_argument,
)
from companion.contrastive import _check_pair

__all__ = ["SigLipLoss", "siglip_loss"]


# --------------------------------------------------------------------------------------------
# One sweep over the row tiles of s Q K^T + b: the sigmoid needs no normaliser, so value and
# gradients come out of one pass (no log-sum-exp to wait for, unlike the tiled engine)
# --------------------------------------------------------------------------------------------


def _row_tiles(rows: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the row tiles of a matrix with ``rows`` rows, ``chunk`` at a time."""
    return [(start, min(start + chunk, rows)) for start in range(0, rows, chunk)]


def _tile_logits(
    scaled_queries: Tensor, keys_t: Tensor, out: Tensor, bias: Tensor | None = None
) -> Tensor:
    """``scaled_queries @ keys_t (+ bias)`` written into the first rows of the buffer ``out``."""
    rows = out[: scaled_queries.shape[0]]
    if out.dtype == scaled_queries.dtype:
        if bias is None:
            return torch.mm(scaled_queries, keys_t, out=rows)
        return torch.addmm(bias.to(out.dtype), scaled_queries, keys_t, out=rows)
    rows.copy_(torch.mm(scaled_queries, keys_t))
    return rows if bias is None else rows.add_(bias.to(out.dtype))


def _sigmoid_sweep(
    queries: Tensor,
    keys: Tensor,
    scale: Tensor,
    bias: Tensor,
    offset: int | None,
    chunk: int,
    grads: bool,
    row_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    r"""Sum of :math:`-\log\sigma(z_{ij} L_{ij})` over the tiles, and optionally its gradients.

    ``L = scale * queries @ keys.T + bias``; the positives are the entries ``(i, offset + i)``
    (none when ``offset`` is None: a block of negatives only). With :math:`-\log\sigma(-x) =
    \operatorname{softplus}(x)`, the sum is :math:`\sum_{ij}\operatorname{softplus}(L_{ij}) -
    \sum_i L_{i,o+i}` and its gradient with respect to :math:`L` is
    :math:`G = \sigma(L) - \mathbb 1[j = o + i]`, so :math:`dQ = s\,GK`, :math:`dK = s\,G^\top
    Q`, :math:`ds = \sum_i q_i \cdot (GK)_i` and :math:`db = \sum_{ij} G_{ij}`. Returns
    ``(totals, dQ, dK, ds, db)``: ``totals`` the ``(m,)`` row sums, the gradients those of
    :math:`\sum_i w_i \cdot \text{row}_i` with ``row_weights`` :math:`w` (all ones if None),
    None without ``grads``; all in the accumulation dtype (float32 for half inputs) except
    ``dQ``.

    The bias rides inside the products: with :math:`\tilde Q = [sQ \mid b]` and
    :math:`\tilde K = [K \mid 1]`, the tile :math:`\tilde Q \tilde K^\top` is ``L`` (no
    pass to add ``b``), and :math:`G \tilde K = [GK \mid G\mathbf 1]` gives the row sums of
    ``G`` for ``db`` (no pass to sum ``G``). Per tile that leaves two passes over the tile
    (softplus and sigmoid) besides the three products, and every buffer is reused.
    """
    dtype, acc = queries.dtype, compute_dtype(queries.dtype)
    m, n, dim = queries.shape[0], keys.shape[0], queries.shape[1]
    device = queries.device
    s = scale.to(dtype)
    scaled = queries * s
    tile = min(chunk, m)
    # [s Q | b] and [K | 1]: the bias inside the product
    scaled_aug = torch.cat([scaled, bias.to(dtype).expand(m, 1)], dim=1)
    keys_aug = torch.cat([keys, keys.new_ones(n, 1)], dim=1)
    keys_aug_t = keys_aug.T
    logits_buf = torch.empty((tile, n), dtype=acc, device=device)
    work_buf = torch.empty_like(logits_buf)
    zero = torch.zeros((), dtype=acc, device=device)
    total = torch.empty(m, dtype=acc, device=device)
    if not grads:
        for start, stop in _row_tiles(m, chunk):
            logits = _tile_logits(scaled_aug[start:stop], keys_aug_t, logits_buf)
            work = work_buf[: stop - start]
            torch.sum(torch.logaddexp(logits, zero, out=work), 1, out=total[start:stop])
            if offset is not None:
                rows = torch.arange(stop - start, device=device)
                total[start:stop] -= logits[rows, rows + (offset + start)]
        return total, None, None, None, None
    d_q = torch.empty_like(queries)
    d_k = torch.zeros(keys.shape, dtype=acc, device=device)
    d_s = torch.zeros((), dtype=acc, device=device)
    d_b = torch.zeros((), dtype=acc, device=device)
    grad_keys_buf = torch.empty((tile, dim + 1), dtype=dtype, device=device)
    for start, stop in _row_tiles(m, chunk):
        logits = _tile_logits(scaled_aug[start:stop], keys_aug_t, logits_buf)
        work = work_buf[: stop - start]
        torch.sum(torch.logaddexp(logits, zero, out=work), 1, out=total[start:stop])
        grad = torch.sigmoid(logits, out=work)
        if offset is not None:
            rows = torch.arange(stop - start, device=device)
            diagonal = rows + (offset + start)
            total[start:stop] -= logits[rows, diagonal]
            grad[rows, diagonal] -= 1.0
        if row_weights is not None:
            grad.mul_(row_weights[start:stop, None])
        grad_mm = grad if grad.dtype == dtype else grad.to(dtype)
        # [G K | G 1]: the gradient product and the row sums of G at once
        grad_keys_aug = torch.mm(grad_mm, keys_aug, out=grad_keys_buf[: stop - start])
        grad_keys = grad_keys_aug[:, :dim]
        d_b += grad_keys_aug[:, dim].sum(dtype=acc)
        torch.mul(grad_keys, s, out=d_q[start:stop])
        d_s += torch.vdot(queries[start:stop].flatten().to(acc), grad_keys.flatten().to(acc))
        if d_k.dtype == dtype:
            d_k.addmm_(grad_mm.T, scaled[start:stop])
        else:
            d_k += torch.mm(grad_mm.T, scaled[start:stop]).to(acc)
    return total, d_q, d_k, d_s, d_b


# The tile sweep as custom ops, so that torch.compile sees one opaque node per pass: it neither
# unrolls a loop whose length depends on the batch size nor recompiles for every new one.


def _empty(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return like.new_empty((0,), dtype=dtype or like.dtype)


@torch.library.custom_op("companion::sigmoid_tiles", mutates_args=())
def _sigmoid_tiles(
    queries: Tensor,
    keys: Tensor,
    scale: Tensor,
    bias: Tensor,
    offset: int,
    chunk: int,
    grads: bool,
    per_row: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-row totals (``per_row``) or their sum, and, for a sum with ``grads``, its gradients."""
    forward_grads = grads and not per_row
    totals, d_q, d_k, d_s, d_b = _sigmoid_sweep(
        queries, keys, scale, bias, offset, chunk, forward_grads
    )
    value = totals if per_row else totals.sum()
    if d_q is None or d_k is None or d_s is None or d_b is None:
        acc = totals.dtype
        return value, _empty(queries), _empty(keys, acc), _empty(totals), _empty(totals)
    return value, d_q, d_k, d_s.reshape(1), d_b.reshape(1)


@_sigmoid_tiles.register_fake
def _(
    queries: Tensor,
    keys: Tensor,
    scale: Tensor,
    bias: Tensor,
    offset: int,
    chunk: int,
    grads: bool,
    per_row: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc = compute_dtype(queries.dtype)
    m = queries.shape[0]
    value = queries.new_empty((m,) if per_row else (), dtype=acc)
    if grads and not per_row:
        return (
            value,
            torch.empty_like(queries),
            keys.new_empty(keys.shape, dtype=acc),
            queries.new_empty((1,), dtype=acc),
            queries.new_empty((1,), dtype=acc),
        )
    return value, _empty(queries), _empty(keys, acc), _empty(value, acc), _empty(value, acc)


@torch.library.custom_op("companion::sigmoid_tiles_backward", mutates_args=())
def _sigmoid_tiles_backward(
    queries: Tensor,
    keys: Tensor,
    scale: Tensor,
    bias: Tensor,
    offset: int,
    chunk: int,
    row_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients of ``sum_i w_i totals_i``: the tiles swept again with the row weights."""
    _, d_q, d_k, d_s, d_b = _sigmoid_sweep(
        queries, keys, scale, bias, offset, chunk, True, row_weights=row_weights
    )
    assert d_q is not None and d_k is not None and d_s is not None and d_b is not None
    return d_q, d_k.to(keys.dtype), d_s.reshape(1), d_b.reshape(1)


@_sigmoid_tiles_backward.register_fake
def _(
    queries: Tensor,
    keys: Tensor,
    scale: Tensor,
    bias: Tensor,
    offset: int,
    chunk: int,
    row_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    acc = compute_dtype(queries.dtype)
    return (
        torch.empty_like(queries),
        torch.empty_like(keys),
        queries.new_empty((1,), dtype=acc),
        queries.new_empty((1,), dtype=acc),
    )


def _sigmoid_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    queries, keys, scale, bias, offset, chunk, _grads, per_row = inputs
    _, d_q, d_k, d_s, d_b = output
    ctx.offset, ctx.chunk, ctx.per_row = offset, chunk, per_row
    ctx.dtypes = (keys.dtype, scale.dtype, bias.dtype)
    if per_row:
        ctx.save_for_backward(queries, keys, scale, bias)
    else:
        ctx.save_for_backward(d_q, d_k, d_s, d_b)


def _sigmoid_autograd(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
    """Per row: the tiles again, with the incoming row gradients as weights (five products in
    all); a sum: the gradients formed in the forward sweep, times the incoming scalar (three)."""
    refuse_double_backward("siglip_loss with chunk_size")
    need_q, need_k, need_s, need_b = ctx.needs_input_grad[:4]
    keys_dtype, scale_dtype, bias_dtype = ctx.dtypes
    if ctx.per_row:
        queries, keys, scale, bias = ctx.saved_tensors
        d_q, d_k, d_s, d_b = _sigmoid_tiles_backward(
            queries, keys, scale, bias, ctx.offset, ctx.chunk, grad.to(compute_dtype(grad.dtype))
        )
    else:
        d_q, d_k, d_s, d_b = ctx.saved_tensors
        d_q = d_q * grad.to(d_q.dtype)
        d_k = d_k * grad.to(d_k.dtype)
        d_s, d_b = d_s * grad, d_b * grad
    return (
        d_q if need_q else None,
        d_k.to(keys_dtype) if need_k else None,
        d_s.reshape(()).to(scale_dtype) if need_s else None,
        d_b.reshape(()).to(bias_dtype) if need_b else None,
        None,
        None,
        None,
        None,
    )


_sigmoid_tiles.register_autograd(_sigmoid_autograd, setup_context=_sigmoid_setup_context)


# --------------------------------------------------------------------------------------------
# The ring
# --------------------------------------------------------------------------------------------


def _exchange(send: Tensor, recv: Tensor, right: int, left: int, group: Any) -> None:
    """Send ``send`` to the rank on the right while receiving ``recv`` from the left."""
    ops = [
        dist.P2POp(dist.isend, send.contiguous(), right, group=group),
        dist.P2POp(dist.irecv, recv, left, group=group),
    ]
    for request in dist.batch_isend_irecv(ops):
        request.wait()


class _SigmoidRing(torch.autograd.Function):
    r"""This rank's images against every rank's texts, the text blocks passed around a ring.

    Step 0 scores the local pairs (positives on the diagonal); at step ``k`` the rank holds the
    text block of rank ``rank - k`` (negatives only), received from its left neighbour while it
    sends the block it had to the right. The forward pass returns this rank's sum
    :math:`\sum_{i \in \text{rank}} \sum_{j} -\log\sigma(z_{ij} L_{ij})` over all ``B`` texts.

    The backward pass repeats the ring. Each text block now travels with the gradient that the
    ranks it visits add to it (their own incoming gradient applied), and a last step brings that
    gradient home to the block's owner. No rank ever holds more than its own features and one
    neighbour's block (with its gradient).
    """

    @staticmethod
    def forward(
        ctx: Any,
        images: Tensor,
        texts: Tensor,
        scale: Tensor,
        bias: Tensor,
        chunk: int,
        sizes: tuple[int, ...],
        rank: int,
        peers: tuple[int, int],
        group: Any,
    ) -> Tensor:
        world = len(sizes)
        right, left = peers
        total, *_ = _sigmoid_sweep(images, texts, scale, bias, 0, chunk, False)
        block = texts
        for step in range(1, world):
            incoming = texts.new_empty((sizes[(rank - step) % world], texts.shape[1]))
            _exchange(block, incoming, right, left, group)
            block = incoming
            part, *_ = _sigmoid_sweep(images, block, scale, bias, None, chunk, False)
            total = total + part
        ctx.save_for_backward(images, texts, scale, bias)
        ctx.chunk, ctx.sizes, ctx.rank, ctx.peers, ctx.group = chunk, sizes, rank, peers, group
        return total  # (m,): each local image's sum over every rank's texts

    @staticmethod
    def backward(
        ctx: Any, grad_total: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, None, None, None, None, None]:
        refuse_double_backward("siglip_loss with chunk_size")
        images, texts, scale, bias = ctx.saved_tensors
        chunk, sizes, rank, (right, left), group = (
            ctx.chunk,
            ctx.sizes,
            ctx.rank,
            ctx.peers,
            ctx.group,
        )
        world, dim = len(sizes), texts.shape[1]
        g = grad_total.to(compute_dtype(images.dtype))  # (m,): one weight per local image
        _, d_images, d_block, d_scale, d_bias = _sigmoid_sweep(
            images, texts, scale, bias, 0, chunk, True, row_weights=g
        )
        assert d_images is not None and d_block is not None
        assert d_scale is not None and d_bias is not None
        d_images = d_images.to(g.dtype)
        # the block and its gradient travel together: one message of width 2D per step
        carried = torch.cat([texts.to(g.dtype), d_block], dim=1)
        for step in range(1, world):
            incoming = carried.new_empty((sizes[(rank - step) % world], 2 * dim))
            _exchange(carried, incoming, right, left, group)
            carried = incoming
            block = carried[:, :dim].to(texts.dtype)
            _, d_q, d_k, d_s, d_b = _sigmoid_sweep(
                images, block, scale, bias, None, chunk, True, row_weights=g
            )
            assert d_q is not None and d_k is not None and d_s is not None and d_b is not None
            d_images += d_q.to(g.dtype)
            d_scale += d_s
            d_bias += d_b
            carried[:, dim:] += d_k
        # the block held now belongs to the rank on the right: send its gradient home
        home = carried.new_empty((texts.shape[0], dim))
        if world > 1:
            _exchange(carried[:, dim:], home, right, left, group)
        else:
            home = carried[:, dim:]
        return (
            d_images.to(images.dtype),
            home.to(texts.dtype),
            d_scale.to(scale.dtype),
            d_bias.to(bias.dtype),
            None,
            None,
            None,
            None,
            None,
        )


def _ring_of(group: ProcessGroup) -> tuple[int, int, tuple[int, int]]:
    """``(rank, world_size, (right, left))`` in ``group``, the neighbours as global ranks."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    right, left = (rank + 1) % world, (rank - 1) % world
    if group is not None:
        right, left = dist.get_global_rank(group, right), dist.get_global_rank(group, left)
    return rank, world, (right, left)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def siglip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: float | Tensor,
    logit_bias: float | Tensor,
    chunk_size: int | None = None,
    *,
    group: ProcessGroup | None = None,
    exchange: str = "ring",
    batch_sizes: Sequence[int] | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The SigLIP loss: a binary cross-entropy for every image-text pair of the batch.

    .. math::

        \mathcal L = -\frac{1}{B} \sum_{i=1}^{B} \sum_{j=1}^{B}
        \log \sigma\bigl(z_{ij}\,(t\, x_i \cdot y_j + b)\bigr),
        \qquad z_{ij} = \begin{cases} +1 & i = j \\ -1 & i \ne j \end{cases}

    (Zhai et al., 2023; open_clip's ``SigLipLoss`` computes the same value). Its gradient with
    respect to the logit :math:`L_{ij}` is :math:`(\sigma(L_{ij}) - \mathbb 1[i = j]) / B`.
    ``reduction="none"`` returns each image's sum over the texts (``(B,)``), ``"sum"`` their sum
    and ``"mean"`` (the default) their mean, the value above; sums are formed in float32 or
    wider, so a float16 batch whose summed loss passes 65,504 still has its mean.

    **The scale, not its log.** ``logit_scale`` is :math:`t` itself; SigLIP learns
    :math:`t' = \log t` (open_clip's ``model.logit_scale`` is that log): pass
    ``model.logit_scale.exp()`` (a bare ``nn.Parameter`` is refused), or use
    :class:`SigLipLoss`. ``logit_bias`` is used as it is. The features are used as given:
    L2-normalise them in the model, as SigLIP does.

    **Memory.** ``chunk_size=None`` builds the ``B x B`` logits at once (autograd keeps a few
    such matrices). With an integer ``chunk_size`` at most two ``chunk_size x B`` tiles exist;
    the forward sweep computes the gradients too (each entry's gradient needs nothing but the
    entry), saves them (``B x D``) and the backward pass only scales them (with
    ``reduction="none"`` the rows' gradients differ, and the backward pass sweeps the tiles
    again). The tiled backward pass is not differentiable again (``create_graph=True`` raises a
    ``RuntimeError``).

    **Across processes.** Only with ``group`` (a ``torch.distributed`` process group; nothing
    is distributed because a default group exists). Each rank passes its own pairs and its
    images meet every rank's texts, in one of two ways: ``exchange="ring"`` (the default) passes
    the text blocks around the ring of ranks by ``isend``/``irecv``, so that no rank holds more
    than its own and one neighbour's features (the backward pass sends each block around again
    and its gradient home); ``exchange="gather"`` all-gathers the features, as CLIP does, and
    compiles with ``torch.compile(fullgraph=True)``, which point-to-point operations do not (the
    ring raises a clear error under compilation). The convention is the package's one for every
    distributed loss (:mod:`companion._distributed`): every rank returns the loss of the whole
    global batch (for ``"none"`` the ``(B_global,)`` vector in rank order), and after DDP's
    gradient averaging every parameter (encoders, and the scale and bias inside the DDP-wrapped
    module) has the single-process gradient, for unequal local batches too. The local sizes cost
    one small all-reduce and a host sync per call, which ``batch_sizes`` (every rank's local
    batch size, if known) skips. Every rank must call the function and its backward pass.

    **Production.** With value checks off (:func:`companion.set_value_checks`), a forward and
    backward pass makes no host sync (with ``batch_sizes`` given under a ``group``), and the
    function compiles with ``torch.compile(fullgraph=True)`` (in one process, or with
    ``exchange="gather"``).

    Args:
        image_features: this process's image embeddings.
        text_features: the matching text embeddings, same dtype and device.
        logit_scale: :math:`t > 0`, a float or a scalar tensor (which receives a gradient).
        logit_bias: :math:`b`, a float or a scalar tensor (which receives a gradient).
        chunk_size: rows per tile; ``None`` builds the full matrix.
        group: a ``torch.distributed`` process group, or ``None`` for the loss of the given
            batch alone.
        exchange: with ``group``, ``"ring"`` (point-to-point, least memory) or ``"gather"``
            (an all-gather; compiles).
        batch_sizes: with ``group``, every rank's local batch size, if known.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Shape:
        - image_features, text_features: ``(B, D)``; logit_scale, logit_bias: numbers or
          ``()``.
        - output: scalar, or ``(B,)`` (the global batch) for ``reduction="none"``, in the
          features' dtype.

    Examples:
        >>> import math
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.siglip import siglip_loss
        >>> gen = torch.Generator().manual_seed(0)
        >>> image = F.normalize(torch.randn(8, 4, generator=gen), dim=1)
        >>> text = F.normalize(image + 0.1 * torch.randn(8, 4, generator=gen), dim=1)
        >>> full = siglip_loss(image, text, 10.0, -10.0)
        >>> torch.allclose(full, siglip_loss(image, text, 10.0, -10.0, chunk_size=3))
        True
        >>> # at t = 0 every pair has the logit b: B - 1 negatives and 1 positive per image
        >>> at_zero = siglip_loss(image, text, 1e-12, -10.0)
        >>> want = math.log1p(math.exp(10)) + 7 * math.log1p(math.exp(-10))
        >>> round(float(at_zero), 4), round(want, 4)
        (10.0004, 10.0004)
    """
    _check_pair(image_features, "image_features", text_features, "text_features")
    scale = scalar_argument(logit_scale, "logit_scale", image_features, positive=True)
    bias = scalar_argument(logit_bias, "logit_bias", image_features, positive=False)
    chunk = check_chunk_size(chunk_size)
    exchange = check_choice(exchange, "exchange", ("ring", "gather"))
    check_reduction(reduction)
    dtype, local = image_features.dtype, image_features.shape[0]
    per_row = reduction == "none"
    if group is None:
        if batch_sizes is not None:
            raise ValueError("batch_sizes is only used with group (a distributed call)")
        rows = _sigmoid_rows(image_features, text_features, scale, bias, 0, chunk, per_row)
        return (rows / local if reduction == "mean" else rows).to(dtype)
    rank, _ = resolve_group(group)
    sizes = local_batch_sizes(local, group, batch_sizes, image_features.device)
    offset = sum(sizes[:rank])
    scale, bias = replicated(scale, group), replicated(bias, group)
    if exchange == "ring":
        if torch.compiler.is_compiling():
            raise RuntimeError(
                "siglip_loss with exchange='ring' does not compile: torch.compile cannot trace "
                "its point-to-point isend/irecv; use exchange='gather' under torch.compile"
            )
        _, _, peers = _ring_of(group)
        # the ring returns this rank's rows; its features' gradient follows the convention
        images, texts = replicated(image_features, group), replicated(text_features, group)
        rows = _SigmoidRing.apply(  # type: ignore[no-untyped-call]
            images, texts, scale, bias, chunk or max(sizes), sizes, rank, peers, group
        )
    else:
        both = gather_rows(torch.cat([image_features, text_features], dim=1), sizes, group)
        dim = image_features.shape[1]
        mine = both[offset : offset + local, :dim]  # every path to the features via the gather
        rows = _sigmoid_rows(mine, both[:, dim:], scale, bias, offset, chunk, True)
    if per_row:
        return all_gather_rows(rows, sizes, group).to(dtype)
    total = sum_over_ranks(rows.sum(), group)
    return (total / sum(sizes) if reduction == "mean" else total).to(dtype)


def _sigmoid_rows(
    queries: Tensor,
    keys: Tensor,
    scale: Tensor,
    bias: Tensor,
    offset: int,
    chunk: int | None,
    per_row: bool,
) -> Tensor:
    r"""Each query's summed :math:`-\log\sigma(z_{ij} L_{ij})` (``per_row``) or their total, in
    at least float32; the positives at ``(i, offset + i)``; tiled when ``chunk`` is set."""
    if chunk is not None:
        grads = torch.is_grad_enabled() and any(
            x.requires_grad for x in (queries, keys, scale, bias)
        )
        out: Tensor = _sigmoid_tiles(queries, keys, scale, bias, offset, chunk, grads, per_row)[0]
        return out
    acc = compute_dtype(queries.dtype)
    logits = (scale.to(queries.dtype) * (queries @ keys.T) + bias.to(queries.dtype)).to(acc)
    rows = torch.arange(queries.shape[0], device=logits.device)
    signs = -torch.ones_like(logits)
    signs[rows, rows + offset] = 1.0
    totals = -F.logsigmoid(signs * logits).sum(dim=1)
    return totals if per_row else totals.sum()


class SigLipLoss(nn.Module):
    r"""The SigLIP loss with its learnable log-scale and bias.

    Holds the parameters :attr:`log_scale` :math:`= t'` and :attr:`bias` :math:`= b`,
    initialised as in the paper to :math:`t' = \log 10` and :math:`b = -10`, and computes
    :func:`siglip_loss` with ``logit_scale`` :math:`= e^{t'}` (:attr:`logit_scale`, the scale;
    open_clip's ``model.logit_scale`` is :math:`t'`). The very negative bias matches the
    imbalance of the batch, one positive for :math:`B - 1` negatives per image: the initial
    loss is then near its best constant guess instead of about :math:`B \log 2` (see the
    SigLIP chapter).

    **Give its parameters to the optimiser** (they belong to this module, not to the
    encoders): ``torch.optim.AdamW([*model.parameters(), *loss.parameters()])``, or make the
    loss a submodule of the model.

    Args:
        init_log_scale: :math:`t'_0` (the paper: :math:`\log 10`).
        init_bias: :math:`b_0` (the paper: -10).
        chunk_size: passed to :func:`siglip_loss` (``None``: full matrix).
        device, dtype: of the two parameters.
        group, exchange, batch_sizes, reduction: passed to :func:`siglip_loss`.

    Shape:
        - forward's image_features, text_features: ``(B, D)``.
        - output: scalar.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.siglip import SigLipLoss
        >>> loss_fn = SigLipLoss(chunk_size=4)
        >>> encoder = torch.nn.Linear(6, 3)
        >>> optimiser = torch.optim.SGD([*encoder.parameters(), *loss_fn.parameters()], lr=0.1)
        >>> x = torch.randn(8, 6)
        >>> loss = loss_fn(F.normalize(encoder(x), dim=1), F.normalize(encoder(x + 0.1), dim=1))
        >>> loss.backward()
        >>> loss_fn.bias.grad is not None and loss_fn.log_scale.grad is not None
        True
        >>> round(float(loss_fn.logit_scale.detach()), 3), float(loss_fn.bias.detach())
        (10.0, -10.0)
    """

    def __init__(
        self,
        init_log_scale: float = math.log(10.0),
        init_bias: float = -10.0,
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        group: ProcessGroup | None = None,
        exchange: str = "ring",
        batch_sizes: Sequence[int] | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        check_real(init_log_scale, "init_log_scale")
        check_real(init_bias, "init_bias")
        self.chunk_size = check_chunk_size(chunk_size)
        self.group = group
        resolve_group(group)
        self.exchange = check_choice(exchange, "exchange", ("ring", "gather"))
        self.batch_sizes = None if batch_sizes is None else tuple(batch_sizes)
        self.reduction = check_reduction(reduction)
        self.log_scale = nn.Parameter(
            torch.tensor(float(init_log_scale), device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.tensor(float(init_bias), device=device, dtype=dtype))

    @property
    def logit_scale(self) -> Tensor:
        """The current scale :math:`t = e^{t'}`."""
        return self.log_scale.exp()

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        *,
        batch_sizes: Sequence[int] | None = None,
    ) -> Tensor:
        """The SigLIP loss of a batch of ``(B, D)`` feature pairs at the learned scale and bias.

        Calls :func:`siglip_loss` with :attr:`logit_scale` and :attr:`bias` (both receive
        gradients) and this module's ``chunk_size``, ``group``, ``exchange`` and
        ``reduction``; ``batch_sizes`` (this call's, else the module's) skips the size
        exchange.
        """
        return siglip_loss(
            image_features,
            text_features,
            self.logit_scale,
            self.bias,
            self.chunk_size,
            group=self.group,
            exchange=self.exchange,
            batch_sizes=self.batch_sizes if batch_sizes is None else batch_sizes,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        scale = float(self.logit_scale.detach())
        bias = float(self.bias.detach())
        return (
            f"scale={scale:.4g}, bias={bias:.4g}, chunk_size={self.chunk_size}, "
            f"exchange={self.exchange!r}, reduction={self.reduction!r}"
        )
