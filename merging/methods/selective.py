"""Methods that take each entry from the base or the other model by a per-entry rule, with mergekit
0.1.5's semantics: `nearswap` (take the other model's value where the two are close) and `arcee_fusion`
(take it where the change is important by a KL-weighted score above a quantile threshold)."""

from __future__ import annotations

import torch

from merging.errors import RecipeError
from merging.methods.base import ParamSpec, TensorInputs, task_vector_stack
from merging.methods.order_stats import sorted_at

NEARSWAP_DIFF_MIN = 1e-6
KL_EPS = 1e-8
QUANTILES = (0.25, 0.5, 0.75)


def _pair(inputs: TensorInputs, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, task vector of the one other model); clear errors for anything else."""
    if inputs.base is None:
        raise RecipeError(f"{method} needs a base model (tensor {inputs.name})")
    if len(inputs.models) != 1:
        raise RecipeError(
            f"{method} takes the base and exactly 1 other model; "
            f"tensor {inputs.name} has {len(inputs.models)}"
        )
    return inputs.base, task_vector_stack(inputs)[0]


# ---- nearswap ------------------------------------------------------------------------------------------

NEARSWAP_PARAMS = (
    ParamSpec(
        "t",
        "float",
        None,
        per_model=False,
        required=True,
        help="closeness scale: an entry moves to the other model by min(1, t / |difference|)",
    ),
)


def merge_nearswap(inputs: TensorInputs) -> torch.Tensor:
    """θ = θ0 + w·(θ1 − θ0), w = clamp(t / max(|θ1 − θ0|, 1e-6), 0, 1): near entries swap, far ones stay."""
    base, tv = _pair(inputs, "nearswap")
    t = float(inputs.params["t"])
    w = tv.abs().clamp_(min=NEARSWAP_DIFF_MIN).reciprocal_().mul_(t).clamp_(0.0, 1.0)
    return w.mul_(tv).add_(base)


# ---- arcee_fusion --------------------------------------------------------------------------------------


def row_kl(model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """KL(softmax(model) ‖ softmax(base)) along the last dimension (keepdim), each softmax + 1e-8."""
    p = torch.softmax(model, dim=-1).add_(KL_EPS)
    q = torch.softmax(base, dim=-1).add_(KL_EPS)
    return (p * torch.log(p / q)).sum(dim=-1, keepdim=True)


def fusion_threshold(importance: torch.Tensor) -> torch.Tensor:
    """median + 1.5·IQR of the importance scores, quantiles taken at sorted position floor(q·(n−1)).

    mergekit estimates these from a random sample of 1M entries on larger tensors (a different threshold
    each run); here they are always exact, so results are deterministic.
    """
    flat = importance.reshape(-1)
    q = torch.tensor(QUANTILES, dtype=torch.float32) * (flat.numel() - 1)  # float32, as mergekit indexes
    q1, median, q3 = sorted_at(flat, q.long().tolist())
    return median + 1.5 * (q3 - q1)


def merge_arcee_fusion(inputs: TensorInputs) -> torch.Tensor:
    """θ0 + (θ1 − θ0)·[importance ≥ threshold], importance = |θ1 − θ0| · row KL of the softmaxes."""
    base, tv = _pair(inputs, "arcee_fusion")
    if tv.numel() == 0:
        return base.clone()
    model = inputs.models[0]
    importance = tv.abs().mul_(row_kl(model, base))
    keep = importance >= fusion_threshold(importance)
    del importance
    return torch.where(keep, tv, 0.0).add_(base)
