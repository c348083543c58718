"""Measure this machine for merging/estimate.py: read and write throughput, each method's arithmetic per
element, the geometry pass per element, and the rate of one decomposition the way the subspace methods take
it (merging/methods/subspace.py: the eigendecomposition of the smaller Gram matrix); writes
$MERGELAB_HOME/cache/estimate_calibration.json (the Merge page and the CLI use it from then on).

    python bench/calibrate_estimate.py [--device cpu] [--quick]

Figures on a shared machine move with its load: rerun when the machine is quiet for a fairer estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mergelab_home import cache_dir  # noqa: E402
from merging.estimate import CALIBRATION_FILE, decomposes  # noqa: E402
from merging.geometry import GeometryRecorder  # noqa: E402
from merging.methods import all_methods  # noqa: E402
from merging.methods.base import ModelsFromTaskVectors, TensorInputs  # noqa: E402
from merging.methods.subspace import decomposition_threads, svd_via_eigh  # noqa: E402


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def io_rates(mb: int) -> tuple[float, float]:
    """Bytes per second writing a file of `mb` MB (fsync'd) and reading it back with preadv."""
    data = torch.randint(0, 255, (mb << 20,), dtype=torch.uint8).numpy()
    with tempfile.TemporaryDirectory(dir=cache_dir()) as d:
        path = Path(d) / "probe.bin"

        def write() -> None:
            with open(path, "wb") as fh:
                fh.write(memoryview(data))
                fh.flush()
                os.fsync(fh.fileno())

        w = best_of(write, 2)
        buf = bytearray(len(data))

        def read() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.preadv(fd, [buf], 0)
            finally:
                os.close(fd)

        r = best_of(read, 2)
    return len(data) / r, len(data) / w


def method_rates(device: torch.device, rows: int, cols: int, n_models: int) -> dict[str, float]:
    """ns per element and checkpoint of each method's merge function on one (T, rows, cols) block."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(rows, cols, generator=gen).to(device)
    tv = (torch.randn(n_models, rows, cols, generator=gen) * 0.01).to(device)
    out: dict[str, float] = {}
    for spec in all_methods():
        if decomposes(spec.name):  # timed as decompositions (decomposition_rates), not per element
            continue
        per = {p.name: (1.0 if p.name == "weight" else p.default) for p in spec.params if p.per_model}
        if "density" in per:
            per["density"] = 0.5
        glob = {p.name: p.default for p in spec.params if not p.per_model}
        if "t" in glob and glob["t"] is None:
            glob["t"] = 0.5
        n = spec.max_models or n_models
        inputs = TensorInputs(
            "model.layers.0.mlp.up_proj.weight",
            base,
            ModelsFromTaskVectors(base, tv[:n]),
            [dict(per) for _ in range(n)],
            glob,
            torch.Generator(device=device).manual_seed(1),
            tv[:n],
        )
        try:
            secs = best_of(lambda inputs=inputs, spec=spec: spec.merge(inputs), 2)
        except Exception as exc:  # a method that needs other parameters: keep the default
            print(f"  {spec.name}: skipped ({exc})", file=sys.stderr)
            continue
        out[spec.name] = secs / (rows * cols * n) * 1e9
    return out


def decomposition_rates(device: torch.device, r: int, gen: torch.Generator) -> tuple[float, float]:
    """(per_mnr, per_r3) of merging/estimate.py's decomposition model, from a (2r, r) and an (r, r) matrix
    decomposed the way the subspace methods do: t(2r, r) − t(r, r) = per_mnr·r³."""

    def seconds(m: int) -> float:
        a = torch.randn(m, r, generator=gen).to(device)

        def decompose() -> None:
            with decomposition_threads(a):
                svd_via_eigh(a)

        return best_of(decompose, 2)

    tall, square = seconds(2 * r), seconds(r)
    per_mnr = max(tall - square, 0.0) / r**3
    return per_mnr, max(square / r**3 - per_mnr, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="smaller probes (seconds instead of a minute)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    mb, rows = (64, 256) if args.quick else (512, 1024)
    read, write = io_rates(mb)
    methods = method_rates(dev, rows, 1024, 4)
    gen = torch.Generator().manual_seed(1)
    stack = torch.randn(5, rows, 1024, generator=gen).to(dev)  # 4 task vectors and the base
    merged = torch.randn(rows, 1024, generator=gen).to(dev)
    rec = GeometryRecorder(4)
    copy = best_of(lambda: stack.clone(), 2)
    geo = best_of(lambda: rec.record_stack("x", stack.clone(), merged, task_vectors=True), 2) - copy
    per_mnr, per_r3 = decomposition_rates(dev, 1024 if not args.quick else 512, gen)
    cal = {
        "read_bytes_per_s": read,
        "write_bytes_per_s": write,
        "geometry_ns_per_elem": geo / (4 * rows * 1024) * 1e9,
        "method_ns_per_elem": {"default": max(methods.values(), default=2.0), **methods},
        "decomposition_s_per_mnr": per_mnr,
        "decomposition_s_per_r3": per_r3,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": os.getloadavg()[0],
        "device": str(dev),
    }
    path = cache_dir() / CALIBRATION_FILE
    path.write_text(json.dumps(cal, indent=2))
    print(json.dumps(cal, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
