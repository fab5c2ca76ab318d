"""Train a small backbone with a sharded, sampled, class-chunked margin head (Partial FC).

Synthetic identities: each of ``--classes`` identities is a random direction in a
32-dimensional input space, and its samples are that direction plus noise. A two-layer backbone
maps inputs to 32-dimensional embeddings; a :class:`companion.partial_fc.PartialFC` head, its
class centres split over the processes, trains it with ArcFace's margin.

The backbone is wrapped in DistributedDataParallel; the head is not (each process holds a
different slice of the class centres, which must not be averaged). Every process returns the
loss of the global batch, so the printed loss is the same on every rank.

Run on the CPU with two processes::

    torchrun --standalone --nproc-per-node 2 examples/train_partial_fc.py
    torchrun --standalone --nproc-per-node 2 examples/train_partial_fc.py --steps 40

or without torchrun, as a single process. It prints ``loss A -> B``: the mean loss over the
first and over the last ten steps.
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from companion.partial_fc import PartialFC

IN, EMBED = 32, 32


def identities(classes: int, seed: int = 0) -> torch.Tensor:
    """The identities' directions, the same in every process."""
    gen = torch.Generator().manual_seed(seed)
    return nn.functional.normalize(torch.randn(classes, IN, generator=gen), dim=1)


def batch(
    centres: torch.Tensor, size: int, noise: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(centres.shape[0], (size,), generator=gen)
    inputs = centres[labels] + noise / math.sqrt(IN) * torch.randn(size, IN, generator=gen)
    return inputs, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--classes", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64, help="per process")
    parser.add_argument("--sample-rate", type=float, default=0.5)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()

    torch.set_num_threads(1)
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    group = dist.group.WORLD if distributed else None

    torch.manual_seed(0)  # the same backbone in every process
    backbone: nn.Module = nn.Sequential(nn.Linear(IN, 64), nn.ReLU(), nn.Linear(64, EMBED))
    if distributed:
        backbone = DistributedDataParallel(backbone)
    torch.manual_seed(1 + rank)  # each process initialises its own slice of the centres
    head = PartialFC(
        EMBED,
        args.classes,
        margin=(1.0, 0.5, 0.0),
        scale=32.0,
        sample_rate=args.sample_rate,
        chunk_size=args.chunk_size,
        group=group,
    )
    optimiser = torch.optim.SGD(
        [*backbone.parameters(), *head.parameters()], lr=args.lr, momentum=0.9
    )
    centres = identities(args.classes)
    data = torch.Generator().manual_seed(100 + rank)  # each process sees its own samples
    sampler = torch.Generator().manual_seed(200 + rank)  # and draws its own negatives
    losses = []
    for step in range(args.steps):
        inputs, labels = batch(centres, args.batch, args.noise, data)
        loss = head(backbone(inputs), labels, generator=sampler)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if rank == 0 and (step % 50 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.3f}", flush=True)
    window = max(1, min(10, len(losses) // 2))
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    if rank == 0:
        print(f"loss {first:.4f} -> {last:.4f}", flush=True)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
