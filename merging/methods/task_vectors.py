"""The task-vector pipeline of methods.md §1, shared by eight presets (task_arithmetic, ties, dare_*, ...).

One implementation: sparsify → weight → (sign consensus) → normalize → λ. Presets only choose the
sparsifier, whether signs are elected, and defaults. Without consensus the task vectors are streamed
one at a time through a scratch buffer (memory: 3 tensors, whatever T is); with consensus they are
stacked once, because the election needs all of them at the same time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from merging.errors import RecipeError
from merging.methods import sparsify
from merging.methods.base import ParamSpec, TensorInputs

Sparsifier = Literal["none", "magnitude", "random", "magnitude_outliers", "della_magprune"]

DIVISOR_EPS = 1e-8


@dataclass(frozen=True)
class Preset:
    """What distinguishes one task-vector method from another."""

    sparsifier: Sparsifier
    consensus: bool
    normalize: bool
    rescale: bool


def _sparsify_(t: torch.Tensor, preset: Preset, mp: Mapping[str, Any], rescale: bool, g) -> torch.Tensor:
    kind = preset.sparsifier
    if kind == "none":
        return t
    density = mp["density"]
    if kind == "magnitude":
        return sparsify.magnitude_(t, density, rescale)
    if kind == "random":
        return sparsify.random_(t, density, g, rescale)
    if kind == "magnitude_outliers":
        return sparsify.magnitude_outliers_(t, density, mp["gamma"], rescale)
    return sparsify.della_magprune_(t, density, mp["epsilon"], g, rescale)


def task_vector_delta(preset: Preset, inputs: TensorInputs) -> torch.Tensor:
    """Merged update Δ (not θ) for one tensor; a fresh tensor, inputs untouched."""
    base = inputs.base
    if base is None:
        raise RecipeError(f"tensor {inputs.name}: this method needs a base model")
    params = inputs.params
    normalize = bool(params["normalize"])
    rescale = bool(params["rescale"])
    lam = float(params["lambda"])
    weights = [float(mp["weight"]) for mp in inputs.model_params]
    g = inputs.generator

    tv = inputs.task_vectors
    if not preset.consensus and preset.sparsifier == "none" and tv is not None:
        # Σ w_i τ_i as one matrix-vector product over the engine's stack: a single pass over memory.
        w = torch.tensor(weights, dtype=tv.dtype, device=tv.device)
        mixed = torch.mv(tv.reshape(len(weights), -1).T, w).reshape(base.shape)
        divisor = sum(weights)
        if normalize:
            mixed.div_(divisor if abs(divisor) >= DIVISOR_EPS else 1.0)
    elif not preset.consensus:
        mixed = torch.zeros_like(base)
        scratch = torch.empty_like(base)
        for i, (mp, w) in enumerate(zip(inputs.model_params, weights, strict=True)):
            if tv is not None:
                scratch.copy_(tv[i])
            else:
                torch.sub(inputs.models[i], base, out=scratch)
            _sparsify_(scratch, preset, mp, rescale, g)
            mixed.add_(scratch, alpha=w)
        del scratch
        divisor = sum(weights)
        if normalize:
            mixed.div_(divisor if abs(divisor) >= DIVISOR_EPS else 1.0)
    else:
        stacked = tv.clone() if tv is not None else torch.stack(list(inputs.models)).sub_(base)
        for i, mp in enumerate(inputs.model_params):
            _sparsify_(stacked[i], preset, mp, rescale, g)
        w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
        if any(wi != 1.0 for wi in weights):
            stacked.mul_(w.view(-1, *([1] * base.dim())))
        # Sign election without a (T, n) mask: with s = ±1 the elected sign (0 counts as +), the agreeing
        # entries are those where s·x_i > 0, so Σ_agreeing x_i = s·Σ relu(s·x_i) and the divisor is
        # Σ w_i·sign(relu(s·x_i)): a handful of passes over the stack instead of several boolean ones.
        sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).to(stacked.dtype)
        stacked.mul_(sign).clamp_(min=0)
        mixed = stacked.sum(0).mul_(sign)
        if normalize:
            agree = stacked.sign_().view(len(weights), -1)
            divisor = torch.mv(agree.T, w).view(mixed.shape)
            divisor[divisor == 0] = 1
            mixed.div_(divisor)
        del stacked
    if lam != 1.0:
        mixed.mul_(lam)
    return mixed


def merge_with(preset: Preset):
    """Per-tensor merge function of a preset: θ0 + Δ."""

    def merge(inputs: TensorInputs) -> torch.Tensor:
        return task_vector_delta(preset, inputs).add_(inputs.base)

    return merge


# ---- parameter specs -------------------------------------------------------------------------------

WEIGHT = ParamSpec(
    "weight",
    "float",
    None,
    per_model=True,
    required=True,
    help="scale of this checkpoint's task vector (its share of the sum)",
)


def weight(paper_value: float | None = None) -> ParamSpec:
    return replace(WEIGHT, paper_value=paper_value)


def density(paper_value: float | None = None) -> ParamSpec:
    return ParamSpec(
        "density",
        "float",
        1.0,
        per_model=True,
        minimum=0.0,
        maximum=1.0,
        paper_value=paper_value,
        help="fraction of the task vector's entries kept (1 keeps all)",
    )


GAMMA = ParamSpec(
    "gamma",
    "float",
    0.01,
    per_model=True,
    minimum=0.0,
    maximum=1.0,
    help="fraction of the largest-magnitude entries dropped as outliers",
)
EPSILON = ParamSpec(
    "epsilon",
    "float",
    0.15,
    per_model=True,
    minimum=0.0,
    maximum=1.0,
    help="spread of keep probabilities around density: small entries density−ε, large density+ε",
)


def lambda_(paper_value: float | None = None) -> ParamSpec:
    return ParamSpec(
        "lambda",
        "float",
        1.0,
        per_model=False,
        paper_value=paper_value,
        help="scale of the merged update: θ = θ0 + λ·Δ",
    )


def normalize(default: bool) -> ParamSpec:
    return ParamSpec(
        "normalize",
        "bool",
        default,
        per_model=False,
        help="divide the mixed update by the sum of the weights (of the agreeing models under TIES)",
    )


def rescale(default: bool) -> ParamSpec:
    return ParamSpec(
        "rescale",
        "bool",
        default,
        per_model=False,
        help="scale the kept entries so each sparsified task vector keeps its L1 norm",
    )


def preset_params(
    preset: Preset,
    *,
    weight_paper: float | None = None,
    density_paper: float | None = None,
    lambda_paper: float | None = None,
) -> tuple[ParamSpec, ...]:
    """Parameter specs of a preset, in form order: per-model first, then global."""
    per: list[ParamSpec] = [weight(weight_paper)]
    if preset.sparsifier != "none":
        per.append(density(density_paper))
    if preset.sparsifier == "magnitude_outliers":
        per.append(GAMMA)
    if preset.sparsifier == "della_magprune":
        per.append(EPSILON)
    return (*per, lambda_(lambda_paper), normalize(preset.normalize), rescale(preset.rescale))


def della_check(method: str):
    """DELLA's keep probabilities must lie in (0, 1): 0 < density ± epsilon < 1 (when 0 < density < 1;
    density ≥ 1 keeps everything and ≤ 0 nothing, as in mergekit, so no probability is drawn)."""

    def check(
        params: Mapping[str, Any], model_params: Sequence[Mapping[str, Any]], labels: Sequence[str]
    ) -> None:
        for label, mp in zip(labels, model_params, strict=True):
            d, e = mp["density"], mp["epsilon"]
            if 0 < d < 1 and not (d - e > 0 and d + e < 1):
                raise RecipeError(
                    f"{method}: {label} has density={d:g} and epsilon={e:g}, but density ± epsilon must lie "
                    f"strictly between 0 and 1; lower epsilon below {min(d, 1 - d):g} or move density"
                )

    return check
