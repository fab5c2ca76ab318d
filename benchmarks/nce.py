"""Sampled softmax and NCE vs the full softmax: one training step of a 1M-class output layer.

The step is forward plus backward through the output layer only: a batch of 1,024 hidden
vectors of dimension 128 against a layer of 1,000,000 classes (``weight`` (C, 128) and ``bias``
(C,)), float32, on the CPU, with gradients for the input, the weight and the bias. Methods:

* **full softmax**: ``F.cross_entropy(F.linear(x, W, b), y)``, torch's fused cross-entropy over
  the whole (1024, 1,000,000) logit matrix, the reference (4 GB of logits, plus their gradient);
* **sampled softmax** and **NCE** from ``companion.nce`` with 1,024 negatives shared by the
  batch, drawn from the log-uniform (Zipf) sampler, each with

  - a *dense* weight gradient: autograd scatters the 2,048 used rows into a zero (C, 128)
    tensor, 512 MB that must be allocated and zeroed every step, exactly the gradient the full
    softmax produces too (the like-for-like comparison);
  - a *sparse* weight gradient (``sparse=True``): only the 2,048 rows, for optimisers that take
    sparse gradients (``torch.optim.SGD``, ``SparseAdam``, ``Adagrad``);

* **floor**: gathering the 1,024 negative rows and the 1,024 target rows (sparse gradients),
  the one (1024, 128) x (128, 1024) product of the batch with the negatives and the 1,024 dot
  products with the targets, with their backward: the cheapest computation any sampled loss
  with these sizes must do. (Multiplying the batch by all 2,048 gathered rows, as an earlier
  version did, is twice the product a sampled loss needs, and was slower than the sampled
  softmax itself.)

Each method runs in a fresh subprocess, so that its memory can be read from the operating
system (``tracemalloc`` does not see torch's allocations): just before the first step the
script records the resident set size (the layer, the batch and the interpreter) and resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``); after the steps, the peak resident set
size (``VmHWM``) is the *peak memory* and the peak minus the starting size is the *step memory*
one step needs. Times are the median of several steps after one warm-up step. Because every
method runs in its own process, a change in the machine's load between processes moves the
ratios; so one more process times the floor and the two sparse steps *interleaved* (floor,
sampled softmax, NCE, floor, ...) and reports the median of the per-round ratios to the floor,
which the issue's target (each sparse step within 2x the floor) is judged by; it also times the two
sparse steps with value checks off, the setting of a training loop. The 1-minute load
average at the start is recorded with the table: on a machine shared with other work the
times are not trustworthy. Workers run with
``THP_MEM_ALLOC_ENABLE=1``, which makes torch's CPU allocator ask for transparent huge pages for
large tensors: without it the page faults of freshly allocated buffers dominate both the full
softmax (4 GB of logits per step) and the dense weight gradient (512 MB per step). The full
softmax needs about 13 GB; the script checks the available memory first and refuses to run it
if too little is free. Run::

    .venv/bin/python benchmarks/nce.py           # full size (several minutes), writes the table
    .venv/bin/python benchmarks/nce.py --quick   # small and fast, prints only

Value checks are left on (the default): they read only the batch, the used rows and the draws,
which costs little next to the step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results" / "nce.md"

METHODS: dict[str, tuple[str, str]] = {
    # key: (label, weight gradient)
    "full": ("full softmax, `F.cross_entropy` (reference)", "dense"),
    "sampled_dense": ("sampled softmax, `companion.nce.sampled_softmax_loss`", "dense"),
    "nce_dense": ("NCE, `companion.nce.nce_loss`", "dense"),
    "sampled_sparse": ("sampled softmax, `sparse=True`", "sparse"),
    "nce_sparse": ("NCE, `sparse=True`", "sparse"),
    "floor": ("floor: gather rows, the (B, S) product and B dot products, with backward", "sparse"),
}


def rss_now_mib() -> float:
    """The current resident set size, from /proc (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """The peak resident set size of this process (since the last reset), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return float("inf")


def make_steps(
    c: int, d: int, b: int, s: int
) -> tuple[dict[str, Callable[[], torch.Tensor]], Callable[[], None]]:
    """The steps of every method on one shared layer, and a function that clears the grads."""
    from companion import nce, value_checks

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(c, d, generator=gen).mul_(d**-0.5).requires_grad_(True)
    bias = torch.zeros(c, requires_grad=True)
    x = torch.randn(b, d, generator=gen, requires_grad=True)
    target = nce.LogUniformSampler(c).sample(b, generator=gen)  # Zipfian targets
    sampler = nce.LogUniformSampler(c)
    neg_gen = torch.Generator().manual_seed(1)

    def full() -> torch.Tensor:
        return F.cross_entropy(F.linear(x, weight, bias), target)

    def sampled(loss_fn: Callable[..., torch.Tensor], sparse: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            return loss_fn(
                x, weight, target, sampler, s, bias=bias, sparse=sparse, generator=neg_gen
            )

        return run

    def without_value_checks(step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with value_checks(False):  # a training loop's setting: no host sync
                return step()

        return run

    def floor() -> torch.Tensor:
        negatives = F.embedding(sampler.sample(s, generator=neg_gen), weight, sparse=True)
        targets = F.embedding(target, weight, sparse=True)
        return (x @ negatives.T).sum() + (x * targets).sum()

    def zero_grad() -> None:
        weight.grad = bias.grad = x.grad = None  # as optimizer.zero_grad(set_to_none=True)

    steps: dict[str, Callable[[], torch.Tensor]] = {
        "full": full,
        "sampled_dense": sampled(nce.sampled_softmax_loss, False),
        "nce_dense": sampled(nce.nce_loss, False),
        "sampled_sparse": sampled(nce.sampled_softmax_loss, True),
        "nce_sparse": sampled(nce.nce_loss, True),
        "floor": floor,
    }
    for name in ("sampled_sparse", "nce_sparse"):
        steps[f"{name}_unchecked"] = without_value_checks(steps[name])
    return steps, zero_grad


def timed_step(step: Callable[[], torch.Tensor], zero_grad: Callable[[], None], name: str) -> float:
    """One forward + backward, in milliseconds."""
    zero_grad()
    start = time.perf_counter()
    loss = step()
    loss.backward()
    elapsed = time.perf_counter() - start
    assert torch.isfinite(loss.detach()), name
    return 1000 * elapsed


def worker(method: str, c: int, d: int, b: int, s: int, runs: int) -> dict[str, float]:
    """Time ``runs`` steps of one method after one warm-up step; report time and memory."""
    steps, zero_grad = make_steps(c, d, b, s)
    step = steps[method]
    rss_before = rss_now_mib()
    reset_peak_rss()  # so that the peak below is the steps' peak, not the set-up's
    times = [timed_step(step, zero_grad, method) for _ in range(runs + 1)][1:]  # 1 warm-up
    return {
        "ms": statistics.median(times),
        "peak_mib": peak_rss_mib(),
        "extra_mib": peak_rss_mib() - rss_before,
        "runs": runs,
        "threads": torch.get_num_threads(),
    }


INTERLEAVED = (
    "floor",
    "sampled_sparse",
    "nce_sparse",
    "sampled_sparse_unchecked",
    "nce_sparse_unchecked",
)


def interleaved_worker(c: int, d: int, b: int, s: int, rounds: int) -> dict[str, float]:
    """Median over ``rounds`` of (step time / floor time), the steps run one after the other."""
    steps, zero_grad = make_steps(c, d, b, s)
    for name in INTERLEAVED:  # warm-up
        timed_step(steps[name], zero_grad, name)
    ratios: dict[str, list[float]] = {name: [] for name in INTERLEAVED[1:]}
    for _ in range(rounds):
        ms = {name: timed_step(steps[name], zero_grad, name) for name in INTERLEAVED}
        for name in ratios:
            ratios[name].append(ms[name] / ms["floor"])
    return {name: statistics.median(r) for name, r in ratios.items()} | {"rounds": rounds}


def run_worker(method: str, sizes: tuple[int, ...]) -> dict[str, float]:
    """Run one worker in a fresh process and return what it printed."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--sizes", *map(str, sizes)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "THP_MEM_ALLOC_ENABLE": "1"},
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few runs, no file")
    parser.add_argument("--worker", choices=[*METHODS, "interleaved"], help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        c, d, b, s, runs = args.sizes
        if args.worker == "interleaved":
            print(json.dumps(interleaved_worker(c, d, b, s, runs)))
        else:
            print(json.dumps(worker(args.worker, c, d, b, s, runs)))
        return

    load = os.getloadavg()[0]  # recorded with the table: a busy machine distorts the times
    if load > 0.5:
        print(
            f"warning: the 1-minute load average is {load:.2f} on {os.cpu_count()} cores; other "
            "work slows the many small parallel kernels of the sampled steps more than the "
            "floor's few large ones, so the ratios below will be too high",
            file=sys.stderr,
        )

    c, d, b, s = (50_000, 64, 256, 256) if args.quick else (1_000_000, 128, 1024, 1024)
    runs = {"full": 2 if args.quick else 3}
    default_runs = 3 if args.quick else 10
    full_need_gib = 3 * b * c * 4 / 2**30 + 3 * c * d * 4 / 2**30 + 1.0
    results: dict[str, dict[str, float]] = {}
    for method in METHODS:
        if method == "full" and available_gib() < full_need_gib:
            print(
                f"not running the full softmax: it needs about {full_need_gib:.0f} GiB and only "
                f"{available_gib():.1f} GiB are available",
                file=sys.stderr,
            )
            sys.exit(1)
        results[method] = run_worker(method, (c, d, b, s, runs.get(method, default_runs)))
        print(f"{method}: {results[method]}", file=sys.stderr)
    rounds = 5 if args.quick else 15
    interleaved = run_worker("interleaved", (c, d, b, s, rounds))
    print(f"interleaved: {interleaved}", file=sys.stderr)

    full_ms = results["full"]["ms"]
    floor_ms = results["floor"]["ms"]
    threads = int(results["full"]["threads"])
    quick_note = (
        "**Quick run (small sizes): regenerate with `python benchmarks/nce.py`.** "
        if args.quick
        else ""
    )
    lines = [
        f"{quick_note}One step (forward + backward through the output layer, gradients for "
        f"input, weight and bias) with {c:,} classes, dimension {d}, batch {b:,}, {s:,} shared "
        f"negatives from the "
        f"log-uniform sampler, float32, CPU ({threads} threads), torch {torch.__version__}, "
        f"{platform.machine()}. Median of {runs['full']} steps (full softmax) or "
        f"{default_runs} steps (the others) after one warm-up step, each method in a fresh "
        f"process, with `THP_MEM_ALLOC_ENABLE=1`. *Peak memory*: the process's peak resident set "
        f"size during the steps; *step memory*: that peak minus the resident size before the "
        f"first step (layer, batch, interpreter). Value checks on (the default). 1-minute load "
        f"average {load:.2f} when the run started.",
        "",
        "| method | weight gradient | time per step (ms) | speed-up over full softmax "
        "| time / floor | peak memory (MiB) | step memory (MiB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, (label, grad) in METHODS.items():
        r = results[method]
        lines.append(
            f"| {label} | {grad} | {r['ms']:.1f} | {full_ms / r['ms']:.0f}x "
            f"| {r['ms'] / floor_ms:.2f} | {r['peak_mib']:,.0f} | {r['extra_mib']:,.0f} |"
        )
    lines += [
        "",
        f"Interleaved in one process (floor, sampled softmax, NCE, the same two with value "
        f"checks off, floor, ...; median of {int(interleaved['rounds'])} per-round ratios): the "
        f"sparse sampled-softmax step takes **{interleaved['sampled_sparse']:.2f}x** the floor's "
        f"time and the sparse NCE step **{interleaved['nce_sparse']:.2f}x** (target: at most "
        f"2x); with value checks off, as in a training loop, "
        f"{interleaved['sampled_sparse_unchecked']:.2f}x and "
        f"{interleaved['nce_sparse_unchecked']:.2f}x.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
