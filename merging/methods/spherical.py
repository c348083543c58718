"""Spherical interpolation methods with mergekit 0.1.5's per-tensor semantics (methods.md §6):
`slerp`, `nuslerp`, `multislerp` and `karcher`.

All of them treat a tensor (or, for nuslerp's non-flattened modes, each row or column) as one vector,
move along the great circle between the inputs' directions and scale back to an interpolated norm.
Computed in float32 with the angle coefficients in float64, so near-parallel vectors lose nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from merging.errors import RecipeError
from merging.methods.base import ParamSpec, TensorInputs
from merging.methods.blocks import Block, RowwiseMerger, TensorContext, merge_whole
from merging.methods.numerics import norm

# slerp: |cos| above this counts as (anti)parallel and falls back to linear interpolation (mergekit's value).
SLERP_DOT_THRESHOLD = 0.9995
SLERP_NORM_EPS = 1e-8
NUSLERP_EPS = 1e-8
NUSLERP_NORM_EPS = 1e-7
NUSLERP_WEIGHT_EPS = 1e-6


def _need_base(inputs: TensorInputs, method: str) -> torch.Tensor:
    if inputs.base is None:
        raise RecipeError(f"{method} needs a base model (tensor {inputs.name})")
    return inputs.base


def _need_count(inputs: TensorInputs, method: str, expected: int, what: str) -> None:
    if len(inputs.models) != expected:
        raise RecipeError(f"{method} takes {what}; tensor {inputs.name} has {len(inputs.models)}")


# ---- slerp ---------------------------------------------------------------------------------------------

SLERP_PARAMS = (
    ParamSpec(
        "t",
        "float",
        None,
        per_model=False,
        required=True,
        help="position on the arc: 0 gives the base, 1 the other model (usually a per-layer gradient)",
    ),
)


class PairStats:
    """‖a‖², ‖b‖² and a·b of two same-shaped tensors seen row block by row block: float32 dot products per
    row, then a correctly rounded sum over all rows, so the totals do not depend on how the tensor was cut."""

    def __init__(self):
        self._parts: list[torch.Tensor] = []

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        ra, rb = _rows(a), _rows(b)
        vd = torch.linalg.vecdot
        self._parts.append(torch.stack([vd(ra, ra), vd(rb, rb), vd(ra, rb)]).double().cpu())

    def totals(self) -> tuple[float, float, float]:
        parts = torch.cat(self._parts, dim=1) if self._parts else torch.zeros(3, 0, dtype=torch.float64)
        aa, bb, ab = (math.fsum(parts[k].tolist()) for k in range(3))
        return aa, bb, ab


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)


def slerp_coefficients(t: float, aa: float, bb: float, ab: float) -> tuple[float, float]:
    """(s0, s1) of slerp from the squared norms and the dot product; linear past |cos θ| > 0.9995."""
    na, nb = math.sqrt(max(aa, 0.0)), math.sqrt(max(bb, 0.0))
    na = na if na > SLERP_NORM_EPS else 1.0
    nb = nb if nb > SLERP_NORM_EPS else 1.0
    dot = min(1.0, max(-1.0, ab / (na * nb)))
    if abs(dot) > SLERP_DOT_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(dot)
    return math.sin((1.0 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def slerp_vectors(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two same-shaped tensors taken whole, from `a` (t = 0) to `b` (t = 1).

    The norms stay in the result (s0·a + s1·b with s0 = sin((1−t)θ)/sin θ, s1 = sin(tθ)/sin θ); when the
    unit directions are (anti)parallel, |cos θ| > 0.9995, it is the linear (1−t)·a + t·b instead.
    """
    if a.numel() == 0:
        return torch.lerp(a, b, t)
    stats = PairStats()
    stats.add(a, b)
    ca, cb = slerp_coefficients(t, *stats.totals())
    return torch.mul(a, ca).add_(b, alpha=cb)


class SlerpMerger:
    """slerp in row blocks: one pass gathers the norms and the dot product, then each block is s0·a + s1·b."""

    passes = 1

    def __init__(self, ctx: TensorContext):
        self.t = float(ctx.params["t"])
        self.stats = PairStats()
        self._coef: tuple[float, float] | None = None

    def observe(self, pass_no: int, block: Block) -> None:
        base, other = _slerp_pair(block.inputs)
        self.stats.add(base, other)

    def merge(self, block: Block) -> torch.Tensor:
        base, other = _slerp_pair(block.inputs)
        if self._coef is None:
            self._coef = slerp_coefficients(self.t, *self.stats.totals())
        return torch.mul(base, self._coef[0]).add_(other, alpha=self._coef[1])


def _slerp_pair(inputs: TensorInputs) -> tuple[torch.Tensor, torch.Tensor]:
    base = _need_base(inputs, "slerp")
    _need_count(inputs, "slerp", 1, "the base and exactly 1 other model")
    return base, inputs.models[0]


def slerp_block_factory(ctx: TensorContext) -> SlerpMerger:
    """`MethodSpec.block_merger` of slerp."""
    return SlerpMerger(ctx)


# θ = slerp(t, θ0, θ1): from the base (t = 0) to the one other model (t = 1); whole tensors are one block.
merge_slerp = merge_whole(slerp_block_factory)


# ---- nuslerp -------------------------------------------------------------------------------------------

WEIGHT = ParamSpec(
    "weight",
    "float",
    None,
    per_model=True,
    required=True,
    help="this model's share; the arc position is t = w₂ / (w₁ + w₂)",
)

NUSLERP_PARAMS = (
    WEIGHT,
    ParamSpec(
        "nuslerp_flatten",
        "bool",
        True,
        per_model=False,
        help="interpolate each tensor as one flat vector (false: row by row, or column by column)",
    ),
    ParamSpec(
        "nuslerp_row_wise",
        "bool",
        False,
        per_model=False,
        help="without flatten: interpolate the columns (vectors along dim 0) instead of the rows",
    ),
)


def nuslerp_vectors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool
) -> torch.Tensor:
    """mergekit's nuslerp: spherical interpolation along the last dimension (the whole tensor with
    `flatten`, dim 0 with `row_wise`), each vector separately; exactly parallel vectors interpolate linearly.
    """
    shape = v0.shape
    if flatten:  # one vector: scalar coefficients, two passes over memory
        a, b = v0.reshape(-1), v1.reshape(-1)
        na = max(float(norm(a)), NUSLERP_NORM_EPS)
        nb = max(float(norm(b)), NUSLERP_NORM_EPS)
        cos = min(1.0, max(-1.0, float(torch.dot(a, b)) / (na * nb)))
        if 1 - cos * cos <= NUSLERP_EPS**2:
            ca, cb = 1.0 - t, t
        else:
            theta = math.acos(cos)
            ca, cb = math.sin((1.0 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
        return torch.mul(a, ca).add_(b, alpha=cb).reshape(shape)
    if row_wise:
        a, b = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        a, b = v0, v1
    na = norm(a, dim=-1, keepdim=True).clamp_(min=NUSLERP_NORM_EPS)
    nb = norm(b, dim=-1, keepdim=True).clamp_(min=NUSLERP_NORM_EPS)
    cos = torch.linalg.vecdot(a, b, dim=-1).unsqueeze(-1).div_(na * nb).clamp_(-1.0, 1.0)
    colinear = (1 - cos.square()) <= NUSLERP_EPS**2
    theta = torch.acos(torch.where(colinear, 0.0, cos).double())
    sin_theta = torch.sin(theta)
    ca = torch.where(colinear, 1.0 - t, torch.sin((1.0 - t) * theta) / sin_theta).float()
    cb = torch.where(colinear, t, torch.sin(t * theta) / sin_theta).float()
    out = a * ca
    out.addcmul_(b, cb)
    if row_wise:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp_t(weights: Sequence[float]) -> float:
    """Arc position from the two weights: w₂ / (w₁ + w₂), or the midpoint when they cancel."""
    total = weights[0] + weights[1]
    return 0.5 if abs(total) < NUSLERP_WEIGHT_EPS else weights[1] / total


def merge_nuslerp(inputs: TensorInputs) -> torch.Tensor:
    """Two models by weight; with a base, their task vectors are interpolated and added to the base."""
    _need_count(inputs, "nuslerp", 2, "exactly 2 models besides an optional base")
    t = nuslerp_t([float(mp["weight"]) for mp in inputs.model_params])
    row_wise = bool(inputs.params["nuslerp_row_wise"])
    flatten = bool(inputs.params["nuslerp_flatten"])
    if flatten:  # the same code as in row blocks, on one block
        return merge_whole(nuslerp_block_factory)(inputs)
    if inputs.base is None:
        return nuslerp_vectors(t, inputs.models[0], inputs.models[1], row_wise, flatten)
    tv = inputs.task_vectors
    if tv is None:
        tv = torch.stack([inputs.models[0] - inputs.base, inputs.models[1] - inputs.base])
    return nuslerp_vectors(t, tv[0], tv[1], row_wise, flatten).add_(inputs.base)


class NuslerpFlatMerger:
    """nuslerp of whole flattened tensors in row blocks: one pass for the norms and the dot product."""

    passes = 1

    def __init__(self, ctx: TensorContext):
        self.t = nuslerp_t([float(mp["weight"]) for mp in ctx.model_params])
        self.stats = PairStats()
        self._coef: tuple[float, float] | None = None

    def observe(self, pass_no: int, block: Block) -> None:
        self.stats.add(*_nuslerp_pair(block.inputs))

    def merge(self, block: Block) -> torch.Tensor:
        v0, v1 = _nuslerp_pair(block.inputs)
        if self._coef is None:
            aa, bb, ab = self.stats.totals()
            na = max(math.sqrt(max(aa, 0.0)), NUSLERP_NORM_EPS)
            nb = max(math.sqrt(max(bb, 0.0)), NUSLERP_NORM_EPS)
            cos = min(1.0, max(-1.0, ab / (na * nb)))
            if 1 - cos * cos <= NUSLERP_EPS**2:
                self._coef = (1.0 - self.t, self.t)
            else:
                theta = math.acos(cos)
                self._coef = (
                    math.sin((1.0 - self.t) * theta) / math.sin(theta),
                    math.sin(self.t * theta) / math.sin(theta),
                )
        out = torch.mul(v0, self._coef[0]).add_(v1, alpha=self._coef[1])
        return out.add_(block.inputs.base) if block.inputs.base is not None else out


def _nuslerp_pair(inputs: TensorInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The two vectors nuslerp interpolates: task vectors with a base, else the models themselves."""
    _need_count(inputs, "nuslerp", 2, "exactly 2 models besides an optional base")
    if inputs.base is None:
        return inputs.models[0], inputs.models[1]
    tv = inputs.task_vectors
    if tv is None:
        return inputs.models[0] - inputs.base, inputs.models[1] - inputs.base
    return tv[0], tv[1]


def nuslerp_block_factory(ctx: TensorContext):
    """`MethodSpec.block_merger` of nuslerp: flattened tensors need the norm pass, rows are independent,
    columns (row_wise) span every row, so those tensors are merged whole."""
    if ctx.params.get("nuslerp_flatten", True):
        return NuslerpFlatMerger(ctx)
    if not ctx.params.get("nuslerp_row_wise", False) and len(ctx.shape) >= 2:
        return RowwiseMerger(merge_nuslerp)
    return None


def nuslerp_blockwise(params) -> bool:
    """Rows are independent only when each row is its own vector (no flatten, not column-wise)."""
    return not params.get("nuslerp_flatten", True) and not params.get("nuslerp_row_wise", False)


# ---- multislerp ----------------------------------------------------------------------------------------

MULTISLERP_PARAMS = (
    ParamSpec(
        "weight",
        "float",
        None,
        per_model=True,
        required=True,
        help="this model's share of the spherical barycentre",
    ),
    ParamSpec(
        "normalize_weights",
        "bool",
        True,
        per_model=False,
        help="divide the weights by their sum",
    ),
    ParamSpec(
        "eps",
        "float",
        1e-8,
        per_model=False,
        minimum=0.0,
        help="guard added to norms; a weighted mean direction shorter than this is degenerate",
    ),
)


def _multislerp_vectors(inputs: TensorInputs) -> torch.Tensor:
    """(n, *shape): task vectors with a base, else the models themselves."""
    if inputs.base is None:
        return torch.stack(list(inputs.models))
    if inputs.task_vectors is not None:
        return inputs.task_vectors
    return torch.stack(list(inputs.models)) - inputs.base


class MultislerpMerger:
    """Weighted barycentre on the unit sphere, scaled to the weighted mean norm (task vectors with a base).

    mergekit projects the unit vectors onto the tangent space at their normalised weighted mean, averages
    there and maps back; the weighted tangent sum at that point is zero in exact arithmetic, so the result
    is that mean direction times Σ w_i‖x_i‖, which is what is computed here (without the rounding noise).
    One pass gathers the Gram matrix of the inputs per row, summed exactly (so any cut gives the same
    bytes); its diagonal gives the norms and |Σ c_i x_i|² = Σ c_i c_j G_ij the mean direction's length.
    """

    passes = 1

    def __init__(self, ctx: TensorContext):
        self.n = ctx.n_models
        self.name = ctx.name
        self.eps = float(ctx.params["eps"])
        w = [float(mp["weight"]) for mp in ctx.model_params]
        total = sum(w)
        self.w = [x / total for x in w] if ctx.params["normalize_weights"] else w
        self._parts: list[torch.Tensor] = []
        self._coefs: tuple[list[float], float] | None = None

    def observe(self, pass_no: int, block: Block) -> None:
        x = _multislerp_vectors(block.inputs)
        rows = x.reshape(self.n, x.shape[1], -1) if x.dim() >= 3 else x.reshape(self.n, 1, -1)
        gram = torch.einsum("trd,srd->rts", rows, rows)  # (R, n, n)
        self._parts.append(gram.reshape(gram.shape[0], -1).double().cpu())

    def _coefficients(self) -> tuple[list[float], float]:
        """Per-input coefficients c_i and the output scale, or ([], 0) for the antipodal-pair fallback."""
        parts = (
            torch.cat(self._parts) if self._parts else torch.zeros(0, self.n * self.n, dtype=torch.float64)
        )
        gram = [[math.fsum(parts[:, i * self.n + j].tolist()) for j in range(self.n)] for i in range(self.n)]
        self._parts = []
        norms = [math.sqrt(max(gram[i][i], 0.0)) for i in range(self.n)]
        c = [self.w[i] / (norms[i] + self.eps) for i in range(self.n)]
        mean_sq = sum(c[i] * c[j] * gram[i][j] for i in range(self.n) for j in range(self.n))
        mean_norm = math.sqrt(max(mean_sq, 0.0))
        if mean_norm < self.eps:
            if self.n == 2:  # antipodal pair: mergekit falls back to the weighted sum
                return list(self.w), 1.0
            raise RecipeError(
                f"multislerp: the weighted directions of tensor {self.name} cancel out (antipodal models "
                "with balancing weights); change the weights"
            )
        return c, sum(n * w for n, w in zip(norms, self.w, strict=True)) / mean_norm

    def merge(self, block: Block) -> torch.Tensor:
        if self._coefs is None:
            self._coefs = self._coefficients()
        c, scale = self._coefs
        x = _multislerp_vectors(block.inputs)
        coef = torch.tensor([ci * scale for ci in c], dtype=x.dtype, device=x.device)
        out = torch.mv(x.reshape(self.n, -1).T, coef).reshape(x.shape[1:])
        return out.add_(block.inputs.base) if block.inputs.base is not None else out


def multislerp_block_factory(ctx: TensorContext) -> MultislerpMerger:
    """`MethodSpec.block_merger` of multislerp."""
    return MultislerpMerger(ctx)


def merge_multislerp(inputs: TensorInputs) -> torch.Tensor:
    """multislerp of one tensor: a single model is returned as is, more go through MultislerpMerger."""
    n = len(inputs.models)
    if n == 0:
        raise RecipeError(f"multislerp takes at least 1 model besides an optional base; tensor {inputs.name}")
    if n == 1:
        return inputs.models[0].clone()
    return merge_whole(multislerp_block_factory)(inputs)


# ---- karcher -------------------------------------------------------------------------------------------

KARCHER_PARAMS = (
    ParamSpec(
        "max_iter",
        "int",
        10,
        per_model=False,
        minimum=0,
        help="most fixed-point iterations of the Riemannian mean",
    ),
    ParamSpec(
        "tol",
        "float",
        1e-5,
        per_model=False,
        minimum=0.0,
        help="stop when the tangent step is shorter than this (also: norms below it count as zero)",
    ),
)


def karcher_mean(vectors: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    """Equal-weight Karcher (Fréchet) mean on the unit sphere of the rows of `vectors` (N, n), scaled by
    their mean norm. Rows with norm ≤ tol take no part in the direction but do count in the mean norm."""
    n_vec = vectors.shape[0]
    norms = norm(vectors, dim=1)
    valid = [i for i in range(n_vec) if float(norms[i]) > tol]
    scale = float(norms.sum()) / n_vec
    if not valid:
        return torch.zeros_like(vectors[0])
    units = vectors[valid] / norms[valid].unsqueeze(1)
    alpha = 1.0 / len(valid)
    mean = units.sum(0).mul_(alpha)
    mean_norm = float(norm(mean))
    mean = units[0].clone() if mean_norm < tol else mean.div_(mean_norm)
    for _ in range(max_iter):
        dots = torch.mv(units, mean).clamp_(-1.0, 1.0)
        theta = torch.arccos(dots)
        # tangent = Σ α θ_i/sin θ_i (u_i − dot_i·mean) over the inputs not already at the mean
        coef = torch.where(theta < tol, 0.0, alpha * theta / torch.sin(theta).clamp_min(1e-30))
        tangent = torch.mv(units.T, coef).sub_(mean, alpha=float((coef * dots).sum()))
        step = float(norm(tangent))
        if step < tol:
            break
        mean = mean.mul_(math.cos(step)).add_(tangent, alpha=math.sin(step) / step)
        unit_norm = float(norm(mean))
        if unit_norm > tol:
            mean.div_(unit_norm)
    return mean.mul_(scale)


def merge_karcher(inputs: TensorInputs) -> torch.Tensor:
    """Karcher mean of every input tensor with equal weights; as in mergekit, a base is one more input."""
    models = list(inputs.models)
    vectors = models if inputs.base is None else [*models, inputs.base]
    if len(vectors) == 1:
        return vectors[0].clone()
    stacked = torch.stack([v.reshape(-1) for v in vectors])
    out = karcher_mean(stacked, int(inputs.params["max_iter"]), float(inputs.params["tol"]))
    return out.reshape(vectors[0].shape)
