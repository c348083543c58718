"""The task-vector pipeline of methods.md §1, shared by eight presets (task_arithmetic, ties, dare_*, ...).

One implementation: sparsify → weight → (sign consensus) → normalize → λ. Presets only choose the
sparsifier, whether signs are elected, and defaults. Without consensus the task vectors are streamed
one at a time through a scratch buffer (memory: 3 tensors, whatever T is); with consensus they are
stacked once, because the election needs all of them at the same time. The same code merges a whole tensor
or one row block of it (`TaskVectorMerger`, issue 10).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from merging.errors import RecipeError
from merging.methods import sparsify
from merging.methods.base import ParamSpec, TensorInputs, task_vector_stack
from merging.methods.blocks import (
    Block,
    RankCut,
    TensorContext,
    context_of,
    drop_ranked_,
    exact_sum,
    magnitude_bits,
    row_sums_abs,
    stream_key,
    uniform_at,
)
from merging.native.weighted_sum import weighted_sum as native_weighted_sum

Sparsifier = Literal["none", "magnitude", "random", "magnitude_outliers", "della_magprune"]

DIVISOR_EPS = 1e-8


@dataclass(frozen=True)
class Preset:
    """What distinguishes one task-vector method from another."""

    sparsifier: Sparsifier
    consensus: bool
    normalize: bool
    rescale: bool


class TaskVectorMerger:
    """The pipeline on one tensor, block by block (methods.md §1; blocks.py for the protocol).

    Whole-tensor statistics come from exact passes over the blocks before the merge: the magnitude ranks
    of TIES and Breadcrumbs (`RankCut`, two counting passes) and the L1 norms `rescale` needs (one pass,
    summed per row, then exactly). DARE's and DELLA's random keeps are a hash of the seed, the checkpoint and
    the entry's position, so the result does not depend on the cut. A whole tensor is one block.
    """

    def __init__(self, preset: Preset, ctx: TensorContext):
        self.preset, self.ctx = preset, ctx
        params = ctx.params
        self.normalize = bool(params["normalize"])
        self.rescale = bool(params["rescale"])
        self.lam = float(params["lambda"])
        self.weights = [float(mp["weight"]) for mp in ctx.model_params]
        n = math.prod(ctx.shape)
        self.cuts: list[list[RankCut]] = [self._cuts(mp, n) for mp in ctx.model_params]
        self.sparsifying = [self._sparsifies(mp) for mp in ctx.model_params]
        ranked = any(self.cuts)
        self._rescale_pass = 2 if ranked else 0
        self.passes = self._rescale_pass + (1 if self.rescale and any(self.sparsifying) else 0)
        self.keys = [stream_key(ctx.seed, i) for i in range(ctx.n_models)]
        self._before: list[list[torch.Tensor]] = [[] for _ in range(ctx.n_models)]
        self._after: list[list[torch.Tensor]] = [[] for _ in range(ctx.n_models)]
        self._factors: list[float] | None = None

    def _sparsifies(self, mp: Mapping[str, Any]) -> bool:
        return self.preset.sparsifier != "none" and float(mp["density"]) < 1

    def _cuts(self, mp: Mapping[str, Any], n: int) -> list[RankCut]:
        kind = self.preset.sparsifier
        density = float(mp.get("density", 1.0))
        if kind == "magnitude" and 0 < density < 1:
            return [RankCut(n - max(1, int(density * n)), n)]  # the dropped: the n − k smallest
        if kind == "magnitude_outliers" and density < 1:
            target, n_top = int(density * n), int(float(mp["gamma"]) * n)
            n_bot = max(0, n - target - n_top)
            return [RankCut(n_bot, n), RankCut(n_bot + target, n)]  # kept: ranks in [n_bot, n_bot+target)
        return []

    # --- passes -----------------------------------------------------------------------------------
    def orderless(self, pass_no: int) -> bool:
        """Whether a pass may see the blocks in any order (the engine then may read them backwards): the
        rank counts are; the L1 pass is (exactly summed) unless a rank mask assigns ties in order."""
        return pass_no < self._rescale_pass or not any(self.cuts)

    def observe(self, pass_no: int, block: Block) -> None:
        tv = task_vector_stack(block.inputs)
        if pass_no < self._rescale_pass:
            for i, cuts in enumerate(self.cuts):
                if cuts:
                    bits = tv[i].reshape(-1).view(torch.int32)  # raw bits: RankCut drops the sign itself
                    for cut in cuts:
                        cut.observe(pass_no, bits)
            return
        if block.start == 0:
            self._restart()
        for i in range(len(self.weights)):
            if self.sparsifying[i]:
                scratch = tv[i].clone()
                self._before[i].append(row_sums_abs(scratch))
                self._keep_(i, scratch, block)
                self._after[i].append(row_sums_abs(scratch))

    def _restart(self) -> None:
        for cuts in self.cuts:
            for cut in cuts:
                cut.restart()

    def _factors_of(self) -> list[float]:
        """L1 rescale factor of each sparsified task vector (1 where a norm is below RESCALE_EPS)."""
        if self._factors is None:
            self._factors = []
            for i in range(len(self.weights)):
                f = 1.0
                if self.rescale and self.sparsifying[i]:
                    before, after = exact_sum(self._before[i]), exact_sum(self._after[i])
                    if before >= sparsify.RESCALE_EPS and after >= sparsify.RESCALE_EPS:
                        f = before / after
                self._factors.append(f)
        return self._factors

    def _keep_(self, i: int, t: torch.Tensor, block: Block) -> torch.Tensor:
        """Zero the entries checkpoint i's sparsifier drops in this block (in place, no rescale)."""
        if not self.sparsifying[i]:
            return t
        mp = self.ctx.model_params[i]
        density = float(mp["density"])
        kind = self.preset.sparsifier
        flat = t.view(-1)
        if kind == "magnitude":
            if density <= 0:
                return t.zero_()
            if drop_ranked_(t, self.cuts[i]):
                return t
            return flat.masked_fill_(self.cuts[i][0].mask(magnitude_bits(t)), 0).view(t.shape)
        if kind == "magnitude_outliers":
            if drop_ranked_(t, self.cuts[i]):
                return t
            bits = magnitude_bits(t)
            low, high = self.cuts[i]
            keep = high.mask(bits)
            keep &= ~low.mask(bits)
            return flat.masked_fill_(~keep, 0).view(t.shape)
        if kind == "random":
            u = uniform_at(self.keys[i], block.offset, t.shape, t.device)
            return t.masked_fill_(u >= density, 0)
        if density <= 0:  # della_magprune
            return t.zero_()
        rows = t.view(1, -1) if t.dim() < 2 or len(self.ctx.shape) < 2 else t.view(-1, t.shape[-1])
        probs = sparsify.della_keep_probabilities(rows, density, float(mp["epsilon"]))
        u = uniform_at(self.keys[i], block.offset, rows.shape, t.device)
        rows.masked_fill_(u >= probs, 0)
        return t

    # --- merge ------------------------------------------------------------------------------------
    def weighted_sum_terms(self) -> tuple[list[float], float | None, float] | None:
        """(weights, divisor or None, λ) when this tensor's merge is θ0 + λ·(Σ w_i τ_i)/divisor, in `delta`'s
        order of float32 operations, with nothing dropped, elected or rescaled (task arithmetic): the engine
        may then merge it from the stored rows in one native pass (merging/stored.py). Else None."""
        preset = self.preset
        if preset.consensus or preset.sparsifier != "none" or self.passes:
            return None
        divisor = None
        if self.normalize:
            total = sum(self.weights)
            divisor = total if abs(total) >= DIVISOR_EPS else 1.0
        return list(self.weights), divisor, self.lam

    def delta(self, block: Block, plus_base: bool = False) -> torch.Tensor:
        """Merged update Δ of the block's rows, or with `plus_base` the merged rows θ0 + Δ (a fresh tensor;
        the block's inputs are untouched)."""
        inputs = block.inputs
        base = inputs.base
        if base is None:
            raise RecipeError(f"tensor {inputs.name}: this method needs a base model")
        if block.start == 0:
            self._restart()
        weights = self.weights
        factors = self._factors_of()
        tv = inputs.task_vectors
        preset = self.preset
        added = False  # the base, already in `mixed`
        if not preset.consensus and preset.sparsifier == "none" and tv is not None:
            # Σ w_i τ_i (+ θ0 when nothing scales the sum) over the engine's stack: one native pass on a CPU
            added = plus_base and not self.normalize and self.lam == 1.0
            plus = base.reshape(-1) if added else None
            mixed = weighted_sum(tv.reshape(len(weights), -1), weights, plus).view(base.shape)
            divisor = sum(weights)
            if self.normalize:
                mixed.div_(divisor if abs(divisor) >= DIVISOR_EPS else 1.0)
        elif not preset.consensus:
            mixed = torch.zeros_like(base)
            scratch = torch.empty_like(base)
            for i, w in enumerate(weights):
                if tv is not None:
                    scratch.copy_(tv[i])
                else:
                    torch.sub(inputs.models[i], base, out=scratch)
                self._keep_(i, scratch, block)
                mixed.add_(scratch, alpha=w * factors[i])
            del scratch
            divisor = sum(weights)
            if self.normalize:
                mixed.div_(divisor if abs(divisor) >= DIVISOR_EPS else 1.0)
        else:
            stacked = tv.clone() if tv is not None else torch.stack(list(inputs.models)).sub_(base)
            for i in range(len(weights)):
                self._keep_(i, stacked[i], block)
            scale = [w * f for w, f in zip(weights, factors, strict=True)]
            if any(x != 1.0 for x in scale):
                sw = torch.tensor(scale, dtype=stacked.dtype, device=stacked.device)
                stacked.mul_(sw.view(-1, *([1] * base.dim())))
            # Sign election without a (T, n) mask: with s = ±1 the elected sign (0 counts as +), the agreeing
            # entries are those where s·x_i > 0, so Σ_agreeing x_i = s·Σ relu(s·x_i) and the divisor is
            # Σ w_i·sign(relu(s·x_i)): a handful of passes over the stack instead of several boolean ones.
            sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).to(stacked.dtype)
            stacked.mul_(sign).clamp_(min=0)
            mixed = stacked.sum(0).mul_(sign)
            if self.normalize:
                w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
                agree = stacked.sign_().view(len(weights), -1)
                divisor = torch.mv(agree.T, w).view(mixed.shape)
                divisor[divisor == 0] = 1
                mixed.div_(divisor)
            del stacked
        if self.lam != 1.0:
            mixed.mul_(self.lam)
        if plus_base and not added:
            mixed.add_(base)
        return mixed

    def merge(self, block: Block) -> torch.Tensor:
        return self.delta(block, plus_base=True)


def weighted_sum(
    rows: torch.Tensor, weights: Sequence[float], plus: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_i weights[i]·rows[i] (+ plus) over a (T, n) stack, in checkpoint order with every product and every
    sum rounded to float32 on its own: one native pass on a CPU (merging/native/weighted_sum.c), the same
    bytes from torch's ops elsewhere (a GPU, native code off)."""
    fused = native_weighted_sum(rows, weights, plus)
    if fused is not None:
        return fused
    out = torch.mul(rows[0], weights[0])
    for i in range(1, len(weights)):
        out.add_(torch.mul(rows[i], weights[i]))
    if plus is not None:
        out.add_(plus)
    return out


def block_factory(preset: Preset):
    """`MethodSpec.block_merger` of a preset: every tensor can be cut into row blocks."""

    def factory(ctx: TensorContext) -> TaskVectorMerger:
        return TaskVectorMerger(preset, ctx)

    return factory


def task_vector_delta(preset: Preset, inputs: TensorInputs, plus_base: bool = False) -> torch.Tensor:
    """Merged update Δ (with `plus_base`: the merged θ0 + Δ) for one whole tensor; a fresh tensor, inputs
    untouched."""
    if inputs.base is None:
        raise RecipeError(f"tensor {inputs.name}: this method needs a base model")
    ctx = context_of(inputs)
    merger = TaskVectorMerger(preset, ctx)
    block = Block(0, ctx.rows, inputs, ctx.row_numel)
    for p in range(merger.passes):
        merger.observe(p, block)
    return merger.delta(block, plus_base)


def merge_with(preset: Preset):
    """Per-tensor merge function of a preset: θ0 + Δ."""

    def merge(inputs: TensorInputs) -> torch.Tensor:
        return task_vector_delta(preset, inputs, plus_base=True)

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
