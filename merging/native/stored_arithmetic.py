"""Task arithmetic from the stored rows in one native pass (stored_arithmetic.c), through ctypes.

The engine's float32 route widens T + 1 rows, sums them, sums them again for geometry and narrows the result:
four passes over a float32 stack (twice the size of bfloat16 inputs). This one reads the stored rows once and
writes the output once, with the same bytes and the same geometry figures (the engine's `merging/stored.py`
decides where it applies and falls back to the float32 route for everything else).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import torch

from merging.native import build
from merging.native.geometry_sums import ColumnSums

SOURCE = Path(__file__).resolve().with_name("stored_arithmetic.c")
FLAGS = ("-ffp-contract=off",)  # every product and sum rounded on its own, as torch's ops are

_P, _N, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
_ARGTYPES = [
    _P,  # stored rows: T checkpoints, then the base
    _I,  # their dtype's code
    _N,  # row stride, in elements
    _I,  # T
    _N,  # columns
    _P,  # weights (T float32)
    _I,  # divide by `divisor`
    _F,  # divisor
    _I,  # scale by `lam`
    _F,  # lam
    _P,  # out: columns values
    _I,  # their dtype's code
    _P,  # gram: (T + 1)², float64, added into; NULL for no geometry
    ctypes.POINTER(ctypes.c_double),  # task L1, dropped L1: added into
    ctypes.POINTER(ctypes.c_int64),  # conflicts, dropped, summed: added into
]
CODES = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}  # stored_arithmetic.c's enum


def _kernel():
    return build.function(SOURCE, "mergelab_stored_task_arithmetic", _ARGTYPES, ctypes.c_int, FLAGS)


def dtypes() -> frozenset[torch.dtype]:
    """The dtypes the kernel reads and writes here: none when native code is off or cannot be built;
    float16 only where the compiler has it."""
    if _kernel() is None:
        return frozenset()
    has_f16 = build.function(SOURCE, "mergelab_stored_has_f16", [], ctypes.c_int, FLAGS)
    return frozenset(d for d in CODES if d != torch.float16 or (has_f16 is not None and has_f16()))


class Weighted:
    """θ0 + λ·(Σ w_i τ_i)/divisor: the weights, the divisor (None: no division) and λ, as the method gives
    them (Python floats; each becomes float32 as torch's scalar ops make it)."""

    def __init__(self, weights: Sequence[float], divisor: float | None, lam: float):
        self.weights = torch.tensor(list(weights), dtype=torch.float32)
        self.divisor, self.lam = divisor, lam


def merge_range(
    stored: torch.Tensor,
    start: int,
    stop: int,
    terms: Weighted,
    out: torch.Tensor,
    gram: torch.Tensor | None,
) -> tuple[bool, ColumnSums]:
    """Columns [start, stop) of the (T + 1, n) stored stack (checkpoints, then the base; CPU, rows contiguous,
    a dtype of `dtypes()`) merged into out[start:stop] (n values, a dtype of `dtypes()`); with `gram`
    ((T + 1)² float64) the range's Gram products added into it and its other sums returned. Returns (every
    merged value finite, sums). Raises MemoryError when the kernel's scratch cannot be allocated; callers
    check `dtypes()` first."""
    fn = _kernel()
    if fn is None:
        raise RuntimeError("the native stored task arithmetic is not available")
    l1 = (ctypes.c_double * 2)()
    counts = (ctypes.c_int64 * 3)()
    finite = 1
    if stop > start:
        size = stored.element_size()
        finite = fn(
            stored.data_ptr() + start * size,
            CODES[stored.dtype],
            stored.stride(0),
            stored.shape[0] - 1,
            stop - start,
            terms.weights.data_ptr(),
            terms.divisor is not None,
            terms.divisor if terms.divisor is not None else 1.0,
            terms.lam != 1.0,
            terms.lam,
            out.data_ptr() + start * out.element_size(),
            CODES[out.dtype],
            gram.data_ptr() if gram is not None else None,
            l1,
            counts,
        )
        if finite == -2:
            raise ValueError("this build of the stored task arithmetic has no float16")
        if finite < 0:
            raise MemoryError("no memory for the stored task arithmetic's scratch")
    return bool(finite), ColumnSums(l1[0], l1[1], counts[0], counts[1], counts[2])
