"""Native dtype conversions (convert.c) through ctypes, for the two passes every merge makes over memory:
the reader widening stored rows to float32 (minus the base's rows: task vectors in the same pass, where torch
needs a copy and then a subtraction over the whole stack), and the output's narrowing to bfloat16 with its
NaN/Inf check (one pass, where torch needs a sum and a cast). Both give torch's bytes. Each returns None or
False when native code is off or unavailable, or the layout is not the kernel's: the caller then takes its
torch path.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from merging.native import build
from merging.threads import on_second_lane

SOURCE = Path(__file__).resolve().with_name("convert.c")
_WIDEN = {
    torch.bfloat16: "mergelab_widen_bf16",
    torch.float16: "mergelab_widen_f16",
    torch.float32: "mergelab_widen_f32",
}
# A narrowing this large is split in two halves, the second on the engine's second lane (ctypes releases
# the GIL during the call); smaller ones are not worth a hand-off.
SPLIT_ELEMS = 1 << 20


_P, _N = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {  # name: (argument types, result type)
    "mergelab_widen_bf16": ([_P, _P, _P, _N], None),  # src, minus (or NULL), dest, n
    "mergelab_widen_f16": ([_P, _P, _P, _N], None),
    "mergelab_widen_f32": ([_P, _P, _P, _N], None),
    "mergelab_has_f16": ([], ctypes.c_int),
    "mergelab_narrow_bf16": ([_P, _P, _N], ctypes.c_int),  # src, dest, n -> every value finite
}


def _function(name: str):
    return build.function(SOURCE, name, *_SIGNATURES[name])


def _plain(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad


def widen(src: torch.Tensor, dest: torch.Tensor, minus: torch.Tensor | None = None) -> bool:
    """dest = float32(src), or float32(src) − minus: True when done here; False, with nothing written, when
    the torch path must do it (native code off or unavailable, another dtype or device, a strided view)."""
    name = _WIDEN.get(src.dtype)
    if (
        name is None
        or dest.dtype != torch.float32
        or not (_plain(src) and _plain(dest))
        or src.numel() != dest.numel()
        or (minus is not None and not (minus.dtype == torch.float32 and _plain(minus)))
        or (minus is not None and minus.numel() != dest.numel())
    ):
        return False
    fn = _function(name)
    if fn is None or (src.dtype == torch.float16 and not _has_f16()):
        return False
    fn(src.data_ptr(), minus.data_ptr() if minus is not None else None, dest.data_ptr(), dest.numel())
    return True


def _has_f16() -> bool:
    fn = _function("mergelab_has_f16")
    return fn is not None and bool(fn())


def narrow_bf16(src: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
    """(src as bfloat16, whether every value was finite), or None when the torch path must do it."""
    if src.dtype != torch.float32 or not _plain(src):
        return None
    fn = _function("mergelab_narrow_bf16")
    if fn is None:
        return None
    out = torch.empty(src.shape, dtype=torch.bfloat16)
    n = src.numel()
    if n < SPLIT_ELEMS:
        return out, bool(fn(src.data_ptr(), out.data_ptr(), n))
    half = n // 2
    second = on_second_lane(fn, src.data_ptr() + 4 * half, out.data_ptr() + 2 * half, n - half)
    try:
        first = fn(src.data_ptr(), out.data_ptr(), half)
    finally:
        second_finite = second.result()  # always awaited: the lane writes into `out` until then
    return out, bool(first) and bool(second_finite)
