"""The engine's memory budget (issue 10): how much memory a merge may use, and how each tensor is cut into
row blocks to stay within it.

The budget is a property of the plan: `plan_blocks` gives every planned tensor the rows per block that fit
(`PlannedTensor.block_rows`; None: the whole tensor at once). A tensor's cost per row counts the engine's
own buffers (the float32 stack of T task vectors and the base, twice: the block being merged and the one
the reader prefetches), the method's temporaries and the geometry pass, and the output block (twice: the
directory sink writes one block behind the engine). The SVD
methods gather what their SVD needs from row blocks (methods/gathered.py): their few matrix-sized buffers
are a fixed cost beside the blocks, whatever T is. Methods that cannot cut a tensor get one block; when even
one row (plus the fixed cost), or a tensor that must stay whole, does not fit, the merge is refused before
anything is read (MemoryBudgetError).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace

import torch

from merging.errors import MemoryBudgetError
from merging.methods.base import MethodSpec
from merging.methods.blocks import TensorContext, merger_for, tensor_rows
from merging.methods.gathered import whole_bytes
from merging.plan import MergePlan, PlannedTensor

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_MEMORY = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")

# Share of the memory that is free when the merge starts that a default budget takes: the rest stays for
# the interpreter, the page cache and whatever else runs on the machine.
DEFAULT_SHARE_CPU = 0.6
DEFAULT_SHARE_GPU = 0.8
# Fixed overhead outside the tensors (interpreter, torch, allocator slack), subtracted from every budget.
BASE_OVERHEAD = 400 << 20


def parse_memory(text: str | int | float) -> int:
    """Bytes from "5GiB", "5 GB", "512MiB", "1.5G" (K/M/G/T alone are binary) or a plain number of bytes."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = _MEMORY.match(str(text))
        if m is None or m.group(2).lower() not in _UNITS:
            raise MemoryBudgetError(
                f"cannot read memory size {text!r}; write it like 5GiB, 6GB, 512MiB or a number of bytes"
            )
        value, unit = float(m.group(1)), m.group(2).lower()
    n = int(value * _UNITS[unit])
    if n <= 0:
        raise MemoryBudgetError(f"memory budget must be positive, got {text!r}")
    return n


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def available_ram() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else physical RAM."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget(device: torch.device) -> int:
    """A safe share of what is free now: of the GPU's free memory on CUDA, else of available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * DEFAULT_SHARE_GPU)
    return int(available_ram() * DEFAULT_SHARE_CPU)


@dataclass(frozen=True)
class TensorCost:
    """Bytes one row of a tensor costs at once, and whether the tensor may be cut (else: bytes whole)."""

    per_row: int
    rows: int
    cuttable: bool
    stack_per_row: int = 0  # one (T + 1) float32 input stack's share of per_row
    fixed: int = 0  # held whatever the block size: matrix-sized buffers of a gathered SVD method

    @property
    def whole(self) -> int:
        return self.per_row * self.rows + self.fixed

    @property
    def whole_alone(self) -> int:
        """The whole tensor without a second stack being read ahead (prefetch off for this unit)."""
        return (self.per_row - self.stack_per_row) * self.rows + self.fixed

    def blocked(self, rows: int) -> int:
        """Bytes at once when `rows` rows are merged at a time."""
        return self.per_row * min(rows, self.rows) + self.fixed


# float32 copies of a block's (T, rows) stack and of one block row, beyond the engine's own buffers, that a
# method holds at once (measured from the code paths: TIES clones the stack; subspace SVDs need ~6 matrices).
STACK_COPIES_BLOCKED = 1.0
BLOCK_COPIES_BLOCKED = 6.0
# Methods that merge whole (sce, karcher, arcee_fusion). Measured when iso_c still merged whole: at 12
# checkpoints of 14336 x 4096 it peaked at 28 copies.
WHOLE_EXTRA_COPIES = 14.0
GEOMETRY_COPIES = 4.0  # a block's geometry; a large whole tensor's is summed over row chunks (engine.py)
GEOMETRY_COPIES_WHOLE = 1.0


def tensor_cost(planned: PlannedTensor, spec: MethodSpec, n_models: int, seed: int = 0) -> TensorCost:
    """Cost of merging `planned` with `spec`: per row when the method can cut it, else for the whole."""
    row_elems = math.prod(planned.shape[1:]) if len(planned.shape) >= 2 else math.prod(planned.shape)
    rows = tensor_rows(planned.shape)
    permuted = planned.vocab is not None or any(
        getattr(src, "row_map", None) is not None
        for src in [planned.base, *(i.source for i in planned.inputs)]
        if src is not None
    )  # a merged tokenizer's rows are completed from whole-tensor means: merged whole
    merger = None if rows <= 1 or permuted else _merger(planned, spec, n_models, seed)
    cuttable = merger is not None
    f32 = 4 * row_elems
    out = planned.dtype.itemsize * row_elems if hasattr(planned.dtype, "itemsize") else f32
    if cuttable:
        # two (T + 1) stacks (merging + prefetching), the method's copies, geometry, the output cast
        copies = 2 * (n_models + 1) + STACK_COPIES_BLOCKED * n_models + BLOCK_COPIES_BLOCKED + GEOMETRY_COPIES
    else:
        copies = 2 * (n_models + 1) + WHOLE_EXTRA_COPIES + GEOMETRY_COPIES_WHOLE
    fixed = whole_bytes(merger) if merger is not None else 0
    # the output block twice: the one just cast, and the one before it that the sink may still be writing
    return TensorCost(int(copies * f32 + 2 * out), rows, cuttable, (n_models + 1) * f32, fixed)


def _merger(planned: PlannedTensor, spec: MethodSpec, n_models: int, seed: int):
    ctx = TensorContext(planned.name, planned.shape, planned.params, planned.model_params, n_models, seed)
    return merger_for(spec, ctx)


def plan_blocks(plan: MergePlan, spec: MethodSpec, budget: int) -> MergePlan:
    """The plan with each tensor's rows per block under `budget` bytes (None where it fits whole).

    MemoryBudgetError, before anything is read, naming the first tensor whose smallest unit (one row, or the
    whole tensor where the method cannot cut it) does not fit, and how much it needs."""
    usable = budget - BASE_OVERHEAD
    tensors = []
    for planned in plan.tensors:
        n_models = len(planned.inputs)
        cost = tensor_cost(planned, spec, n_models)
        if cost.whole <= usable:
            tensors.append(replace(planned, block_rows=None))
            continue
        if not cost.cuttable and cost.whole_alone <= usable:  # whole, but nothing read ahead meanwhile
            tensors.append(replace(planned, block_rows=None, prefetch=False))
            continue
        unit = cost.blocked(1) if cost.cuttable else cost.whole_alone
        if unit > usable:
            what = "one row of" if cost.cuttable else f"{spec.name} merges whole"
            if cost.fixed:
                what = f"{spec.name}'s whole-matrix SVD buffers and one row of"
            need = format_bytes(unit + BASE_OVERHEAD)
            raise MemoryBudgetError(
                unit + BASE_OVERHEAD,
                f"memory budget {format_bytes(budget)} is too small: {what} {planned.name!r} "
                f"{tuple(planned.shape)} with {n_models} checkpoints needs {need}; raise --max-memory",
            )
        tensors.append(replace(planned, block_rows=max(1, (usable - cost.fixed) // cost.per_row)))
    return replace(plan, tensors=tuple(tensors), budget=budget)


# Tensors merged on tensor lanes (threads.TensorLanes) that the engine holds at once: two computing and one
# waiting for a lane, while the engine waits for the first to be written (outputs go out in plan order).
# The reader holds two more stacks: one it has read, one it is reading.
LANE_PENDING = 3
LANE_STACKS = LANE_PENDING + 2


def plan_lanes(plan: MergePlan, spec: MethodSpec) -> MergePlan:
    """The plan with `lane` set on the tensors that may merge on a tensor lane: merged whole, read ahead,
    without a merged tokenizer, by a merger whose ops run on one thread for that shape (`lane_safe`), when
    what the lanes hold beyond the plan's peak (LANE_STACKS input stacks and a second tensor's
    temporaries) fits the plan's budget. Else the plan as it is: each tensor after the other."""
    candidates = []
    for planned in plan.tensors:
        if planned.block_rows is not None or not planned.prefetch or planned.vocab is not None:
            continue
        merger = _merger(planned, spec, len(planned.inputs), 0) if tensor_rows(planned.shape) > 1 else None
        if merger is not None and getattr(merger, "lane_safe", False):
            candidates.append(planned)
    if not candidates:
        return plan
    if plan.budget is None or peak_estimate(plan, spec) + lanes_extra(candidates, spec) > plan.budget:
        return plan
    chosen = {t.name for t in candidates}
    tensors = tuple(replace(t, lane=True) if t.name in chosen else t for t in plan.tensors)
    return replace(plan, tensors=tensors)


def plan_memory(plan: MergePlan, spec: MethodSpec, budget: int, device: torch.device) -> MergePlan:
    """The plan under `budget`: row blocks (plan_blocks), then tensor lanes where they pay (on a CPU whose
    torch runs more than one thread) and fit (plan_lanes)."""
    plan = plan_blocks(plan, spec, budget)
    if device.type == "cpu" and torch.get_num_threads() > 1:
        plan = plan_lanes(plan, spec)
    return plan


def lanes_extra(lane_tensors: list[PlannedTensor], spec: MethodSpec) -> int:
    """Bytes the tensor lanes hold beyond one tensor's peak: LANE_STACKS input stacks and a second tensor's
    whole cost, of the largest lane tensor."""
    if not lane_tensors:
        return 0
    stacks = max(4 * (len(t.inputs) + 1) * math.prod(t.shape) for t in lane_tensors)
    second = max(tensor_cost(t, spec, len(t.inputs)).whole for t in lane_tensors)
    return LANE_STACKS * stacks + second


def peak_estimate(plan: MergePlan, spec: MethodSpec) -> int:
    """Bytes the merge needs at its peak under the plan's blocks (what the budget was checked against)."""
    peak = 0
    for planned in plan.tensors:
        cost = tensor_cost(planned, spec, len(planned.inputs))
        rows = planned.block_rows if planned.block_rows is not None else cost.rows
        per_row = cost.per_row if planned.prefetch else cost.per_row - cost.stack_per_row
        peak = max(peak, per_row * min(rows, cost.rows) + cost.fixed)
    return peak + lanes_extra([t for t in plan.tensors if t.lane], spec) + BASE_OVERHEAD
