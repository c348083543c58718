"""SCE (Select, Calculate, Erase; Wan et al. 2024, FuseChat) with mergekit 0.1.5's per-tensor semantics.

Per tensor: keep the `select_topk` fraction of entries where the task vectors vary most across models
(by population variance, among entries whose variance is not zero); weight each model by the mean square
of its (selected) task vector, normalised to sum 1; elect a sign per entry from the sum of the task
vectors and average the agreeing ones with those weights.
"""

from __future__ import annotations

import torch

from merging.errors import RecipeError
from merging.methods.base import ParamSpec, TensorInputs, task_vector_stack
from merging.methods.numerics import mean_square
from merging.methods.order_stats import largest_mask

WEIGHT_SUM_EPS = 1e-6  # below this total, every model weighs the same (mergekit's rule)
DIVISOR_MIN = 1e-6

PARAMS = (
    ParamSpec(
        "select_topk",
        "float",
        1.0,
        per_model=False,
        help="fraction of the entries kept: those whose task-vector values vary most across models (1: all)",
    ),
    ParamSpec(
        "int8_mask",
        "bool",
        False,
        per_model=False,
        help="mergekit's memory option for its masks; changes no value (accepted for mergekit configs)",
    ),
)


def variance_mask(tv: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask over one tensor's entries: the int(fraction · #nonzero-variance) entries whose task
    vectors vary most across models. fraction ≤ 0 keeps none, ≥ 1 keeps all."""
    shape = tv.shape[1:]
    if fraction >= 1:
        return torch.ones(shape, dtype=torch.bool, device=tv.device)
    if fraction <= 0:
        return torch.zeros(shape, dtype=torch.bool, device=tv.device)
    var = torch.var(tv, dim=0, unbiased=False).reshape(-1)
    k = int(int(torch.count_nonzero(var)) * fraction)
    if k == 0:
        return torch.zeros(shape, dtype=torch.bool, device=tv.device)
    return largest_mask(var, k).reshape(shape)


def model_weights(tv: torch.Tensor) -> torch.Tensor:
    """(T,) weights: each task vector's mean square over the sum of them; equal when they nearly vanish."""
    n_models = tv.shape[0]
    ms = mean_square(tv.reshape(n_models, -1), dim=1)
    total = float(ms.sum())
    if abs(total) < WEIGHT_SUM_EPS:
        return torch.full_like(ms, 1.0 / n_models)
    return ms / total


def merge(inputs: TensorInputs) -> torch.Tensor:
    """θ0 + Σ_agreeing w_i τ̂_i / Σ_agreeing w_i, with τ̂ the variance-selected task vectors."""
    base = inputs.base
    if base is None:
        raise RecipeError(f"sce needs a base model (tensor {inputs.name})")
    if len(inputs.models) == 0:
        return base.clone()
    tv = task_vector_stack(inputs)  # read-only
    fraction = float(inputs.params["select_topk"])
    if fraction < 1:
        tv = tv * variance_mask(tv, fraction)
    weights = model_weights(tv).tolist()
    # Elected sign s = +1 where Σ τ̂_i ≥ 0, else −1; model i agrees where s·τ̂_i > 0 (zeros never agree).
    sign = torch.where(tv.sum(0) >= 0, 1.0, -1.0)
    num = torch.zeros_like(base)
    den = torch.zeros_like(base)
    scratch = torch.empty_like(base)
    for i, w in enumerate(weights):
        torch.mul(tv[i], sign, out=scratch).clamp_(min=0)  # |τ̂_i| where it agrees, else 0
        num.add_(scratch, alpha=w)
        den.add_(scratch.sign_(), alpha=w)
    del scratch
    return num.mul_(sign).div_(den.clamp_(min=DIVISOR_MIN)).add_(base)
