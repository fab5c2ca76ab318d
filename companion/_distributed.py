r"""The one distributed layer: group resolution, batch sizes, a gather with gradient, reductions.

Every loss of the package that spans processes (CLIP's and SigLIP's gathered pairs, Partial FC's
sharded classes, the vocabulary-parallel language-model head) is built from the few pieces here,
so that they share one convention and one set of tested collectives.

**Switching it on.** Distribution happens only through an explicit ``group=`` argument (a
``torch.distributed`` process group, e.g. ``torch.distributed.group.WORLD``). Nothing turns itself
on because a default process group exists: a loss called with ``group=None`` inside a worker
computes the single-process loss of the tensors it is given.

**The convention (one for every distributed loss).** Every rank of the group returns the loss of
the whole *global* batch: the value one process returns on the concatenated batch, for every
``reduction`` (``"none"`` returns the global per-row vector, in rank order). The backward pass on
each rank gives

* every tensor that only this rank holds and that DistributedDataParallel does not average (its
  shard of a class or vocabulary matrix) exactly the single-process gradient, and
* every tensor that DDP averages (the rank's local features, hence the backbone's parameters, and
  replicated parameters such as a learned logit scale or bias) ``world_size`` times this rank's
  share of it,

so that after DDP's averaging every parameter, backbone and sharded head alike, holds exactly the
gradient one process computes on the global batch. Keep sharded heads out of the DDP wrapper (their
rows differ between ranks); keep replicated loss parameters inside it.

**Host syncs.** The gathers need every rank's local batch size. Passing ``batch_sizes`` (e.g.
``[B] * world_size`` with a ``drop_last`` sampler) skips the exchange of sizes, the only host sync;
with value checks on (:func:`companion.set_value_checks`) the given sizes are still verified
against the real ones, and a list that disagrees raises on every rank an error naming
``batch_sizes`` (instead of a collective that aborts or, worse, pads a row into the loss).

The collectives are torch's functional collectives, which ``torch.compile(fullgraph=True)``
traces; under compilation ``batch_sizes`` must be given (a size exchange would need the sizes on
the host while tracing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from companion._validate import check_int, value_checks_enabled

__all__ = [
    "ProcessGroup",
    "all_gather_rows",
    "combine_logsumexp",
    "gather_rows",
    "gather_rows_no_grad",
    "local_batch_sizes",
    "replicated",
    "resolve_group",
    "sum_over_ranks",
]

ProcessGroup = Any  # torch.distributed.ProcessGroup (not importable where distributed is absent)


def _funcol() -> Any:
    import torch.distributed._functional_collectives as funcol

    return funcol


def _done(x: Tensor) -> Tensor:
    """A functional collective's result as a plain tensor (waited for), not a lazy wrapper."""
    out: Tensor = _funcol().wait_tensor(x)
    return out


def resolve_group(group: ProcessGroup | None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group``; ``(0, 1)`` for ``group=None``."""
    if group is None:
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "group was given but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group first, or pass group=None for one process"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _exchange_sizes(
    local: int, rank: int, world: int, group: ProcessGroup, device: Any
) -> list[int]:
    sizes = torch.zeros(world, dtype=torch.long, device=device)
    sizes[rank] = local
    sizes = _done(_funcol().all_reduce(sizes, "sum", group))
    return [int(v) for v in sizes.tolist()]  # the host sync that batch_sizes skips


def local_batch_sizes(
    local: int,
    group: ProcessGroup,
    batch_sizes: Sequence[int] | None,
    device: Any,
) -> tuple[int, ...]:
    """Every rank's local batch size, in rank order.

    From ``batch_sizes`` when given: no collective and no host sync, except that with value checks
    on they are compared with the real sizes (one small all-reduce of the sizes and one of a
    mismatch flag, so that every rank raises together). Else one all-reduce and a host sync.
    """
    rank, world = resolve_group(group)
    if batch_sizes is None:
        if torch.compiler.is_compiling():
            raise ValueError(
                "batch_sizes must be given under torch.compile when group is set: exchanging the "
                "local batch sizes needs them on the host while tracing; pass every rank's local "
                "batch size, e.g. [B] * world_size"
            )
        return tuple(_exchange_sizes(local, rank, world, group, device))
    if isinstance(batch_sizes, Tensor) or not isinstance(batch_sizes, Sequence):
        raise TypeError(
            f"batch_sizes must be a sequence of ints (one per rank), got "
            f"{type(batch_sizes).__name__}"
        )
    sizes = tuple(check_int(s, "batch_sizes[i]", minimum=1) for s in batch_sizes)
    if len(sizes) != world:
        raise ValueError(f"batch_sizes must have one entry per rank ({world}), got {len(sizes)}")
    if value_checks_enabled():
        real = _exchange_sizes(local, rank, world, group, device)
        wrong = torch.tensor([int(real != list(sizes))], device=device)
        if int(_done(_funcol().all_reduce(wrong, "max", group)).item()):
            raise ValueError(
                f"batch_sizes must list every rank's real local batch size, the same list on "
                f"every rank: the ranks' batches have sizes {real}, this rank got {list(sizes)}"
                " (some rank's batch_sizes disagrees)"
            )
    elif sizes[rank] != local:  # metadata only: this rank's own size is known without a sync
        raise ValueError(
            f"batch_sizes[{rank}] must be this rank's batch size {local}, got {sizes[rank]}"
        )
    return sizes


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


class _SumOverRanks(torch.autograd.Function):
    """All-reduce sum; backward: the gradient unchanged (every rank holds the same loss)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: ProcessGroup) -> Tensor:
        return _done(_funcol().all_reduce(x, "sum", group))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def _pad_rows(x: Tensor, width: int) -> Tensor:
    if x.shape[0] == width:
        return x
    return torch.cat([x, x.new_zeros((width - x.shape[0], *x.shape[1:]))])


def _unpad_rows(gathered: Tensor, sizes: Sequence[int]) -> Tensor:
    width = max(sizes)
    if all(s == width for s in sizes):
        return gathered
    return torch.cat([gathered[r * width : r * width + s] for r, s in enumerate(sizes)])


def gather_rows(x: Tensor, sizes: Sequence[int], group: ProcessGroup) -> Tensor:
    """Every rank's ``x`` stacked along dim 0 in rank order, with gradient (unequal sizes allowed).

    Backward: the gradients that every rank's loss sends to this rank's rows, summed over the ranks
    (a reduce-scatter), times ``world_size``: this rank's features are a tensor that DDP averages.
    """
    world = len(sizes)
    padded = _pad_rows(x, max(sizes))
    gathered = _done(_funcol().all_gather_single_autograd(padded, 0, group))
    return _unpad_rows(_ScaleGradient.apply(gathered, float(world)), sizes)  # type: ignore[no-untyped-call]


def gather_rows_no_grad(x: Tensor, sizes: Sequence[int], group: ProcessGroup) -> Tensor:
    """Every rank's ``x`` (targets, masks) stacked along dim 0, without gradient."""
    return _unpad_rows(
        _done(_funcol().all_gather_single(_pad_rows(x, max(sizes)), 0, group)), sizes
    )


def all_gather_rows(x: Tensor, sizes: Sequence[int], group: ProcessGroup) -> Tensor:
    """Per-row results of every rank (a rank's share of a global per-row loss), stacked.

    Every rank then holds the same global vector and the same gradient of it, so the backward
    returns this rank's slice of the gradient unchanged (no collective).
    """
    rank = dist.get_rank(group)
    start = sum(sizes[:rank])
    gathered = _unpad_rows(
        _done(_funcol().all_gather_single(_pad_rows(x.detach(), max(sizes)), 0, group)), sizes
    )
    # value of the gathered vector, gradient of this rank's own rows only
    own = torch.zeros_like(gathered)
    own = torch.cat([own[:start], x, own[start + x.shape[0] :]])
    return gathered.detach() + own - own.detach()


def sum_over_ranks(x: Tensor, group: ProcessGroup) -> Tensor:
    """``x`` summed over the ranks; the gradient passes through unchanged (every rank holds the
    same loss, and each rank's backward covers what it computed itself)."""
    out: Tensor = _SumOverRanks.apply(x, group)  # type: ignore[no-untyped-call]
    return out


def combine_logsumexp(local: Tensor, group: ProcessGroup) -> Tensor:
    r"""Elementwise :math:`\log\sum_r e^{a_r}` of the ranks' ``local`` log-sum-exps.

    A global maximum (all-reduce MAX, outside autograd) and an all-reduced sum of exponentials;
    backward :math:`g\,e^{a_r - \mathrm{lse}}`, this rank's share of the softmax mass, with no
    collective. Entries that are ``-inf`` on every rank stay ``-inf``.
    """
    top = _done(_funcol().all_reduce(local.detach(), "max", group))
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return top + torch.log(sum_over_ranks(torch.exp(local - top), group))


def replicated(x: Tensor, group: ProcessGroup) -> Tensor:
    """Mark a parameter replicated on every rank and averaged by DDP (a learned logit scale):
    identity forward, the backward multiplies this rank's share of the gradient by ``world``."""
    _, world = resolve_group(group)
    out: Tensor = _ScaleGradient.apply(x, float(world))  # type: ignore[no-untyped-call]
    return out
