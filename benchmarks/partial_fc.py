"""Margin heads over very many classes: time and peak memory of one forward + backward pass.

D = 512 features, B = 512 samples, float32, ArcFace's margin (0.5 rad, scale 64), for C in
{10,000; 100,000; 1,000,000} classes:

* ``pml``: pytorch-metric-learning's ``ArcFaceLoss`` (builds the B x C logits and a dense
  B x C mask);
* ``unchunked``: ``companion.margin.ArcFaceLoss`` (full B x C logits, margin on the target
  column only);
* ``chunked``: ``companion.partial_fc.PartialFC(chunk_size=CHUNK)``, ``sample_rate=1``
  (exact: the same loss and gradients);
* ``sampled 0.1``: the same with ``sample_rate=0.1`` (Partial FC: the positives plus uniform
  negatives, 10% of the centres), the weight's gradient dense (``C x D``, zero on the rows not
  kept);
* ``sampled 0.1 sparse``: the same with ``sparse=True``: the weight's gradient is a sparse tensor
  of the kept rows only, so no step allocates, zero-fills or indexes the dense gradient;
* ``sharded x2``: two processes (gloo), each holding half of the centres and half of the
  batch, chunked, ``sample_rate=1``; the time and memory of each rank (the slower one is
  reported);
* ``floor``: the three B x C x D matrix products any exact head performs (logits, feature
  gradient, weight gradient), in the same class chunks, nothing else.

Each (C, method) runs in a fresh Python process. The process first runs the method once at a
small C (kernels, threads), creates the weight (and, for the floor, its gradient buffer),
records its peak resident set size, then runs the method: the "extra" memory is the growth of
the peak minus the weight's gradient, i.e. everything beyond the weight and its gradient. Time
is the median over the runs after that warm-up. Rows that would not fit in the memory budget
(``--budget-gib``, by default 20 GiB) are predicted from the measured 100,000-class row and
skipped, and the table says so.

Usage::

    python benchmarks/partial_fc.py            # the full sweep; writes results/partial_fc.md
    python benchmarks/partial_fc.py --quick    # small C, prints only (or --output PATH)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _pairs import available_bytes, max_rss_bytes, peak_bytes, reset_peak, write_table

DIM, BATCH, CHUNK = 512, 512, 8192
MARGIN, SCALE = 0.5, 64.0
RESULTS = Path(__file__).resolve().parent / "results" / "partial_fc.md"
METHODS = (
    "pml",
    "unchunked",
    "chunked",
    "sampled 0.1",
    "sampled 0.1 sparse",
    "sharded x2",
    "floor",
)
GIB, MIB = 1024**3, 1024**2


# --------------------------------------------------------------------------------------------
# the methods
# --------------------------------------------------------------------------------------------


def make(method: str, classes: int, group: object = None) -> torch.nn.Module:
    from pytorch_metric_learning import losses as pml

    from companion import margin as M
    from companion.partial_fc import PartialFC

    if method == "pml":
        return pml.ArcFaceLoss(
            num_classes=classes, embedding_size=DIM, margin=math.degrees(MARGIN), scale=SCALE
        )
    if method == "unchunked":
        return M.ArcFaceLoss(DIM, classes, margin=MARGIN, scale=SCALE)
    rate = 0.1 if method.startswith("sampled") else 1.0
    return PartialFC(
        DIM,
        classes,
        margin=(1.0, MARGIN, 0.0),
        scale=SCALE,
        sample_rate=rate,
        sparse=method == "sampled 0.1 sparse",
        chunk_size=CHUNK,
        group=group,
    )


def floor(features: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> None:
    """The three B x C x D products of any exact forward + backward, in class chunks."""
    with torch.no_grad():
        d_features = torch.zeros_like(features)
        for start in range(0, weight.shape[0], CHUNK):
            w = weight[start : start + CHUNK]
            tile = features @ w.T  # logits (and a stand-in for their gradient)
            d_features += tile @ w
            torch.mm(tile.T, features, out=grad[start : start + CHUNK])


def parameter(head: torch.nn.Module) -> torch.Tensor:
    weight: torch.Tensor = head.W if hasattr(head, "W") else head.weight
    return weight


def run_once(
    method: str,
    head: torch.nn.Module | None,
    weight: torch.Tensor,
    grad: torch.Tensor | None,
    batch: int,
    gen: torch.Generator,
) -> float:
    classes = weight.shape[1] if method == "pml" else weight.shape[0]
    features = torch.randn(batch, DIM, generator=gen).requires_grad_(True)
    target = torch.randint(classes, (batch,), generator=gen)
    start = time.perf_counter()
    if head is None:
        assert grad is not None
        floor(features.detach(), weight, grad)
    else:
        weight.grad = None
        head(features, target).backward()
    return time.perf_counter() - start


def worker(method: str, classes: int, repeats: int, rank: int, world: int, port: int) -> None:
    group = None
    if world > 1:
        import torch.distributed as dist

        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        group = dist.group.WORLD
    gen = torch.Generator().manual_seed(rank)
    batch = BATCH // world
    # warm-up at a small size: kernels, threads, allocator
    small = make(method if method != "floor" else "chunked", 1024, group)
    small_grad = torch.empty_like(parameter(small)) if method == "floor" else None
    run_once(method, None if method == "floor" else small, parameter(small), small_grad, batch, gen)
    if method not in ("pml", "unchunked", "floor"):
        # and once with full class chunks (B x CHUNK = 2**22 entries), the size at which the tiled
        # engine runs its compiled element-wise kernels: their one-off compilation is not timed
        warm = make("chunked", 2 * CHUNK if world == 1 else 4 * CHUNK, group)
        run_once("chunked", warm, parameter(warm), None, batch, gen)
        del warm
    del small, small_grad
    reset_peak()  # the warm-up's own peak (a compilation's) must not hide the growth below
    head = None if method == "floor" else make(method, classes, group)
    weight = torch.randn(classes, DIM) / math.sqrt(DIM) if head is None else parameter(head)
    grad = torch.empty_like(weight) if head is None else None
    if grad is not None:
        grad.zero_()
    baseline = peak_bytes()
    times = [run_once(method, head, weight, grad, batch, gen) for _ in range(repeats)]
    grad_bytes = weight.numel() * weight.element_size()
    growth = peak_bytes() - baseline
    result = {
        "seconds": statistics.median(times),
        # the floor's gradient buffer exists before the baseline; the heads allocate theirs
        # (a dense C x D one, except the sparse head's, which holds the kept rows only)
        "extra_bytes": growth if head is None or method.endswith("sparse") else growth - grad_bytes,
        "total_bytes": max_rss_bytes(),
        "weight_bytes": grad_bytes,
        "runs": repeats,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def measure(method: str, classes: int, repeats: int) -> dict[str, float]:
    world = 2 if method == "sharded x2" else 1
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "chunked" if world > 1 else method,
                str(classes),
                str(repeats),
                str(rank),
                str(world),
                str(port),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{method} at C={classes} failed with code {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    # the slowest rank sets the step time; report the larger memory too
    return max(results, key=lambda r: r["seconds"]) | {
        "extra_bytes": max(r["extra_bytes"] for r in results),
        "total_bytes": max(r["total_bytes"] for r in results),
    }


# --------------------------------------------------------------------------------------------
# the sweep and the table
# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small C, prints only")
    parser.add_argument("--output", type=Path, help="where to write the table")
    parser.add_argument("--budget-gib", type=float, default=20.0, help="memory budget per row")
    parser.add_argument("--worker", nargs=6, metavar=("METHOD", "C", "RUNS", "RANK", "N", "PORT"))
    args = parser.parse_args()
    if args.worker:
        method, *numbers = args.worker
        worker(method, *(int(n) for n in numbers))
        return

    load = os.getloadavg()[0]
    if args.quick:
        plan = [(4_000, 2), (40_000, 1)]
    else:
        plan = [(10_000, 3), (100_000, 2), (1_000_000, 1)]
    budget = args.budget_gib * GIB
    rows: dict[tuple[int, str], dict[str, float]] = {}
    skipped: dict[tuple[int, str], str] = {}
    for index, (classes, repeats) in enumerate(plan):
        for method in METHODS:
            if index > 0:
                previous_c = plan[index - 1][0]
                previous = rows.get((previous_c, method))
                if previous is None:
                    skipped[classes, method] = skipped.get(
                        (previous_c, method), "not run at the smaller C"
                    )
                    continue
                # extra memory and the weight + gradient grow linearly in C
                predicted = (previous["extra_bytes"] + 2 * previous["weight_bytes"]) * (
                    classes / previous_c
                )
                free = available_bytes()
                limit = min(budget, 0.8 * free) if free is not None else budget
                if predicted > limit:
                    skipped[classes, method] = (
                        f"not run: predicted {predicted / GIB:.0f} GiB "
                        f"(budget {limit / GIB:.0f} GiB)"
                    )
                    print(f"C={classes:>9,} {method:>12}: skipped ({skipped[classes, method]})")
                    continue
            r = measure(method, classes, repeats)
            rows[classes, method] = r
            print(
                f"C={classes:>9,} {method:>12}: {r['seconds']:8.3f} s, "
                f"extra peak {r['extra_bytes'] / MIB:8.0f} MiB",
                flush=True,
            )

    table = render(rows, skipped, plan, load, args.quick)
    write_table(table, args.output, args.quick, RESULTS)


def render(
    rows: dict[tuple[int, str], dict[str, float]],
    skipped: dict[tuple[int, str], str],
    plan: list[tuple[int, int]],
    load: float,
    quick: bool,
) -> str:
    cores = os.cpu_count()
    note = "**Quick run (small C only): regenerate with `python benchmarks/partial_fc.py`.** "
    lines = [
        f"{note if quick else ''}ArcFace head (m = 0.5 rad, s = 64), forward + backward, "
        f"B = {BATCH}, D = {DIM}, "
        f"float32, chunks of {CHUNK:,} classes; torch {torch.__version__}, {cores} cores, "
        f"{platform.machine()}; 1-minute load average {load:.2f} when the run started. "
        "Time: median of the runs after a warm-up; extra memory: growth of the peak resident "
        "set size beyond the weight and its gradient, in a fresh process per row (for "
        "`sharded x2`: per rank, each holding half of the weight, 256 of the 512 samples and "
        f"{max(1, (cores or 2) // 2)} thread(s); the slower rank's time).",
        "",
        "| classes | method | runs | time (s) | time / unchunked | extra peak memory (MiB) "
        "| memory / unchunked | weight per process (MiB) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for classes, _ in plan:
        base = rows.get((classes, "unchunked"))
        for method in METHODS:
            r = rows.get((classes, method))
            if r is None:
                why = skipped.get((classes, method), "not run")
                lines.append(f"| {classes:,} | {method} | - | {why} | - | - | - | - |")
                continue
            t_ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "-"
            m_ratio = (
                f"{r['extra_bytes'] / base['extra_bytes']:.1%}"
                if base and method != "floor"
                else "-"
            )
            extra = f"{r['extra_bytes'] / MIB:,.0f}" if method != "floor" else "-"
            lines.append(
                f"| {classes:,} | {method} | {int(r['runs'])} | {r['seconds']:.3f} | {t_ratio} "
                f"| {extra} | {m_ratio} | {r['weight_bytes'] / MIB:,.0f} |"
            )
    lines.append("")
    if quick:
        lines.append(
            "The targets are set for C = 1,000,000, where the logits and the normalised weight "
            "dwarf the chunked head's fixed tiles; at the small C of a quick run they only "
            "show that the script works."
        )
        lines.append("")
    lines.extend(verdicts(rows, plan[-1][0]))
    return "\n".join(lines) + "\n"


def verdicts(rows: dict[tuple[int, str], dict[str, float]], classes: int) -> list[str]:
    base = rows.get((classes, "unchunked"))
    chunked = rows.get((classes, "chunked"))
    sampled = rows.get((classes, "sampled 0.1"))
    sparse = rows.get((classes, "sampled 0.1 sparse"))
    sharded = rows.get((classes, "sharded x2"))
    out = []
    if base is None:
        out.append(f"- C = {classes:,}: the unchunked head was not run, so no ratio is given.")
        return out
    if chunked:
        m = chunked["extra_bytes"] / base["extra_bytes"]
        t = chunked["seconds"] / base["seconds"]
        out.append(
            f"- C = {classes:,}, chunked with `sample_rate=1`: extra peak memory {m:.1%} of the "
            f"unchunked head's (target at most 20%: {'met' if m <= 0.2 else 'NOT met'}); time "
            f"{t:.2f}x (target at most 1.2x: {'met' if t <= 1.2 else 'NOT met'})."
        )
    if sampled:
        speedup = base["seconds"] / sampled["seconds"]
        out.append(
            f"- C = {classes:,}, `sample_rate=0.1`: {speedup:.1f}x faster than the unchunked "
            "full head with a dense weight gradient: every step still allocates, zero-fills and "
            f"indexes into the dense C x D gradient ({classes * DIM * 4 / GIB:.1f} GiB)."
        )
    if sparse:
        speedup = base["seconds"] / sparse["seconds"]
        out.append(
            f"- C = {classes:,}, `sample_rate=0.1, sparse=True`: {speedup:.1f}x faster than the "
            f"unchunked full head (target at least 8x: {'met' if speedup >= 8 else 'NOT met'})."
        )
    if sharded:
        out.append(
            f"- C = {classes:,}, two sharded processes: each holds "
            f"{sharded['weight_bytes'] / MIB:,.0f} MiB of the "
            f"{base['weight_bytes'] / MIB:,.0f} MiB weight (half); per-rank step "
            f"{sharded['seconds']:.2f} s with {int(sharded['threads'])} thread(s) each."
        )
    return out


if __name__ == "__main__":
    main()
