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

from companion._numerics import compute_dtype, refuse_double_backward
from companion._validate import (
    check_int,
    check_real,
    scalar_argument,
)
from companion.contrastive import (
    _check_pair,
    _local_batch_sizes,
    _row_tiles,
    _tile_logits,
)

__all__ = ["SigLipLoss", "siglip_loss"]


# --------------------------------------------------------------------------------------------
# One sweep over the row tiles of s Q K^T + b (companion.contrastive's tiling)
# --------------------------------------------------------------------------------------------


def _sigmoid_sweep(
    queries: Tensor,
    keys: Tensor,
    scale: Tensor,
    bias: Tensor,
    offset: int | None,
    chunk: int,
    grads: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    r"""Sum of :math:`-\log\sigma(z_{ij} L_{ij})` over the tiles, and optionally its gradients.

    ``L = scale * queries @ keys.T + bias``; the positives are the entries ``(i, offset + i)``
    (none when ``offset`` is None: a block of negatives only). With :math:`-\log\sigma(-x) =
    \operatorname{softplus}(x)`, the sum is :math:`\sum_{ij}\operatorname{softplus}(L_{ij}) -
    \sum_i L_{i,o+i}` and its gradient with respect to :math:`L` is
    :math:`G = \sigma(L) - \mathbb 1[j = o + i]`, so :math:`dQ = s\,GK`, :math:`dK = s\,G^\top
    Q`, :math:`ds = \sum_i q_i \cdot (GK)_i` and :math:`db = \sum_{ij} G_{ij}`. Returns
    ``(total, dQ, dK, ds, db)`` (the gradients are None without ``grads``), in the accumulation
    dtype (float32 for half inputs) except ``dQ``.

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
    total = torch.zeros((), dtype=acc, device=device)
    if not grads:
        for start, stop in _row_tiles(m, chunk):
            logits = _tile_logits(scaled_aug[start:stop], keys_aug_t, logits_buf)
            total = total + torch.logaddexp(logits, zero, out=work_buf[: stop - start]).sum()
            if offset is not None:
                rows = torch.arange(stop - start, device=device)
                total = total - logits[rows, rows + (offset + start)].sum()
        return total, None, None, None, None
    d_q = torch.empty_like(queries)
    d_k = torch.zeros(keys.shape, dtype=acc, device=device)
    d_s = torch.zeros((), dtype=acc, device=device)
    d_b = torch.zeros((), dtype=acc, device=device)
    grad_keys_buf = torch.empty((tile, dim + 1), dtype=dtype, device=device)
    for start, stop in _row_tiles(m, chunk):
        logits = _tile_logits(scaled_aug[start:stop], keys_aug_t, logits_buf)
        work = work_buf[: stop - start]
        total = total + torch.logaddexp(logits, zero, out=work).sum()
        grad = torch.sigmoid(logits, out=work)
        if offset is not None:
            rows = torch.arange(stop - start, device=device)
            diagonal = rows + (offset + start)
            total = total - logits[rows, diagonal].sum()
            grad[rows, diagonal] -= 1.0
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


class _TiledSigmoid(torch.autograd.Function):
    """:func:`_sigmoid_sweep` as an autograd function: the gradients come out of the forward.

    The forward sweep computes the gradients with respect to its inputs along with the value
    (when some input needs one) and saves them (``B x D`` each); the backward pass multiplies
    them by the incoming gradient. Nothing of the ``B x B`` matrix is kept or rebuilt.
    """

    @staticmethod
    def forward(
        ctx: Any,
        queries: Tensor,
        keys: Tensor,
        scale: Tensor,
        bias: Tensor,
        chunk: int,
        grads: bool,
    ) -> Tensor:
        total, d_q, d_k, d_s, d_b = _sigmoid_sweep(queries, keys, scale, bias, 0, chunk, grads)
        if grads:
            ctx.save_for_backward(d_q, d_k, d_s, d_b)
        return total.to(queries.dtype)

    @staticmethod
    def backward(
        ctx: Any, grad_total: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, None, None]:
        refuse_double_backward("siglip_loss")
        d_q, d_k, d_s, d_b = ctx.saved_tensors
        need_q, need_k, need_s, need_b = ctx.needs_input_grad[:4]
        g = grad_total
        return (
            d_q * g.to(d_q.dtype) if need_q else None,
            (d_k * g.to(d_k.dtype)).to(d_q.dtype) if need_k else None,
            (d_s * g.to(d_s.dtype)) if need_s else None,
            (d_b * g.to(d_b.dtype)) if need_b else None,
            None,
            None,
        )


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
        return total.to(images.dtype)

    @staticmethod
    def backward(
        ctx: Any, grad_total: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, None, None, None, None, None]:
        refuse_double_backward("siglip_loss")
        images, texts, scale, bias = ctx.saved_tensors
        chunk, sizes, rank, (right, left), group = (
            ctx.chunk,
            ctx.sizes,
            ctx.rank,
            ctx.peers,
            ctx.group,
        )
        world, dim = len(sizes), texts.shape[1]
        g = grad_total.to(compute_dtype(images.dtype))
        _, d_images, d_block, d_scale, d_bias = _sigmoid_sweep(
            images, texts, scale, bias, 0, chunk, True
        )
        assert d_images is not None and d_block is not None
        assert d_scale is not None and d_bias is not None
        d_images = d_images.to(g.dtype)
        # the block and its gradient travel together: one message of width 2D per step
        carried = torch.cat([texts.to(g.dtype), d_block * g], dim=1)
        for step in range(1, world):
            incoming = carried.new_empty((sizes[(rank - step) % world], 2 * dim))
            _exchange(carried, incoming, right, left, group)
            carried = incoming
            block = carried[:, :dim].to(texts.dtype)
            _, d_q, d_k, d_s, d_b = _sigmoid_sweep(images, block, scale, bias, None, chunk, True)
            assert d_q is not None and d_k is not None and d_s is not None and d_b is not None
            d_images += d_q.to(g.dtype)
            d_scale += d_s
            d_bias += d_b
            carried[:, dim:] += d_k * g
        # the block held now belongs to the rank on the right: send its gradient home
        home = carried.new_empty((texts.shape[0], dim))
        if world > 1:
            _exchange(carried[:, dim:], home, right, left, group)
        else:
            home = carried[:, dim:]
        return (
            (d_images * g).to(images.dtype),
            home.to(texts.dtype),
            (d_scale * g).to(scale.dtype),
            (d_bias * g).to(bias.dtype),
            None,
            None,
            None,
            None,
            None,
        )


def _ring_of(group: Any) -> tuple[int, int, tuple[int, int]]:
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
    group: Any = None,
    ring: bool = True,
    batch_sizes: Sequence[int] | None = None,
) -> Tensor:
    r"""The SigLIP loss: a binary cross-entropy for every image-text pair of the batch.

    .. math::

        \mathcal L = -\frac{1}{B} \sum_{i=1}^{B} \sum_{j=1}^{B}
        \log \sigma\bigl(z_{ij}\,(t\, x_i \cdot y_j + b)\bigr),
        \qquad z_{ij} = \begin{cases} +1 & i = j \\ -1 & i \ne j \end{cases}

    (Zhai et al., 2023; open_clip's ``SigLipLoss`` computes the same value). Its gradient with
    respect to the logit :math:`L_{ij}` is :math:`(\sigma(L_{ij}) - \mathbb 1[i = j]) / B`.

    **The scale, not its log.** ``logit_scale`` is :math:`t` itself; SigLIP learns
    :math:`t' = \log t` (open_clip's ``model.logit_scale`` is that log): pass
    ``model.logit_scale.exp()`` (a bare ``nn.Parameter`` is refused), or use
    :class:`SigLipLoss`. ``logit_bias`` is used as it is. The features are used as given:
    L2-normalise them in the model, as SigLIP does.

    **Memory.** ``chunk_size=None`` builds the ``B x B`` logits at once (autograd keeps a few
    such matrices). With an integer ``chunk_size`` at most two ``chunk_size x B`` tiles exist;
    the forward sweep computes the gradients too (each entry's gradient needs nothing but the
    entry), saves them (``B x D``) and the backward pass only scales them. The tiled backward
    pass is not differentiable again (``create_graph=True`` raises a ``RuntimeError``).

    **Across processes.** When :mod:`torch.distributed` is initialised (and ``ring`` is
    True), each rank passes its own pairs; its images meet every rank's texts, which travel
    around the ring of ranks of ``group`` (the default group if None) by ``isend``/``irecv``:
    no all-gather, and no rank holds more than its own and one neighbour's features. The
    backward pass sends each text block around again and its gradient home. Like
    :func:`~companion.contrastive.clip_loss`, each rank returns ``N * (its share of the global
    loss)`` (``N`` ranks), so the returned values average to the single-process loss of all
    ``B`` pairs, and after DDP's gradient averaging every parameter has the single-process
    gradient, for unequal local batches too. The local sizes cost one small ``all_reduce``
    (and a host sync) per call, which ``batch_sizes`` (every rank's local batch size, if
    known) skips. Every rank must call the function and its backward pass.

    **Production.** With value checks off (:func:`companion.set_value_checks`), a forward and
    backward pass makes no host sync in one process, and the function compiles with
    ``torch.compile(fullgraph=True)``.

    Args:
        image_features: this process's image embeddings.
        text_features: the matching text embeddings, same dtype and device.
        logit_scale: :math:`t > 0`, a float or a scalar tensor (which receives a gradient).
        logit_bias: :math:`b`, a float or a scalar tensor (which receives a gradient).
        chunk_size: rows per tile; ``None`` builds the full matrix.
        group: the process group of the ring; None: the default group, when initialised.
        ring: set it to False to compute the loss of this rank's batch alone.
        batch_sizes: under torch.distributed, every rank's local batch size, if known.

    Shape:
        - image_features, text_features: ``(B, D)``; logit_scale, logit_bias: numbers or
          ``()``.
        - output: scalar, in the features' dtype.

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
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", minimum=1)
    distributed = ring and dist.is_available() and dist.is_initialized()
    local = image_features.shape[0]
    if distributed:
        rank, world, peers = _ring_of(group)
        if world > 1:
            sizes = _local_batch_sizes(
                local, rank, world, image_features.device, batch_sizes, group
            )
            chunk = chunk_size if chunk_size is not None else max(sizes)
            total: Tensor = _SigmoidRing.apply(  # type: ignore[no-untyped-call]
                image_features, text_features, scale, bias, chunk, sizes, rank, peers, group
            )
            return total * (world / sum(sizes))
    if chunk_size is None:
        logits = scale.to(image_features.dtype) * (image_features @ text_features.T)
        logits = logits + bias.to(image_features.dtype)
        signs = 2 * torch.eye(local, dtype=logits.dtype, device=logits.device) - 1
        return -F.logsigmoid(signs * logits).sum() / local
    grads = torch.is_grad_enabled() and any(
        x.requires_grad for x in (image_features, text_features, scale, bias)
    )
    total = _TiledSigmoid.apply(  # type: ignore[no-untyped-call]
        image_features, text_features, scale, bias, chunk_size, grads
    )
    return total / local


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
    ) -> None:
        super().__init__()
        check_real(init_log_scale, "init_log_scale")
        check_real(init_bias, "init_bias")
        if chunk_size is not None:
            check_int(chunk_size, "chunk_size", minimum=1)
        self.chunk_size = chunk_size
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
        gradients) and this module's ``chunk_size``; under torch.distributed the ring runs
        over the default group, and ``batch_sizes`` skips the size exchange.
        """
        return siglip_loss(
            image_features,
            text_features,
            self.logit_scale,
            self.bias,
            self.chunk_size,
            batch_sizes=batch_sizes,
        )

    def extra_repr(self) -> str:
        scale = float(self.logit_scale.detach())
        bias = float(self.bias.detach())
        return f"scale={scale:.4g}, bias={bias:.4g}, chunk_size={self.chunk_size}"
