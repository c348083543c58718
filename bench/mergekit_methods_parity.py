"""Parity and speed of the mergekit-family methods (slerp, nuslerp, multislerp, karcher, sce, nearswap,
arcee_fusion, passthrough) against mergekit 0.1.5, run from a throwaway virtualenv (never a dependency).

Two checks, both float32:
1. kernels: the same per-tensor inputs (a few shapes, up to 768x1024) go through mergekit's method object
   (in the mergekit python) and through MergeLab's method function; prints the worst relative difference
   max|ours − theirs| / max|theirs| and the time ratio ours / mergekit (median of repeats, same inputs,
   same process type, one run).
   It also runs mergekit's algorithm in float64 on the same inputs as the exact reference, to show which
   float32 result is nearer the exact value where the two differ.
2. end to end: a tiny Llama family merged from the same YAML by `python -m merging` and by mergekit's
   run_yaml; prints the worst relative difference over all tensors and the two wall times (process start-up
   included, which dominates at this size).

    python bench/mergekit_methods_parity.py --mergekit-python /work/mk-venv/bin/python
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _family import build_family  # noqa: E402
from _mergekit import merge_both, relative_difference, worst_difference  # noqa: E402

from merging.methods import get_method, resolve_params  # noqa: E402
from merging.methods.base import ModelsFromTaskVectors, TensorInputs  # noqa: E402

# name: (method, with base, number of other models, global params, per-model params)
CASES: dict[str, tuple[str, bool, int, dict, list[dict]]] = {
    "slerp t=0.3": ("slerp", True, 1, {"t": 0.3}, [{}]),
    "slerp t=0.8": ("slerp", True, 1, {"t": 0.8}, [{}]),
    "nuslerp flat, base": ("nuslerp", True, 2, {}, [{"weight": 0.4}, {"weight": 0.9}]),
    "nuslerp rows, no base": (
        "nuslerp",
        False,
        2,
        {"nuslerp_flatten": False},
        [{"weight": 1.0}, {"weight": 0.5}],
    ),
    "nuslerp columns, base": (
        "nuslerp",
        True,
        2,
        {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        [{"weight": 0.3}, {"weight": 0.7}],
    ),
    "multislerp base": ("multislerp", True, 3, {}, [{"weight": w} for w in (0.5, 1.0, 0.8)]),
    "multislerp no base": ("multislerp", False, 3, {}, [{"weight": w} for w in (1.0, 1.0, 2.0)]),
    "karcher base": ("karcher", True, 3, {}, [{}, {}, {}]),
    "karcher no base": ("karcher", False, 3, {"max_iter": 20, "tol": 1e-6}, [{}, {}, {}]),
    "sce topk=1": ("sce", True, 3, {}, [{}, {}, {}]),
    "sce topk=0.3": ("sce", True, 3, {"select_topk": 0.3}, [{}, {}, {}]),
    "nearswap t=0.01": ("nearswap", True, 1, {"t": 0.01}, [{}]),
    "arcee_fusion": ("arcee_fusion", True, 1, {}, [{}]),
    "passthrough": ("passthrough", False, 1, {}, [{}]),
    "passthrough scale": ("passthrough", False, 1, {}, [{"scale": 0.5}]),
}

SHAPES = [(768, 1024), (1024,), (96, 64)]
REPEATS = 5

# Runs inside the mergekit virtualenv: reads the inputs, merges each with mergekit's method, times it.
MERGEKIT_KERNEL = r"""
import pickle, statistics, sys, time
import torch
from mergekit import merge_methods
from mergekit.merge_methods.base import ParameterScope, TensorGroup

jobs = torch.load(sys.argv[1])
results = []
for job in jobs:
    method = merge_methods.get(job["method"])
    tensors = list(job["models"])
    ids = [f"m{i}" for i in range(len(tensors))]
    base_index = None
    if job["base"] is not None:  # mergekit's plan appends a base not listed among the models
        tensors.append(job["base"]); ids.append("base"); base_index = len(tensors) - 1
    group = TensorGroup.from_tensors(tensors, ids=ids, base_index=base_index, name=job["name"])
    params = dict(job["params"])
    for p in method.spec.input_parameters:
        values = {i: mp[p.name] for i, mp in zip(ids, job["model_params"]) if p.name in mp}
        if p.scope == ParameterScope.INPUT and job["base"] is not None:
            values.setdefault("base", None)
        if values:
            params[p.name] = values
    times = []
    for _ in range(job["repeat"]):
        t0 = time.perf_counter()
        (out,) = method((group,), parameters=params)
        times.append(time.perf_counter() - t0)
    results.append({"out": out.float().clone(), "seconds": statistics.median(times)})
torch.save(results, sys.argv[2])
"""


def method_is_threshold(method: str) -> bool:
    """Methods that keep entries by comparing with a data-dependent threshold: a one-ulp change in an
    input can flip an entry sitting at the threshold, so they are judged by how many entries differ."""
    return method in ("arcee_fusion", "sce")


def make_inputs(shape, base: bool, n: int, seed: int) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """A base and n fine-tune-like models (base + correlated noise of different sizes)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(shape, generator=g) * 0.05
    shared = torch.randn(shape, generator=g) * 0.01
    models = [b + shared * (0.5 + i) + torch.randn(shape, generator=g) * 0.01 * (1 + i) for i in range(n)]
    return (b if base else None), models


def ours(method: str, base, models, params, model_params, repeat: int):
    spec = get_method(method)
    gp, mp = resolve_params(spec, params, model_params)
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        if base is not None:  # as the engine does: task vectors formed once, models read through them
            tv = torch.stack(models).sub_(base)
            inputs = TensorInputs("t", base, ModelsFromTaskVectors(base, tv), mp, gp, None, tv)
        else:
            inputs = TensorInputs("t", None, list(torch.stack(models).unbind(0)), mp, gp, None)
        out = spec.merge(inputs)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def kernels(mk_python: str, work: Path) -> None:
    jobs, keys = [], []
    for case, (method, base, n, params, mps) in CASES.items():
        for si, shape in enumerate(SHAPES):
            b, models = make_inputs(shape, base, n, seed=zlib.crc32(case.encode()) + si)
            jobs.append(
                {
                    "name": f"{case}:{shape}",
                    "method": method,
                    "base": b,
                    "models": models,
                    "params": params,
                    "model_params": mps,
                    "repeat": REPEATS,
                }
            )
            keys.append(case)
    src, dst = work / "jobs.pt", work / "mk.pt"
    torch.save(jobs, src)
    subprocess.run([mk_python, "-c", MERGEKIT_KERNEL, str(src), str(dst)], check=True)
    theirs = torch.load(dst)
    # The exact reference: mergekit's own algorithm on the same inputs in float64.
    jobs64 = [
        {
            **j,
            "base": None if j["base"] is None else j["base"].double(),
            "models": [m.double() for m in j["models"]],
            "repeat": 1,
        }
        for j in jobs
    ]
    torch.save(jobs64, src)
    subprocess.run([mk_python, "-c", MERGEKIT_KERNEL, str(src), str(dst)], check=True)
    exact = torch.load(dst)
    per_case: dict[str, list[tuple[float, float, float]]] = {}
    for key, job, mk, ex in zip(keys, jobs, theirs, exact, strict=True):
        out, secs = ours(
            job["method"], job["base"], job["models"], job["params"], job["model_params"], REPEATS
        )
        theirs_out = mk["out"]
        differing = int(((out - theirs_out).abs() > 1e-5 * theirs_out.abs().max()).sum())
        per_case.setdefault(key, []).append(
            (
                relative_difference(out, mk["out"]),
                secs,
                mk["seconds"],
                differing,
                out.numel(),
                relative_difference(out, ex["out"]),
                relative_difference(theirs_out, ex["out"]),
            )
        )
        if os.environ.get("PARITY_VERBOSE"):
            print(
                job["name"],
                f"{relative_difference(out, mk['out']):.2e}",
                int((out != mk["out"]).sum()),
                out.numel(),
            )
    print("## per-tensor kernels (shapes " + ", ".join(str(s) for s in SHAPES) + ")\n")
    print(
        "| case | worst relative difference | entries off by > 1e-5 relative "
        "| ours vs float64 | mergekit vs float64 | time ours / mergekit (largest shape) |"
    )
    print("|---|---|---|---|---|---|")
    worst_all = 0.0
    for case, rows in per_case.items():
        worst = max(r[0] for r in rows)
        differing = sum(r[3] for r in rows)
        total = sum(r[4] for r in rows)
        flips = f"{differing} of {total}"
        if not method_is_threshold(CASES[case][0]):
            worst_all = max(worst_all, worst)
        ours_exact = max(r[5] for r in rows)
        mk_exact = max(r[6] for r in rows)
        _, t_ours, t_mk = rows[0][:3]
        ratio = f"{t_ours / t_mk:.2f}" if t_mk > 1e-4 else "n/a (mergekit returns its input)"
        print(
            f"| {case} | {worst:.2e} | {flips} | {ours_exact:.1e} | {mk_exact:.1e} "
            f"| {ratio} ({t_ours * 1e3:.1f} ms / {t_mk * 1e3:.1f} ms) |"
        )
    verdict = "OK" if worst_all <= 1e-5 else "ABOVE 1e-5"
    print(f"\nworst kernel difference (methods without a threshold): {worst_all:.2e} ({verdict})\n")


def end_to_end(mk_python: str, work: Path) -> None:
    base, cks = build_family(
        "methods-parity-f32",
        hidden=64,
        layers=2,
        intermediate=128,
        vocab=96,
        checkpoints=3,
        dtype=torch.float32,
        noise=0.02,
    )
    print("## end to end (tiny Llama family, float32)\n")
    print("| case | tensors | worst relative difference | wall ours / mergekit (s) |")
    print("|---|---|---|---|")
    worst_all = 0.0
    for case, (method, with_base, n, params, mps) in CASES.items():
        doc: dict = {
            "merge_method": method,
            "models": [
                {"model": str(c), "parameters": p} if p else {"model": str(c)}
                for c, p in zip(cks[:n], mps, strict=True)
            ],
            "dtype": "float32",
        }
        if with_base:
            doc["base_model"] = str(base)
        if params:
            doc["parameters"] = params
        slug = case.replace(" ", "_").replace("=", "").replace(",", "")
        cfg = work / f"{slug}.yml"
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        mine, theirs = work / f"ours-{slug}", work / f"mk-{slug}"
        t_ours, t_mk = merge_both(mk_python, cfg, mine, theirs)
        tensors, worst = worst_difference(case, mine, theirs)
        worst_all = max(worst_all, worst)
        print(f"| {case} | {tensors} | {worst:.2e} | {t_ours:.1f} / {t_mk:.1f} |")
    print(f"\nworst end-to-end difference: {worst_all:.2e} ({'OK' if worst_all <= 1e-5 else 'ABOVE 1e-5'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--mergekit-python", default=os.environ.get("MERGEKIT_PYTHON", "/work/mk-venv/bin/python")
    )
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--only", help="run only the cases whose name contains this")
    args = ap.parse_args()
    if args.only:
        for case in [c for c in CASES if args.only not in c]:
            del CASES[case]
    if not Path(args.mergekit_python).exists():
        sys.exit(f"error: {args.mergekit_python} not found; create a virtualenv with mergekit==0.1.5")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        kernels(args.mergekit_python, Path(tmp))
        if not args.skip_end_to_end:
            end_to_end(args.mergekit_python, Path(tmp))


if __name__ == "__main__":
    main()
