"""Plain weighted average of the checkpoints' weights (`linear`, model soups). The base is not averaged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from merging.errors import RecipeError
from merging.methods.base import ParamSpec, TensorInputs

PARAMS = (
    ParamSpec(
        "weight",
        "float",
        None,
        per_model=True,
        required=True,
        help="this checkpoint's share of the average",
    ),
    ParamSpec(
        "normalize",
        "bool",
        True,
        per_model=False,
        help="divide by the sum of the weights (false: plain weighted sum)",
    ),
)


def merge(inputs: TensorInputs) -> torch.Tensor:
    """θ = Σ w_i θ_i / Σ w_i (or the weighted sum without normalize); accumulates, never stacks."""
    weights = [float(mp["weight"]) for mp in inputs.model_params]
    out = torch.zeros_like(inputs.models[0])
    for model, w in zip(inputs.models, weights, strict=True):
        out.add_(model, alpha=w)
    if inputs.params["normalize"]:
        out.div_(sum(weights))
    return out


def check(
    params: Mapping[str, Any], model_params: Sequence[Mapping[str, Any]], labels: Sequence[str]
) -> None:
    """An average over weights summing to zero is undefined; refuse it instead of writing Inf/NaN."""
    if params["normalize"] and model_params and abs(sum(mp["weight"] for mp in model_params)) < 1e-8:
        raise RecipeError(
            "linear: the model weights sum to 0, so the weighted average is undefined; "
            "change a weight or set normalize: false"
        )
