"""Run a function in several real processes joined by a gloo process group, and collect results.

The multi-process tests (CLIP's gather, SigLIP's ring, Partial FC's shards) all start real
processes with :func:`run_processes`; each rank runs ``worker(rank, world)`` inside an
initialised process group and returns what the test compares with one process.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn


def free_port() -> int:
    """A TCP port on the loopback interface that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def gradients(model: nn.Module) -> dict[str, Tensor]:
    """A copy of every parameter's gradient, by name."""
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _entry(
    rank: int, worker: Callable[[int, int], Any], world: int, port: int, out_dir: str
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.save(worker(rank, world), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_processes(worker: Callable[[int, int], Any], world: int, out_dir: Path) -> list[Any]:
    """Run ``worker(rank, world)`` in ``world`` processes; return each rank's result, in order.

    ``worker`` must be a module-level function (it is pickled into the new processes).
    """
    mp.spawn(_entry, args=(worker, world, free_port(), str(out_dir)), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


def assert_ranks_match(ranks: list[Any], name: str, loss: Tensor, want: dict[str, Tensor]) -> None:
    """Each rank's ``ranks[r][name] = (loss, gradients)`` against one process: the mean of the
    returned losses is the single-process loss, and every rank's gradients (after DDP's
    averaging) are the single-process ones."""
    returned = torch.stack([rank[name][0] for rank in ranks])
    torch.testing.assert_close(returned.mean(), loss.detach(), rtol=1e-12, atol=1e-12, msg=name)
    for r, rank in enumerate(ranks):
        got = rank[name][1]
        assert set(got) == set(want), name
        for param, grad in want.items():
            torch.testing.assert_close(
                got[param], grad, rtol=1e-10, atol=1e-12, msg=f"{name}, rank {r}, {param}"
            )
