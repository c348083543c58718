"""The merge plan: which tensors the engine will hand to a sink, in which order, with which shape and dtype,
and, for each, where its inputs come from and with which resolved parameters.

Known before any tensor is read (from headers), so a sink can lay out its shards up front and write each
tensor straight through instead of buffering a shard in memory. The plan is the one seam between the recipe
layer and the engine: the recipe layer decides per output tensor which checkpoint tensors feed it (slices,
layer ranges, passthrough) and what the method's parameters are there (gradients, filters); the engine only
reads what the plan says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merging.checkpoint import Checkpoint, parse_dtype
from merging.compat import CompatReport, TensorSource
from merging.tokenizer import VocabMap


@dataclass(frozen=True)
class TensorInput:
    """One checkpoint's contribution to an output tensor: which checkpoint (its ref, as in the recipe), which
    stored tensor (and vocabulary rows to fit), and the per-model parameters resolved for this tensor."""

    checkpoint: str
    source: TensorSource
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor. `base` is the base checkpoint's stored tensor (None when the merge has no base);
    `inputs` are the merged checkpoints' tensors in order; `params` the method's global parameters resolved
    for this tensor. A plan built only for a sink may leave the sources empty."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    base: TensorSource | None = None
    inputs: tuple[TensorInput, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    vocab: VocabMap | None = None  # rows to complete after loading (a merged tokenizer); see tokenizer.py
    # Set by the memory budget (merging/budget.py): rows merged at a time (None: the whole tensor at once),
    # and whether the reader may read the next unit while this one is merged (two input stacks at once).
    block_rows: int | None = None
    prefetch: bool = True
    # Set by budget.plan_lanes: merged whole on a tensor lane, beside the tensors before and after it
    lane: bool = False

    @property
    def rows(self) -> int:
        """Rows the tensor can be cut into: its first axis (a vector or scalar is one row)."""
        return int(self.shape[0]) if len(self.shape) >= 2 else 1

    @property
    def row_blocks(self) -> list[tuple[int, int]]:
        """[start, stop) row ranges the engine merges one after the other."""
        step = self.block_rows or self.rows
        return [(a, min(self.rows, a + step)) for a in range(0, self.rows, step)]

    @property
    def nbytes(self) -> int:
        n = torch.tensor([], dtype=self.dtype).element_size()
        for d in self.shape:
            n *= d
        return n

    @property
    def model_params(self) -> list[Mapping[str, Any]]:
        return [i.params for i in self.inputs]


@dataclass(frozen=True)
class MergePlan:
    """Output tensors in write order. `out_dtype` is the recipe's output dtype (`out_dtype`, else `dtype`;
    None: each tensor keeps its stored dtype); `tied_embeddings` tells whether the output ties lm_head to
    embed_tokens. The optional rest describe an output that differs from the reference checkpoint:
    `num_layers` (slices), `vocab_size` and `tokenizer_dir` (a built tokenizer to ship instead of the
    reference's files), `chat_template` (already written into that tokenizer's config)."""

    tensors: tuple[PlannedTensor, ...]
    out_dtype: str | None
    tied_embeddings: bool
    num_layers: int | None = None
    vocab_size: int | None = None
    tokenizer_dir: Path | None = None
    chat_template: str | None = None
    budget: int | None = None  # the memory budget the row blocks were planned for (bytes), if any

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]


def plan_uniform(
    report: CompatReport,
    reference: Checkpoint,
    model_refs: Sequence[str],
    has_base: bool,
    global_params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
    out_dtype: torch.dtype | None,
) -> tuple[PlannedTensor, ...]:
    """The plan of a recipe without slices, gradients or filters: every output tensor is fed by the same
    checkpoints with the same parameters, named and shaped as in the reference (base, else first model)."""
    tensors = []
    for name in report.tensor_names:
        info = reference.tensors[name]
        inputs = tuple(
            TensorInput(ref, sources[name], dict(p))
            for ref, sources, p in zip(model_refs, report.sources, model_params, strict=True)
        )
        tensors.append(
            PlannedTensor(
                name,
                tuple(info.shape),
                out_dtype or parse_dtype(info.dtype),
                TensorSource(name) if has_base else None,
                inputs,
                dict(global_params),
            )
        )
    return tuple(tensors)
