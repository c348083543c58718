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
    """A registered merge method: its metadata, parameter specs and per-tensor function.

    `summary` is the one-line explanation the Merge page and `--list-methods` show. `min_models` and
    `max_models` bound the number of checkpoints besides the base (None: no upper bound).
    `blockwise` says the method is row-separable: for any tensor of 2 or more dimensions, merging a block
    of its leading-dimension rows gives exactly those rows of the whole tensor's result (elementwise
    methods qualify; anything with a whole-tensor norm, rank, quantile or random stream does not), so the
    engine may process large tensors in row blocks. `blockwise_when`, when set, decides it from the
    resolved global parameters instead (e.g. model_stock with filter_wise); see `is_blockwise`.
    `block_merger` (methods/blocks.py) lets a method that is not row-separable still be merged in row
    blocks, its whole-tensor statistics coming from exact passes over the blocks.
    """

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
    max_models: int | None = None
    blockwise: bool = False
    blockwise_when: Callable[[Mapping[str, Any]], bool] | None = None
    # For methods that need whole-tensor statistics (top-k thresholds, L1 norms, cosines) or keep some
    # tensors whole (SVDs): a BlockFactory (methods/blocks.py) giving per tensor a merger that gets them from
    # exact passes over the row blocks, or None where the tensor must be merged whole (issue 10).
    block_merger: Callable[[Any], Any] | None = None

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def is_blockwise(self, params: Mapping[str, Any] | None = None) -> bool:
        """Whether row blocks of a >=2-D tensor may be merged independently with these global params."""
        if self.blockwise_when is not None and params is not None:
            return bool(self.blockwise_when(params))
        return self.blockwise

    def accepts_models(self, n: int) -> bool:
        """Whether a merge of `n` checkpoints (besides the base) is within this method's count."""
        return n >= self.min_models and (self.max_models is None or n <= self.max_models)

    def models_needed(self) -> str:
        """'exactly 1 checkpoint', 'at least 2 checkpoints', '1 to 3 checkpoints': for messages."""
        lo, hi = self.min_models, self.max_models
        plural = "checkpoint" if (hi if hi is not None else lo) == 1 else "checkpoints"
        if hi is None:
            return f"at least {lo} {plural}"
        if hi == lo:
            return f"exactly {lo} {plural}"
        return f"{lo} to {hi} {plural}"

    def check_model_count(self, n: int, where: str = "the recipe") -> None:
        """One-line RecipeError when `n` checkpoints (besides the base) do not fit this method."""
        if not self.accepts_models(n):
            besides = " besides the base model" if self.needs_base else " (a base model not counted)"
            raise RecipeError(f"{self.name} takes {self.models_needed()}{besides}; {where} has {n}")
