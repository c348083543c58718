"""Per-matrix time of the subspace methods' linear algebra, an older route against the current one, one run.

For each shape (the bench family's: attention 1024×1024 and 256×1024, MLP 2816×1024 and 1024×2816) and
task count, every method's Δ on random task vectors is computed twice, interleaved, by the route named by
`--against` and by the current code:
- `svd`: the route before the Gram matrices (an SVD for every decomposition, torch's thread count);
- `one-lane`: the current decompositions one after the other, as before subspace.two_at_a_time;
- `full-eigh`: every Gram matrix's whole eigendecomposition (torch's syevd), as before leading_eigh.py.
Prints wall seconds, CPU seconds (all threads), the wall ratio, and the relative Frobenius difference of
the two results (0 for one-lane: the bytes must agree).

    python bench/subspace_linalg_bench.py [--against svd|one-lane|full-eigh] [--shapes 1024x1024,2816x1024]
                                          [--tasks 4,12] [--methods tsvm,iso_cts] [--repeat 1]
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


@contextmanager
def one_lane():
    """Independent decompositions one after the other (subspace.two_at_a_time without its second lane)."""
    saved = subspace._in_two_lanes
    subspace._in_two_lanes = lambda jobs: [job() for job in jobs]
    try:
        yield
    finally:
        subspace._in_two_lanes = saved


@contextmanager
def full_eigh():
    """Every Gram matrix decomposed whole, also where only a few leading pairs are kept."""
    saved = subspace._leading_pays
    subspace._leading_pays = lambda a, k: False
    try:
        yield
    finally:
        subspace._leading_pays = saved


ROUTES = {"svd": svd_route, "one-lane": one_lane, "full-eigh": full_eigh}


def timed(fn, tv):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(tv)
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", choices=sorted(ROUTES), default="svd", help="the older route timed")
    ap.add_argument("--shapes", default="1024x1024,256x1024,2816x1024,1024x2816")
    ap.add_argument("--tasks", default="4")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is reported")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}")
    old_route = ROUTES[args.against]
    print(
        f"| method | shape | T | {args.against} wall (s) | CPU (s) | current wall (s) | CPU (s) | current / "
        f"{args.against} (wall) | rel. difference |"
    )
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for shape in args.shapes.split(","):
        m, n = (int(x) for x in shape.split("x"))
        for n_tasks in (int(t) for t in args.tasks.split(",")):
            tv = torch.randn(n_tasks, m, n, generator=torch.Generator().manual_seed(0)) * 0.01
            for method in args.methods.split(","):
                fn = METHODS[method]
                old, new = [], []
                for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
                    with old_route():
                        *t_old, out_old = timed(fn, tv)
                    *t_new, out_new = timed(fn, tv)
                    old.append(t_old)
                    new.append(t_new)
                diff = ((out_new - out_old).norm() / out_old.norm()).item()
                (o, oc), (g, gc) = (
                    [statistics.median(t[j] for t in runs) for j in (0, 1)] for runs in (old, new)
                )
                times = f"{o:.2f} | {oc:.2f} | {g:.2f} | {gc:.2f} | {g / o:.2f}"
                print(f"| {method} | {m}×{n} | {n_tasks} | {times} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
