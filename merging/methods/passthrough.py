"""`passthrough` (mergekit 0.1.5): each output tensor is one source's tensor, optionally scaled. Used with
`slices` to stack layers of different models (frankenmerges); the recipe layer picks the source."""

from __future__ import annotations

import torch

from merging.errors import RecipeError
from merging.methods.base import ParamSpec, TensorInputs

PARAMS = (
    ParamSpec(
        "scale",
        "float",
        None,
        per_model=True,
        help="multiply the copied tensor by this (empty: copy unchanged)",
    ),
)


def merge(inputs: TensorInputs) -> torch.Tensor:
    """The single input (one model and no base, or the base alone), times its `scale` when set."""
    if inputs.base is not None and len(inputs.models) == 0:
        return inputs.base
    if inputs.base is not None or len(inputs.models) != 1:
        n = len(inputs.models) + (inputs.base is not None)
        raise RecipeError(
            "passthrough takes exactly 1 input per tensor (a base model counts as one); "
            f"tensor {inputs.name} has {n}"
        )
    scale = inputs.model_params[0].get("scale")
    model = inputs.models[0]
    return model if scale is None else model * float(scale)
