"""companion.partial_fc.PartialFC sharded over two and three real processes (gloo on the CPU).

Each process holds a contiguous slice of 40 class centres and part of a batch of 12 samples; a
small backbone is wrapped in DistributedDataParallel, the head is not. Every rank must return
the loss of one process holding the whole batch and all centres (companion.margin's ArcFace /
AM-Softmax head), every backbone parameter must have the single-process gradient after DDP's
averaging, and every weight shard must have its slice of the single-process weight gradient:
chunked or not, equal or unequal local batches, mean or per-row losses (`reduction="none"`
returns the global batch's 12 losses on every rank). With sampling, the reference is the same head
over the union of the centres the ranks kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from companion import margin as M
from companion.partial_fc import PartialFC, shard_range
from tests.distributed import gradients, run_processes

F64 = torch.float64
BATCH, IN, EMBED, CLASSES = 12, 5, 4, 40
MARGINS = {"arcface": (1.0, 0.5, 0.0), "cosface": (1.0, 0.0, 0.35)}
# name -> (local batch sizes by world size, chunk_size, margin, sample_rate, reduction)
CASES: dict[str, tuple[dict[int, tuple[int, ...]], int | None, str, float, str]] = {
    "equal, full logits, arcface": ({2: (6, 6), 3: (4, 4, 4)}, None, "arcface", 1.0, "mean"),
    "equal, chunks of 2, cosface": ({2: (6, 6), 3: (4, 4, 4)}, 2, "cosface", 1.0, "mean"),
    "unequal, chunks of 3, arcface": ({2: (8, 4), 3: (7, 1, 4)}, 3, "arcface", 1.0, "mean"),
    "unequal, full logits, cosface": ({2: (3, 9), 3: (2, 6, 4)}, None, "cosface", 1.0, "mean"),
    "unequal, sampled, chunks of 2": ({2: (8, 4), 3: (7, 1, 4)}, 2, "arcface", 0.5, "mean"),
    "unequal, chunks of 5, per row": ({2: (8, 4), 3: (7, 1, 4)}, 5, "cosface", 1.0, "none"),
}


def problem() -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(BATCH, IN, generator=gen, dtype=F64)
    labels = torch.randint(CLASSES, (BATCH,), generator=gen)
    centres = torch.randn(CLASSES, EMBED, generator=gen, dtype=F64)
    return inputs, labels, centres


def backbone() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights in every process
    return nn.Sequential(nn.Linear(IN, 8, dtype=F64), nn.Tanh(), nn.Linear(8, EMBED, dtype=F64))


def worker(rank: int, world: int) -> dict[str, object]:
    inputs, labels, centres = problem()
    results = {}
    for name, (sizes_by_world, chunk, margin, rate, reduction) in CASES.items():
        sizes = sizes_by_world[world]
        net = backbone()
        ddp = DistributedDataParallel(net)
        head = PartialFC(
            EMBED,
            CLASSES,
            margin=MARGINS[margin],
            scale=6.0,
            sample_rate=rate,
            chunk_size=chunk,
            group=dist.group.WORLD,
            reduction=reduction,
            dtype=F64,
        )
        head.weight.data = centres[head.class_start : head.class_start + head.num_local].clone()
        start = sum(sizes[:rank])
        local = slice(start, start + sizes[rank])
        gen = torch.Generator().manual_seed(10 + rank)
        loss = head(ddp(inputs[local]), labels[local], generator=gen)
        loss.sum().backward()  # "none": the (12,) losses of the global batch on every rank
        kept = head.last_sampled
        results[name] = {
            "loss": loss.detach(),
            "backbone": gradients(net),
            "weight": head.weight.grad.detach().clone(),
            "start": head.class_start,
            "kept": None if kept is None else kept + head.class_start,
        }
    return results


def single_process(
    margin: str, classes: Tensor, reduction: str
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Loss, backbone gradients and the weight gradient of one process, over ``classes``."""
    inputs, labels, centres = problem()
    net = backbone()
    kind = M.ArcFaceLoss if margin == "arcface" else M.AMSoftmaxLoss
    head = kind(
        EMBED,
        classes.numel(),
        margin=MARGINS[margin][1] or 0.35,
        scale=6.0,
        reduction=reduction,
        dtype=F64,
    )
    head.weight.data = centres[classes].clone()
    loss = head(net(inputs), torch.searchsorted(classes, labels))
    loss.sum().backward()
    grad = torch.zeros_like(centres)
    grad[classes] = head.weight.grad
    return loss.detach(), gradients(net), grad


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_head_matches_one_process(world: int, tmp_path: Path) -> None:
    ranks = run_processes(worker, world, tmp_path)
    for name, (_, _, margin, rate, reduction) in CASES.items():
        if rate < 1:
            kept = torch.cat([ranks[r][name]["kept"] for r in range(world)])
            _, labels, _ = problem()
            assert torch.isin(labels, kept).all(), name  # every positive of the global batch
            assert kept.numel() == world * BATCH < CLASSES, name  # 12 of each shard's 13-20
        else:
            kept = torch.arange(CLASSES)
        loss, backbone_grads, weight_grad = single_process(margin, kept, reduction)
        assert set(backbone_grads) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        for r in range(world):
            got = ranks[r][name]
            msg = f"{name}, {world} processes, rank {r}"
            torch.testing.assert_close(got["loss"], loss, rtol=1e-12, atol=1e-12, msg=msg)
            assert set(got["backbone"]) == set(backbone_grads), msg
            for param, grad in backbone_grads.items():
                torch.testing.assert_close(
                    got["backbone"][param], grad, rtol=1e-10, atol=1e-12, msg=f"{msg}, {param}"
                )
            start, stop = shard_range(CLASSES, world, r)
            assert got["start"] == start, msg
            torch.testing.assert_close(
                got["weight"], weight_grad[start:stop], rtol=1e-10, atol=1e-12, msg=msg
            )
