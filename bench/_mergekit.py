"""Merging one YAML with MergeLab and with mergekit 0.1.5 side by side, for the parity benches.

mergekit runs from a throwaway virtualenv's python (never a MergeLab dependency), MergeLab through
`python -m merging` in a fresh process too, so both pay the same start-up and read the same files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a merged model folder, by name."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a − b| / max|b|: how far ours (a) is from theirs (b), relative to the size of theirs."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def merge_both(mk_python: str, cfg: Path, ours: Path, theirs: Path) -> tuple[float, float]:
    """Merge `cfg` into `ours` with `python -m merging` and into `theirs` with mergekit's run_yaml;
    returns the two wall times in seconds (process start-up included). A failing merge raises."""
    offline = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "merging", str(cfg), str(ours), "--device", "cpu", "--quiet"],
        env={**offline, "PYTHONPATH": str(REPO)},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    t1 = time.perf_counter()
    subprocess.run(
        [mk_python, "-m", "mergekit.scripts.run_yaml", str(cfg), str(theirs), "--quiet"],
        env=offline,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return t1 - t0, time.perf_counter() - t1


def worst_difference(case: str, ours: Path, theirs: Path) -> tuple[int, float]:
    """(tensor count, worst float32 relative difference over all tensors) of two merged folders; exits
    naming the case when they do not hold the same tensors."""
    a, b = load_dir(ours), load_dir(theirs)
    if set(a) != set(b):
        raise SystemExit(f"{case}: tensor sets differ: {sorted(set(a) ^ set(b))[:5]}")
    return len(a), max(relative_difference(a[k].float(), b[k].float()) for k in a)
