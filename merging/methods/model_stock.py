"""Model Stock (Jang et al. 2024): interpolate between the base and the checkpoints' mean by an amount
set by how aligned the task vectors are (methods.md §2). Parameter-free apart from `filter_wise`."""

from __future__ import annotations

import math

import torch

from merging.errors import RecipeError
from merging.methods.base import ParamSpec, TensorInputs
from merging.methods.blocks import Block, RowwiseMerger, TensorContext, merge_whole

NORM_EPS = 1e-6
SINGULAR_EPS = 1e-6

PARAMS = (
    ParamSpec(
        "filter_wise",
        "bool",
        False,
        per_model=False,
        paper_value=False,
        help="one interpolation ratio per row (output filter) instead of one per tensor",
    ),
)


def mean_pairwise_cosine(tv: torch.Tensor) -> torch.Tensor:
    """Mean over pairs i<j of cos(τ_i, τ_j) along the last axis; tv (T, R, D) → (R,). One batched Gram."""
    n_models = tv.shape[0]
    norms = tv.norm(dim=-1).clamp_min_(NORM_EPS)  # (T, R)
    gram = torch.einsum("trd,srd->rts", tv, tv)  # (R, T, T)
    cos = (gram / (norms.T.unsqueeze(2) * norms.T.unsqueeze(1))).clamp_(-1.0, 1.0)
    i, j = torch.triu_indices(n_models, n_models, offset=1, device=tv.device)
    return cos[:, i, j].mean(dim=-1)


def _rows(x: torch.Tensor, filter_wise: bool) -> torch.Tensor:
    """View as (rows, entries): one row per output filter with filter_wise, else the whole tensor."""
    if filter_wise and x.dim() >= 2:
        return x.reshape(-1, x.shape[-1])
    return x.reshape(1, -1)


def ratio(cos: torch.Tensor | float, n: int):
    """t = N cosθ / (1 + (N−1) cosθ); t = 0 where the denominator is (nearly) singular."""
    if isinstance(cos, float):
        denom = 1 + (n - 1) * cos
        return 0.0 if abs(denom) < SINGULAR_EPS else n * cos / denom
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < SINGULAR_EPS
    return torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denom))


def merge_rows(inputs: TensorInputs) -> torch.Tensor:
    """filter_wise (and vectors, one row): θ = t·mean(θ_i) + (1 − t)·θ0 with one t per row."""
    base = inputs.base
    n = len(inputs.models)
    if base is None or n < 2:
        raise RecipeError("model_stock needs a base model and at least 2 checkpoints")
    fw = bool(inputs.params["filter_wise"])
    base_rows = _rows(base, fw)
    if inputs.task_vectors is not None:  # the engine's read-only stack: mean(θ_i) = θ0 + mean(τ_i)
        tv = inputs.task_vectors.reshape(n, *base_rows.shape)  # (T, R, D)
        avg = tv.mean(0).add_(base_rows)
    else:
        tv = torch.stack([_rows(m, fw) for m in inputs.models])
        avg = tv.mean(0)
        tv.sub_(base_rows)
    t = ratio(mean_pairwise_cosine(tv).unsqueeze(-1), n)  # (R, 1)
    del tv
    out = avg.mul_(t).add_(base_rows * (1 - t))
    return out.reshape(base.shape)


def rows_independent(params) -> bool:
    """With filter_wise each row has its own ratio, so row blocks of a matrix merge independently."""
    return bool(params.get("filter_wise", False))


class WholeTensorStock:
    """Model Stock with one ratio per tensor, block by block: an exact first pass sums the task vectors'
    Gram matrix row by row (each row's dot products, then a correctly rounded sum over rows), so the
    cosines, and the output, do not depend on how the tensor was cut."""

    passes = 1

    def __init__(self, ctx: TensorContext):
        self.n = ctx.n_models
        self._parts: list[torch.Tensor] = []
        self._t: float | None = None

    def orderless(self, pass_no: int) -> bool:
        """The Gram pass is exactly summed (math.fsum), so it may see the blocks in any order."""
        return True

    def observe(self, pass_no: int, block: Block) -> None:
        tv = _task_vectors(block.inputs)
        rows = tv.reshape(self.n, tv.shape[1], -1) if tv.dim() >= 3 else tv.reshape(self.n, 1, -1)
        gram = torch.einsum("trd,srd->rts", rows, rows)  # (R, T, T), per row
        i, j = torch.triu_indices(self.n, self.n, device=gram.device)
        self._parts.append(gram[:, i, j].cpu())

    def _ratio(self) -> float:
        if self._t is None:
            parts = torch.cat(self._parts) if self._parts else torch.zeros(0, self.n * (self.n + 1) // 2)
            iu, ju = torch.triu_indices(self.n, self.n).tolist()
            gram = [[0.0] * self.n for _ in range(self.n)]
            for col, (a, b) in enumerate(zip(iu, ju, strict=True)):
                gram[a][b] = gram[b][a] = math.fsum(parts[:, col].tolist())
            norms = [max(math.sqrt(max(gram[a][a], 0.0)), NORM_EPS) for a in range(self.n)]
            cos = [
                max(-1.0, min(1.0, gram[a][b] / (norms[a] * norms[b])))
                for a in range(self.n)
                for b in range(a + 1, self.n)
            ]
            self._t = ratio(sum(cos) / len(cos), self.n)
            self._parts = []
        return self._t

    def merge(self, block: Block) -> torch.Tensor:
        t = self._ratio()
        base = block.inputs.base
        avg = _task_vectors(block.inputs).mean(0).add_(base)
        return avg.mul_(t).add_(base * (1 - t))


def _task_vectors(inputs: TensorInputs) -> torch.Tensor:
    if inputs.base is None or len(inputs.models) < 2:
        raise RecipeError("model_stock needs a base model and at least 2 checkpoints")
    if inputs.task_vectors is not None:
        return inputs.task_vectors
    return torch.stack(list(inputs.models)).sub_(inputs.base)


def block_factory(ctx: TensorContext):
    """`MethodSpec.block_merger`: filter_wise ratios are per row; one ratio per tensor needs the Gram pass."""
    if bool(ctx.params["filter_wise"]) and len(ctx.shape) >= 2:
        return RowwiseMerger(merge_rows)
    return WholeTensorStock(ctx)


merge = merge_whole(block_factory)
