"""Whole-matrix methods under a memory budget (issue 10): what an SVD needs, gathered from row blocks.

The subspace methods and Subspace Boosting take SVDs of whole matrices, but none needs the whole (T, m, n)
stack of task vectors at once: Iso-C needs Σ τ_i, TSV-M one τ_i at a time, Iso-CTS the sum and then one τ_i
at a time, a boosted method its base method's Δ. These block mergers (blocks.py) gather exactly that, pass
after pass over the row blocks, into one matrix-sized buffer, compute the merged update when the last pass
ends, and hand it out block by block. Peak memory is then a few matrix-sized buffers (`whole_bytes`, which
the budget counts) beside the engine's block stacks, whatever T is. A whole tensor is one block through the
same code, so the result does not depend on the budget.
"""

from __future__ import annotations

import torch

from merging.errors import RecipeError
from merging.methods.base import TensorInputs, task_vector_stack
from merging.methods.blocks import Block, RowwiseMerger, TensorContext, merge_whole, sub_block
from merging.methods.subspace import (
    SINGLE_THREAD_MAX_SIDE,
    SKIP_NAMES,
    IsoCtsParts,
    TsvmParts,
    iso_c_from_sum,
    mean_delta,
    task_sum,
)

F32 = 4


def svd_bytes(m: int, n: int) -> int:
    """float32 bytes a thin SVD of an m x n matrix holds at its peak beside its input: LAPACK's copy of the
    input, U and Vᵀ, and gesdd's workspace (up to about 7 r² for r = min(m, n))."""
    r = min(m, n)
    return F32 * (m * n + m * r + r * n + 7 * r * r)


def second_lane_bytes(m: int, n: int) -> int:
    """What a second decomposition in flight holds (subspace.two_at_a_time: matrices up to
    SINGLE_THREAD_MAX_SIDE on the smaller side decompose two at a time)."""
    r = min(m, n)
    return svd_bytes(max(m, n), r) if r <= SINGLE_THREAD_MAX_SIDE else 0


class _Gathered:
    """Common part: the merged update Δ (λ applied) is computed once, at the first merge, then each block
    gets θ0 + Δ over its rows. Subclasses gather in `observe` and compute in `_compute`."""

    passes = 0
    # Whether every op of this method's lane job on a matrix up to SINGLE_THREAD_MAX_SIDE on its smaller
    # side runs on one thread already (subspace.decomposition_threads): such a whole matrix merges to the
    # same bytes on a tensor lane (threads.TensorLanes) as on the engine's thread. The job is the statistic
    # passes and the merge, or with `lane_passes` False only the merge (the passes stay on the engine's
    # thread, at its thread count).
    one_thread_ops = False
    lane_passes = True

    def __init__(self, ctx: TensorContext):
        if len(ctx.shape) != 2:
            raise ValueError(f"{ctx.name}: a gathered merger needs a matrix, got shape {ctx.shape}")
        self.ctx = ctx
        self.m, self.n = ctx.shape
        self._delta: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None

    @property
    def matrix_bytes(self) -> int:
        return F32 * self.m * self.n

    @property
    def lane_safe(self) -> bool:
        """Whether the whole matrix may merge on a tensor lane with the same bytes (one_thread_ops)."""
        return self.one_thread_ops and min(self.m, self.n) <= SINGLE_THREAD_MAX_SIDE

    def _whole(self, block: Block) -> bool:
        return block.start == 0 and block.stop == self.ctx.rows

    def _gather(self, rows: torch.Tensor, block: Block) -> torch.Tensor | None:
        """The whole matrix once the last block of a pass has brought its rows (a view when the block is
        the whole tensor, else the rows copied into one reused buffer); None before that."""
        if self._whole(block):
            return rows
        if self._buf is None:
            self._buf = torch.empty(self.ctx.shape, dtype=rows.dtype, device=rows.device)
        self._buf[block.start : block.stop] = rows
        return self._buf if block.stop == self.ctx.rows else None

    def _compute(self, like: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def merge(self, block: Block) -> torch.Tensor:
        base = block.inputs.base
        if base is None:
            raise RecipeError(f"tensor {self.ctx.name}: this method needs a base model")
        if self._delta is None:
            self._delta = self._compute(base)
        if self._whole(block):
            delta, self._delta = self._delta, None
            return delta.add_(base)
        out = self._delta[block.start : block.stop].add(base)
        if block.stop == self.ctx.rows:
            self._delta = None
        return out


def _scaled(delta: torch.Tensor, params) -> torch.Tensor:
    lam = float(params["lambda"])
    return delta.mul_(lam) if lam != 1.0 else delta


class IsoCMerger(_Gathered):
    """Iso-C: one pass sums the task vectors into one matrix, then one SVD."""

    passes = 1
    one_thread_ops = True

    def __init__(self, ctx: TensorContext):
        super().__init__(ctx)
        self._sum: torch.Tensor | None = None

    @property
    def whole_bytes(self) -> int:
        return 3 * self.matrix_bytes + svd_bytes(self.m, self.n)  # sum, U Vᵀ, Δ rows out; the SVD

    def observe(self, pass_no: int, block: Block) -> None:
        tv = task_vector_stack(block.inputs)
        if self._whole(block):
            self._sum = task_sum(tv)
            return
        if self._sum is None:
            self._sum = torch.empty(self.ctx.shape, dtype=tv.dtype, device=tv.device)
        task_sum(tv, out=self._sum[block.start : block.stop])

    def _compute(self, like: torch.Tensor) -> torch.Tensor:
        total, self._sum = self._sum, None
        return _scaled(iso_c_from_sum(total), self.ctx.params)


class TsvmMerger(_Gathered):
    """TSV-M: pass i gathers τ_i and takes its SVD (T passes), then the polar factors. A whole tensor (one
    block) has every τ_i at pass 0: their decompositions then run two at a time (the same bytes)."""

    one_thread_ops = True

    def __init__(self, ctx: TensorContext):
        super().__init__(ctx)
        self.parts = TsvmParts(self.m, self.n, ctx.n_models)
        self.passes = ctx.n_models if self.parts.k > 0 else 0

    @property
    def whole_bytes(self) -> int:
        # τ_i's buffer, its SVD, Ucat and Vcat; then polar factors of Ucat and Vcat and their product
        r = min(self.m, self.n)
        decompositions = svd_bytes(max(self.m, self.n), r) + second_lane_bytes(self.m, self.n)
        return 3 * self.matrix_bytes + F32 * 2 * (self.m + self.n) * r + decompositions

    def observe(self, pass_no: int, block: Block) -> None:
        if self._whole(block):
            if pass_no == 0:
                self.parts.add_all(task_vector_stack(block.inputs).unbind(0))
            return
        tau = self._gather(task_vector_stack(block.inputs)[pass_no], block)
        if tau is not None:
            self.parts.add(pass_no, tau)

    def _compute(self, like: torch.Tensor) -> torch.Tensor:
        self._buf = None
        return _scaled(self.parts.delta(like), self.ctx.params)


class IsoCtsMerger(_Gathered):
    """Iso-CTS: pass 0 sums the task vectors (the common subspace), pass 1 + i gathers τ_i (its residual).
    A whole tensor (one block) does it all at pass 0, the residuals' decompositions two at a time."""

    one_thread_ops = True

    def __init__(self, ctx: TensorContext):
        super().__init__(ctx)
        fraction = float(ctx.params["common_space_fraction"])
        self.parts = IsoCtsParts(self.m, self.n, ctx.n_models, fraction)
        self.passes = 1 + (ctx.n_models if self.parts.d > 0 else 0)

    @property
    def whole_bytes(self) -> int:
        r = min(self.m, self.n)
        decompositions = svd_bytes(max(self.m, self.n), r) + second_lane_bytes(self.m, self.n)
        return 4 * self.matrix_bytes + F32 * 2 * (self.m + self.n) * r + decompositions

    def observe(self, pass_no: int, block: Block) -> None:
        if self._whole(block):
            if pass_no == 0:
                tv = task_vector_stack(block.inputs)
                self.parts.common_and_add_all(task_sum(tv), tv.unbind(0))
            return
        tv = task_vector_stack(block.inputs)
        if pass_no == 0:
            if self._buf is None:
                self._buf = torch.empty(self.ctx.shape, dtype=tv.dtype, device=tv.device)
            task_sum(tv, out=self._buf[block.start : block.stop])
            if block.stop == self.ctx.rows:
                self.parts.common(self._buf)
            return
        tau = self._gather(tv[pass_no - 1], block)
        if tau is not None:
            self.parts.add(tau)

    def _compute(self, like: torch.Tensor) -> torch.Tensor:
        self._buf = None
        return _scaled(self.parts.delta(like), self.ctx.params)


SUBSPACE = {"tsvm": TsvmMerger, "iso_c": IsoCMerger, "iso_cts": IsoCtsMerger}


# Rows of a boosted matrix's Δ formed at a time when the engine hands the whole matrix as one block: the
# base method's temporaries (TIES clones the stack) then scale with this many rows, not with the matrix.
DELTA_BLOCK_BYTES = 64 << 20


class BoostedMerger(_Gathered):
    """A task-vector method's Δ gathered block by block (its own passes first, then one more that forms Δ
    rows), then Subspace Boosting of the whole Δ."""

    # The base method's passes (torch ops at the engine's thread count) stay on the engine's thread; the
    # boost (one thread per op on a matrix this small) may run on a lane.
    one_thread_ops = True
    lane_passes = False

    def __init__(self, inner, ctx: TensorContext, boost):
        super().__init__(ctx)
        self.inner, self.boost = inner, boost
        self.passes = inner.passes + 1

    @property
    def whole_bytes(self) -> int:
        return 3 * self.matrix_bytes + svd_bytes(self.m, self.n)  # Δ, U·σ', its product; the SVD

    def observe(self, pass_no: int, block: Block) -> None:
        if pass_no < self.inner.passes:
            self.inner.observe(pass_no, block)
            return
        inputs = block.inputs
        if inputs.base is None:
            raise RecipeError(f"tensor {self.ctx.name}: this method needs a base model")
        if self._buf is None:
            self._buf = torch.empty(self.ctx.shape, dtype=inputs.base.dtype, device=inputs.base.device)
        rows = block.stop - block.start
        step = max(1, DELTA_BLOCK_BYTES // (F32 * self.n * max(1, self.ctx.n_models)))
        for a in range(0, rows, step):
            b = min(rows, a + step)
            part = Block(block.start + a, block.start + b, sub_block(inputs, a, b), block.row_numel)
            self._buf[block.start + a : block.start + b] = self.inner.delta(part)

    def _compute(self, like: torch.Tensor) -> torch.Tensor:
        delta, self._buf = self._buf, None
        return self.boost(delta, self.ctx.params)


def whole_bytes(merger) -> int:
    """Bytes a block merger holds whatever the block size (matrix-sized buffers), 0 for most mergers."""
    return int(getattr(merger, "whole_bytes", 0) or 0)


def subspace_block_factory(method: str):
    """`MethodSpec.block_merger` of tsvm, iso_c or iso_cts: a matrix that takes the SVD path gathers what
    the method needs from row blocks (above); the embeddings, LM head and vectors get the mean of the
    task vectors, which treats rows independently."""

    def factory(ctx):
        if len(ctx.shape) == 2 and not any(s in ctx.name for s in SKIP_NAMES):
            return SUBSPACE[method](ctx)
        return MeanMerger(ctx)

    return factory


class MeanMerger(RowwiseMerger):
    """The subspace methods' embeddings, LM head and vectors: θ0 + λ·(Σ τ_i)/T, row by row. A plain weighted
    sum of the task vectors (`weighted_sum_terms`, as task arithmetic's), which the engine merges from the
    stored rows in one native pass where it can (merging/stored.py), with the same bytes."""

    def __init__(self, ctx: TensorContext):
        super().__init__(_mean_merge)
        self.n_models = ctx.n_models
        self.lam = float(ctx.params["lambda"])

    def weighted_sum_terms(self) -> tuple[list[float], float | None, float]:
        return [1.0] * self.n_models, float(self.n_models), self.lam


def _mean_merge(inputs: TensorInputs) -> torch.Tensor:
    if inputs.base is None:
        raise RecipeError(f"tensor {inputs.name}: this method needs a base model")
    delta = mean_delta(inputs)
    lam = float(inputs.params["lambda"])
    if lam != 1.0:
        delta.mul_(lam)
    return delta.add_(inputs.base)


# One code path whole or blocked: a whole tensor is one block of the same merger (blocks.merge_whole).
tsvm_blocks, iso_c_blocks, iso_cts_blocks = (subspace_block_factory(m) for m in ("tsvm", "iso_c", "iso_cts"))
merge_tsvm = merge_whole(tsvm_blocks)
merge_iso_c = merge_whole(iso_c_blocks)
merge_iso_cts = merge_whole(iso_cts_blocks)
