"""DELLA's per-row magnitude ranks as keep probabilities (magnitude_ranks.c) through ctypes: a stable radix
sort of each row's |x| bits where torch makes a stable argsort, a scatter and two scalings (42% of a DELLA
merge's time, profiled). None when native code is off or unavailable or the layout is not the kernel's: the
caller then takes its torch path, which gives the same bytes.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from merging.native import build
from merging.threads import on_second_lane

SOURCE = Path(__file__).resolve().with_name("magnitude_ranks.c")
FLAGS = ("-ffp-contract=off",)  # rank * scale and + offset rounded apart, as torch's mul_ and add_
SPLIT_ELEMS = 1 << 20  # a tensor this large is ranked in two halves of its rows, one on the second lane
_P, _N, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_ARGTYPES = [_P, _N, _N, _F, _F, _P]  # x, rows, cols, scale, offset, out


def _kernel():
    return build.function(SOURCE, "mergelab_della_probabilities", _ARGTYPES, ctypes.c_int, FLAGS)


def della_probabilities(rows: torch.Tensor, scale: float, offset: float) -> torch.Tensor | None:
    """rank · scale + offset per entry of a CPU float32 (rows, cols) tensor with contiguous rows, the rank
    ascending in |x| with ties by position (scale and offset become float32, as torch's scalars do); None
    where the torch path must do it."""
    if (
        rows.device.type != "cpu"
        or rows.dtype != torch.float32
        or rows.dim() != 2
        or not rows.is_contiguous()
        or rows.requires_grad
        or rows.shape[1] >= 1 << 24  # past that, float32 ranks would not be exact (nor torch's)
    ):
        return None
    fn = _kernel()
    if fn is None:
        return None
    n_rows, cols = rows.shape
    out = torch.empty_like(rows)
    if n_rows == 0 or cols == 0:
        return out
    half = n_rows // 2 if rows.numel() >= SPLIT_ELEMS else 0
    second = None
    if half:
        at = half * cols * 4
        second = on_second_lane(
            fn, rows.data_ptr() + at, n_rows - half, cols, scale, offset, out.data_ptr() + at
        )
    try:
        failed = fn(rows.data_ptr(), half or n_rows, cols, scale, offset, out.data_ptr())
    finally:
        failed_second = second.result() if second is not None else 0  # always awaited: it writes into `out`
    if failed or failed_second:
        return None  # no memory for the scratch: the torch path
    return out
