"""The stored route: task arithmetic merged straight from the stored rows (issue 10).

The general route reads every input as float32 (the reader widens T + 1 rows and subtracts the base), sums
the task vectors, sums them again for geometry and narrows the result: four passes over a float32 stack
(twice the size of bfloat16 inputs), which made a cheap merge 1.3x its I/O floor. Where a tensor's merge is
θ0 + λ·(Σ w_i τ_i)/divisor (the method says so: `weighted_sum_terms`), its inputs share one dtype (bfloat16,
float16 or float32) and nothing needs its float32 task vectors afterwards (a singular spectrum), the reader
hands over the stored bytes and one native pass (merging/native/stored_arithmetic.c) forms the task vectors,
the merged values, the geometry sums and the output tile by tile. The bytes and the figures are the general
route's. A unit with a NaN or Inf anywhere goes back to the general route, which names the culprit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from merging.checkpoint import Checkpoint, parse_dtype
from merging.geometry import TensorSums
from merging.native import stored_arithmetic
from merging.native.stored_arithmetic import Weighted
from merging.plan import PlannedTensor
from merging.reader import RowReader


def stored_terms(
    merger: Any,
    planned: PlannedTensor,
    base: Checkpoint | None,
    by_ref: Mapping[str, Checkpoint],
    device: torch.device,
    spectrum: bool,
) -> Weighted | None:
    """The weighted sum to merge `planned` by from its stored rows, or None where the general route must:
    not a plain weighted sum of task vectors, not on the CPU, a spectrum to record, no base, a merged
    tokenizer, inputs of different dtypes or of another shape than the output, a dtype the kernel does not
    take here, a pickled checkpoint, or no native code."""
    terms = getattr(merger, "weighted_sum_terms", None)
    if (
        terms is None
        or device.type != "cpu"
        or spectrum
        or planned.vocab is not None
        or planned.base is None
        or base is None
        or not planned.inputs
    ):
        return None
    sources = [(base, planned.base), *((by_ref[i.checkpoint], i.source) for i in planned.inputs)]
    stored = set()
    for ck, src in sources:
        info = ck.tensors.get(src.name)
        if info is None or RowReader.reads_whole(ck, src) or tuple(info.shape) != tuple(planned.shape):
            return None
        stored.add(parse_dtype(info.dtype))
    weighted = terms()
    if weighted is None or len(stored) != 1 or not {*stored, planned.dtype} <= stored_arithmetic.dtypes():
        return None
    return Weighted(*weighted)


def stored_dtype(planned: PlannedTensor, base: Checkpoint) -> torch.dtype:
    """The dtype a tensor's inputs are stored in (one for all of them where `stored_terms` chose it)."""
    return parse_dtype(base.tensors[planned.base.name].dtype)


def merge_stored(
    stack: torch.Tensor, terms: Weighted, sums: TensorSums, out_dtype: torch.dtype
) -> tuple[torch.Tensor, bool]:
    """(the merged rows in `out_dtype`, whether every value was finite) of a (T + 1, *shape) stored stack (the
    checkpoints, then the base), the unit's geometry sums added into `sums` over the same column halves as
    the general route's. When not finite, `sums` holds garbage: the caller drops them."""
    flat = stack.view(stack.shape[0], -1)
    out = torch.empty(flat.shape[1], dtype=out_dtype)
    finite: list[bool] = []

    def add_range(part: TensorSums, start: int, stop: int) -> None:
        ok, native = stored_arithmetic.merge_range(flat, start, stop, terms, out, part.gram)
        part.add_column_sums(stop - start, native)
        finite.append(ok)  # list.append is atomic: the halves may finish in any order

    sums.add_in_halves(flat.shape[1], flat.device, add_range)
    return out.view(stack.shape[1:]), all(finite) and sums.finite() == (True, True)


def widened(stack: torch.Tensor) -> torch.Tensor:
    """The general route's float32 stack of a stored one: the task vectors, then the base."""
    wide = stack.float()
    wide[:-1].sub_(wide[-1])
    return wide
