"""Types shared by every merge method: parameter specs, method specs and the per-tensor call.

A method is a pure function of one tensor's inputs (float32, already on the compute device, vocabulary
already adjusted to the base) that returns the merged weights for that tensor. The engine owns I/O,
dtype casts, RNG seeding, progress and statistics; methods own only the arithmetic of methods.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

ParamKind = Literal["float", "int", "bool"]


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter: how to validate it and how the app renders it as a form field."""

    name: str
    kind: ParamKind
    default: float | int | bool | None
    per_model: bool
    help: str
    minimum: float | None = None
    maximum: float | None = None
    paper_value: float | int | bool | None = None
    required: bool = False


@dataclass(frozen=True)
class TensorInputs:
    """Everything a method sees for one named tensor."""

    name: str
    base: torch.Tensor | None
    models: Sequence[torch.Tensor]
    model_params: Sequence[Mapping[str, Any]]
    params: Mapping[str, Any]
    generator: torch.Generator | None = None


MergeFn = Callable[[TensorInputs], torch.Tensor]

# Cross-parameter checks a single ParamSpec cannot express (e.g. DELLA's density ± epsilon in (0, 1)).
# Called by resolve_params with the resolved global params, the resolved per-model params and one label
# per model (for messages); raises RecipeError.
ParamCheck = Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]], Sequence[str]], None]


@dataclass(frozen=True)
class MethodSpec:
    """A registered merge method: its metadata, parameter specs and per-tensor function."""

    name: str
    title: str
    summary: str
    reference: str
    params: tuple[ParamSpec, ...]
    merge: MergeFn
    needs_base: bool = True
    min_models: int = 1
    randomized: bool = False
    aliases: tuple[str, ...] = field(default_factory=tuple)
    check: ParamCheck | None = None

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)
