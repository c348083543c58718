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


def model_count(spec, default: int = 3) -> int:
    """How many checkpoints a generic per-method test gives `spec`: `default`, within the method's bounds."""
    n = max(default, spec.min_models)
    return n if spec.max_models is None else min(n, spec.max_models)


def required_globals(spec) -> dict:
    """Values for the global parameters a method requires (e.g. slerp's t), so generic tests can run it."""
    return {p.name: 0.3 for p in spec.params if p.required and not p.per_model}


def exit_code_in_forked_child(target, timeout: float = 60) -> int | None:
    """Run `target` in a child forked from this process; its exit code (None if it hung and was killed)."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=target)
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return child.exitcode
