"""Model Stock (Jang et al. 2024): interpolate between the base and the checkpoints' mean by an amount
set by how aligned the task vectors are (methods.md §2). Parameter-free apart from `filter_wise`."""

from __future__ import annotations

import torch

from merging.errors import RecipeError
from merging.methods.base import ParamSpec, TensorInputs

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


def merge(inputs: TensorInputs) -> torch.Tensor:
    """θ = t·mean(θ_i) + (1 − t)·θ0 with t = N cosθ / (1 + (N−1) cosθ); t = 0 where that is singular."""
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
    cos = mean_pairwise_cosine(tv).unsqueeze(-1)  # (R, 1)
    del tv
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < SINGULAR_EPS
    t = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denom))
    out = avg.mul_(t).add_(base_rows * (1 - t))
    return out.reshape(base.shape)


def rows_independent(params) -> bool:
    """With filter_wise each row has its own ratio, so row blocks of a matrix merge independently."""
    return bool(params.get("filter_wise", False))
