"""The native geometry sums (geometry_sums.c) for a CPU float32 stack, called through ctypes.

One pass over the columns replaces the torch path's ~15 passes per step. ctypes releases the GIL for the
call, so the two halves of `TensorSums.add` (one on the engine's second lane) run on two cores at once.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import NamedTuple

import torch

from merging.native import build

SOURCE = Path(__file__).resolve().with_name("geometry_sums.c")


class ColumnSums(NamedTuple):
    """The sums of a column range besides the Gram matrix (which the kernel adds in place)."""

    task_l1: float
    dropped_l1: float
    conflicts: int
    conflict_dropped: int
    conflict_summed: int


_ARGTYPES = [
    ctypes.c_void_p,  # x: row 0 of the range
    ctypes.c_int64,  # row stride, in floats
    ctypes.c_int32,  # rows: T + 1
    ctypes.c_int64,  # columns
    ctypes.c_void_p,  # merged: the range's merged values (the last row becomes Δ), or NULL
    ctypes.c_void_p,  # gram: (T + 1)², float64, added into
    ctypes.POINTER(ctypes.c_double),  # task L1, dropped L1: added into
    ctypes.POINTER(ctypes.c_int64),  # conflicts, dropped, summed: added into
]


def _kernel():
    # returns 0, or -1 when its scratch memory could not be allocated
    return build.function(SOURCE, "mergelab_geometry_sums", _ARGTYPES, ctypes.c_int)


def applies(rows: torch.Tensor, gram: torch.Tensor, merged: torch.Tensor | None = None) -> bool:
    """The kernel's layout: a CPU float32 (rows, cols) stack with contiguous rows, a float64 Gram and,
    when given, a contiguous float32 `merged` of cols values."""
    return (
        rows.device.type == "cpu"
        and rows.dtype == torch.float32
        and rows.dim() == 2
        and (rows.stride(1) == 1 or rows.shape[1] <= 1)
        and gram.device.type == "cpu"
        and gram.dtype == torch.float64
        and gram.is_contiguous()
        and gram.shape == (rows.shape[0], rows.shape[0])
        and not rows.requires_grad
        and (
            merged is None
            or (
                merged.device.type == "cpu"
                and merged.dtype == torch.float32
                and merged.shape == rows.shape[1:]
                and merged.is_contiguous()
            )
        )
    )


def column_sums(
    rows: torch.Tensor, start: int, stop: int, gram: torch.Tensor, merged: torch.Tensor | None = None
) -> ColumnSums | None:
    """Add the Gram matrix of rows[:, start:stop] into `gram` and return the range's other sums. With
    `merged` (the stack's merged values, 1-D), the last row holds the base and becomes Δ = merged − base
    in that range first. None, with nothing touched, when the layout is not the kernel's or native code is
    off or unavailable."""
    if not applies(rows, gram, merged):
        return None
    fn = _kernel()
    if fn is None:
        return None
    l1 = (ctypes.c_double * 2)()
    counts = (ctypes.c_int64 * 3)()
    if stop > start:
        size = rows.element_size()
        first = rows.data_ptr() + start * size
        merged_at = None if merged is None else merged.data_ptr() + start * size
        if fn(first, rows.stride(0), rows.shape[0], stop - start, merged_at, gram.data_ptr(), l1, counts):
            return None  # out of memory for its scratch: the torch path, nothing touched
    return ColumnSums(l1[0], l1[1], counts[0], counts[1], counts[2])
