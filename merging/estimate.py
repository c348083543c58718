"""How long a merge will take and how much memory it needs, before it starts (issue 10).

From headers only: the plan (tensor shapes, inputs, row blocks under the budget) and a calibration of this
machine (`bench/calibrate_estimate.py` writes it to $MERGELAB_HOME/cache/estimate_calibration.json; without
one, the defaults below, measured on the 2-core development VM). Time = input bytes read (more than once for
tensors whose statistics need extra passes over their blocks) at the read rate + output bytes at the write
rate + per-element arithmetic of the method and the geometry + the SVDs of the subspace methods, which on a
CPU dominate everything (one decomposition of a 14336 x 4096 matrix, taken the way the methods take it,
is about half a minute on 2 cores). Peak memory is the budget's own
cost model (budget.py). Warnings: a subspace method on a CPU that would take hours, a merge that cannot fit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merging.budget import default_budget, format_bytes, parse_memory, peak_estimate, plan_memory
from merging.errors import MemoryBudgetError
from merging.methods.base import MethodSpec
from merging.methods.blocks import TensorContext, merger_for
from merging.plan import MergePlan
from merging.threads import TensorLanes

CALIBRATION_FILE = "estimate_calibration.json"
# Defaults measured on the development VM (2 shared cores, virtio disk); bench/calibrate_estimate.py
# replaces them with this machine's figures.
DEFAULTS: dict[str, Any] = {
    "read_bytes_per_s": 400e6,
    "write_bytes_per_s": 300e6,
    # per element and checkpoint, with the native geometry kernel: the torch path's 7.0 (6.7-7.3 measured
    # 2026-12-02, load 1.1-1.3) times 0.24, the kernel's share of it in one run (calibrate_estimate's probe,
    # load 3.0); where the kernel cannot be built (no C compiler, MERGELAB_NATIVE=0) it is about 7 again
    "geometry_ns_per_elem": 1.7,
    "method_ns_per_elem": {"default": 2.0},  # per element and checkpoint, the method's own arithmetic
    # One decomposition of an m x n matrix (r = min(m, n)) as the subspace methods take it, the
    # eigendecomposition of the smaller Gram matrix: seconds = per_mnr·m·n·r (the Gram product) +
    # per_r3·r³ (the eigendecomposition). Fitted 2026-12-02 (load 1.3-1.5) to 2048 x 1024 (0.27 s),
    # 4096 x 4096 (6.3 s) and 14336 x 4096 (11.0 s); one rate per m·n·r was off by 3x at 8B shapes.
    "decomposition_s_per_mnr": 2.8e-11,
    "decomposition_s_per_r3": 6.3e-11,
    "gpu_speedup": 20.0,
}
HOURS_WARNING = 3600.0


@dataclass
class Estimate:
    """Seconds and peak bytes expected for a merge, with the pieces and warnings behind them."""

    seconds: float
    peak_bytes: int
    budget: int
    device: str
    parts: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the CLI and the Merge page."""
        parts = ", ".join(f"{k} {_duration(v)}" for k, v in self.parts.items() if v >= 0.5)
        return (
            f"estimate on {self.device}: about {_duration(self.seconds)}"
            + (f" ({parts})" if parts else "")
            + f", peak memory about {format_bytes(self.peak_bytes)} (budget {format_bytes(self.budget)})"
        )


def _duration(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s" if s >= 1 else "<1 s"


def load_calibration(path: Path | None = None) -> dict[str, Any]:
    """This machine's calibration merged over the defaults (a missing or broken file gives the defaults)."""
    cal = json.loads(json.dumps(DEFAULTS))
    if path is None:
        try:
            from mergelab_home import cache_dir

            path = cache_dir(create=False) / CALIBRATION_FILE
        except ImportError:  # merging used without the app around it
            return cal
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return cal
    for k, v in data.items():
        if k == "method_ns_per_elem" and isinstance(v, dict):
            cal[k].update(v)
        elif k in cal:
            cal[k] = v
    return cal


SVD_COUNTS = {"tsvm": lambda t: t + 2, "iso_c": lambda t: 1, "iso_cts": lambda t: t + 3}
BOOSTED = ("task_arithmetic_sb", "ties_sb")


# The per-element arithmetic of a decomposing method besides its decompositions: that of the method it
# builds on (task sums, or TIES for ties_sb).
ELEMENTWISE_PART = {"ties_sb": "ties"}


def decomposes(method: str) -> bool:
    """Whether the method's time goes to decompositions, counted by `_svds` at the calibrated decomposition
    rate, not per element (a rate per element would scale wrongly with the matrix size)."""
    return method in SVD_COUNTS or method in BOOSTED


def _method_ns(rates: Mapping[str, float], method: str) -> float:
    if decomposes(method):
        method = ELEMENTWISE_PART.get(method, "task_arithmetic")
    return rates.get(method, rates["default"])


def _svds(spec: MethodSpec, name: str, shape: tuple[int, ...], n_models: int) -> int:
    """SVDs of an m x n matrix the method runs for this tensor (0 for tensors it does not decompose)."""
    if len(shape) != 2:
        return 0
    if spec.name in SVD_COUNTS and not any(s in name for s in ("embed_tokens", "lm_head")):
        return SVD_COUNTS[spec.name](n_models)
    if spec.name in BOOSTED:
        from merging.methods.boosting import BOOSTED as pattern

        return 1 if pattern.search(name) else 0
    return 0


def decomposition_seconds(cal: Mapping[str, Any], m: int, n: int) -> float:
    """One decomposition of an m x n matrix on this machine's CPU (see DEFAULTS)."""
    r = min(m, n)
    return cal["decomposition_s_per_mnr"] * m * n * r + cal["decomposition_s_per_r3"] * r**3


def estimate_plan(
    plan: MergePlan,
    spec: MethodSpec,
    input_bytes: Mapping[str, int],
    device: torch.device,
    budget: int,
    calibration: Mapping[str, Any] | None = None,
) -> Estimate:
    """Estimate a planned merge (its row blocks and lanes already set by plan_memory)."""
    cal = calibration or load_calibration()
    method_ns = _method_ns(cal["method_ns_per_elem"], spec.name)
    speed = cal["gpu_speedup"] if device.type == "cuda" else 1.0
    read = write = compute = svd = 0.0
    svd_matrices: list[str] = []
    for t in plan.tensors:
        n_models = len(t.inputs)
        numel = math.prod(t.shape)
        passes = 0
        if t.block_rows is not None and t.block_rows < t.rows:
            ctx = TensorContext(t.name, t.shape, t.params, t.model_params, n_models, 0, 2)
            merger = merger_for(spec, ctx)
            passes = getattr(merger, "passes", 0) if merger is not None else 0
        read += input_bytes.get(t.name, 0) * (1 + passes) / cal["read_bytes_per_s"]
        write += t.nbytes / cal["write_bytes_per_s"]
        compute += numel * n_models * (method_ns + cal["geometry_ns_per_elem"]) * 1e-9 / speed
        count = _svds(spec, t.name, t.shape, n_models)
        if count:
            m, n = t.shape
            lanes = TensorLanes.WIDTH if t.lane else 1  # two such matrices at once (threads.TensorLanes)
            svd += count * decomposition_seconds(cal, m, n) / speed / lanes
            svd_matrices.append(t.name)
    est = Estimate(
        seconds=read + write + compute + svd,
        peak_bytes=peak_estimate(plan, spec),
        budget=budget,
        device=str(device),
        parts={"read": read, "write": write, "compute": compute, "SVDs": svd},
    )
    if device.type == "cpu" and svd >= HOURS_WARNING:
        est.warnings.append(
            f"{spec.name} on the CPU needs SVDs of {len(svd_matrices)} matrices (about {_duration(svd)}); "
            "a GPU (--device cuda) takes minutes"
        )
    return est


def estimate_recipe(
    recipe: Any,
    *,
    device: str = "auto",
    max_memory: int | str | None = None,
    allow_bin: bool = False,
    calibration: Mapping[str, Any] | None = None,
) -> Estimate:
    """Estimate a recipe from its checkpoints' headers (nothing is read). A plan that cannot fit the budget
    gives an estimate whose warning says so (the merge itself refuses with MemoryBudgetError)."""
    from merging.checkpoint import open_checkpoint
    from merging.engine import input_bytes, resolve_device
    from merging.planner import plan_recipe, validate_recipe

    spec, _, _ = validate_recipe(recipe)
    dev = resolve_device(device)
    budget = parse_memory(max_memory) if max_memory is not None else default_budget(dev)
    opened: dict[str, Any] = {}

    def get(ref: str):
        if ref not in opened:
            opened[ref] = open_checkpoint(ref, allow_bin=allow_bin)
        return opened[ref]

    planned = plan_recipe(recipe, spec, get)
    try:
        sizes = {t.name: input_bytes(t, planned.base, planned.checkpoints) for t in planned.plan.tensors}
        warning = None
        try:
            plan = plan_memory(planned.plan, spec, budget, dev)
        except MemoryBudgetError as exc:
            warning = f"cannot fit: {exc}"
            need = budget
            while True:  # the smallest budget that fits, for the estimate of what it would take
                need = max(need * 5 // 4, exc.needed or 0)
                try:
                    plan = plan_memory(planned.plan, spec, need, dev)
                    break
                except MemoryBudgetError as again:
                    exc = again
        est = estimate_plan(plan, spec, sizes, dev, budget, calibration)
        if warning:
            est.warnings.insert(0, warning)
        return est
    finally:
        planned.cleanup()
        for ck in opened.values():
            ck.close()
