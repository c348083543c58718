"""Task arithmetic's weighted sum (weighted_sum.c) through ctypes: Σ w_i τ_i, plus the base where asked,
in one pass over the stack where torch needs a product and a sum per checkpoint (the order that makes every
device give the same bytes), split in two halves over the engine's two lanes. None when native code is
off or unavailable, or the layout is not the kernel's: the caller then takes its torch path.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import torch

from merging.native import build
from merging.threads import on_second_lane

SOURCE = Path(__file__).resolve().with_name("weighted_sum.c")
FLAGS = ("-ffp-contract=off",)  # every product rounded on its own, as torch's mul is
SPLIT_ELEMS = 1 << 20  # a sum this long is split in two halves, the second on the engine's second lane


_P, _N = ctypes.c_void_p, ctypes.c_int64
_ARGTYPES = [_P, _N, ctypes.c_int32, _P, _P, _P, _N]  # x, row stride, T, w, base or NULL, out, columns


def _kernel():
    return build.function(SOURCE, "mergelab_weighted_sum", _ARGTYPES, extra_flags=FLAGS)


def weighted_sum(
    rows: torch.Tensor, weights: Sequence[float], plus: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Σ_i weights[i]·rows[i] (+ plus), a fresh (n,) tensor, for a CPU float32 (T, n) stack with contiguous
    rows; None where the torch path must do it."""
    n = rows.shape[1] if rows.dim() == 2 else -1
    if (
        n < 0
        or rows.device.type != "cpu"
        or rows.dtype != torch.float32
        or not (rows.stride(1) == 1 or n <= 1)
        or len(weights) != rows.shape[0]
        or not weights
        or (plus is not None and not (plus.dtype == torch.float32 and plus.is_contiguous()))
        or (plus is not None and (plus.device.type != "cpu" or plus.numel() != n))
    ):
        return None
    fn = _kernel()
    if fn is None:
        return None
    w = torch.tensor(list(weights), dtype=torch.float32)
    out = torch.empty(n, dtype=torch.float32)
    stride, x, p = rows.stride(0), rows.data_ptr(), plus.data_ptr() if plus is not None else None
    if n < SPLIT_ELEMS:
        fn(x, stride, len(weights), w.data_ptr(), p, out.data_ptr(), n)
        return out
    half = n // 2
    second = on_second_lane(
        fn,
        x + 4 * half,
        stride,
        len(weights),
        w.data_ptr(),
        p and p + 4 * half,
        out.data_ptr() + 4 * half,
        n - half,
    )
    try:
        fn(x, stride, len(weights), w.data_ptr(), p, out.data_ptr(), half)
    finally:
        second.result()  # always awaited: the lane writes into `out` until then
    return out
