r"""Margin heads for a million classes: class-chunked, sampled (Partial FC) and sharded.

A margin head over :math:`C` classes scores a unit feature :math:`\hat x` against every unit class
centre :math:`\hat w_j` and trains with the cross-entropy of

.. math::

    z_j = s\cos\theta_j \;(j \ne y), \qquad
    z_y = s\,\bigl(\cos(m_1\theta_y + m_2) - m_3\bigr),

the *combined margin* of insightface: ``(1, 0.5, 0)`` is ArcFace, ``(1, 0, 0.35)`` CosFace /
AM-Softmax, ``(m, 0, 0)`` the SphereFace-style multiplicative margin (continued past
:math:`\pi/m` by :func:`companion.margin.multiplicative_angular_margin` so that it keeps
decreasing). The margins themselves come from :mod:`companion.margin`; this module is about
scale. At :math:`C = 10^6`, :math:`D = 512`, :math:`B = 512` the weight is 2 GB, its gradient
2 GB more, and every copy of the :math:`B \times C` logits another 2 GB. Three devices, which
combine:

* **Class chunks** (``chunk_size``): the logits are built ``chunk_size`` classes at a time
  by the package's tiled engine (:mod:`companion._tiled`) and reduced with an online
  log-sum-exp; only one number per row is saved and the tiles are rebuilt in the backward
  pass, where each tile's weight gradient is written straight into the weight's gradient.
  Neither pass ever holds the :math:`B \times C` matrix, nor a normalised copy of the weight.
* **Sampling** (``sample_rate < 1``, Partial FC, An et al. 2021): every class with a positive
  in the batch is kept and the rest of ``ceil(sample_rate * C)`` centres are drawn uniformly
  from the negatives; the softmax runs over the kept centres only. The draw has a fixed size
  (a top-k of random scores with the positives' scores set to :math:`+\infty`), so it needs no
  host sync and compiles. The weight's gradient is exactly zero on the rows not drawn.
* **Shards** (``group``): rank :math:`r` of a ``torch.distributed`` process group holds a
  contiguous slice of the classes; features and targets are gathered (features with their
  gradient) and the softmax normaliser is combined across ranks from a global maximum and an
  all-reduced sum of exponentials. Loss and gradients are exact.

With ``sample_rate=1`` the value and the gradients equal :class:`companion.margin.ArcFaceLoss`
and :class:`companion.margin.AMSoftmaxLoss` with the same weights, chunked or not, sharded or
not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from companion._distributed import (
    ProcessGroup,
    combine_logsumexp,
    gather_rows,
    gather_rows_no_grad,
    local_batch_sizes,
    resolve_group,
    sum_over_ranks,
)
from companion._numerics import compute_dtype, head_dtype_input, normalize
from companion._tiled import row_statistics
from companion._validate import (
    Reduction,
    check_batch_size,
    check_bool,
    check_chunk_size,
    check_class_index,
    check_finite,
    check_int,
    check_positive,
    check_real,
    check_reduction,
    check_tensor,
    class_index_guard,
    reduce_loss,
)
from companion.margin import additive_angular_margin, multiplicative_angular_margin

__all__ = [
    "PartialFC",
    "combined_margin",
    "num_sampled_classes",
    "partial_fc_loss",
    "sample_classes",
    "shard_range",
]

Margin = tuple[float, float, float]


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------


def _check_margin(margin: object) -> Margin:
    if not isinstance(margin, (tuple, list)) or len(margin) != 3:
        raise TypeError(
            f"margin must be a tuple (m1, m2, m3) of three numbers, got {margin!r}; ArcFace is "
            "(1, 0.5, 0), CosFace (1, 0, 0.35), SphereFace-style (m, 0, 0)"
        )
    m1 = check_real(margin[0], "margin[0] (m1)")
    m2 = check_real(margin[1], "margin[1] (m2)")
    m3 = check_real(margin[2], "margin[2] (m3)")
    if m1 < 1:
        raise ValueError(
            f"margin[0] (m1) must be at least 1 (1 is no multiplicative margin), got {m1}"
        )
    if not 0 <= m2 < math.pi:
        raise ValueError(f"margin[1] (m2) must be an angle in radians in [0, pi), got {m2}")
    if m3 < 0:
        raise ValueError(f"margin[2] (m3) must be non-negative, got {m3}")
    if m1 != 1 and m2 != 0:
        raise ValueError(
            f"margin=({m1:g}, {m2:g}, {m3:g}) combines a multiplicative margin m1 != 1 with an "
            "additive angular margin m2 != 0; the monotone continuation of cos(m1*theta + m2) "
            "is not derived here: use m1 = 1 (ArcFace/CosFace) or m2 = 0 (SphereFace-style)"
        )
    return m1, m2, m3


def _check_sample_rate(sample_rate: object) -> float:
    rate = check_real(sample_rate, "sample_rate")
    if not 0 < rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {rate}")
    return rate


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """The contiguous slice ``[start, stop)`` of the classes that ``rank`` holds.

    The classes are split as evenly as possible: the first ``num_classes % world_size`` ranks
    hold one class more than the others. Every rank must hold at least one class.

    Examples:
        >>> [shard_range(10, 3, r) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    check_int(num_classes, "num_classes", minimum=1)
    check_int(world_size, "world_size", minimum=1)
    check_int(rank, "rank", minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be below world_size ({world_size}), got {rank}")
    if world_size > num_classes:
        raise ValueError(
            f"group has {world_size} processes but there are only {num_classes} classes: "
            "every process must hold at least one class centre; use a smaller group"
        )
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def num_sampled_classes(num_local: int, sample_rate: float, batch_size: int) -> int:
    """How many class centres a (shard of a) Partial FC head keeps per step.

    ``ceil(sample_rate * num_local)``, raised to ``batch_size`` when that is larger (so that
    every positive of the batch always fits in a set of fixed size), and at most
    ``num_local``.

    Examples:
        >>> num_sampled_classes(1000, 0.1, 64), num_sampled_classes(1000, 0.01, 64)
        (100, 64)
    """
    check_int(num_local, "num_local", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    return _num_sampled(num_local, _check_sample_rate(sample_rate), batch_size)


def _num_sampled(num_local: int, rate: float, batch_size: int) -> int:
    count = _rate_count(num_local, rate)
    return num_local if count is None else min(num_local, max(count, batch_size))


def _rate_count(num_local: int, rate: float) -> int | None:
    """``ceil(rate * num_local)``, or None when every class is kept (rate 1)."""
    return None if rate >= 1 else math.ceil(rate * num_local)


# --------------------------------------------------------------------------------------------
# the target logit: reuses companion.margin
# --------------------------------------------------------------------------------------------


def combined_margin(cosine: Tensor, margin: tuple[float, float, float]) -> Tensor:
    r"""The combined-margin target function :math:`\cos(m_1\theta + m_2) - m_3`, from the cosine.

    Built from :mod:`companion.margin`'s transforms: for :math:`m_2 = 0`,
    :func:`~companion.margin.multiplicative_angular_margin` (:math:`\psi_{m_1}`, the monotone
    extension of :math:`\cos(m_1\theta)`); for :math:`m_1 = 1`,
    :func:`~companion.margin.additive_angular_margin` (ArcFace's :math:`\cos(\theta + m_2)`
    with its decreasing fallback past :math:`\pi - m_2`: the fallback of insightface's MXNet
    code and of its ``arcface_torch`` during 2022, which its ``CombinedMarginLoss`` dropped in
    December 2022, commit ``657ae30``; see that function for the versions it matches); then
    :math:`m_3` is subtracted.
    :math:`m_1 \ne 1` together with :math:`m_2 \ne 0` is refused.

    Args:
        cosine: floating tensor of cosines, any shape.
        margin: ``(m1, m2, m3)`` with :math:`m_1 \ge 1`, :math:`m_2 \in [0, \pi)` radians,
            :math:`m_3 \ge 0`.

    Examples:
        >>> c = torch.tensor([1.0, 0.5, 0.0])
        >>> torch.allclose(combined_margin(c, (1, 0, 0.35)), c - 0.35)
        True
        >>> torch.allclose(combined_margin(c, (1, 0.5, 0)), torch.cos(torch.acos(c) + 0.5))
        True
    """
    return _combined(cosine, _check_margin(margin))


def _combined(cosine: Tensor, margin: Margin) -> Tensor:
    """:func:`combined_margin` without the argument checks (already done)."""
    m1, m2, m3 = margin
    if m2 == 0:
        phi = cosine if m1 == 1 else multiplicative_angular_margin(cosine, m1)
    else:
        phi = additive_angular_margin(cosine, m2)
    return phi - m3 if m3 != 0 else phi


# --------------------------------------------------------------------------------------------
# the class-chunked log-sum-exp
# --------------------------------------------------------------------------------------------


def _rest_and_target(
    x_hat: Tensor, weight: Tensor, target: Tensor, owned: Tensor, scale: float, chunk: int | None
) -> tuple[Tensor, Tensor]:
    r"""``(r, c)`` per row: :math:`r_i = \log\sum_{j \ne y_i} e^{s \hat x_i\cdot\hat w_j}` (the
    target excluded only in rows whose target this process owns) and the target cosine
    :math:`c_i = \hat x_i \cdot \hat w_{y_i}`, in at least float32.

    With ``chunk`` they come from the package's tiled engine
    (:func:`companion._tiled.row_statistics`, class chunks of ``chunk`` centres, each normalised
    inside its tile): neither pass holds the ``B x C`` logits or a normalised copy of the weight,
    and the weight's gradient is written tile by tile."""
    if chunk is not None:
        stats = row_statistics(
            x_hat, weight, target, owned, scale=scale, normalize_weight=True, column_chunk=chunk
        )
        return stats.rest, stats.target / scale
    acc = compute_dtype(x_hat.dtype)
    cos = (x_hat @ normalize(weight).T).to(acc)  # a zero centre divided by 1, as in the tiles
    rows = torch.arange(cos.shape[0], device=cos.device)
    cosine = cos[rows, target]
    minus_inf = torch.full_like(cosine, -math.inf)
    logits = (cos * scale).index_put((rows, target), torch.where(owned, minus_inf, cosine * scale))
    return torch.logsumexp(logits, dim=1), cosine


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------


def sample_classes(
    target: Tensor,
    owned: Tensor,
    num_local: int,
    num_sampled: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The kept classes of a Partial FC step: all owned positives plus uniform negatives.

    Every class ``target[i]`` with ``owned[i]`` true is kept; the rest of the ``num_sampled``
    slots go to a uniformly random subset of the other classes. It is a top-k of random scores
    in which the positives score :math:`+\\infty` (the rows not owned write theirs into a spare
    slot), so the result has a fixed size and no step waits for the device.

    Args:
        target: ``(B,)`` local class indices (anything for rows not owned).
        owned: ``(B,)`` bool: whether the row's class lives in this shard.
        num_local: number of classes in this shard.
        num_sampled: how many to keep; at least the number of distinct owned positives.
        generator: the random generator (reproducible draws), on the device of ``target``.

    Returns:
        The sorted indices of the kept classes, shape ``(num_sampled,)``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> kept = sample_classes(torch.tensor([3, 7]), torch.tensor([True, True]), 10, 4, g)
        >>> kept.numel(), bool(torch.isin(torch.tensor([3, 7]), kept).all())
        (4, True)
    """
    scores = torch.rand(num_local + 1, generator=generator, device=target.device)
    slot = torch.where(owned, target.clamp(0, num_local - 1), num_local)
    scores = scores.index_fill(0, slot, math.inf)
    kept = torch.topk(scores[:num_local], num_sampled, sorted=False).indices
    return torch.sort(kept).values


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------


def partial_fc_loss(
    features: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    margin: tuple[float, float, float] = (1.0, 0.5, 0.0),
    scale: float = 64.0,
    sample_rate: float = 1.0,
    chunk_size: int | None = None,
    sparse: bool = False,
    group: ProcessGroup | None = None,
    num_classes: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    reduction: Reduction = "mean",
    generator: torch.Generator | None = None,
    return_sampled: bool = False,
) -> Any:
    r"""The combined-margin softmax loss over (a shard of) many classes, chunked and/or sampled.

    .. math::

        \ell_i = -\log \frac{e^{t_i}}{e^{t_i} + \sum_{j \in K \setminus y_i} e^{s\cos\theta_{ij}}},
        \qquad t_i = s\bigl(\cos(m_1\theta_{i y_i} + m_2) - m_3\bigr),
        \qquad \cos\theta_{ij} = \frac{x_i \cdot w_j}{\lVert x_i\rVert\,\lVert w_j\rVert},

    with :math:`K` all classes (``sample_rate=1``) or the kept set of Partial FC. The arguments
    come in the order of :func:`torch.nn.functional.linear_cross_entropy`: the features, the
    class matrix, the targets.

    **Chunks.** With ``chunk_size`` the logits exist only ``B x chunk_size`` at a time, in the
    forward and in the backward pass (the package's tiled engine, :mod:`companion._tiled`); the
    result is the same.

    **Sampling.** With ``sample_rate < 1``, each step keeps the classes of the batch's targets
    and fills up to :func:`num_sampled_classes` centres with uniformly drawn others
    (:func:`sample_classes`, reproducible with ``generator``). This is Partial FC's softmax
    over the kept centres, *without* a :math:`\log q` correction (it is a biased estimate of
    the full loss). The weight's gradient is exactly zero on the rows not kept; with
    ``sparse=True`` it is a sparse tensor that holds only the kept rows (as with
    ``nn.Embedding(sparse=True)``; ``torch.optim.SGD`` and ``SparseAdam`` accept it), so a step
    never allocates, zero-fills or indexes the dense ``C x D`` gradient.

    **Shards.** With ``group``, ``weight`` is this rank's contiguous slice
    :func:`shard_range` ``(num_classes, world, rank)`` of the class centres and each rank passes
    its own ``features`` and ``target`` (local batch sizes may differ). The convention is the
    package's one for every distributed loss (:mod:`companion._distributed`): every rank returns
    the **same value, the loss of the global batch** (for ``reduction="none"``, the
    ``(B_global,)`` vector of every rank's rows in rank order); the weight shard receives exactly
    the gradient of that loss; the local ``features`` receive **N times** its gradient (N the
    world size), so that :class:`~torch.nn.parallel.DistributedDataParallel`'s average over ranks
    gives every backbone parameter the single-process gradient. Wrap only the backbone in DDP:
    the head's shards differ between ranks and must not be averaged. Sampling is per shard: each
    rank keeps ``num_sampled_classes(shard size, sample_rate, B_global)`` of its own classes.
    Learning the ranks' batch sizes costs one all-reduce and a host sync per call, which
    ``batch_sizes`` skips.

    **Precision.** Features in a lower precision than the weight (the usual mixed-precision
    pattern: a backbone under ``torch.autocast`` feeding a float32 head) are cast up to the
    weight's dtype; the loss is computed and returned in that precision (log-sum-exps in at least
    float32), and the features' gradient comes back in their own dtype.

    **Targets.** Class indices outside ``[0, num_classes)`` raise a ``ValueError`` naming
    ``target`` even with value checks off (the check happens inside an indexing kernel, without
    a host sync).

    Args:
        features: ``(B, D)`` features (normalised here).
        weight: ``(C_local, D)`` class centres (this rank's slice; all of them for one process).
        target: ``(B,)`` global class indices in ``[0, num_classes)``.
        margin: ``(m1, m2, m3)``; ArcFace ``(1, 0.5, 0)``, CosFace ``(1, 0, 0.35)``.
        scale: :math:`s > 0`.
        sample_rate: fraction of the classes kept per step, in ``(0, 1]``.
        chunk_size: classes per tile; ``None`` builds the ``B x C_local`` logits at once.
        sparse: give ``weight`` a sparse gradient holding only the kept rows.
        group: a ``torch.distributed`` process group to shard over, or ``None`` (one process,
            even inside a distributed job).
        num_classes: the number of classes in all shards; by default ``weight.shape[0]``
            (required with ``group``).
        batch_sizes: with ``group``, every rank's local batch size, if known (no size exchange).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (over the global batch).
        generator: draws the sampled classes (a ``torch.Generator`` on the features' device;
            each rank passes its own). ``None`` uses torch's global generator. Not available
            under ``torch.compile``.
        return_sampled: also return the sorted local indices of the kept classes (all of them
            for ``sample_rate=1``).

    Returns:
        The loss (and, with ``return_sampled``, the kept indices).

    Reference: An et al., *Partial FC: Training 10 Million Identities on a Single Machine*,
    ICCV Workshops 2021; Deng et al., *ArcFace*, CVPR 2019.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, w = torch.randn(8, 16, generator=g), torch.randn(100, 16, generator=g)
        >>> y = torch.randint(100, (8,), generator=g)
        >>> full = partial_fc_loss(x, w, y, margin=(1, 0.5, 0), scale=16)
        >>> tiled = partial_fc_loss(x, w, y, margin=(1, 0.5, 0), scale=16, chunk_size=32)
        >>> bool(torch.allclose(full, tiled))
        True
    """
    m = _check_margin(margin)
    s = check_positive(scale, "scale")
    rate = _check_sample_rate(sample_rate)
    chunk = check_chunk_size(chunk_size)
    sparse = check_bool(sparse, "sparse")
    check_reduction(reduction)
    w = check_tensor(weight, "weight", ndim=2)
    rank, world = resolve_group(group)
    if num_classes is None:
        if group is not None:
            raise ValueError("num_classes must be given with group (the classes of all shards)")
        num_classes = w.shape[0]
    check_int(num_classes, "num_classes", minimum=2)
    start, stop = shard_range(num_classes, world, rank)
    if w.shape[0] != stop - start:
        raise ValueError(
            f"weight must hold this rank's {stop - start} classes [{start}, {stop}) of "
            f"{num_classes} (rank {rank} of {world}), got shape {tuple(w.shape)}"
        )
    check_finite(w, "weight")
    x, y = _check_batch(features, target, w.shape[1], w, num_classes)
    loss, kept = _partial_fc(
        x,
        y,
        w,
        m,
        s,
        _rate_count(w.shape[0], rate),
        chunk,
        sparse,
        group,
        batch_sizes,
        num_classes,
        start,
        reduction,
        generator,
    )
    if return_sampled:
        return loss, kept
    return loss


def _check_batch(
    features: object, target: object, in_features: int, weight: Tensor, num_classes: int
) -> tuple[Tensor, Tensor]:
    """The per-call tensor checks: features ``(B, D)`` like ``weight``, targets in range."""
    x = head_dtype_input(check_tensor(features, "features", ndim=2), weight)
    if x.shape[1] != in_features:
        raise ValueError(
            f"features must have shape (batch, {in_features}) to match the class centres "
            f"{tuple(weight.shape)}, got {tuple(x.shape)}"
        )
    check_finite(x, "features")
    if isinstance(target, Tensor) and target.dim() >= 1:
        check_batch_size(x, "features", target, "target")
    y = check_class_index(target, "target", num_classes, batch_shape=(x.shape[0],))
    return x, y


def _partial_fc(
    x: Tensor,
    y: Tensor,
    w: Tensor,
    m: Margin,
    s: float,
    keep: int | None,
    chunk: int | None,
    sparse: bool,
    group: ProcessGroup | None,
    batch_sizes: Sequence[int] | None,
    num_classes: int,
    start: int,
    reduction: str,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """The loss, arguments already checked; returns it with the kept local class indices."""
    if generator is not None and torch.compiler.is_compiling():
        raise ValueError(
            "generator is not supported under torch.compile (a torch.Generator cannot be traced); "
            "pass generator=None, seeding torch's global generator with torch.manual_seed instead"
        )
    # an out-of-range class index fails inside this indexing kernel, checks on or off
    x = x + class_index_guard(y, "target", num_classes, x.dtype)[:, None]
    if group is not None:
        sizes = local_batch_sizes(x.shape[0], group, batch_sizes, x.device)
        x = gather_rows(x, sizes, group)
        y = gather_rows_no_grad(y, sizes, group)
    elif batch_sizes is not None:
        raise ValueError("batch_sizes is only used with group (a distributed call); got group=None")

    local = y - start
    owned = (local >= 0) & (local < w.shape[0])
    local = local.clamp(0, w.shape[0] - 1)
    if keep is not None:
        count = min(w.shape[0], max(keep, x.shape[0]))
        kept = sample_classes(local, owned, w.shape[0], count, generator)
        # the rows not kept get exactly zero gradient; sparse: a gradient of the kept rows only
        active = F.embedding(kept, w, sparse=True) if sparse else w.index_select(0, kept)
        position = torch.searchsorted(kept, local).clamp(0, kept.shape[0] - 1)
    else:
        kept = torch.arange(w.shape[0], device=w.device)
        active = F.embedding(kept, w, sparse=True) if sparse else w
        position = local

    x_hat = normalize(x)  # the package's one rule: a zero row is divided by 1
    rest, cosine = _rest_and_target(x_hat, active, position, owned, s, chunk)
    t = s * _combined(cosine.clamp(-1, 1), m)
    t = torch.where(owned, t, torch.zeros_like(t))  # the target logit lives on one rank only
    if group is not None:
        rest = combine_logsumexp(rest, group)
        t = sum_over_ranks(t, group)
    # log(e^t + e^r) - t; r = -inf (no other class) gives 0
    loss = torch.logaddexp(rest, t) - t
    return reduce_loss(loss, reduction).to(x.dtype), kept


class PartialFC(nn.Module):
    r"""A combined-margin head for very many classes: chunked, sampled, sharded.

    Owns ``weight`` of shape ``(num_local, in_features)``: all class centres for one process,
    or this rank's contiguous slice ``[class_start, class_start + num_local)`` under ``group``
    (:func:`shard_range`). ``forward(features, target)`` returns :func:`partial_fc_loss`; see
    there for the chunks, the sampling and the distributed convention (every rank returns the
    global loss; features get N times its gradient, for DDP's average; keep this module out of
    the DDP wrapper). After a sampled forward, :attr:`last_sampled` holds the sorted local
    indices of the kept centres.

    **Optimisers and the rows not drawn.** Their gradient is exactly zero, but an optimiser
    with state still moves them: SGD with momentum :math:`\mu` applies
    :math:`-\eta\mu^k v` to a row :math:`k` steps after it was last drawn, coupled weight decay
    keeps shrinking it, and Adam keeps stepping by :math:`\hat m/\sqrt{\hat v}`, which decays
    only like :math:`(\beta_1/\sqrt{\beta_2})^k`. insightface's first Partial FC kept a separate
    momentum bank and handed the optimiser only the drawn rows (undrawn rows frozen, their
    momentum resumed when drawn again); its ``PartialFC_V2`` indexes the parameter directly,
    so the optimiser keeps moving undrawn rows, as here (the chapter checks it step by step).

    Args:
        in_features: feature dimension ``D``.
        num_classes: number of classes ``C`` over all shards.
        margin: ``(m1, m2, m3)``: ArcFace ``(1, 0.5, 0)`` (default), CosFace ``(1, 0, 0.35)``,
            SphereFace-style ``(m, 0, 0)``.
        scale: :math:`s > 0` (default 64).
        sample_rate: in ``(0, 1]``; 1 keeps every class.
        chunk_size: classes per tile, or ``None``.
        sparse: give ``weight`` a sparse gradient holding only the kept rows.
        group: process group to shard over, or ``None``.
        batch_sizes: with ``group``, every rank's local batch size if it is always the same (no
            size exchange, no host sync); ``forward`` also takes it per call.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Examples:
        >>> head = PartialFC(16, 1000, margin=(1, 0, 0.35), scale=30, sample_rate=0.1)
        >>> loss = head(torch.randn(8, 16), torch.randint(1000, (8,)))
        >>> loss.backward()
        >>> int((head.weight.grad.abs().sum(1) > 0).sum()) <= 100
        True
    """

    weight: nn.Parameter

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        margin: tuple[float, float, float] = (1.0, 0.5, 0.0),
        scale: float = 64.0,
        sample_rate: float = 1.0,
        chunk_size: int | None = None,
        sparse: bool = False,
        group: ProcessGroup | None = None,
        batch_sizes: Sequence[int] | None = None,
        reduction: Reduction = "mean",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features", minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        self.margin = _check_margin(margin)
        self.scale = check_positive(scale, "scale")
        self.sample_rate = _check_sample_rate(sample_rate)
        self.chunk_size = check_chunk_size(chunk_size)
        self.sparse = check_bool(sparse, "sparse")
        self.reduction = check_reduction(reduction)
        self.group = group
        self.rank, self.world_size = resolve_group(group)
        self.batch_sizes = None if batch_sizes is None else tuple(batch_sizes)
        self.class_start, stop = shard_range(num_classes, self.world_size, self.rank)
        self.num_local = stop - self.class_start
        self._keep = _rate_count(self.num_local, self.sample_rate)
        self.weight = nn.Parameter(
            torch.empty(self.num_local, in_features, device=device, dtype=dtype)
        )
        self.last_sampled: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Centres drawn from N(0, 0.01^2) (only their directions matter)."""
        nn.init.normal_(self.weight, std=0.01)

    def forward(
        self,
        features: Tensor,
        target: Tensor,
        *,
        batch_sizes: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The loss of ``features`` ``(B, D)`` with global class indices ``target`` ``(B,)``."""
        x, y = _check_batch(features, target, self.in_features, self.weight, self.num_classes)
        loss, kept = _partial_fc(
            x,
            y,
            self.weight,
            self.margin,
            self.scale,
            self._keep,
            self.chunk_size,
            self.sparse,
            self.group,
            self.batch_sizes if batch_sizes is None else batch_sizes,
            self.num_classes,
            self.class_start,
            self.reduction,
            generator,
        )
        self.last_sampled = kept.detach() if self._keep is not None else None
        return loss

    @torch.no_grad()
    def logits(self, features: Tensor) -> Tensor:
        r"""Plain logits :math:`s\cos\theta_j` over this rank's classes, ``(B, num_local)``."""
        x = normalize(check_tensor(features, "features", ndim=2))
        return (x * self.scale) @ normalize(self.weight).T

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        shard = (
            f", shard=[{self.class_start}, {self.class_start + self.num_local})"
            if self.world_size > 1
            else ""
        )
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"margin={self.margin}, scale={self.scale:g}, sample_rate={self.sample_rate:g}, "
            f"chunk_size={self.chunk_size}, sparse={self.sparse}, "
            f"reduction={self.reduction!r}{shard}"
        )
