"""RankCut's counting and masking passes (rank_cut.c) through ctypes. Each returns False (nothing done) when
native code is off or unavailable, or the layout is not the kernel's: the caller then takes its torch path,
which gives the same counts and the same zeros.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import torch

from merging.native import build

SOURCE = Path(__file__).resolve().with_name("rank_cut.c")
_P, _N, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
_SIGNATURES = {
    "mergelab_rank_count": [_P, _N, _I, _I, _P],  # bits, n, pass, bucket, hist
    "mergelab_rank_drop": [_P, _N, _I, _P, _P, _P],  # x, n, band, values, lefts, equal counts (out)
}


def _function(name: str):
    return build.function(SOURCE, name, _SIGNATURES[name])


def _plain(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() and not t.requires_grad


def count(bits: torch.Tensor, pass_no: int, bucket: int, hist: torch.Tensor) -> bool:
    """Add a block's counts into `hist` (65536 int64): pass 0 the high 15 bits of every |x|, pass 1 the low
    16 bits of those whose high bits are `bucket`. `bits`: int32 bit patterns (of x or |x|)."""
    if not (_plain(bits, torch.int32) and _plain(hist, torch.int64) and hist.numel() == 1 << 16):
        return False
    fn = _function("mergelab_rank_count")
    if fn is None:
        return False
    fn(bits.data_ptr(), bits.numel(), pass_no, bucket, hist.data_ptr())
    return True


def drop_(x: torch.Tensor, values: Sequence[int], lefts: Sequence[int]) -> list[int] | None:
    """Zero in place the entries of float32 `x` that the cuts drop (one cut: the entries in it; two: those in
    the first or not in the second). A cut holds |x| bits below its value, and of those equal to it the
    first `left` of this block. Returns how many entries equal each cut's value; None when the torch path
    must do it."""
    if not _plain(x, torch.float32) or len(values) not in (1, 2) or len(values) != len(lefts):
        return None
    fn = _function("mergelab_rank_drop")
    if fn is None:
        return None
    v = (ctypes.c_uint32 * 2)(*values, *([0] * (2 - len(values))))
    left = (ctypes.c_int64 * 2)(*lefts, *([0] * (2 - len(lefts))))
    equal = (ctypes.c_int64 * 2)()
    fn(x.data_ptr(), x.numel(), len(values) - 1, v, left, equal)
    return list(equal[: len(values)])
