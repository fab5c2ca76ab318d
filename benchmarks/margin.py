"""Margin heads: companion vs pytorch-metric-learning vs the floor, forward + backward.

For each head (L-Softmax, A-Softmax, AM-Softmax, ArcFace) this times one training step's loss
computation, forward and backward, at batch 512, 512 features and 10,000 classes in float32 on
the CPU, for

* the companion's module (``companion.margin``),
* its pytorch-metric-learning counterpart with the same weights, margin and scale,
* the floor: ``F.cross_entropy(normalize(x) @ normalize(W).T, y)``, the cheapest computation
  any cosine head must do (one matrix product each way plus one cross-entropy).

All methods run in one process, interleaved in a shuffled order in every round, after a
warm-up; the table reports the median over the rounds. Run::

    .venv/bin/python benchmarks/margin.py           # full size, writes results/margin.md
    .venv/bin/python benchmarks/margin.py --quick   # small and fast, prints only
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_metric_learning
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml

from companion import margin as M

RESULTS = Path(__file__).parent / "results" / "margin.md"


def make_heads(d: int, c: int) -> list[tuple[str, torch.nn.Module, torch.nn.Module]]:
    """(name, companion head, pytorch-metric-learning head) with identical weights."""
    pairs: list[tuple[str, torch.nn.Module, torch.nn.Module]] = [
        (
            "L-Softmax (m=4)",
            M.LSoftmaxLoss(d, c, margin=4, schedule=None),
            pml.LargeMarginSoftmaxLoss(num_classes=c, embedding_size=d, margin=4),
        ),
        (
            "A-Softmax (m=4)",
            M.ASoftmaxLoss(d, c, margin=4, schedule=None),
            pml.SphereFaceLoss(num_classes=c, embedding_size=d, margin=4),
        ),
        (
            "AM-Softmax (m=0.35, s=30)",
            M.AMSoftmaxLoss(d, c, margin=0.35, scale=30.0),
            pml.CosFaceLoss(num_classes=c, embedding_size=d, margin=0.35, scale=30),
        ),
        (
            "ArcFace (m=0.5 rad, s=64)",
            M.ArcFaceLoss(d, c, margin=0.5, scale=64.0),
            pml.ArcFaceLoss(num_classes=c, embedding_size=d, margin=math.degrees(0.5), scale=64),
        ),
    ]
    for _, ours, theirs in pairs:
        theirs.W.data = ours.weight.detach().t().contiguous().clone()  # type: ignore[union-attr]
    return pairs


def step(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    """A closure running forward + backward once (gradients are discarded each time)."""

    def run() -> None:
        x.grad = None
        loss_fn(x).backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds, no file")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 15)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time (default) or this process's CPU time, steadier on a shared machine",
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]  # recorded with the table: times on a busy machine are noisy
    if args.threads:
        torch.set_num_threads(args.threads)

    b, d, c = (128, 128, 1000) if args.quick else (512, 512, 10_000)
    rounds = args.rounds or (5 if args.quick else 15)
    torch.manual_seed(0)
    x = torch.randn(b, d, requires_grad=True)
    y = torch.randint(0, c, (b,))
    heads = make_heads(d, c)
    floor_w = heads[0][1].weight.detach().clone().requires_grad_(True)

    def floor(features: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(features, dim=1) @ F.normalize(floor_w, dim=1).t()
        return F.cross_entropy(cosine, y)

    methods: dict[str, Callable[[], None]] = {"floor": step(floor, x)}
    for name, ours, theirs in heads:
        for who, module in (("companion", ours), ("pml", theirs)):
            methods[f"{name}|{who}"] = step(lambda f, mod=module: mod(f, y), x)
            for p in module.parameters():
                p.requires_grad_(True)

    # the heads agree before they are timed
    for name, ours, theirs in heads:
        with torch.no_grad():
            a, t = float(ours(x, y)), float(theirs(x, y))
        assert abs(a - t) <= 1e-4 * max(1.0, abs(t)), (name, a, t)

    for run in methods.values():  # warm-up
        run()
        run()
    times: dict[str, list[float]] = {k: [] for k in methods}
    order = list(methods)
    rng = random.Random(0)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            start = clock()
            methods[key]()
            times[key].append(1000 * (clock() - start))
    med = {k: statistics.median(v) for k, v in times.items()}

    fl = med["floor"]
    threads = torch.get_num_threads()
    lines = [
        f"Forward + backward, batch {b}, {d} features, {c:,} classes, float32, CPU "
        f"({threads} thread{'s' if threads != 1 else ''}), {args.clock} time, median of {rounds} "
        f"interleaved "
        f"rounds after warm-up; torch {torch.__version__}, pytorch-metric-learning "
        f"{pytorch_metric_learning.__version__}, "
        f"{platform.machine()}; 1-minute load average {load:.2f} at the start; value checks on "
        f"(the default). Floor: `F.cross_entropy(normalize(x) @ normalize(W).T, y)` "
        f"= {fl:.1f} ms.",
        "",
        "| head | companion (ms) | pytorch-metric-learning (ms) | companion / floor "
        "| pml / floor | companion / pml |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, _, _ in heads:
        ours_ms, pml_ms = med[f"{name}|companion"], med[f"{name}|pml"]
        lines.append(
            f"| {name} | {ours_ms:.1f} | {pml_ms:.1f} | {ours_ms / fl:.2f}x | {pml_ms / fl:.2f}x "
            f"| {ours_ms / pml_ms:.2f}x |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
