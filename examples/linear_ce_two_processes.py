"""A language-model head with its vocabulary split over processes: one step, saved for a check.

Each process holds a contiguous slice of the rows of the output layer (and of its bias) and some
of the tokens of a fixed batch (unequal numbers), computes
:func:`companion.linear_cross_entropy` with ``group=`` (label smoothing and a z-loss included)
and its backward pass, and saves what it got: the loss, each token's log-sum-exp, the gradient of
its own hidden states and the gradients of its slice of the layer. The chapter on the cross-entropy
over a vocabulary compares them with one process holding everything (:func:`problem` gives the
data)::

    torchrun --standalone --nproc-per-node 2 examples/linear_ce_two_processes.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from companion import linear_cross_entropy, vocab_shard_range

SIZES = {2: (7, 5), 3: (5, 3, 4)}  # tokens per process, by world size
DIM, VOCAB = 6, 29  # 29 rows: not divisible by the number of processes
OPTIONS = {"label_smoothing": 0.1, "z_loss": 1e-2, "chunk_size": 4}


def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states ``(12, 6)``, targets ``(12,)`` (two ignored), the layer ``(29, 6)`` and its
    bias ``(29,)``, in float64."""
    gen = torch.Generator().manual_seed(11)
    hidden = torch.randn(12, DIM, generator=gen, dtype=torch.float64)
    target = torch.randint(VOCAB, (12,), generator=gen)
    target[[2, 9]] = -100
    weight = torch.randn(VOCAB, DIM, generator=gen, dtype=torch.float64)
    bias = 0.1 * torch.randn(VOCAB, generator=gen, dtype=torch.float64)
    return hidden, target, weight, bias


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    hidden, target, weight, bias = problem()
    sizes = SIZES[world]
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    first, stop = vocab_shard_range(VOCAB, world, rank)
    x = hidden[rows].clone().requires_grad_(True)
    w = weight[first:stop].clone().requires_grad_(True)
    b = bias[first:stop].clone().requires_grad_(True)
    loss, lse = linear_cross_entropy(
        x,
        w,
        target[rows],
        linear_bias=b,
        group=dist.group.WORLD,
        num_classes=VOCAB,
        batch_sizes=sizes,
        return_lse=True,
        **OPTIONS,
    )
    loss.backward()
    torch.save(
        {
            "loss": loss.detach(),
            "lse": lse,
            "hidden_grad": x.grad,
            "weight_grad": w.grad,
            "bias_grad": b.grad,
            "rows": (start, start + sizes[rank]),
            "vocabulary": (first, stop),
        },
        out_dir / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
