"""How much of a subspace merge is LAPACK's eigensolvers, measured inside one real merge of the bench family.

Runs the merge in this process with every symmetric eigensolver call wrapped (torch.linalg.eigh: MKL's
syevd; leading_eigh: OpenBLAS's syevr) and sums the CPU time of the calling thread over the calls. On a
machine with C cores, wall time cannot go below (eigensolver CPU-s) / C plus what runs before the first
decomposition, whatever else is made faster: the figure says how far a method is from a bar set in
multiples of the I/O floor by arithmetic that the current decompositions must do.

    python bench/eigen_share.py [--methods tsvm,iso_cts] [--checkpoints 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _family import bench_family  # noqa: E402

from merging import DirectorySink, ModelEntry, Recipe, run_merge  # noqa: E402
from merging.methods import leading_eigh, subspace  # noqa: E402


def wrapped(fn, name: str, cpu: Counter, calls: Counter, lock: threading.Lock):
    def timed(*args, **kwargs):
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.thread_time() - start
            with lock:
                cpu[name] += spent
                calls[name] += 1

    return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="tsvm,iso_cts")
    ap.add_argument("--checkpoints", type=int, default=4)
    args = ap.parse_args()
    base, cks = bench_family(args.checkpoints)
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    print(f"machine: x86_64, {cores} cores, torch {torch.get_num_threads()} threads; load {load:.1f}")
    print(
        "| method | wall (s) | CPU (s) | eigensolver CPU (s) | share | calls | eigensolver CPU / cores (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        cpu: Counter = Counter()
        calls: Counter = Counter()
        lock = threading.Lock()
        saved = torch.linalg.eigh, subspace.leading_eigh
        torch.linalg.eigh = wrapped(saved[0], "syevd", cpu, calls, lock)
        subspace.leading_eigh = wrapped(saved[1], "syevr", cpu, calls, lock)
        leading_eigh.leading_eigh = subspace.leading_eigh
        recipe = Recipe(method, str(base), [ModelEntry(str(c), {}) for c in cks], {})
        try:
            with tempfile.TemporaryDirectory() as tmp:
                start, process = time.perf_counter(), time.process_time()
                run_merge(recipe, DirectorySink(Path(tmp) / "out"), device="cpu")
                wall, total = time.perf_counter() - start, time.process_time() - process
        finally:
            torch.linalg.eigh, subspace.leading_eigh = saved
            leading_eigh.leading_eigh = saved[1]
        eig = sum(cpu.values())
        kinds = ", ".join(f"{k} {calls[k]}: {cpu[k]:.1f} s" for k in sorted(calls))
        print(
            f"| {method} | {wall:.1f} | {total:.1f} | {eig:.1f} | {eig / total:.0%} | {kinds} | "
            f"{eig / cores:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
