"""Per-matrix time of the subspace methods' linear algebra, the SVD route against the Gram route, in one run.

For each shape (the bench family's: attention 1024×1024 and 256×1024, MLP 2816×1024 and 1024×2816) and
task count, every method's Δ on random task vectors is computed twice, interleaved: "svd" is the route
as it was (an SVD for every decomposition, torch's thread count), "gram" the current one (float32/float64
Gram eigendecompositions, one thread for small matrices; Iso-CTS's smaller residuals are in both). Prints
seconds, their ratio, and the relative Frobenius difference of the two results.

    python bench/subspace_linalg_bench.py [--shapes 1024x1024,2816x1024] [--tasks 4,12] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from merging.methods import boosting, subspace  # noqa: E402

METHODS = {
    "tsvm": lambda tv: subspace.tsvm_delta(tv),
    "iso_c": lambda tv: subspace.iso_c_delta(tv),
    "iso_cts": lambda tv: subspace.iso_cts_delta(tv, 0.8),
    "boost": lambda tv: boosting.boost(tv.sum(0), 0.2, True),  # the SB post-step on a summed Δ
}


@contextmanager
def svd_route():
    """The route before the Gram matrices: every decomposition an SVD, on torch's thread count."""
    saved = subspace.GramEigh.of, subspace.SINGLE_THREAD_MAX_SIDE
    subspace.GramEigh.of = classmethod(lambda cls, *args, **kwargs: None)
    subspace.SINGLE_THREAD_MAX_SIDE = 0
    try:
        yield
    finally:
        subspace.GramEigh.of, subspace.SINGLE_THREAD_MAX_SIDE = saved


def timed(fn, tv):
    start = time.perf_counter()
    out = fn(tv)
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1024x1024,256x1024,2816x1024,1024x2816")
    ap.add_argument("--tasks", default="4")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is reported")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}")
    print("| method | shape | T | svd route (s) | gram route (s) | gram / svd | rel. difference |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for shape in args.shapes.split(","):
        m, n = (int(x) for x in shape.split("x"))
        for n_tasks in (int(t) for t in args.tasks.split(",")):
            tv = torch.randn(n_tasks, m, n, generator=torch.Generator().manual_seed(0)) * 0.01
            for method in args.methods.split(","):
                fn = METHODS[method]
                old, new = [], []
                for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
                    with svd_route():
                        t_old, out_old = timed(fn, tv)
                    t_new, out_new = timed(fn, tv)
                    old.append(t_old)
                    new.append(t_new)
                diff = ((out_new - out_old).norm() / out_old.norm()).item()
                o, g = statistics.median(old), statistics.median(new)
                row = f"| {method} | {m}×{n} | {n_tasks} | {o:.2f} | {g:.2f} | {g / o:.2f} | {diff:.1e} |"
                print(row, flush=True)


if __name__ == "__main__":
    main()
