"""The measuring harness shared by ``clip.py`` and ``siglip.py``: a loss over the B x B matrix
of image-text pairs, full against chunked against the matmul floor.

Each (B, method) runs in a fresh Python subprocess of the calling script. It first runs the
method once at B = 256 (to load kernels and start threads), records the peak resident set size
so far (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), then creates the inputs and runs the
method at B: the table's memory is the growth of that peak, i.e. what the inputs, the forward
and the backward passes (gradients included) need on top of an idle process. Time is the median
wall-clock time of the forward plus backward pass over the repeats.

A change in the machine's load between two processes moves the ratio of their times, so the
floor and the chunked loss are also timed interleaved in one process (one of each per round),
and the median of the per-round ratios is reported; the 1-minute load average at the start is
recorded with the table. Value checks are off in every worker, as in a training loop.
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
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

DIM = 512
CHUNK = 1024
GIB = 1024**3
METHODS = ("full", "chunked", "matmul floor")
FULL_RUN = [(16384, METHODS, 3), (65536, ("chunked",), 1)]
QUICK_RUN = [(2048, METHODS, 2), (4096, ("full", "chunked"), 1)]


#: The warm-up batch of each fresh process (see :func:`worker`).
WARM_UP_BATCH = 4096


@dataclass(frozen=True)
class PairLoss:
    """What differs between the two scripts.

    Attributes:
        title: the loss's name in the table ("CLIP loss").
        script: the calling script (its workers are subprocesses of it).
        results: the results file of the full run.
        scalars: the scalar inputs after the two feature matrices (scale, bias), each with a
            gradient.
        full: ``(image, text, *scalars) -> loss``, the plain full-matrix implementation.
        chunked: ``(image, text, *scalars, chunk_size) -> loss``, the companion's tiles.
        floor_note: said after the floor-ratio verdict (why the floor may be out of reach).
        floor_target: the largest chunked / floor time ratio the loss aims at.
    """

    title: str
    script: str
    results: Path
    scalars: tuple[float, ...]
    full: Callable[..., torch.Tensor]
    chunked: Callable[..., torch.Tensor]
    floor_note: str = ""
    floor_target: float = 1.25


def matmul_floor(image: torch.Tensor, text: torch.Tensor, chunk: int) -> None:
    """The three B x B x D products of any exact forward + backward, in row tiles, nothing else."""
    with torch.no_grad():
        grad_text = torch.zeros_like(text)
        for start in range(0, image.shape[0], chunk):
            rows = image[start : start + chunk]
            tile = rows @ text.T  # forward logits (and a stand-in for the gradient tile)
            _ = tile @ text  # d image
            grad_text += tile.T @ rows  # d text


def make_inputs(spec: PairLoss, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Unit-norm random features, and the scalars as tensors that need a gradient."""
    image = F.normalize(torch.randn(batch, DIM, generator=generator), dim=1).requires_grad_()
    text = F.normalize(torch.randn(batch, DIM, generator=generator), dim=1).requires_grad_()
    return image, text, *(torch.tensor(v, requires_grad=True) for v in spec.scalars)


def run_method(spec: PairLoss, method: str, inputs: tuple[torch.Tensor, ...]) -> float:
    """Seconds of one forward + backward (or of the floor's products)."""
    start = time.perf_counter()
    if method == "matmul floor":
        matmul_floor(inputs[0].detach(), inputs[1].detach(), CHUNK)
    else:
        loss = spec.full(*inputs) if method == "full" else spec.chunked(*inputs, CHUNK)
        loss.backward()
        for x in inputs:
            x.grad = None
    return time.perf_counter() - start


def max_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def write_table(table: str, output: Path | None, quick: bool, results: Path) -> None:
    """Print a benchmark's table and write it to ``output``, or to ``results`` after a full run
    (a ``--quick`` run writes nothing unless given ``--output``)."""
    print()
    print(table)
    path = output if output is not None else (None if quick else results)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table)
        print(f"written to {path}")


def reset_peak() -> bool:
    """Reset the kernel's record of this process's peak resident set size (Linux: write 5 to
    /proc/self/clear_refs), so that a warm-up's (a compilation's) peak hides no later growth."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """The peak resident set size since the last :func:`reset_peak` (Linux's VmHWM), or over the
    process's life where the kernel does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return max_rss_bytes()


def available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def worker(spec: PairLoss, method: str, batch: int, repeats: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    # warm-up at a size whose tiles (CHUNK x 4,096 = 2**22 entries) reach the tiled engine's
    # compiled element-wise kernels, so that their one-off compilation is neither timed nor
    # counted as the step's memory
    run_method(spec, method, make_inputs(spec, WARM_UP_BATCH, generator))
    reset_peak()  # the warm-up's own peak must not hide the growth below
    baseline = peak_bytes()  # the inputs below count as extra memory
    inputs = make_inputs(spec, batch, generator)
    times = [run_method(spec, method, inputs) for _ in range(repeats)]
    return {
        "seconds": statistics.median(times),
        "peak_bytes": peak_bytes() - baseline,
        "total_bytes": max_rss_bytes(),
        "runs": repeats,
    }


def ratio_worker(spec: PairLoss, batch: int, rounds: int) -> dict[str, float]:
    """Floor and chunked interleaved in one process: the median of the per-round ratios."""
    inputs = make_inputs(spec, batch, torch.Generator().manual_seed(0))
    run_method(spec, "chunked", inputs)
    run_method(spec, "matmul floor", inputs)
    floors, chunked = [], []
    for _ in range(rounds):
        floors.append(run_method(spec, "matmul floor", inputs))
        chunked.append(run_method(spec, "chunked", inputs))
    return {
        "ratio": statistics.median(c / f for c, f in zip(chunked, floors, strict=True)),
        "floor": statistics.median(floors),
        "chunked": statistics.median(chunked),
        "rounds": rounds,
    }


def subprocess_json(spec: PairLoss, args: list[str]) -> dict[str, float]:
    command = [sys.executable, spec.script, *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main(spec: PairLoss, description: str) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small batch sizes, print only")
    parser.add_argument("--output", type=Path, help="write the table here (default: quick: none)")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "BATCH", "REPEATS"))
    parser.add_argument("--ratio-worker", nargs=2, metavar=("BATCH", "ROUNDS"))
    args = parser.parse_args()
    if args.worker or args.ratio_worker:
        import companion

        companion.set_value_checks(False)  # a training loop's setting: no host syncs
        if args.worker:
            method, batch, repeats = args.worker
            print(json.dumps(worker(spec, method, int(batch), int(repeats))))
        else:
            batch, rounds = args.ratio_worker
            print(json.dumps(ratio_worker(spec, int(batch), int(rounds))))
        return

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: 1-minute load average {load:.2f}: times on a busy machine are noisy")
    plan = QUICK_RUN if args.quick else FULL_RUN
    ratio_batch = 4096 if args.quick else 16384
    rows: dict[tuple[int, str], dict[str, float]] = {}
    for batch, methods, repeats in plan:
        for method in methods:
            need = 6 * 4 * batch * batch if method == "full" else 0
            free = available_bytes()
            if free is not None and need > 0.8 * free:
                print(f"skipping {method} at B={batch}: needs about {need / GIB:.0f} GiB")
                continue
            r = subprocess_json(spec, ["--worker", method, str(batch), str(repeats)])
            rows[batch, method] = r
            print(
                f"B={batch:>6} {method:>12}: {r['seconds']:8.2f} s, "
                f"peak +{r['peak_bytes'] / 2**20:8.0f} MiB",
                flush=True,
            )
    ratio = subprocess_json(spec, ["--ratio-worker", str(ratio_batch), "3"])
    print(f"interleaved at B={ratio_batch}: chunked / floor = {ratio['ratio']:.2f}", flush=True)

    table = render(spec, rows, plan, ratio, ratio_batch, load, quick=args.quick)
    write_table(table, args.output, args.quick, spec.results)


def render(
    spec: PairLoss,
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
        f"{spec.title}, forward + backward, {DIM} float32 features, chunked with "
        f"`chunk_size={CHUNK}`; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}; 1-minute load average {load:.2f} at the start. Time: median "
        "of the runs; memory: growth of the peak resident set size while creating the inputs "
        "and running the forward and backward passes (inputs and gradients included), in a "
        f"fresh process per row, after a warm-up at batch {WARM_UP_BATCH:,} (which also "
        "compiles the tiled engine's element-wise kernels once); the last column is the "
        "process's whole peak (Python, torch, inputs and all).",
        "",
        "| batch | method | runs | time (s) | time / full | time / floor "
        "| extra peak memory (MiB) | memory / full | peak RSS of the process (MiB) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
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
                        f"| {batch:,} | full | - | not run | - | - | "
                        f"each B x B float32 matrix is {gib:.0f} GiB | - | - |"
                    )
                continue
            by_full = f"{r['seconds'] / full['seconds']:.2f}" if full else "-"
            by_floor = f"{r['seconds'] / floor['seconds']:.2f}" if floor else "-"
            products_only = method == "matmul floor"
            m_ratio = (
                f"{r['peak_bytes'] / full['peak_bytes']:.1%}" if full and not products_only else "-"
            )
            mem = "-" if products_only else f"{r['peak_bytes'] / 2**20:,.0f}"
            total = "-" if products_only else f"{r['total_bytes'] / 2**20:,.0f}"
            lines.append(
                f"| {batch:,} | {method} | {int(r['runs'])} | {r['seconds']:.2f} | {by_full} "
                f"| {by_floor} | {mem} | {m_ratio} | {total} |"
            )
    lines += [
        "",
        f"Interleaved in one process at batch {ratio_batch:,} ({int(ratio['rounds'])} rounds): "
        f"chunked {ratio['chunked']:.2f} s, floor {ratio['floor']:.2f} s, median ratio "
        f"{ratio['ratio']:.2f}.",
        "",
        *verdicts(spec, rows, ratio, ratio_batch),
    ]
    return "\n".join(lines) + "\n"


def verdicts(
    spec: PairLoss,
    rows: dict[tuple[int, str], dict[str, float]],
    ratio: dict[str, float],
    ratio_batch: int,
) -> list[str]:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out = []
    if ratio_batch == 16384:
        r = ratio["ratio"]
        out.append(
            f"- Batch 16,384: chunked / floor time = {r:.2f} interleaved in one process "
            f"(target: at most {spec.floor_target:g}, {met(r <= spec.floor_target)})"
            f"{spec.floor_note}."
        )
    full, chunked = rows.get((16384, "full")), rows.get((16384, "chunked"))
    if full and chunked:
        t = chunked["seconds"] / full["seconds"]
        m = chunked["peak_bytes"] / full["peak_bytes"]
        out.append(
            f"- Batch 16,384: chunked / full time = {t:.2f}; chunked / full extra peak memory = "
            f"{m:.1%} (target: at most 10%, {met(m <= 0.10)})."
        )
    big = rows.get((65536, "chunked"))
    if big:
        gb = big["total_bytes"] / 1e9
        out.append(
            f"- Batch 65,536: chunked finished; the whole process peaked at {gb:.2f} GB resident "
            f"(target: under 4 GB, {met(gb < 4)})."
        )
    if not out:
        out.append("- A quick run at small batch sizes: the targets are measured by the full run.")
    return out
