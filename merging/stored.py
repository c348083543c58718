"""The stored route: task arithmetic merged straight from the stored bfloat16 rows (issue 10).

The general route reads every input as float32 (the reader widens T + 1 rows and subtracts the base), sums
the task vectors, sums them again for geometry and narrows the result: four passes over a stack twice the
stored size, which made a cheap merge 1.3x its I/O floor. Where a tensor's merge is θ0 + λ·(Σ w_i τ_i)/divisor
(the method says so: `weighted_sum_terms`), its inputs and output are bfloat16 and nothing needs its float32
task vectors afterwards (a singular spectrum), the reader hands over the stored bytes and one native pass
(merging/native/stored_arithmetic.c) forms the task vectors, the merged values, the geometry sums and the
output tile by tile. The bytes and the figures are the general route's. A unit with a NaN or Inf anywhere goes
back to the general route, which names the culprit.
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
    tokenizer, an input or output that is not bfloat16 of the output's shape, a pickled checkpoint, or no
    native code here."""
    terms = getattr(merger, "weighted_sum_terms", None)
    if (
        terms is None
        or device.type != "cpu"
        or spectrum
        or planned.dtype != torch.bfloat16
        or planned.vocab is not None
        or planned.base is None
        or base is None
        or not planned.inputs
    ):
        return None
    sources = [(base, planned.base), *((by_ref[i.checkpoint], i.source) for i in planned.inputs)]
    for ck, src in sources:
        info = ck.tensors.get(src.name)
        if (
            info is None
            or RowReader.reads_whole(ck, src)
            or parse_dtype(info.dtype) != torch.bfloat16
            or tuple(info.shape) != tuple(planned.shape)
        ):
            return None
    weighted = terms()
    if weighted is None or not stored_arithmetic.available():
        return None
    return Weighted(*weighted)


def merge_stored(stack: torch.Tensor, terms: Weighted, sums: TensorSums) -> tuple[torch.Tensor, bool]:
    """(the merged rows as bfloat16, whether every value was finite) of a (T + 1, *shape) stored stack (the
    checkpoints, then the base), the unit's geometry sums added into `sums` over the same column halves as
    the general route's. When not finite, `sums` holds garbage: the caller drops them."""
    flat = stack.view(stack.shape[0], -1)
    out = torch.empty(flat.shape[1], dtype=torch.bfloat16)
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
