"""Subspace Boosting (Skorobogat et al. 2025): a post-step on another method's merged update Δ.

Merged updates of many checkpoints collapse onto a few dominant directions; boosting raises every
singular value below a cutoff to the cutoff's value, so the weak directions are not lost.
"""

from __future__ import annotations

import re

import torch

from merging.methods.base import ParamSpec
from merging.methods.blocks import TensorContext, merge_whole
from merging.methods.gathered import BoostedMerger
from merging.methods.subspace import GramEigh, single_threaded, svd
from merging.methods.task_vectors import Preset, TaskVectorMerger

BOOSTED = re.compile(r"self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj")

PARAMS = (
    ParamSpec(
        "svd_thresh",
        "float",
        0.2,
        per_model=False,
        minimum=0.0,
        maximum=1.0,
        paper_value=0.2,
        help="β: cutoff as a share of the spectrum's cumulative mass (cumsum) or of the rank",
    ),
    ParamSpec(
        "cumsum",
        "bool",
        True,
        per_model=False,
        help="place the cutoff where the cumulative singular-value mass reaches β (false: at index int(β·r))",
    ),
)


def is_boosted(name: str, t: torch.Tensor) -> bool:
    """Attention q/k/v/o and MLP gate/up/down projection matrices only."""
    return t.dim() == 2 and BOOSTED.search(name) is not None


def cutoff_index(s: torch.Tensor, beta: float, cumsum: bool) -> int:
    """j*: first j with Σ_{l≤j} σ_l / Σ σ ≥ β (last index if none), or int(β·r) without cumsum."""
    r = s.numel()
    if not cumsum:
        return min(int(beta * r), r - 1)
    energy = torch.cumsum(s, 0) / s.sum()
    hits = torch.nonzero(energy >= beta)
    return int(hits[0]) if hits.numel() else r - 1


@single_threaded
def boost(delta: torch.Tensor, beta: float, cumsum: bool) -> torch.Tensor:
    """Δ' = U diag(max(σ, σ_{j*})) Vᵀ; an all-zero Δ is returned unchanged.

    Through the Gram matrix Δ' = Δ V diag(max(σ, σ_{j*})/σ) Vᵀ, unless Δ is (close to) rank-deficient:
    the directions it lifts from zero are then LAPACK's choice, so the SVD's are taken."""
    g = GramEigh.of(delta)
    if g is not None:
        s = g.lam.sqrt()
        floor = s[cutoff_index(s, beta, cumsum)]
        return g.apply(torch.clamp_min(s, floor) / s)
    u, s, vh = svd(delta)
    if not bool(s.sum() > 0):
        return delta
    floor = s[cutoff_index(s, beta, cumsum)]
    return (u * torch.clamp_min(s, floor)) @ vh


def _boost_params(delta: torch.Tensor, params) -> torch.Tensor:
    return boost(delta, float(params["svd_thresh"]), bool(params["cumsum"]))


def boosted_block_factory(preset: Preset):
    """`MethodSpec.block_merger`: a boosted matrix's Δ is gathered from row blocks of the base method, then
    boosted whole (gathered.py); every other tensor is the base method's, block by block."""

    def factory(ctx: TensorContext):
        inner = TaskVectorMerger(preset, ctx)
        if len(ctx.shape) == 2 and BOOSTED.search(ctx.name) is not None:
            return BoostedMerger(inner, ctx, _boost_params)
        return inner

    return factory


def boosted_merge(preset: Preset):
    """Per-tensor merge of a task-vector preset followed by Subspace Boosting of its Δ (after λ): one block
    of the same merger as the blocked path."""
    return merge_whole(boosted_block_factory(preset))
