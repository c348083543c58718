"""The merge plan: which tensors the engine will hand to a sink, in which order, with which shape and dtype.

Known before any tensor is read (from headers), so a sink can lay out its shards up front and write each
tensor straight through instead of buffering a shard in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = torch.tensor([], dtype=self.dtype).element_size()
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class MergePlan:
    """Output tensors in write order. `out_dtype` is the recipe's explicit output dtype (None: each tensor
    keeps the base's dtype); `tied_embeddings` tells whether the output ties lm_head to embed_tokens."""

    tensors: tuple[PlannedTensor, ...]
    out_dtype: str | None
    tied_embeddings: bool

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]
