r"""Losses that learn an embedding space: contrastive, triplet, InfoNCE, SupCon and CLIP.

Instead of a probability over a fixed list of classes, these losses shape a space in which
distances (or dot products) mean similarity:

* :func:`contrastive_loss` pulls matching pairs together and pushes non-matching pairs at least
  a margin apart (Hadsell, Chopra and LeCun, 2006).
* :func:`triplet_loss` asks an anchor to be closer to a positive than to a negative, by a margin
  (Weinberger and Saul, 2009; Schroff, Kalenichenko and Philbin, 2015).
* :func:`info_nce_loss` turns the other items of a batch into negatives and scores each query
  with a softmax cross-entropy over all keys (van den Oord, Li and Vinyals, 2018).
* :func:`supervised_contrastive_loss` is InfoNCE with labels: every other sample of the same
  label is a positive (Khosla et al., 2020).
* :func:`clip_loss` is InfoNCE in both directions over the ``B x B`` image-text similarity
  matrix (Radford et al., 2021). With ``chunk_size`` it never holds more than
  ``chunk_size x B`` of that matrix, in the forward or the backward pass; under
  ``group=`` (a ``torch.distributed`` process group) it gathers the other processes' features
  with their gradients.
  :class:`ClipLoss` owns the learnable temperature (as its logarithm).
* :func:`soft_target_clip_loss` replaces the identity targets by a softmax of the averaged
  within-modality similarities, so near-duplicates inside a batch share the credit.

torch ships a triplet loss (:func:`torch.nn.functional.triplet_margin_loss`); the one here is
the readable version, tested against it. torch ships no CLIP loss: :func:`clip_loss` is meant
for real training. With value checks off (:func:`companion.set_value_checks`), one forward and
backward pass of :func:`clip_loss` and :class:`ClipLoss` makes no host sync and compiles with
``torch.compile(fullgraph=True)``.

The chunked CLIP loss is a user of the package's one tiled engine (:mod:`companion._tiled`), and
its distributed form of the one distributed layer (:mod:`companion._distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
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
from companion._numerics import compute_dtype
from companion._tiled import row_statistics
from companion._validate import (
    Reduction,
    check_batch_size,
    check_binary,
    check_bool,
    check_chunk_size,
    check_finite,
    check_integer_labels,
    check_positive,
    check_reduction,
    check_same_dtype_device,
    check_same_shape,
    check_shape,
    check_tensor,
    reduce_loss,
    scalar_argument,
)

__all__ = [
    "ClipLoss",
    "clip_loss",
    "contrastive_loss",
    "info_nce_loss",
    "soft_target_clip_loss",
    "supervised_contrastive_loss",
    "triplet_loss",
]


# --------------------------------------------------------------------------------------------
# Input checks shared by the losses of this module (compositions of companion._validate)
# --------------------------------------------------------------------------------------------


def _check_pair(a: Tensor, name_a: str, b: Tensor, name_b: str, *, mined: bool = False) -> None:
    """Two non-empty 2-D floating tensors of the same shape, dtype and device, finite.

    ``mined``: the rows are pairs or triplets a miner picked, and it may have picked none: a
    batch of zero rows is accepted (an empty feature dimension still is not).
    """
    check_tensor(a, name_a, ndim=2, allow_empty=mined)
    check_tensor(b, name_b, ndim=2, allow_empty=mined)
    for x, name in ((a, name_a), (b, name_b)):
        if mined and x.shape[1] == 0:
            raise ValueError(f"{name} must not be empty (no features), got shape {tuple(x.shape)}")
    if a.shape[0] != b.shape[0]:
        check_batch_size(a, name_a, b, name_b)
    check_same_shape(a, name_a, b, name_b)
    check_same_dtype_device(a, name_a, b, name_b)
    check_finite(a, name_a)
    check_finite(b, name_b)


def _binary_mask(same: object, name: str, like: Tensor) -> Tensor:
    """A ``(B,)`` bool or 0/1 tensor on ``like``'s device, as ``like``'s dtype (``B`` may be 0)."""
    check_tensor(same, name, ndim=1, floating=False, allow_empty=True)
    assert isinstance(same, Tensor)
    check_shape(same, name, (like.shape[0],))
    if same.device != like.device:
        raise ValueError(
            f"{name} must be on the same device as x1 ({like.device}), got {same.device}"
        )
    return check_binary(same, name).to(like.dtype)


# --------------------------------------------------------------------------------------------
# Pairs and triplets
# --------------------------------------------------------------------------------------------


def _reduce_mined(loss: Tensor, reduction: str) -> Tensor:
    """:func:`reduce_loss` for mined pairs or triplets, where a miner may have found none.

    The mean of no pairs is 0 (not ``0 / 0``): the sum of the empty per-pair loss, which is
    still connected to the graph, so a backward pass runs and gives zero gradients.
    """
    if loss.shape[0] == 0 and reduction == "mean":
        return reduce_loss(loss, "sum")
    return reduce_loss(loss, reduction)


def contrastive_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The contrastive loss of Hadsell, Chopra and LeCun (2006) on pairs of embeddings.

    With :math:`d_i = \lVert x_{1,i} - x_{2,i} \rVert_2` and :math:`y_i = 1` for a matching
    pair,

    .. math::

        \ell_i = y_i \, \tfrac12 d_i^2 + (1 - y_i) \, \tfrac12 \max(0, m - d_i)^2 .

    Matching pairs are pulled together; non-matching pairs are pushed apart only until they
    are ``margin`` apart. The paper writes :math:`Y = 0` for a similar pair; here ``target`` is
    1 (or True) for a similar pair, which reads more naturally.

    **No pairs.** When a miner finds no pair (``B = 0``), the loss is 0 for ``"mean"`` and
    ``"sum"`` and an empty ``(0,)`` tensor for ``"none"``, connected to the graph: the backward
    pass runs and gives zero gradients, so training goes on (as in pytorch-metric-learning).

    Args:
        input1, input2: embeddings, same dtype and device (the names of
            :func:`torch.nn.functional.cosine_embedding_loss`).
        target: bool or 0/1 numbers: 1 where the pair matches.
        margin: :math:`m > 0`, the distance beyond which a non-matching pair costs nothing.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Shape:
        - input1, input2: ``(B, D)``; target: ``(B,)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.contrastive import contrastive_loss
        >>> x1 = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
        >>> x2 = torch.tensor([[0.6, 0.8], [0.3, 0.4]])
        >>> contrastive_loss(x1, x2, torch.tensor([True, False]), reduction="none")
        tensor([0.5000, 0.1250])
    """
    _check_pair(input1, "input1", input2, "input2", mined=True)
    same_f = _binary_mask(target, "target", input1)
    check_positive(margin, "margin")
    check_reduction(reduction)
    diff = input1 - input2
    squared = diff.pow(2).sum(dim=1)
    # vector_norm's gradient at 0 is 0 (a subgradient), so identical non-matching pairs are safe
    distance = torch.linalg.vector_norm(diff, dim=1)
    pull = 0.5 * squared
    push = 0.5 * torch.clamp(margin - distance, min=0).pow(2)
    return _reduce_mined(same_f * pull + (1 - same_f) * push, reduction)


def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    reduction: Reduction = "mean",
    *,
    squared: bool = False,
) -> Tensor:
    r"""The triplet loss: an anchor must be closer to its positive than to its negative.

    .. math::

        \ell_i = \max\bigl(0,\; d(a_i, p_i) - d(a_i, n_i) + m\bigr),

    with the Euclidean distance :math:`d` (as :func:`torch.nn.functional.triplet_margin_loss`
    with ``p=2``, minus its ``eps``), or its square with ``squared=True`` (as in FaceNet,
    Schroff et al. 2015, and the large-margin nearest neighbours of Weinberger and Saul, 2009).

    **No triplets.** When a miner finds no triplet (``B = 0``), the loss is 0 for ``"mean"`` and
    ``"sum"`` and an empty ``(0,)`` tensor for ``"none"``, connected to the graph: the backward
    pass runs and gives zero gradients, so training goes on (as in pytorch-metric-learning).

    Args:
        anchor, positive, negative: embeddings, same dtype and device.
        margin: :math:`m > 0`.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        squared: use squared distances.

    Shape:
        - anchor, positive, negative: ``(B, D)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.contrastive import triplet_loss
        >>> a = torch.tensor([[0.0, 0.0]])
        >>> triplet_loss(a, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.5]]), margin=1.0)
        tensor(0.5000)
    """
    _check_pair(anchor, "anchor", positive, "positive", mined=True)
    _check_pair(anchor, "anchor", negative, "negative", mined=True)
    check_positive(margin, "margin")
    check_reduction(reduction)
    if squared:
        d_pos = (anchor - positive).pow(2).sum(dim=1)
        d_neg = (anchor - negative).pow(2).sum(dim=1)
    else:
        d_pos = torch.linalg.vector_norm(anchor - positive, dim=1)
        d_neg = torch.linalg.vector_norm(anchor - negative, dim=1)
    return _reduce_mined(torch.clamp(d_pos - d_neg + margin, min=0), reduction)


# --------------------------------------------------------------------------------------------
# InfoNCE, and InfoNCE with labels
# --------------------------------------------------------------------------------------------


def info_nce_loss(
    query: Tensor, key: Tensor, temperature: float = 0.07, reduction: Reduction = "mean"
) -> Tensor:
    r"""InfoNCE with in-batch negatives: key ``i`` is query ``i``'s positive, the rest negatives.

    .. math::

        \ell_i = -\log \frac{\exp(q_i \cdot k_i / \tau)}{\sum_{j=1}^{B} \exp(q_i \cdot k_j / \tau)}
        = \operatorname{logsumexp}_j (q_i \cdot k_j / \tau) - q_i \cdot k_i / \tau,

    a softmax cross-entropy whose "classes" are the keys of the batch (van den Oord, Li and
    Vinyals, 2018; the N-pair loss of Sohn, 2016, is the same with :math:`\tau = 1`).

    The features are used as given: normalise them first (``F.normalize``) for the cosine
    similarity that the temperature is usually tuned for.

    Args:
        query, key: same dtype and device.
        temperature: :math:`\tau > 0`.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Shape:
        - query, key: ``(B, D)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.contrastive import info_nce_loss
        >>> q = torch.eye(3)
        >>> info_nce_loss(q, q, temperature=1.0)  # log(e + 2) - 1
        tensor(0.5514)
    """
    _check_pair(query, "query", key, "key")
    check_positive(temperature, "temperature")
    check_reduction(reduction)
    logits = query @ key.T / temperature
    labels = torch.arange(query.shape[0], device=query.device)
    return reduce_loss(F.cross_entropy(logits, labels, reduction="none"), reduction)


def supervised_contrastive_loss(
    features: Tensor,
    target: Tensor,
    temperature: float = 0.1,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Supervised contrastive loss (SupCon), the paper's :math:`\mathcal L_{\text{out}}` form.

    InfoNCE with labels (Khosla et al., 2020): every other sample with the anchor's label is a
    positive, every other sample a term of the denominator. For anchor :math:`i` with positives
    :math:`P(i) = \{p \ne i : y_p = y_i\}` and :math:`A(i) = \{a \ne i\}`,

    .. math::

        \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
        \log \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \in A(i)} \exp(z_i \cdot z_a / \tau)} .

    The :math:`1/|P(i)|` sits outside the log (the paper's "out" form, which it finds better
    than the "in" form). When every label appears exactly twice this is the InfoNCE of SimCLR
    (NT-Xent) over the :math:`2N` views.

    **An anchor with no positive** (a label that appears once) has nothing to pull towards:
    its :math:`\ell_i` is 0 (``reduction="none"``) and it is left out of the mean, which
    averages over the anchors that have at least one positive; a batch without any positive
    pair gives 0 with a zero gradient. This is what pytorch-metric-learning's ``SupConLoss``
    returns too (the original code gives NaN). Unlike ``SupConLoss``, a batch in which every
    sample has the same label (no negatives) still gets the formula's value, not 0. The mean is
    the package's weighted mean (:func:`companion._validate.reduce_loss`, with weight 1 for an
    anchor with a positive and 0 for one without), computed in float32 for float16 and
    bfloat16 features, then cast back: 2,048 float16 anchors with a loss near 47 each have a
    mean of 47, though their sum passes float16's largest value, 65,504.

    The features are used as given: L2-normalise them first, as the paper does (and as
    ``SupConLoss`` does inside its cosine similarity).

    Args:
        features: embeddings ``(N, D)``, or ``(N, V, D)`` for ``V`` views of each of ``N``
            samples (the views of sample ``n`` share its label, as in the paper's code).
        target: integer labels ``(N,)``, any values (equal labels make a positive pair).
        temperature: :math:`\tau > 0` (the paper uses 0.1).
        reduction: ``"none"``, ``"mean"`` (over anchors with a positive) or ``"sum"``.

    Shape:
        - features: ``(N, D)`` or ``(N, V, D)``; target: ``(N,)``.
        - output: scalar, or ``(N,)`` (``(N * V,)`` with views, view-major: all first views,
          then all second views) with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.contrastive import supervised_contrastive_loss
        >>> z = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.2], [-1.0, -0.2]]))
        >>> loss = supervised_contrastive_loss(z, torch.tensor([0, 0, 1, 1]), temperature=0.5)
        >>> round(float(loss), 4)
        0.0416
    """
    check_tensor(features, "features", ndim=(2, 3))
    check_finite(features, "features")
    check_positive(temperature, "temperature")
    check_reduction(reduction)
    n = features.shape[0]
    y = check_integer_labels(target, "target", n, features)
    if features.dim() == 3:
        views = features.shape[1]
        z = features.transpose(0, 1).reshape(n * views, features.shape[2])
        y = y.repeat(views)
    else:
        z = features
    work = compute_dtype(z.dtype)
    logits = (z @ z.T).to(work) / temperature
    self_mask = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, -math.inf)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (y[:, None] == y[None, :]) & ~self_mask
    count = positive.sum(dim=1)
    # where=positive keeps -inf (the diagonal) and the negatives out of the sum
    total = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = -total / count.clamp(min=1)
    # weight 0 leaves the anchors without a positive out of the mean (their loss is 0 anyway)
    return reduce_loss(per_anchor, reduction, (count > 0).to(work)).to(z.dtype)


# --------------------------------------------------------------------------------------------
# The chunked CLIP cross-entropies: a user of the tiled engine (companion._tiled)
# --------------------------------------------------------------------------------------------


def _pair_cross_entropies(
    queries: Tensor,
    keys: Tensor,
    scale: Tensor,
    offset: int,
    with_columns: bool,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    r"""Per-row (and, square, per-column) cross-entropies of :math:`L = s\,QK^\top` whose
    positives are the entries ``(i, offset + i)``, in at least float32 (so that a float16 sum
    over a large batch cannot overflow).

    With ``chunk_size`` they come from the package's tiled engine
    (:func:`companion._tiled.row_statistics`): each row's log-sum-exp of its negatives
    :math:`r_i`, its positive :math:`t_i` and, square, each column's :math:`\kappa_j`, from one
    sweep over row tiles, so that a loss is :math:`\operatorname{logaddexp}(r_i, t_i) - t_i`, the
    positive and the log-sum-exp read from the same rounded tile. Four ``B x B x D`` products
    where the full matrix needs three: the column statistics depend on every row, so no row's
    gradient is known before the whole matrix has been seen once (the engine keeps the forward's
    last tile for the backward pass). Without ``chunk_size`` the full matrix goes through
    ordinary autograd (which supports double backward)."""
    if chunk_size is not None:
        rows_t = torch.arange(offset, offset + queries.shape[0], device=queries.device)
        every = torch.ones(queries.shape[0], dtype=torch.bool, device=queries.device)
        stats = row_statistics(
            queries, keys, rows_t, every, scale=scale, columns=with_columns, row_chunk=chunk_size
        )
        t = stats.target
        row_losses = torch.logaddexp(stats.rest, t) - t
        if stats.colrest is None:
            return row_losses, row_losses.new_zeros(0)
        return row_losses, torch.logaddexp(stats.colrest, t) - t
    acc = compute_dtype(queries.dtype)
    logits = (scale.to(queries.dtype) * (queries @ keys.T)).to(acc)
    labels = torch.arange(offset, offset + queries.shape[0], device=queries.device)
    rows = F.cross_entropy(logits, labels, reduction="none")
    if not with_columns:
        return rows, rows.new_zeros(0)
    return rows, F.cross_entropy(logits.T, labels, reduction="none")


# --------------------------------------------------------------------------------------------
# The CLIP loss: full matrix, tiled, and across processes
# --------------------------------------------------------------------------------------------


def clip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: float | Tensor,
    chunk_size: int | None = None,
    *,
    group: ProcessGroup | None = None,
    batch_sizes: Sequence[int] | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The symmetric InfoNCE loss of CLIP (Radford et al., 2021) over a batch of pairs.

    With the logits :math:`L = s\, I T^\top` (:math:`s` the ``logit_scale``, ``I`` and ``T``
    the ``(B, D)`` features), pair ``i`` is the positive of row ``i`` and of column ``i``:

    .. math::

        \ell_i = \tfrac12\Bigl(\operatorname{lse}_j L_{ij} - L_{ii}\Bigr)
        + \tfrac12\Bigl(\operatorname{lse}_j L_{ji} - L_{ii}\Bigr), \qquad
        \mathcal L = \frac1B \sum_{i=1}^{B} \ell_i,

    the mean of the image-to-text and the text-to-image cross-entropies (``reduction="none"``
    returns the ``(B,)`` vector :math:`\ell`, ``"sum"`` its sum). Sums and means are formed in
    float32 or wider: a float16 batch whose summed loss passes 65,504 still has its (small) mean.

    **The scale, not its log.** ``logit_scale`` is :math:`s = 1/\tau` itself. CLIP and
    open_clip learn :math:`t = \log s` (open_clip's ``model.logit_scale`` *is* that log): pass
    ``model.logit_scale.exp()``, never the parameter itself (a bare ``nn.Parameter`` is
    refused for that reason), or use :class:`ClipLoss`, which owns :math:`t`.

    **Normalisation.** The features are used as given. CLIP L2-normalises them first, so
    that :math:`L_{ij} = s \cos\theta_{ij}`; do that in the model
    (``F.normalize(features, dim=-1)``), as open_clip does. The loss is correct for any
    features, but the temperature's usual range assumes unit vectors.

    **Memory.** With ``chunk_size=None`` the ``B x B`` matrix is built at once and autograd
    keeps several ``B x B`` buffers. With an integer ``chunk_size``, a custom autograd function
    builds the matrix ``chunk_size`` rows at a time in the forward pass (online log-sum-exp for
    the columns), saves only the ``2B`` log-sum-exps, and rebuilds each tile in the backward
    pass: at most a few ``chunk_size x B`` tiles exist at any time. Both give the same value
    and gradients, up to rounding. The tiled backward pass is not differentiable again: a
    double backward (``create_graph=True``, a gradient penalty) raises a ``RuntimeError``;
    use ``chunk_size=None`` for that.

    **Across processes.** Only with ``group`` (a ``torch.distributed`` process group; nothing
    is gathered because a default group exists). Each rank passes its own pairs; the features
    of all ranks are gathered (with gradient) and the rank computes its rows and its columns of
    the global matrix against all ``B`` global pairs. The convention is the package's one for
    every distributed loss (:mod:`companion._distributed`): every rank returns the loss of the
    whole global batch (for ``"none"``, the ``(B_global,)`` vector in rank order), and after the
    gradient averaging of :class:`~torch.nn.parallel.DistributedDataParallel` every parameter
    (the encoders' and a ``logit_scale`` parameter inside the DDP-wrapped module) has the
    single-process gradient. This holds for unequal local batch sizes too; learning them costs
    one small all-reduce and a host sync per call, which ``batch_sizes`` (every rank's local
    batch size, e.g. ``[B_local] * world_size``) skips. Every rank must call this function and
    its backward pass.

    **Production.** With value checks off (:func:`companion.set_value_checks`), a forward and
    backward pass makes no host sync (with ``batch_sizes`` given under a ``group``) and the
    function compiles with ``torch.compile(fullgraph=True)``.

    Args:
        image_features: this process's image embeddings.
        text_features: the matching text embeddings, same dtype and device.
        logit_scale: :math:`s > 0`, the inverse temperature (``exp`` of the learned
            log-parameter, which CLIP clamps at 100): a float or a scalar tensor, which then
            receives a gradient.
        chunk_size: rows per tile for the memory-lean path; ``None`` builds the full matrix.
        group: a ``torch.distributed`` process group to gather the pairs of, or ``None`` for
            the loss of the given batch alone.
        batch_sizes: with ``group``, every rank's local batch size, if known; then no sizes
            are exchanged.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Shape:
        - image_features, text_features: ``(B, D)``; logit_scale: a number or ``()``.
        - output: scalar, or ``(B,)`` (``B`` the global batch) for ``reduction="none"``, in the
          features' dtype.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.contrastive import clip_loss
        >>> gen = torch.Generator().manual_seed(0)
        >>> image = F.normalize(torch.randn(8, 4, generator=gen), dim=1)
        >>> text = F.normalize(image + 0.1 * torch.randn(8, 4, generator=gen), dim=1)
        >>> log_scale = torch.tensor(2.0, requires_grad=True)  # learned as a log
        >>> loss = clip_loss(image, text, log_scale.exp(), chunk_size=3)
        >>> loss.backward()
        >>> torch.allclose(loss, clip_loss(image, text, log_scale.exp().detach()))
        True
    """
    _check_pair(image_features, "image_features", text_features, "text_features")
    scale = scalar_argument(logit_scale, "logit_scale", image_features, positive=True)
    chunk = check_chunk_size(chunk_size)
    check_reduction(reduction)
    dtype = image_features.dtype
    if group is None:
        if batch_sizes is not None:
            raise ValueError("batch_sizes is only used with group (a distributed call)")
        rows, columns = _pair_cross_entropies(image_features, text_features, scale, 0, True, chunk)
        return reduce_loss((rows + columns) / 2, reduction).to(dtype)
    rank, _ = resolve_group(group)
    local = image_features.shape[0]
    sizes = local_batch_sizes(local, group, batch_sizes, image_features.device)
    pairs = torch.cat([image_features, text_features], dim=1)  # one collective for both
    both = gather_rows(pairs, sizes, group)
    dim, offset = image_features.shape[1], sum(sizes[:rank])
    all_images, all_texts = both[:, :dim], both[:, dim:]
    # this rank's own pairs, read back from the gathered tensor: every path to the local
    # features then goes through the gather, whose backward applies the DDP convention
    mine = slice(offset, offset + local)
    scale = replicated(scale, group)
    rows, _ = _pair_cross_entropies(all_images[mine], all_texts, scale, offset, False, chunk)
    columns, _ = _pair_cross_entropies(all_texts[mine], all_images, scale, offset, False, chunk)
    per_pair = (rows + columns) / 2
    if reduction == "none":
        return all_gather_rows(per_pair, sizes, group).to(dtype)
    total = sum_over_ranks(per_pair.sum(), group)
    return (total / sum(sizes) if reduction == "mean" else total).to(dtype)


def soft_target_clip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: float | Tensor,
    target_scale: float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""A CLIP loss whose targets come from the within-modality similarities.

    The hard CLIP loss (:func:`clip_loss`) says that image ``i`` matches text ``i`` and no
    other. When a batch holds near-duplicates (two photos of the same thing with nearly the
    same caption), that target is unreachable. This variant spreads the target over the pairs
    that look alike in *both* modalities:

    .. math::

        Q = \operatorname{softmax}_{\text{rows}}\!\Bigl(t\,\tfrac{I I^\top + T T^\top}{2}\Bigr),
        \qquad
        \mathcal L = \tfrac12 \bigl[\operatorname{CE}(s I T^\top, Q)
        + \operatorname{CE}(s T I^\top, Q)\bigr],

    with :math:`\operatorname{CE}(L, Q) = -\frac1B \sum_i \sum_j Q_{ij} \log
    \operatorname{softmax}(L_i)_j`: with ``reduction="none"``, pair :math:`i`'s loss is the
    average of its two directions, :math:`-\frac12 \sum_j Q_{ij} [\log
    \operatorname{softmax}(L_i)_j + \log \operatorname{softmax}(L^\top_i)_j]`, and
    :math:`\mathcal L` is their mean. The matrix inside the softmax is symmetric, so the same
    row-normalised ``Q`` serves both directions. ``Q`` is treated as a constant (no gradient
    flows through the targets), as labels are. With distinct unit-norm features and
    :math:`t \to \infty`, ``Q`` tends to the identity and the loss to :func:`clip_loss`.

    The full ``B x B`` matrices are built (there is no chunked version), from this process's
    batch only: nothing is gathered under :mod:`torch.distributed`.

    Args:
        image_features, text_features: usually L2-normalised.
        logit_scale: :math:`s > 0`, the inverse temperature of the logits (float or tensor;
            the scale, not its log, as in :func:`clip_loss`).
        target_scale: :math:`t > 0`, the inverse temperature of the targets; by default the
            same value as ``logit_scale``. (Both *multiply* similarities: an inverse
            temperature, not a temperature.)
        reduction: ``"none"`` (one loss per pair), ``"mean"`` or ``"sum"``.

    Shape:
        - image_features, text_features: ``(B, D)``.
        - output: scalar, or ``(B,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.contrastive import clip_loss, soft_target_clip_loss
        >>> x = torch.eye(4)
        >>> sharp = soft_target_clip_loss(x, x, 5.0, target_scale=1e4)  # targets -> identity
        >>> torch.allclose(sharp, clip_loss(x, x, 5.0))
        True
    """
    _check_pair(image_features, "image_features", text_features, "text_features")
    scale = scalar_argument(logit_scale, "logit_scale", image_features, positive=True)
    check_reduction(reduction)
    if target_scale is None:
        t: Tensor | float = scale.detach()
    else:
        t = check_positive(target_scale, "target_scale")
    with torch.no_grad():
        similarity = (image_features @ image_features.T + text_features @ text_features.T) / 2
        targets = torch.softmax(similarity * t, dim=1)
    logits = scale.to(image_features.dtype) * (image_features @ text_features.T)
    image_to_text = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1)
    text_to_image = -(targets * torch.log_softmax(logits.T, dim=1)).sum(dim=1)
    return reduce_loss((image_to_text + text_to_image) / 2, reduction)


class ClipLoss(nn.Module):
    r"""The CLIP loss with its learnable temperature, stored as a log.

    Holds the log of the inverse temperature, the parameter :attr:`log_scale` :math:`= t`,
    initialised to :math:`\log(1/\tau_0)` (CLIP uses :math:`\tau_0 = 0.07`), and computes
    :func:`clip_loss` with ``logit_scale`` :math:`= \min(e^{t}, s_{\max})`. Learning
    :math:`t` rather than :math:`\tau` keeps the scale positive and makes steps
    multiplicative; the clamp at :math:`s_{\max} = 100` (as in CLIP) stops the logits from
    growing without bound, and has zero gradient once reached. :attr:`logit_scale` is the
    scale :math:`s` (open_clip's ``model.logit_scale`` is :math:`t`: the same number only
    after ``.exp()``).

    **Give its parameters to the optimiser**: the temperature is a parameter of this module,
    not of the encoders, so ``torch.optim.AdamW([*model.parameters(), *loss.parameters()])``
    (or make the loss a submodule of the model). Forgetting it leaves :math:`\tau` at
    :math:`\tau_0` silently. CLIP applies no weight decay to :math:`t`.

    Args:
        temperature: initial temperature :math:`\tau_0 > 0`.
        max_scale: the largest logit scale.
        chunk_size: passed to :func:`clip_loss` (``None``: full matrix).
        learn_temperature: if False the temperature is a fixed buffer-like parameter
            (``requires_grad=False``).
        group: passed to :func:`clip_loss` (``None``: this process's batch alone).
        batch_sizes: passed to :func:`clip_loss` when every step has the same local sizes.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Shape:
        - forward's image_features, text_features: ``(B, D)``.
        - output: scalar.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.contrastive import ClipLoss
        >>> loss_fn = ClipLoss(temperature=0.07, chunk_size=4)
        >>> encoder = torch.nn.Linear(6, 3)
        >>> optimiser = torch.optim.SGD([*encoder.parameters(), *loss_fn.parameters()], lr=0.1)
        >>> x = torch.randn(8, 6)
        >>> loss = loss_fn(F.normalize(encoder(x), dim=1), F.normalize(encoder(x + 0.1), dim=1))
        >>> loss.backward()
        >>> loss_fn.log_scale.grad is not None
        True
        >>> round(float(loss_fn.logit_scale.detach()), 2)  # the scale 1 / 0.07, not its log
        14.29
    """

    def __init__(
        self,
        temperature: float = 0.07,
        max_scale: float = 100.0,
        chunk_size: int | None = None,
        learn_temperature: bool = True,
        *,
        group: ProcessGroup | None = None,
        batch_sizes: Sequence[int] | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        check_positive(temperature, "temperature")
        check_positive(max_scale, "max_scale")
        self.max_scale = float(max_scale)
        self.chunk_size = check_chunk_size(chunk_size)
        check_bool(learn_temperature, "learn_temperature")
        self.reduction = check_reduction(reduction)
        self.group = group
        resolve_group(group)
        self.batch_sizes = None if batch_sizes is None else tuple(batch_sizes)
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature
        )

    @property
    def logit_scale(self) -> Tensor:
        """The current inverse temperature :math:`\\min(e^{t}, s_{\\max})` (the scale)."""
        return torch.clamp(self.log_scale.exp(), max=self.max_scale)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        *,
        batch_sizes: Sequence[int] | None = None,
    ) -> Tensor:
        """The CLIP loss of a batch of ``(B, D)`` feature pairs at the learned temperature.

        Calls :func:`clip_loss` with ``logit_scale`` = :attr:`logit_scale` (so its gradient
        reaches :attr:`log_scale`) and this module's ``chunk_size``, ``group`` and
        ``reduction``. With a ``group``, ``batch_sizes`` (every rank's local batch size; this
        call's value, else the module's) skips the size exchange; see :func:`clip_loss` for
        what each rank returns.
        """
        return clip_loss(
            image_features,
            text_features,
            self.logit_scale,
            chunk_size=self.chunk_size,
            group=self.group,
            batch_sizes=self.batch_sizes if batch_sizes is None else batch_sizes,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        temperature = 1.0 / float(self.logit_scale.detach())
        return (
            f"temperature={temperature:.4g}, max_scale={self.max_scale:g}, "
            f"chunk_size={self.chunk_size}, reduction={self.reduction!r}"
        )
