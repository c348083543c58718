"""Which device and dtype a model runs in: shared by loading (models.py) and scoring (harness.py)."""

from __future__ import annotations

import torch

from evaluation.errors import EvaluationError

__all__ = ["resolve_device", "resolve_dtype"]


def resolve_device(device: str | None = "auto") -> str:
    """cuda when present, else cpu; an explicit device is checked so a typo fails before loading weights."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise EvaluationError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
    return str(dev)


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """float32 on CPU (exact; CPU half precision is slow); bfloat16 on GPUs that support it, else float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    names |= {"float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise EvaluationError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return names[dtype]
