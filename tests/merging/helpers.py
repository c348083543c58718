"""Small shared helpers for the merging tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from merging import ModelEntry, Recipe


def recipe(method: str, base: Path | None, models: list[Path], per_model: dict | None = None, **kw) -> Recipe:
    params = kw.pop("parameters", {})
    return Recipe(
        method,
        str(base) if base is not None else None,
        [ModelEntry(str(m), dict(per_model or {})) for m in models],
        params,
        **kw,
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) output directory."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def leftovers(parent: Path) -> list[str]:
    """Temporary output directories the sink might have left behind."""
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".mergelab-tmp-" in p.name]
