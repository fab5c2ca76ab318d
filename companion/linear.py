r"""The cross-entropy of a linear layer over a vocabulary, without its logits.

A language model's last layer maps hidden states :math:`x_i \in \mathbb R^D` to logits over a
vocabulary of :math:`V` tokens, :math:`z_i = W x_i + b`, and trains with the cross-entropy
:math:`\ell_i = \log\sum_j e^{z_{ij}} - z_{i y_i}`. With :math:`V` in the hundreds of thousands the
``(N, V)`` logits, not the model, are what stops fitting (and a plain implementation keeps
several copies of them: the logits, the softmax, its gradient). Their gradient is
:math:`\partial\ell_i/\partial z_{ij} = p_{ij} - [j = y_i]`: a tile of it needs only its rows'
log-sum-exps, so the logits can be built a tile at a time and thrown away.

:func:`linear_cross_entropy` does that, on the package's tiled engine (:mod:`companion._tiled`):

* **over tokens** (``chunk_size``, the default, chosen automatically): each tile holds whole rows,
  so its softmax and its gradient are known at once; the gradients of the input, the weight and
  the bias are formed in the forward pass and the backward pass only scales them. Three products
  (:math:`XW^\top`, :math:`GW`, :math:`G^\top X`), the floor of any exact method. It is exact
  because the loss, a scalar, is the last operation (``reduction="mean"`` or ``"sum"``);
* **over the vocabulary** (``vocab_chunk_size``), and for ``reduction="none"`` or ``group``: an
  online log-sum-exp over column tiles, and the tiles rebuilt in the backward pass (four
  products, less one tile kept from the forward pass). Column tiles only win when a single row
  of logits is too large for memory; ``reduction="none"`` and a split vocabulary need the
  rebuild whatever the tiles, because the per-row (or global) statistics are only known once
  every tile has been seen.

Options beyond :func:`torch.nn.functional.linear_cross_entropy` (whose names and defaults are kept
wherever it has the option, so that the two swap): the **z-loss** of PaLM (Chowdhery et al.,
2022), :math:`z\,(\log\sum_j e^{z_{ij}})^2` per token, which keeps the log-normaliser near 0;
**soft-capping** of Gemma 2 (Gemma Team, 2024), :math:`c\tanh(z/c)` on every logit; a
**vocabulary split over processes** (``group``), each holding a contiguous slice of the rows of
the weight, as :mod:`companion.partial_fc` splits classes; and each row's log-sum-exp for
logging (``return_lse``). Cut Cross-Entropy (Wijmans et al., 2025) and Liger-Kernel (Hsu et al.,
2024) do the same on GPUs with Triton kernels; this one runs on any device PyTorch runs on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
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
from companion._numerics import compute_dtype, head_dtype_input
from companion._tiled import fused_row_loss, row_statistics
from companion._validate import (
    Reduction,
    check_bool,
    check_chunk_size,
    check_finite,
    check_int,
    check_positive,
    check_real,
    check_reduction,
    check_tensor,
    class_index_guard,
    value_checks_enabled,
    weighted_mean,
)

__all__ = ["LinearCrossEntropyLoss", "linear_cross_entropy", "vocab_shard_range"]


def vocab_shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """The contiguous slice ``[start, stop)`` of the vocabulary that ``rank`` holds.

    As even as possible: the first ``num_classes % world_size`` ranks hold one row more (the rule
    of :func:`companion.partial_fc.shard_range`, which this calls).

    Examples:
        >>> [vocab_shard_range(10, 3, r) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    from companion.partial_fc import shard_range

    return shard_range(num_classes, world_size, rank)


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------


class _Args:
    """The checked arguments of one call."""

    def __init__(
        self,
        input: object,
        linear_weight: object,
        target: object,
        linear_bias: object,
        weight: object,
        reduction: object,
        ignore_index: object,
        label_smoothing: object,
        options: object,
        z_loss: object,
        softcap: object,
        chunk_size: object,
        vocab_chunk_size: object,
        group: ProcessGroup | None,
        num_classes: object,
        return_lse: object,
    ) -> None:
        w = check_tensor(linear_weight, "linear_weight", ndim=2)
        x = check_tensor(input, "input")
        if x.dim() == 0:
            raise ValueError("input must have a feature dimension: shape (..., in_features)")
        if x.shape[-1] != w.shape[1]:
            raise ValueError(
                f"input must have shape (..., {w.shape[1]}) to match linear_weight "
                f"{tuple(w.shape)}, got {tuple(x.shape)}"
            )
        x = head_dtype_input(x, w, name="input", weight_name="linear_weight")
        self.reduction = check_reduction(reduction)
        self.rank, self.world = resolve_group(group)
        self.group = group
        if num_classes is None:
            if group is not None:
                raise ValueError(
                    "num_classes must be given with group: the size of the whole vocabulary, of "
                    "which linear_weight holds this rank's slice"
                )
            # (may be a symbolic size under torch.compile: no int check, no divmod)
            self.num_classes: int = w.shape[0]
            self.start, stop = 0, w.shape[0]
        else:
            self.num_classes = check_int(num_classes, "num_classes", minimum=1)
            self.start, stop = vocab_shard_range(self.num_classes, self.world, self.rank)
        if w.shape[0] != stop - self.start:
            raise ValueError(
                f"linear_weight must hold this rank's {stop - self.start} rows [{self.start}, "
                f"{stop}) of the {self.num_classes}-token vocabulary (rank {self.rank} of "
                f"{self.world}), got shape {tuple(w.shape)}"
            )
        self.linear_bias: Tensor | None = None
        if linear_bias is not None:
            b = check_tensor(linear_bias, "linear_bias", ndim=1)
            if b.shape[0] != w.shape[0] or b.device != w.device or b.dtype != w.dtype:
                raise ValueError(
                    f"linear_bias must have shape ({w.shape[0]},), dtype {w.dtype} and device "
                    f"{w.device} like linear_weight's rows, got {tuple(b.shape)}, {b.dtype}, "
                    f"{b.device}"
                )
            check_finite(b, "linear_bias")
            self.linear_bias = b
        self.weight: Tensor | None = None
        if weight is not None:
            cw = check_tensor(weight, "weight", ndim=1)
            if cw.shape[0] != self.num_classes or cw.device != w.device:
                raise ValueError(
                    f"weight must hold one rescaling weight per class, shape "
                    f"({self.num_classes},) on {w.device}, got {tuple(cw.shape)} on {cw.device}"
                )
            check_finite(cw, "weight")
            self.weight = cw
        self.ignore_index = (
            -100 if ignore_index is None else check_int(ignore_index, "ignore_index")
        )
        smoothing = check_real(label_smoothing, "label_smoothing")
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {smoothing}")
        self.label_smoothing = smoothing
        self.z_loss = check_positive(z_loss, "z_loss", allow_zero=True)
        self.softcap = None if softcap is None else check_positive(softcap, "softcap")
        self.chunk_size = check_chunk_size(chunk_size)
        if options is not None:
            if not isinstance(options, torch.nn.LinearCrossEntropyOptions):
                raise TypeError(
                    "options must be a torch.nn.LinearCrossEntropyOptions or None, got "
                    f"{type(options).__name__}"
                )
            if self.chunk_size is None and options.batch_chunk_size is not None:
                name = "options.batch_chunk_size"
                self.chunk_size = check_chunk_size(options.batch_chunk_size, name)
        self.vocab_chunk_size = check_chunk_size(vocab_chunk_size, "vocab_chunk_size")
        self.return_lse = check_bool(return_lse, "return_lse")
        self.target = self._check_target(target, x)
        check_finite(x, "input")
        self.input, self.linear_weight = x, w

    def _check_target(self, target: object, x: Tensor) -> Tensor:
        if not isinstance(target, Tensor):
            raise TypeError(
                f"target must be a torch.Tensor of class indices, got {type(target).__name__}"
            )
        if target.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                "target must hold integer class indices (torch.int64 or torch.int32), got dtype "
                f"{target.dtype}"
            )
        if tuple(target.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"target must have shape {tuple(x.shape[:-1])} (input's shape without its last "
                f"dimension), got {tuple(target.shape)}"
            )
        if target.device != x.device:
            raise ValueError(f"target must be on {x.device}, got {target.device}")
        if value_checks_enabled(target):
            bad = (target != self.ignore_index) & ((target < 0) | (target >= self.num_classes))
            if bool(bad.any()):
                first = int(target[bad].flatten()[0])
                raise ValueError(
                    f"target must hold class indices in [0, {self.num_classes - 1}] or "
                    f"ignore_index ({self.ignore_index}), got {first}"
                )
        return target.long()


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    options: Any = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    vocab_chunk_size: int | None = None,
    group: ProcessGroup | None = None,
    num_classes: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    return_lse: bool = False,
) -> Any:
    r"""``F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, ...)``, in tiles.

    With :math:`z_{ij} = \operatorname{cap}(x_i\cdot w_j + b_j)` (:math:`\operatorname{cap}(u) =
    c\tanh(u/c)` with ``softcap`` :math:`c`, else :math:`u`), :math:`L_i = \log\sum_j e^{z_{ij}}`,
    class weights :math:`\omega` (``weight``, ones by default), smoothing :math:`\varepsilon` and
    :math:`m_i = [y_i \ne \text{ignore\_index}]`, the loss of token :math:`i` is

    .. math::

        \ell_i = m_i\Bigl[(1-\varepsilon)\,\omega_{y_i}(L_i - z_{iy_i})
        + \frac{\varepsilon}{V}\sum_j \omega_j (L_i - z_{ij}) + \zeta L_i^2\Bigr],

    torch's cross-entropy plus PaLM's z-loss with coefficient :math:`\zeta` (``z_loss``).
    ``"mean"`` divides the cross-entropy part by :math:`\sum_i m_i\omega_{y_i}` (torch's
    weighted mean) and the z-loss part by :math:`\sum_i m_i` (the tokens that count, unweighted,
    as Liger-Kernel does); ``"sum"`` adds; ``"none"`` returns :math:`\ell` with ``target``'s shape.

    **Never the (N, V) logits**: see the module's docstring for the two tilings. By default
    whole rows, as many as fit in 64 MiB of float32 (:func:`companion._tiled.resolve_chunks`);
    ``chunk_size`` sets the rows (tokens) per tile, ``vocab_chunk_size`` the vocabulary rows per
    tile (which switches to the rebuilding path).

    **Where it differs from torch.** Every target ignored under ``"mean"`` gives 0 with a zero
    gradient (the package's weighted-mean rule); torch returns NaN there. Inside
    :func:`torch.autocast` the products run in the head's precision (``linear_weight``'s dtype;
    ``input`` of a lower precision is cast up to it, the package's rule for heads), where torch's
    ``F.linear`` would run in autocast's dtype. float16 and bfloat16 accumulate the log-sum-exps,
    sums and the weight's gradient in float32 and return the loss in their dtype, as torch does.
    ``options`` (a :class:`torch.nn.LinearCrossEntropyOptions`) is accepted so that calls swap:
    its ``batch_chunk_size`` sets ``chunk_size`` unless that is given; its other settings (the
    accumulation policy) do not apply, accumulation here is always in float32 or wider. A second
    derivative (``create_graph=True``) is refused with an error; use
    ``F.cross_entropy(F.linear(...))`` for that.

    **Split vocabulary** (``group``): rank :math:`r` passes its own tokens (``input`` and
    ``target``; local batch sizes may differ) and the slice :func:`vocab_shard_range`
    ``(num_classes, world_size, r)`` of the rows of ``linear_weight`` (and of ``linear_bias``);
    ``weight`` is the whole ``(num_classes,)`` vector on every rank. Tokens are gathered from
    every rank; each rank computes its slice's statistics, combined with one all-reduce of maxima
    and one of sums (:mod:`companion._distributed`). The package's convention: every rank returns
    the loss of the whole global batch (``"none"``: the ``(N_global,)`` vector, ranks in order);
    the weight slice gets exactly the single-process gradient; the local ``input`` gets
    ``world_size`` times its share, so that DistributedDataParallel's average gives the backbone
    the single-process gradient. ``batch_sizes`` (every rank's token count) skips the size
    exchange, the only host sync.

    **Production**: with value checks off (:func:`companion.set_value_checks`) a forward and
    backward pass makes no host sync (``ignore_index`` included: ignored rows are masked, never
    selected) and compiles with ``torch.compile(fullgraph=True)`` without recompiling for new
    batch sizes. A target outside ``[0, V)`` that is not ``ignore_index`` raises even with value
    checks off: it is read through an indexing kernel that checks its indices.

    Args:
        input: hidden states ``(..., D)``.
        linear_weight: ``(V, D)``, the output layer (this rank's ``(V_r, D)`` slice with
            ``group``).
        target: class indices with ``input``'s leading shape, in ``[0, V)`` or ``ignore_index``.
        linear_bias: ``(V,)`` (this rank's slice with ``group``), or None.
        weight: ``(V,)`` rescaling weight of each class, or None.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        ignore_index: the target value that is ignored (None means -100, as in torch).
        label_smoothing: :math:`\varepsilon \in [0, 1]`.
        options: a :class:`torch.nn.LinearCrossEntropyOptions` (see above), or None.
        z_loss: :math:`\zeta \ge 0` (PaLM uses :math:`10^{-4}`).
        softcap: :math:`c > 0` (Gemma 2 uses 30 on the final logits), or None.
        chunk_size: tokens per tile, or None (automatic).
        vocab_chunk_size: vocabulary rows per tile, or None (whole rows).
        group: a ``torch.distributed`` process group over which the vocabulary is split.
        num_classes: the whole vocabulary size :math:`V` (required with ``group``).
        batch_sizes: with ``group``, every rank's number of tokens (skips a host sync).
        return_lse: also return each token's :math:`L_i` (float32 or wider, no gradient).

    Shape:
        - input: ``(..., D)``; target: ``(...)``; linear_weight: ``(V, D)``.
        - output: scalar, or ``target``'s shape with ``reduction="none"`` (``(N_global,)``
          with ``group``); the log-sum-exps like the ``"none"`` output.

    Reference: Wijmans et al., *Cut Your Losses in Large-Vocabulary Language Models*, ICLR 2025;
    Chowdhery et al., *PaLM*, 2022 (the z-loss); Gemma Team, *Gemma 2*, 2024 (soft-capping).

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.linear import linear_cross_entropy
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden = torch.randn(2, 5, 16, generator=g)  # (batch, sequence, D)
        >>> head = torch.randn(100, 16, generator=g)  # a vocabulary of 100
        >>> tokens = torch.randint(100, (2, 5), generator=g)
        >>> tokens[0, :2] = -100  # ignored (padding)
        >>> loss = linear_cross_entropy(hidden, head, tokens, chunk_size=4)
        >>> want = F.cross_entropy(F.linear(hidden, head).flatten(0, 1), tokens.flatten())
        >>> bool(torch.allclose(loss, want))
        True
        >>> loss, lse = linear_cross_entropy(hidden, head, tokens, z_loss=1e-4, return_lse=True)
        >>> lse.shape
        torch.Size([2, 5])
    """
    a = _Args(
        input,
        linear_weight,
        target,
        linear_bias,
        weight,
        reduction,
        ignore_index,
        label_smoothing,
        options,
        z_loss,
        softcap,
        chunk_size,
        vocab_chunk_size,
        group,
        num_classes,
        return_lse,
    )
    loss, lse = _linear_cross_entropy(a, batch_sizes)
    return (loss, lse) if a.return_lse else loss


def _linear_cross_entropy(a: _Args, batch_sizes: Sequence[int] | None) -> tuple[Tensor, Tensor]:
    """The loss and the log-sum-exps, arguments already checked."""
    x = a.input.reshape(-1, a.input.shape[-1])
    y = a.target.reshape(-1)
    acc = compute_dtype(x.dtype)
    keep = y != a.ignore_index
    safe = torch.where(keep, y, torch.zeros_like(y))
    # a class index outside [0, V) that is not ignored fails inside this indexing kernel
    guard = class_index_guard(safe, "target", a.num_classes, acc)
    mask = keep.to(acc) + guard
    w_cls = a.weight.to(acc) if a.weight is not None else None
    row_w = mask * w_cls[safe] if w_cls is not None else mask
    if a.group is None:
        if batch_sizes is not None:
            raise ValueError("batch_sizes is only used with group (a distributed call); got None")
        if a.reduction != "none" and a.vocab_chunk_size is None:
            return _fused(a, x, safe, mask, row_w, w_cls, acc)
    else:
        sizes = local_batch_sizes(x.shape[0], a.group, batch_sizes, x.device)
        x = gather_rows(x, sizes, a.group)
        safe = gather_rows_no_grad(safe, sizes, a.group)
        mask = gather_rows_no_grad(mask, sizes, a.group)
        row_w = gather_rows_no_grad(row_w, sizes, a.group)
    return _rebuilt(a, x, safe, mask, row_w, w_cls, acc)


def _smoothing(a: _Args, w_cls: Tensor | None) -> tuple[float, Any]:
    """``(eps / V, sum_j omega_j)``: the smoothing term's factor and the weights' total."""
    eps_v = a.label_smoothing / a.num_classes
    total: Any = float(a.num_classes) if w_cls is None else w_cls.sum()
    return eps_v, total


def _denominators(a: _Args, mask: Tensor, row_w: Tensor) -> tuple[Tensor, Tensor]:
    """What ``"mean"`` divides the cross-entropy and the z-loss by (1 for the other reductions).

    0 when every target is ignored: then the division is by 1 (no weight, no loss)."""
    if a.reduction != "mean":
        one = torch.ones((), dtype=mask.dtype, device=mask.device)
        return one, one
    ce, count = row_w.sum(), mask.sum()
    return torch.where(ce > 0, ce, torch.ones_like(ce)), torch.where(
        count > 0, count, torch.ones_like(count)
    )


def _fused(
    a: _Args,
    x: Tensor,
    safe: Tensor,
    mask: Tensor,
    row_w: Tensor,
    w_cls: Tensor | None,
    acc: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """One process, a scalar loss: gradients formed in the forward pass (three products)."""
    eps_v, w_total = _smoothing(a, w_cls)
    ce_den, z_den = _denominators(a, mask, row_w)
    share = row_w / ce_den
    target_coef = (1 - a.label_smoothing) * share
    lse_coef = target_coef + (eps_v * w_total) * (mask / ce_den) if eps_v else target_coef
    rowsum_coef = eps_v * mask / ce_den if eps_v else None
    square = a.z_loss * mask / z_den if a.z_loss else None
    total, lse = fused_row_loss(
        x,
        a.linear_weight,
        safe,
        lse_coef=lse_coef,
        target_coef=target_coef,
        lse_square_coef=square,
        rowsum_coef=rowsum_coef,
        rowsum_weight=w_cls if eps_v else None,
        bias=a.linear_bias,
        softcap=a.softcap,
        row_chunk=a.chunk_size,
    )
    return total.to(x.dtype), lse.reshape(a.target.shape)


def _rebuilt(
    a: _Args,
    x: Tensor,
    safe: Tensor,
    mask: Tensor,
    row_w: Tensor,
    w_cls: Tensor | None,
    acc: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Per-row statistics from the engine (tiles rebuilt in backward), combined over ranks."""
    v_local = a.linear_weight.shape[0]
    local = safe - a.start
    owned = (local >= 0) & (local < v_local)
    local = local.clamp(0, v_local - 1)
    eps_v, w_total = _smoothing(a, w_cls)
    rowsum: bool | Tensor = False
    if eps_v:
        rowsum = w_cls[a.start : a.start + v_local] if w_cls is not None else True
    st = row_statistics(
        x,
        a.linear_weight,
        local,
        owned,
        bias=a.linear_bias,
        softcap=a.softcap,
        rowsum=rowsum,
        row_chunk=a.chunk_size,
        column_chunk=a.vocab_chunk_size,
    )
    rest, t, rho = st.rest, st.target, st.rowsum
    if a.group is not None:
        rest = combine_logsumexp(rest, a.group)
        t = sum_over_ranks(t, a.group)
        if rho is not None:
            rho = sum_over_ranks(rho, a.group)
    lse = torch.logaddexp(rest, t)
    ce = row_w * (lse - t)
    if eps_v and rho is not None:
        ce = (1 - a.label_smoothing) * ce + eps_v * mask * (w_total * lse - rho)
    z = a.z_loss * mask * lse * lse if a.z_loss else None
    lse_out = lse.detach()
    if a.group is None:
        lse_out = lse_out.reshape(a.target.shape)
    if a.reduction == "none":
        per_row = ce if z is None else ce + z
        if a.group is None:
            per_row = per_row.reshape(a.target.shape)
        return per_row.to(x.dtype), lse_out
    ce_den, z_den = _denominators(a, mask, row_w)
    total = weighted_mean(ce.sum(), ce_den) if a.reduction == "mean" else ce.sum()
    if z is not None:
        total = total + (z.sum() / z_den if a.reduction == "mean" else z.sum())
    return total.to(x.dtype), lse_out


class LinearCrossEntropyLoss(nn.Module):
    r"""The options of :func:`linear_cross_entropy`, held by a module (as ``nn.CrossEntropyLoss``).

    ``forward(input, linear_weight, target, linear_bias=None)`` calls
    :func:`linear_cross_entropy` with the options given here; the output layer stays with the
    model (it is usually tied to the input embedding). ``weight`` (the class weights) is
    registered as a buffer.

    Every constructor argument (``weight``, ``reduction``, ``ignore_index``,
    ``label_smoothing``, ``z_loss``, ``softcap``, ``chunk_size``, ``vocab_chunk_size``,
    ``group``, ``num_classes``, ``options``, ``return_lse``) means what it means in
    :func:`linear_cross_entropy`.

    Examples:
        >>> import torch
        >>> from companion.linear import LinearCrossEntropyLoss
        >>> loss_fn = LinearCrossEntropyLoss(z_loss=1e-4, chunk_size=8)
        >>> head = torch.nn.Linear(16, 50, bias=False)
        >>> hidden = torch.randn(4, 10, 16, requires_grad=True)
        >>> loss = loss_fn(hidden, head.weight, torch.randint(50, (4, 10)))
        >>> loss.backward()
        >>> head.weight.grad.shape
        torch.Size([50, 16])
    """

    weight: Tensor | None

    def __init__(
        self,
        weight: Tensor | None = None,
        *,
        reduction: Reduction = "mean",
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | None = None,
        vocab_chunk_size: int | None = None,
        group: ProcessGroup | None = None,
        num_classes: int | None = None,
        options: Any = None,
        return_lse: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.reduction = check_reduction(reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.chunk_size = check_chunk_size(chunk_size)
        self.vocab_chunk_size = check_chunk_size(vocab_chunk_size, "vocab_chunk_size")
        self.group = group
        self.num_classes = num_classes
        self.options = options
        self.return_lse = check_bool(return_lse, "return_lse")

    def forward(
        self,
        input: Tensor,
        linear_weight: Tensor,
        target: Tensor,
        linear_bias: Tensor | None = None,
        *,
        batch_sizes: Sequence[int] | None = None,
    ) -> Any:
        """The loss of ``input`` ``(..., D)`` through ``linear_weight`` ``(V, D)`` (and the
        log-sum-exps with ``return_lse``)."""
        return linear_cross_entropy(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            chunk_size=self.chunk_size,
            vocab_chunk_size=self.vocab_chunk_size,
            group=self.group,
            num_classes=self.num_classes,
            batch_sizes=batch_sizes,
            options=self.options,
            return_lse=self.return_lse,
        )

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap}, chunk_size={self.chunk_size}, "
            f"vocab_chunk_size={self.vocab_chunk_size}"
        )
