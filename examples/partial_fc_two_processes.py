"""One sharded Partial FC step in real processes: loss and gradients saved for a comparison.

Each process holds a contiguous slice of the class centres and part of a fixed batch (unequal
parts), computes the chunked ArcFace loss with :class:`companion.partial_fc.PartialFC` over a
gloo process group and its backward pass, and saves what it got: the returned loss, the
gradient of its own features and the gradient of its weight shard. The chapter on Partial FC
compares them with one process holding everything (:func:`problem` gives the data)::

    torchrun --standalone --nproc-per-node 2 examples/partial_fc_two_processes.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from companion.partial_fc import PartialFC

SIZES = {2: (6, 4), 3: (5, 2, 3)}  # local batch sizes by world size
DIM, CLASSES, SCALE, CHUNK = 6, 23, 8.0, 4


def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features ``(10, 6)``, targets ``(10,)`` and centres ``(23, 6)`` in float64."""
    gen = torch.Generator().manual_seed(7)
    features = torch.randn(10, DIM, generator=gen, dtype=torch.float64)
    target = torch.randint(CLASSES, (10,), generator=gen)
    centres = torch.randn(CLASSES, DIM, generator=gen, dtype=torch.float64)
    return features, target, centres


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    features, target, centres = problem()
    sizes = SIZES[world]
    start = sum(sizes[:rank])
    local = slice(start, start + sizes[rank])
    head = PartialFC(
        DIM, CLASSES, scale=SCALE, chunk_size=CHUNK, group=dist.group.WORLD, dtype=torch.float64
    )
    head.weight.data = centres[head.class_start : head.class_start + head.num_local].clone()
    x = features[local].clone().requires_grad_(True)
    loss = head(x, target[local])
    loss.backward()
    assert x.grad is not None and head.weight.grad is not None
    torch.save(
        {
            "loss": loss.detach(),
            "features_grad": x.grad,
            "weight_grad": head.weight.grad,
            "rows": (start, start + sizes[rank]),
            "classes": (head.class_start, head.class_start + head.num_local),
        },
        out_dir / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
