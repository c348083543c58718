"""Check that MergeLab gives mergekit's tensors for the deterministic methods both implement.

Builds a small float32 Llama family, merges it with the same YAML through `python -m merging` and through
mergekit (run from a throwaway virtualenv; mergekit is not a MergeLab dependency), and prints, per method, the
worst relative difference max|ours − theirs| / max|theirs| over all tensors.

    python bench/mergekit_parity.py --mergekit-python /tmp/mkvenv/bin/python
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _family import build_family  # noqa: E402
from _mergekit import merge_both, worst_difference  # noqa: E402

WEIGHTS = [0.7, 1.3, 0.4]
CASES: dict[str, tuple[dict, list[dict]]] = {
    # name: (global parameters, per-model parameters)
    "linear": ({}, [{"weight": w} for w in WEIGHTS]),
    "task_arithmetic": ({"lambda": 0.8}, [{"weight": w} for w in WEIGHTS]),
    "task_arithmetic_normalized": ({"normalize": True}, [{"weight": w} for w in WEIGHTS]),
    "ties": (
        {"lambda": 0.9},
        [{"weight": w, "density": d} for w, d in zip(WEIGHTS, [0.3, 0.5, 0.8], strict=True)],
    ),
    "breadcrumbs": ({}, [{"weight": w, "density": 0.6, "gamma": 0.05} for w in WEIGHTS]),
    "breadcrumbs_ties": ({}, [{"weight": w, "density": 0.6, "gamma": 0.05} for w in WEIGHTS]),
    "model_stock": ({}, [{} for _ in WEIGHTS]),
    "model_stock_filter_wise": ({"filter_wise": True}, [{} for _ in WEIGHTS]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mergekit-python", default=os.environ.get("MERGEKIT_PYTHON"), required=False)
    args = ap.parse_args()
    if not args.mergekit_python:
        sys.exit("error: pass --mergekit-python (a virtualenv's python with mergekit==0.1.5)")
    base, cks = build_family(
        "parity-f32",
        hidden=64,
        layers=2,
        intermediate=128,
        vocab=96,
        checkpoints=3,
        dtype=torch.float32,
        noise=0.02,
    )
    print("| method | tensors | worst relative difference |")
    print("|---|---|---|")
    worst_all = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for case, (params, per_model) in CASES.items():
            method = case.removesuffix("_normalized").removesuffix("_filter_wise")
            doc = {
                "merge_method": method,
                "base_model": str(base),
                "models": [
                    {"model": str(c), "parameters": p} if p else {"model": str(c)}
                    for c, p in zip(cks, per_model, strict=True)
                ],
                "dtype": "float32",
            }
            if params:
                doc["parameters"] = params
            if method == "linear":
                doc.pop("base_model")
            cfg = work / f"{case}.yml"
            cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
            ours, theirs = work / f"ours-{case}", work / f"mk-{case}"
            merge_both(args.mergekit_python, cfg, ours, theirs)
            tensors, worst = worst_difference(case, ours, theirs)
            worst_all = max(worst_all, worst)
            print(f"| {case} | {tensors} | {worst:.2e} |")
    print(f"\nworst over all methods: {worst_all:.2e} ({'OK' if worst_all <= 1e-5 else 'ABOVE 1e-5'})")


if __name__ == "__main__":
    main()
