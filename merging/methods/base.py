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

from merging.errors import RecipeError

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
    """Everything a method sees for one named tensor.

    `task_vectors`, when the engine gives it, is the (T, *shape) float32 stack of models[i] − base that
    the engine formed once and will read again for geometry: methods read it and never write it. Use
    `task_vector_stack(inputs)` to get it either way.
    """

    name: str
    base: torch.Tensor | None
    models: Sequence[torch.Tensor]
    model_params: Sequence[Mapping[str, Any]]
    params: Mapping[str, Any]
    generator: torch.Generator | None = None
    task_vectors: torch.Tensor | None = None


def task_vector_stack(inputs: TensorInputs) -> torch.Tensor:
    """(T, *shape) task vectors: the engine's read-only stack when present, else a fresh one."""
    if inputs.task_vectors is not None:
        return inputs.task_vectors
    if inputs.base is None:
        raise RecipeError(f"tensor {inputs.name}: this method needs a base model")
    return torch.stack(list(inputs.models)).sub_(inputs.base)


class ModelsFromTaskVectors(Sequence[torch.Tensor]):
    """The checkpoints' weights θ_i = τ_i + θ0, formed on access from a task-vector stack, so the engine
    keeps only the stack in memory while `TensorInputs.models` still reads as the weights."""

    def __init__(self, base: torch.Tensor, task_vectors: torch.Tensor):
        self._base = base
        self._tv = task_vectors

    def __len__(self) -> int:
        return self._tv.shape[0]

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._tv[i] + self._base


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
