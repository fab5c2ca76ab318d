"""The language-model head's cross-entropy: time and peak memory of one forward + backward pass.

N = 2,048 tokens, D = 512, float32, a vocabulary of V in {32,768; 131,072} rows (and 262,144 for
memory only), ``reduction="mean"``:

* ``reference``: ``F.cross_entropy(F.linear(x, W), y)``, the (N, V) logits in full;
* ``torch chunked, defaults``: torch 2.13's ``F.linear_cross_entropy`` with
  ``options=LinearCrossEntropyOptions()`` (its automatic chunking);
* ``torch chunked, K``: the same with ``batch_chunk_size=K`` for K in a small sweep; the table
  names the best;
* ``companion``: ``companion.linear_cross_entropy`` (automatic token tiles, gradients formed in
  the forward pass);
* ``companion compiled``: the same under ``torch.compile(fullgraph=True)``;
* ``floor``: the three products every exact method performs, :math:`XW^\\top`, :math:`GW` and
  :math:`G^\\top X`, as three full matrix products and nothing else.

Time ratios come from one process per V in which the methods run interleaved (one of each per
round, after a warm-up): the median over the rounds of each method's time divided by the floor's
in the same round, so that a change in the machine's load moves both. Memory comes from a fresh
process per (V, method): the growth of the peak resident set size while running the method once
after the inputs exist (so: the forward and backward passes, gradients included, beyond the
inputs; the peak is reset after the warm-up, which may have compiled). The 1-minute load average
at the start is recorded with the table.

Usage::

    python benchmarks/linear_ce.py            # the full sweep; writes results/linear_ce.md
    python benchmarks/linear_ce.py --quick    # small sizes, prints only (or --output PATH)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _pairs import available_bytes, peak_bytes, reset_peak, write_table

RESULTS = Path(__file__).resolve().parent / "results" / "linear_ce.md"
MIB = 1024**2
SWEEP = (256, 512, 1024)
FULL = {"tokens": 2048, "dim": 512, "timed": (32768, 131072), "memory": (262144,), "rounds": 3}
QUICK = {"tokens": 256, "dim": 64, "timed": (4096, 16384), "memory": (32768,), "rounds": 2}


def methods(sweep: tuple[int, ...]) -> list[str]:
    return [
        "reference",
        "torch chunked, defaults",
        *(f"torch chunked, {k}" for k in sweep),
        "companion",
        "companion compiled",
        "floor",
    ]


def inputs(tokens: int, dim: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, dim, generator=g).requires_grad_()
    w = (torch.randn(vocab, dim, generator=g) / dim**0.5).requires_grad_()
    y = torch.randint(vocab, (tokens,), generator=g)
    return x, w, y


def step(method: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """One forward + backward pass of ``method`` (the floor: its three products)."""
    from companion import linear_cross_entropy

    if method == "floor":

        def floor(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> None:
            with torch.no_grad():
                logits = x @ w.T  # and a stand-in for their gradient
                _ = logits @ w
                _ = logits.T @ x

        return floor
    if method == "reference":
        return lambda x, w, y: F.cross_entropy(F.linear(x, w), y).backward()
    if method.startswith("torch chunked"):
        size = method.rsplit(", ", 1)[1]
        chunk = None if size == "defaults" else int(size)
        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk)
        return lambda x, w, y: F.linear_cross_entropy(x, w, y, options=options).backward()
    if method == "companion":
        return lambda x, w, y: linear_cross_entropy(x, w, y).backward()
    compiled = torch.compile(linear_cross_entropy, fullgraph=True)
    return lambda x, w, y: compiled(x, w, y).backward()


def run(
    method: str, fn: Callable[..., None], x: torch.Tensor, w: torch.Tensor, y: torch.Tensor
) -> float:
    start = time.perf_counter()
    fn(x, w, y)
    x.grad = w.grad = None
    return time.perf_counter() - start


def timing_worker(tokens: int, dim: int, vocab: int, rounds: int, sweep: tuple[int, ...]) -> None:
    """Every method interleaved in this process: per-round ratios to the floor."""
    names = methods(sweep)
    fns = {name: step(name) for name in names}
    x, w, y = inputs(tokens, dim, vocab)
    for name in names:  # warm-up (and compilation) at the measured size
        run(name, fns[name], x, w, y)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            times[name].append(run(name, fns[name], x, w, y))
    result = {
        name: {
            "seconds": statistics.median(t),
            "ratio": statistics.median(a / f for a, f in zip(t, times["floor"], strict=True)),
        }
        for name, t in times.items()
    }
    print(json.dumps(result), flush=True)


def memory_worker(method: str, tokens: int, dim: int, vocab: int) -> None:
    """Growth of the peak resident set size over one pass, in a fresh process."""
    fn = step(method)
    small = inputs(tokens, dim, 1024)
    # the vocabulary size dynamic from the start: no recompilation at the measured size
    torch._dynamo.mark_dynamic(small[1], 0)
    run(method, fn, *small)  # kernels, threads, compilation
    del small
    x, w, y = inputs(tokens, dim, vocab)
    reset_peak()  # else the warm-up's peak (a compilation's) hides the growth
    baseline = peak_bytes()
    seconds = run(method, fn, x, w, y)
    print(json.dumps({"extra_bytes": peak_bytes() - baseline, "seconds": seconds}), flush=True)


def subprocess_json(args: list[str]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, prints only")
    parser.add_argument("--output", type=Path, help="where to write the table")
    parser.add_argument("--timing-worker", nargs=4, metavar=("N", "D", "V", "ROUNDS"))
    parser.add_argument("--memory-worker", nargs=4, metavar=("METHOD", "N", "D", "V"))
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.timing_worker or args.memory_worker:
        import companion

        companion.set_value_checks(False)  # a training loop's setting: no host syncs
        if args.timing_worker:
            n, d, v, rounds = (int(a) for a in args.timing_worker)
            timing_worker(n, d, v, rounds, SWEEP)
        else:
            method, *numbers = args.memory_worker
            memory_worker(method, *(int(a) for a in numbers))
        return

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: 1-minute load average {load:.2f}: times on a busy machine are noisy")
    n, d = int(plan["tokens"]), int(plan["dim"])  # type: ignore[call-overload]
    timed: tuple[int, ...] = plan["timed"]  # type: ignore[assignment]
    memory_only: tuple[int, ...] = plan["memory"]  # type: ignore[assignment]
    ratios: dict[int, dict[str, dict[str, float]]] = {}
    for v in timed:
        r = subprocess_json(["--timing-worker", str(n), str(d), str(v), str(plan["rounds"])])
        ratios[v] = r  # type: ignore[assignment]
        print(f"V={v:>7,} interleaved: " + ", ".join(
            f"{name} {row['ratio']:.2f}x" for name, row in ratios[v].items()
        ), flush=True)  # fmt: skip
    memory: dict[tuple[int, str], dict[str, float]] = {}
    for v in (*timed, *memory_only):
        for method in methods(SWEEP):
            if method == "floor":
                continue
            logits = n * v * 4
            free = available_bytes()
            if method == "reference" and free is not None and 4 * logits > 0.8 * free:
                print(f"skipping {method} at V={v}: needs about {4 * logits / 2**30:.0f} GiB")
                continue
            row = subprocess_json(["--memory-worker", method, str(n), str(d), str(v)])
            memory[v, method] = row  # type: ignore[assignment]
            print(
                f"V={v:>7,} {method:>24}: extra peak {row['extra_bytes'] / MIB:8.0f} MiB",  # type: ignore[operator]
                flush=True,
            )
    table = render(n, d, timed, memory_only, ratios, memory, load, args.quick)
    write_table(table, args.output, args.quick, RESULTS)


def render(
    n: int,
    d: int,
    timed: tuple[int, ...],
    memory_only: tuple[int, ...],
    ratios: dict[int, dict[str, dict[str, float]]],
    memory: dict[tuple[int, str], dict[str, float]],
    load: float,
    quick: bool,
) -> str:
    note = "**Quick run (small sizes): regenerate with `python benchmarks/linear_ce.py`.** "
    lines = [
        f"{note if quick else ''}Cross-entropy of a linear head, forward + backward, "
        f'N = {n:,} tokens, D = {d}, float32, `reduction="mean"`; torch {torch.__version__}, '
        f"{torch.get_num_threads()} threads, {platform.machine()}; 1-minute load average "
        f"{load:.2f} when the run started. Time: median over the rounds of one process per V in "
        "which the methods run interleaved; ratio: median over the rounds of the method's time "
        "over the floor's in the same round. Extra memory: growth of the peak resident set size "
        "over one pass after the inputs exist, gradients included, in a fresh process per row.",
        "",
        "| V | method | time (s) | time / floor | extra peak memory (MiB) | memory / reference |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for v in (*timed, *memory_only):
        ref = memory.get((v, "reference"))
        for method in methods(SWEEP):
            t = ratios.get(v, {}).get(method)
            m = memory.get((v, method))
            if t is None and m is None:
                continue
            seconds = f"{t['seconds']:.3f}" if t else "-"
            ratio = f"{t['ratio']:.2f}" if t else "-"
            extra = f"{m['extra_bytes'] / MIB:,.0f}" if m else "-"
            share = f"{m['extra_bytes'] / ref['extra_bytes']:.1%}" if (m and ref) else "-"
            lines.append(f"| {v:,} | {method} | {seconds} | {ratio} | {extra} | {share} |")
    lines.append("")
    lines.extend(verdicts(timed, ratios, memory))
    return "\n".join(lines) + "\n"


def verdicts(
    timed: tuple[int, ...],
    ratios: dict[int, dict[str, dict[str, float]]],
    memory: dict[tuple[int, str], dict[str, float]],
) -> list[str]:
    out = []
    for v in timed:
        row = ratios[v]
        ours = row["companion"]["ratio"]
        swept = {k: row[f"torch chunked, {k}"]["ratio"] for k in SWEEP}
        best = min(swept, key=lambda k: swept[k])
        default = row["torch chunked, defaults"]["ratio"]
        out.append(
            f"- V = {v:,}: the companion at {ours:.2f}x the floor (target at most 1.15x: "
            f"{'met' if ours <= 1.15 else 'NOT met'}), compiled {row['companion compiled']['ratio']:.2f}x; "  # noqa: E501
            f"torch's chunked path at its defaults {default:.2f}x (target: faster, "
            f"{'met' if ours < default else 'NOT met'}), at its best `batch_chunk_size={best}` "
            f"{swept[best]:.2f}x (target: no slower, "
            f"{'met' if ours <= swept[best] else 'NOT met'})."
        )
    for (v, method), m in sorted(memory.items()):
        ref = memory.get((v, "reference"))
        if method == "companion" and ref:
            share = m["extra_bytes"] / ref["extra_bytes"]
            out.append(
                f"- V = {v:,}: the companion's extra peak memory is {share:.1%} of the "
                f"reference's (target at most 15%: {'met' if share <= 0.15 else 'NOT met'})."
            )
    return out


if __name__ == "__main__":
    main()
