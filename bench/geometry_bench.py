"""Cost of recording a merge's geometry (merging/geometry.py) per tensor, on stacks that are not in cache.

Each stack is (T + 1, rows, cols) float32: T task vectors and a base row, as the engine hands them over;
`record_stack` turns the base row into Δ and sums norms, cosines, ⟨Δ, τ_i⟩, kept mass and sign conflicts.
Three stacks are cycled so every call reads from memory, not cache. Prints wall and process CPU
milliseconds per tensor and nanoseconds per element and checkpoint, with the machine's load, for the torch
path (MERGELAB_NATIVE=0) and the native kernel (merging/native) on the same stacks in one run.

    python bench/geometry_bench.py [--checkpoints 4,12] [--rows 2816] [--cols 1024] [--paths torch,native]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from merging.geometry import GeometryRecorder  # noqa: E402
from merging.native import build  # noqa: E402
from merging.native.geometry_sums import SOURCE  # noqa: E402


def make_stacks(n_models: int, rows: int, cols: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Three seeded (T + 1, rows, cols) stacks and their merged tensors (the sum of the task vectors)."""
    gen = torch.Generator().manual_seed(0)
    stacks = [torch.randn(n_models + 1, rows, cols, generator=gen) * 0.01 for _ in range(3)]
    return stacks, [s[:n_models].sum(0) for s in stacks]


def measure(
    n_models: int, stacks: list[torch.Tensor], merged: list[torch.Tensor], repeat: int = 3
) -> tuple[float, float]:
    """(wall ms, CPU ms) per tensor: the best of `repeat` rounds over the three stacks, each a fresh copy."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        copies = [s.clone() for s in stacks]  # record_stack consumes its stack
        wall, cpu = time.perf_counter(), time.process_time()
        for stack, m in zip(copies, merged, strict=True):
            GeometryRecorder(n_models).record_stack("x", stack, m, task_vectors=True)
        best_wall = min(best_wall, (time.perf_counter() - wall) / len(stacks))
        best_cpu = min(best_cpu, (time.process_time() - cpu) / len(stacks))
    return best_wall * 1e3, best_cpu * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", default="4,12")
    ap.add_argument("--rows", type=int, default=2816)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--paths", default="torch,native", help="torch (MERGELAB_NATIVE=0), native, or both")
    args = ap.parse_args()
    paths = args.paths.split(",")
    if "native" in paths and build.load(SOURCE) is None:
        sys.exit("the native kernel cannot be built here (see the debug log of merging.native.build)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print("| checkpoints | tensor | path | wall ms | CPU ms | ns per element and checkpoint | load |")
    print("|---|---|---|---|---|---|---|")
    for t in (int(x) for x in args.checkpoints.split(",")):
        stacks, merged = make_stacks(t, args.rows, args.cols)
        for path in paths:
            os.environ[build.SWITCH_ENV] = "1" if path == "native" else "0"
            wall, cpu = measure(t, stacks, merged)
            per = wall * 1e6 / (t * args.rows * args.cols)
            shape = f"{args.rows} x {args.cols}"
            load = os.getloadavg()[0]
            print(f"| {t} | {shape} | {path} | {wall:.1f} | {cpu:.1f} | {per:.2f} | {load:.1f} |", flush=True)


if __name__ == "__main__":
    main()
