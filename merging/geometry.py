"""Geometry of the task vectors, recorded in the merge pass itself (methods.md §5): no second read of weights.

Per tensor: ‖τ_i‖₂, ‖Δ‖₂ (Δ = θ_merged − θ0), pairwise cos(τ_i, τ_j), the sign-conflict rate and, for chosen
matrices, singular spectra of each τ_i and of Δ. What the method did with the task vectors: ⟨Δ, τ_i⟩ (how much
of each τ_i's direction the update kept), the share of the task vectors' L1 mass at entries the merge left at
the base's value (dropped), and at conflicting entries whether Δ dropped them or took the side of Σ τ_i.
Whole model: the same norms and cosines over all tensors together (accumulated Gram matrix),
‖θ_merged − θ0‖₂ being the paper's Figure 4 quantity. Per-tensor dot products are float32 BLAS dots (no
temporaries); sums across tensors are float64; every number handed out is a plain Python float.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from merging.errors import NonFiniteError


@dataclass(frozen=True)
class TensorStats:
    """Geometry of one tensor.

    sign_conflict: over ALL entries of the tensor, the fraction of entries at which the non-zero τ_i take
    both signs (at least one τ_i > 0 and at least one τ_j < 0). Entries where every τ_i is zero, or where
    only one checkpoint moved, never conflict. Cosines of a zero task vector are 0.

    What the method kept (optional fields, so rows recorded before them still load):
    task_dots: ⟨Δ, τ_i⟩ per checkpoint; ⟨Δ, τ_i⟩ / ‖τ_i‖² is the share of τ_i's own direction kept.
    task_l1: Σ_i ‖τ_i‖₁; dropped_l1: the part of it at entries where Δ is exactly 0 (left at the base).
    conflict_dropped / conflict_summed: among the conflicting entries, the fraction where Δ is 0, and the
    fraction where Δ is non-zero with the sign of Σ_i τ_i (the conflict resolved the way a plain sum would).
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    task_norms: list[float]
    delta_norm: float | None  # None in a stats-only pass (analysis before merging): no merged update
    cosines: list[list[float]]
    sign_conflict: float
    task_dots: list[float] = field(default_factory=list)
    task_l1: float = 0.0
    dropped_l1: float = 0.0
    conflict_dropped: float = 0.0
    conflict_summed: float = 0.0

    def to_row(self) -> dict:
        row = asdict(self)
        row["shape"] = list(self.shape)
        return row


@dataclass(frozen=True)
class Spectrum:
    """Singular values (descending) of one matrix's task vector (`source="task"`, `index` = checkpoint)
    or of the merged update (`source="delta"`, index -1).
    effective_rank = exp(H(p)), p = σ/Σσ (0 for a zero matrix)."""

    tensor: str
    source: Literal["task", "delta"]
    index: int
    singular_values: list[float]
    effective_rank: float

    def to_row(self) -> dict:
        return asdict(self)


@dataclass
class MergeStats:
    """Everything the merge recorded. `model_*` fields are over all tensors together."""

    tensors: list[TensorStats] = field(default_factory=list)
    spectra: list[Spectrum] = field(default_factory=list)
    model_delta_norm: float | None = 0.0  # None for a stats-only pass (analysis before merging)
    model_task_norms: list[float] = field(default_factory=list)
    model_cosines: list[list[float]] = field(default_factory=list)
    model_task_dots: list[float] = field(default_factory=list)

    def tensor_rows(self) -> list[dict]:
        return [t.to_row() for t in self.tensors]

    def spectrum_rows(self) -> list[dict]:
        return [s.to_row() for s in self.spectra]

    def summary(self) -> dict:
        """Whole-model figures, plus the mean off-diagonal cosine and the numel-weighted sign conflict."""
        n = len(self.model_task_norms)
        off = [self.model_cosines[i][j] for i in range(n) for j in range(n) if i < j]
        numel = sum(t.numel for t in self.tensors)
        conflict = sum(t.sign_conflict * t.numel for t in self.tensors) / numel if numel else 0.0
        conflicts = sum(t.sign_conflict * t.numel for t in self.tensors)
        l1 = sum(t.task_l1 for t in self.tensors)
        return {
            "model_delta_norm": self.model_delta_norm,
            "model_task_norms": list(self.model_task_norms),
            "model_cosines": [list(r) for r in self.model_cosines],
            "model_task_dots": list(self.model_task_dots),
            "mean_cosine": sum(off) / len(off) if off else None,
            "sign_conflict": conflict,
            # share of the task vectors' L1 mass the merge left at the base's value
            "mass_dropped": sum(t.dropped_l1 for t in self.tensors) / l1 if l1 else None,
            # of all conflicting entries: dropped (Δ = 0), or resolved with the sign of Σ τ_i
            "conflict_dropped": (
                sum(t.conflict_dropped * t.sign_conflict * t.numel for t in self.tensors) / conflicts
                if conflicts
                else None
            ),
            "conflict_summed": (
                sum(t.conflict_summed * t.sign_conflict * t.numel for t in self.tensors) / conflicts
                if conflicts
                else None
            ),
            "tensors": len(self.tensors),
            "spectra": len(self.spectra),
        }

    def to_rows(self) -> dict:
        """Plain dicts and lists, ready for the store."""
        return {"model": self.summary(), "tensors": self.tensor_rows(), "spectra": self.spectrum_rows()}


def effective_rank(singular_values: torch.Tensor) -> float:
    s = singular_values.double().clamp_min(0)
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))


def wants_spectrum(name: str, ndim: int, spectra: str | Sequence[str] | None) -> bool:
    """Spectra are for 2-D tensors named by `spectra`: "all", exact names, or fnmatch patterns."""
    if ndim != 2 or not spectra:
        return False
    if spectra == "all":
        return True
    return any(name == pat or fnmatch.fnmatchcase(name, pat) for pat in spectra)


class GeometryRecorder:
    """Accumulates stats tensor by tensor while the engine streams.

    Cost per tensor: one in-place subtraction turning the stacked inputs into task vectors, one Gram GEMM
    (all norms and cosines at once), one `aminmax` pass (sign conflicts) and one dot product for ‖Δ‖. The
    squared norms double as the NaN/Inf check of the inputs and the output, so no separate scan is needed.
    """

    def __init__(
        self,
        n_models: int,
        spectra: str | Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        base_label: str = "base",
    ):
        self.n = n_models
        self.labels = list(labels) if labels is not None else [f"#{i + 1}" for i in range(n_models)]
        self.base_label = base_label
        self.spectra = spectra
        self.stats = MergeStats()
        self._gram = torch.zeros(n_models, n_models, dtype=torch.float64)
        self._delta_sq = 0.0
        self._dots = [0.0] * n_models
        self._merged = False  # a stats-only pass (record_task_vectors alone) has no merged update

    def record(
        self,
        name: str,
        base: torch.Tensor,
        models: torch.Tensor | Sequence[torch.Tensor],
        merged: torch.Tensor,
        *,
        task_vectors: bool = False,
    ) -> TensorStats:
        """Record one tensor. float32 inputs on one device, same shape; `models` stacked as (T, *shape),
        holding the checkpoints' weights, or already their task vectors with `task_vectors=True`.

        Consumes its arguments: `models` becomes the task vectors and `merged` becomes Δ = θ_merged − θ0,
        both in place (the engine has already written the output), which keeps peak memory at (T + 3)
        tensors. Raises NonFiniteError naming the culprit when an input or the output holds NaN/Inf.
        """
        stacked = models if isinstance(models, torch.Tensor) else torch.stack(list(models))
        taus = stacked.view(self.n, -1)
        if not task_vectors:
            taus.sub_(base.reshape(1, -1))
        gram_t = (taus @ taus.T).double().cpu()
        delta = merged.sub_(base)
        delta_sq = float(torch.dot(delta.reshape(-1), delta.reshape(-1)))
        if not bool(torch.isfinite(gram_t.diagonal()).all()):
            self.refuse_nonfinite_inputs(name, base, taus)
        if not math.isfinite(delta_sq) and not bool(torch.isfinite(delta).all()):
            raise NonFiniteError(
                f"the method produced NaN/Inf in tensor {name!r}; check its parameters "
                "(e.g. weights summing to 0)"
            )
        self._gram += gram_t
        self._delta_sq += delta_sq
        self._merged = True
        gram = gram_t.tolist()
        numel = base.numel()
        flat = delta.reshape(-1)
        dots = (taus @ flat).double().cpu().tolist()
        self._dots = [a + b for a, b in zip(self._dots, dots, strict=True)]
        kept = _kept(taus, flat, numel)
        stats = TensorStats(
            name=name,
            shape=tuple(base.shape),
            numel=numel,
            task_norms=[math.sqrt(max(gram[i][i], 0.0)) for i in range(self.n)],
            delta_norm=math.sqrt(max(delta_sq, 0.0)),
            cosines=_cosines(gram),
            sign_conflict=kept["sign_conflict"],
            task_dots=dots,
            task_l1=kept["task_l1"],
            dropped_l1=kept["dropped_l1"],
            conflict_dropped=kept["conflict_dropped"],
            conflict_summed=kept["conflict_summed"],
        )
        self.stats.tensors.append(stats)
        if wants_spectrum(name, base.ndim, self.spectra):
            for i in range(self.n):
                self._spectrum(name, "task", i, stacked[i])
            self._spectrum(name, "delta", -1, delta)
        return stats

    def record_task_vectors(self, name: str, base: torch.Tensor, taus: torch.Tensor) -> TensorStats:
        """Record one tensor of a stats-only pass (analysis before merging): `taus` are the checkpoints'
        task vectors stacked as (T, *shape), float32 on the base's device. The same norms, cosines, sign
        conflicts, task L1 mass and task spectra as `record`; the fields about a merged update stay
        None (delta_norm) or empty."""
        flat = taus.reshape(self.n, -1)
        gram_t = (flat @ flat.T).double().cpu()
        if not bool(torch.isfinite(gram_t.diagonal()).all()):
            self.refuse_nonfinite_inputs(name, base, flat)
        self._gram += gram_t
        gram = gram_t.tolist()
        numel = base.numel()
        conflict = _conflicts(flat) if numel and self.n >= 2 else None
        stats = TensorStats(
            name=name,
            shape=tuple(base.shape),
            numel=numel,
            task_norms=[math.sqrt(max(gram[i][i], 0.0)) for i in range(self.n)],
            delta_norm=None,
            cosines=_cosines(gram),
            sign_conflict=int(torch.count_nonzero(conflict)) / numel if conflict is not None else 0.0,
            task_l1=float(torch.linalg.vector_norm(flat, ord=1, dim=0).sum(dtype=torch.float64)),
        )
        self.stats.tensors.append(stats)
        if wants_spectrum(name, base.ndim, self.spectra):
            for i in range(self.n):
                self._spectrum(name, "task", i, taus[i])
        return stats

    def refuse_nonfinite_inputs(self, name: str, base: torch.Tensor, models: torch.Tensor) -> None:
        """Raise NonFiniteError naming the first input (base or checkpoint row of `models`) that holds
        NaN/Inf. Only called on slow paths: a non-finite norm, or a method that raised. (Rows may be
        weights or task vectors: τ_i = θ_i − θ0 is finite exactly when θ_i and a finite θ0 are.)"""
        _refuse_nonfinite_inputs(name, base, models.view(self.n, -1), self.base_label, self.labels)

    def _spectrum(
        self, name: str, source: Literal["task", "delta"], index: int, matrix: torch.Tensor
    ) -> None:
        sv = torch.linalg.svdvals(matrix)
        self.stats.spectra.append(
            Spectrum(name, source, index, [float(x) for x in sv.double().cpu()], effective_rank(sv))
        )

    def finish(self) -> MergeStats:
        gram = self._gram.tolist()
        stats_only = bool(self.stats.tensors) and not self._merged
        self.stats.model_delta_norm = None if stats_only else math.sqrt(max(self._delta_sq, 0.0))
        self.stats.model_task_norms = [math.sqrt(max(gram[i][i], 0.0)) for i in range(self.n)]
        self.stats.model_cosines = _cosines(gram)
        self.stats.model_task_dots = [] if stats_only else list(self._dots)
        return self.stats


class BlockGeometry:
    """The per-tensor stats of `GeometryRecorder.record` for a tensor merged in row blocks: every quantity is
    a sum over entries, so blocks add up (norms, cosines, ⟨Δ, τ_i⟩, L1 masses, conflict counts). Singular
    spectra need the whole matrix and are not recorded for a blocked tensor."""

    def __init__(self, n_models: int):
        self.n = n_models
        self.gram = torch.zeros(n_models, n_models, dtype=torch.float64)
        self.delta_sq = 0.0
        self.dots = [0.0] * n_models
        self.task_l1 = self.dropped_l1 = 0.0
        self.numel = self.conflicts = self.conflict_dropped = self.conflict_summed = 0

    def add(
        self, base: torch.Tensor, stacked: torch.Tensor, merged: torch.Tensor, *, task_vectors: bool
    ) -> None:
        """One block: base rows, (T, rows, ...) stack (weights, or task vectors with task_vectors=True) and
        the merged rows; consumes them in place like `record`."""
        taus = stacked.reshape(self.n, -1)
        if not task_vectors:
            taus.sub_(base.reshape(1, -1))
        delta = merged.sub_(base).reshape(-1)
        self.gram += (taus @ taus.T).double().cpu()
        self.delta_sq += float(torch.dot(delta, delta))
        self.dots = [a + b for a, b in zip(self.dots, (taus @ delta).double().cpu().tolist(), strict=True)]
        numel = delta.numel()
        kept = _kept(taus, delta, numel)
        self.numel += numel
        self.task_l1 += kept["task_l1"]
        self.dropped_l1 += kept["dropped_l1"]
        n_conflict = round(kept["sign_conflict"] * numel)
        self.conflicts += n_conflict
        self.conflict_dropped += round(kept["conflict_dropped"] * n_conflict)
        self.conflict_summed += round(kept["conflict_summed"] * n_conflict)

    def finish(self, recorder: GeometryRecorder, name: str, shape: tuple[int, ...]) -> TensorStats:
        """The tensor's stats; also folds them into the recorder's whole-model sums."""
        recorder._gram += self.gram
        recorder._delta_sq += self.delta_sq
        recorder._dots = [a + b for a, b in zip(recorder._dots, self.dots, strict=True)]
        recorder._merged = True
        gram = self.gram.tolist()
        n_conf = self.conflicts
        return TensorStats(
            name=name,
            shape=tuple(shape),
            numel=self.numel,
            task_norms=[math.sqrt(max(gram[i][i], 0.0)) for i in range(self.n)],
            delta_norm=math.sqrt(max(self.delta_sq, 0.0)),
            cosines=_cosines(gram),
            sign_conflict=n_conf / self.numel if self.numel else 0.0,
            task_dots=list(self.dots),
            task_l1=self.task_l1,
            dropped_l1=self.dropped_l1,
            conflict_dropped=self.conflict_dropped / n_conf if n_conf else 0.0,
            conflict_summed=self.conflict_summed / n_conf if n_conf else 0.0,
        )


def _refuse_nonfinite_inputs(
    name: str, base: torch.Tensor, taus: torch.Tensor, base_label: str, labels: Sequence[str]
) -> None:
    """Slow path, only after a non-finite squared norm: name the input holding NaN/Inf. τ_i = θ_i − θ0 is
    finite exactly when θ_i and θ0 are; returns quietly when a finite vector's square merely overflowed."""
    for label, t in [(base_label, base), *zip(labels, taus, strict=True)]:
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise NonFiniteError(
                f"checkpoint {label!r}: tensor {name!r} holds {bad} NaN/Inf values; refusing to merge"
            )


def _cosines(gram: list[list[float]]) -> list[list[float]]:
    n = len(gram)
    norms = [math.sqrt(max(gram[i][i], 0.0)) for i in range(n)]
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if norms[i] > 0 and norms[j] > 0:
                out[i][j] = max(-1.0, min(1.0, gram[i][j] / (norms[i] * norms[j])))
    return out


def _conflicts(taus: torch.Tensor) -> torch.Tensor:
    # amax and amin separately beat aminmax over dim 0 on CPU (measured: 88 vs 129 ms on 4 x 2.9M).
    return (taus.amin(0) < 0) & (taus.amax(0) > 0)


def _kept(taus: torch.Tensor, delta: torch.Tensor, numel: int) -> dict[str, float]:
    """What the update did with the task vectors (TensorStats' last fields), from (T, numel) task vectors
    and the flat Δ. At most two extra float32 vectors of numel at a time, plus boolean masks."""
    dropped = delta == 0
    # Σ_i |τ_i| per entry, model by model: vector_norm(ord=1, dim=0) reduces along the strided
    # axis and is about 12x slower on CPU (0.89 s vs 0.075 s on 2 x 2.6M); it made geometry dominate merges.
    mass = taus[0].abs()
    for tau in taus[1:]:
        mass.add_(tau.abs())
    task_l1 = float(mass.sum(dtype=torch.float64))
    dropped_l1 = float(mass[dropped].sum(dtype=torch.float64)) if task_l1 else 0.0
    del mass
    out = {"task_l1": task_l1, "dropped_l1": dropped_l1, "sign_conflict": 0.0}
    out.update(conflict_dropped=0.0, conflict_summed=0.0)
    if numel == 0 or taus.shape[0] < 2:
        return out
    conflict = _conflicts(taus)
    n_conflict = int(torch.count_nonzero(conflict))
    out["sign_conflict"] = n_conflict / numel
    if n_conflict:
        summed = taus.sum(0)
        same_sign = (delta > 0) & (summed > 0) | (delta < 0) & (summed < 0)
        out["conflict_dropped"] = int(torch.count_nonzero(conflict & dropped)) / n_conflict
        out["conflict_summed"] = int(torch.count_nonzero(conflict & same_sign)) / n_conflict
    return out
