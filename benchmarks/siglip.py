"""The tiled SigLIP loss against the plain full-matrix one: time and peak memory, fwd + bwd.

What is measured, per batch size B (512 features, float32, unit-norm random features, a logit
scale of 10 and a bias of -10, both tensors that need a gradient):

* ``full``: the implementation open_clip's ``SigLipLoss`` uses on one process:
  ``logits = t * I @ T.T + b``, labels ``2 * eye - 1``, ``-logsigmoid(labels * logits).sum() / B``.
  Autograd keeps several ``B x B`` buffers.
* ``chunked``: ``companion.siglip.siglip_loss(I, T, t, b, chunk_size=1024)``, which never holds
  more than two ``1024 x B`` tiles of the matrix and computes value and gradients in one sweep.
* ``matmul floor``: the three ``B x B x D`` products that any exact method performs (the
  forward ``I T^T`` and the backward ``G T`` and ``G^T I``), tiled like ``chunked``, with no
  elementwise work at all: the time no implementation can beat on this machine.

Each (B, method) runs in a fresh Python subprocess. It first runs the method once at B = 256 (to
load kernels and start threads), records the peak resident set size so far
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), then creates the inputs and runs the method at
B: the table's memory is the growth of that peak, i.e. what the inputs, the forward and the
backward passes (gradients included) need on top of an idle process. Time is the median
wall-clock time of the forward plus backward pass over the repeats.

A change in the machine's load between two processes moves the ratio of their times, so the
script also times ``matmul floor`` and ``chunked`` interleaved in one process (one of each per
round) and reports the median of the per-round ratios; the 1-minute load average at the start
is recorded with the table.

Usage::

    python benchmarks/siglip.py            # the full run; writes benchmarks/results/siglip.md
    python benchmarks/siglip.py --quick    # small batch sizes; prints (or --output FILE)
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
from pathlib import Path

import torch
import torch.nn.functional as F

DIM = 512
CHUNK = 1024
SCALE, BIAS = 10.0, -10.0
RESULTS = Path(__file__).resolve().parent / "results" / "siglip.md"
METHODS = ("full", "chunked", "matmul floor")
GIB = 1024**3


def full_siglip(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """The plain full-matrix SigLIP loss (open_clip's formula on one process)."""
    logits = scale * image @ text.T + bias
    labels = 2 * torch.eye(image.shape[0], dtype=image.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / image.shape[0]


def matmul_floor(image: torch.Tensor, text: torch.Tensor, chunk: int) -> None:
    """The three B x B x D products of any exact forward + backward, in row tiles, nothing else."""
    with torch.no_grad():
        grad_text = torch.zeros_like(text)
        for start in range(0, image.shape[0], chunk):
            rows = image[start : start + chunk]
            tile = rows @ text.T  # forward logits (and a stand-in for the gradient tile)
            _ = tile @ text  # d image
            grad_text += tile.T @ rows  # d text


def make_inputs(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    image = F.normalize(torch.randn(batch, DIM, generator=generator), dim=1).requires_grad_()
    text = F.normalize(torch.randn(batch, DIM, generator=generator), dim=1).requires_grad_()
    scale = torch.tensor(SCALE, requires_grad=True)
    bias = torch.tensor(BIAS, requires_grad=True)
    return image, text, scale, bias


def run_method(method: str, inputs: tuple[torch.Tensor, ...]) -> float:
    from companion.siglip import siglip_loss

    image, text, scale, bias = inputs
    start = time.perf_counter()
    if method == "matmul floor":
        matmul_floor(image.detach(), text.detach(), CHUNK)
    else:
        if method == "full":
            loss = full_siglip(image, text, scale, bias)
        else:
            loss = siglip_loss(image, text, scale, bias, chunk_size=CHUNK)
        loss.backward()
        for x in inputs:
            x.grad = None
    return time.perf_counter() - start


def max_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def worker(method: str, batch: int, repeats: int) -> None:
    import companion

    companion.set_value_checks(False)  # a training loop's setting: no host syncs
    generator = torch.Generator().manual_seed(0)
    run_method(method, make_inputs(256, generator))  # warm-up at a small size
    baseline = max_rss_bytes()  # the inputs below count as extra memory
    inputs = make_inputs(batch, generator)
    times = [run_method(method, inputs) for _ in range(repeats)]
    peak = max_rss_bytes() - baseline
    print(
        json.dumps(
            {
                "seconds": statistics.median(times),
                "peak_bytes": peak,
                "total_bytes": max_rss_bytes(),
                "runs": repeats,
            }
        )
    )


def ratio_worker(batch: int, rounds: int) -> None:
    """Floor and chunked interleaved in one process: the median of the per-round ratios."""
    import companion

    companion.set_value_checks(False)
    generator = torch.Generator().manual_seed(0)
    inputs = make_inputs(batch, generator)
    run_method("chunked", inputs)
    run_method("matmul floor", inputs)
    ratios, floors, chunked = [], [], []
    for _ in range(rounds):
        f = run_method("matmul floor", inputs)
        c = run_method("chunked", inputs)
        floors.append(f)
        chunked.append(c)
        ratios.append(c / f)
    print(
        json.dumps(
            {
                "ratio": statistics.median(ratios),
                "floor": statistics.median(floors),
                "chunked": statistics.median(chunked),
                "rounds": rounds,
            }
        )
    )


def subprocess_json(args: list[str]) -> dict[str, float]:
    command = [sys.executable, __file__, *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batch sizes, print only")
    parser.add_argument("--output", type=Path, help="write the table here (default: quick: none)")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "BATCH", "REPEATS"))
    parser.add_argument("--ratio-worker", nargs=2, metavar=("BATCH", "ROUNDS"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    if args.ratio_worker:
        ratio_worker(int(args.ratio_worker[0]), int(args.ratio_worker[1]))
        return

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: 1-minute load average {load:.2f}: times on a busy machine are noisy")
    if args.quick:
        plan = [(2048, METHODS, 2), (4096, ("full", "chunked"), 1)]
        ratio_plan = (4096, 3)
    else:
        plan = [(16384, METHODS, 3), (65536, ("chunked",), 1)]
        ratio_plan = (16384, 3)
    rows: dict[tuple[int, str], dict[str, float]] = {}
    for batch, methods, repeats in plan:
        for method in methods:
            need = 6 * 4 * batch * batch if method == "full" else 0
            free = available_bytes()
            if free is not None and need > 0.8 * free:
                print(f"skipping {method} at B={batch}: needs about {need / GIB:.0f} GiB")
                continue
            rows[batch, method] = subprocess_json(["--worker", method, str(batch), str(repeats)])
            r = rows[batch, method]
            print(
                f"B={batch:>6} {method:>12}: {r['seconds']:8.2f} s, "
                f"peak +{r['peak_bytes'] / 2**20:8.0f} MiB",
                flush=True,
            )
    ratio = subprocess_json(["--ratio-worker", str(ratio_plan[0]), str(ratio_plan[1])])
    print(f"interleaved at B={ratio_plan[0]}: chunked / floor = {ratio['ratio']:.2f}", flush=True)

    table = render(rows, plan, ratio, ratio_plan[0], load, quick=args.quick)
    print()
    print(table)
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(table)
        print(f"written to {output}")


def render(
    rows: dict[tuple[int, str], dict[str, float]],
    plan: list[tuple[int, tuple[str, ...], int]],
    ratio: dict[str, float],
    ratio_batch: int,
    load: float,
    quick: bool = False,
) -> str:
    lines = [
        *(
            [
                "**Quick run** (`--quick`: small batches, a check of the script, not a measurement "
                "of the targets; the full run replaces this file).",
                "",
            ]
            if quick
            else []
        ),
        f"SigLIP loss, forward + backward, {DIM} float32 features, chunked with "
        f"`chunk_size={CHUNK}`; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}; 1-minute load average {load:.2f} at the start. Time: median "
        "of the runs; memory: growth of the peak resident set size while creating the inputs "
        "and running the forward and backward passes (inputs and gradients included), in a "
        "fresh process per row; the last column is the process's whole peak (Python, torch, "
        "inputs and all).",
        "",
        "| batch | method | runs | time (s) | time / floor | extra peak memory (MiB) "
        "| memory / full | peak RSS of the process (MiB) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch, methods, _ in plan:
        full = rows.get((batch, "full"))
        floor = rows.get((batch, "matmul floor"))
        for method in METHODS:
            r = rows.get((batch, method))
            if r is None:
                if method == "full" and "full" not in methods:
                    gib = 4 * batch * batch / GIB
                    lines.append(
                        f"| {batch:,} | full | - | not run | - | "
                        f"each B x B float32 matrix is {gib:.0f} GiB | - | - |"
                    )
                continue
            t_ratio = f"{r['seconds'] / floor['seconds']:.2f}" if floor else "-"
            if full and method != "matmul floor":
                m_ratio = f"{r['peak_bytes'] / full['peak_bytes']:.1%}"
            else:
                m_ratio = "-"
            mem = f"{r['peak_bytes'] / 2**20:,.0f}" if method != "matmul floor" else "-"
            total = f"{r['total_bytes'] / 2**20:,.0f}" if method != "matmul floor" else "-"
            lines.append(
                f"| {batch:,} | {method} | {int(r['runs'])} | {r['seconds']:.2f} | {t_ratio} "
                f"| {mem} | {m_ratio} | {total} |"
            )
    lines.append("")
    lines.append(
        f"Interleaved in one process at batch {ratio_batch:,} ({int(ratio['rounds'])} rounds): "
        f"chunked {ratio['chunked']:.2f} s, floor {ratio['floor']:.2f} s, median ratio "
        f"{ratio['ratio']:.2f}."
    )
    lines.append("")
    lines.extend(verdicts(rows, ratio, ratio_batch))
    return "\n".join(lines) + "\n"


def verdicts(
    rows: dict[tuple[int, str], dict[str, float]], ratio: dict[str, float], ratio_batch: int
) -> list[str]:
    out = []
    full, chunked = rows.get((16384, "full")), rows.get((16384, "chunked"))
    if ratio_batch == 16384:
        r = ratio["ratio"]
        out.append(
            f"- Batch 16,384: chunked / floor time = {r:.2f} interleaved in one process "
            f"(target: at most 1.25, {'met' if r <= 1.25 else 'NOT met'})."
        )
    if full and chunked:
        m = chunked["peak_bytes"] / full["peak_bytes"]
        out.append(
            f"- Batch 16,384: chunked / full extra peak memory = {m:.1%} "
            f"(target: at most 10%, {'met' if m <= 0.10 else 'NOT met'})."
        )
    big = rows.get((65536, "chunked"))
    if big:
        gb = big["total_bytes"] / 1e9
        out.append(
            f"- Batch 65,536: chunked finished; the whole process peaked at {gb:.2f} GB resident "
            f"(target: under 4 GB, {'met' if gb < 4 else 'NOT met'})."
        )
    if not out:
        out.append("- A quick run at small batch sizes: the targets are measured by the full run.")
    return out


if __name__ == "__main__":
    main()
