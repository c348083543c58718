"""Geometry of the task vectors, recorded in the merge pass itself (methods.md §5): no second read of weights.

Per tensor: ‖τ_i‖₂, ‖Δ‖₂ (Δ = θ_merged − θ0), pairwise cos(τ_i, τ_j), the sign-conflict rate and, for chosen
matrices, singular spectra of each τ_i and of Δ. Whole model: the same norms and cosines over all tensors
together (accumulated Gram matrix), ‖θ_merged − θ0‖₂ being the paper's Figure 4 quantity. Per-tensor dot
products are float32 BLAS dots (no temporaries); sums across tensors are float64; every number handed out is
a plain Python float.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch


@dataclass(frozen=True)
class TensorStats:
    """Geometry of one tensor.

    sign_conflict: over ALL entries of the tensor, the fraction of entries at which the non-zero τ_i take
    both signs (at least one τ_i > 0 and at least one τ_j < 0). Entries where every τ_i is zero, or where
    only one checkpoint moved, never conflict. Cosines of a zero task vector are 0.
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    task_norms: list[float]
    delta_norm: float
    cosines: list[list[float]]
    sign_conflict: float

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
    model_delta_norm: float = 0.0
    model_task_norms: list[float] = field(default_factory=list)
    model_cosines: list[list[float]] = field(default_factory=list)

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
        return {
            "model_delta_norm": self.model_delta_norm,
            "model_task_norms": list(self.model_task_norms),
            "model_cosines": [list(r) for r in self.model_cosines],
            "mean_cosine": sum(off) / len(off) if off else None,
            "sign_conflict": conflict,
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
    """Accumulates stats tensor by tensor while the engine streams."""

    def __init__(self, n_models: int, spectra: str | Sequence[str] | None = None):
        self.n = n_models
        self.spectra = spectra
        self.stats = MergeStats()
        self._gram = [[0.0] * n_models for _ in range(n_models)]
        self._delta_sq = 0.0

    def record(
        self, name: str, base: torch.Tensor, models: list[torch.Tensor], merged: torch.Tensor
    ) -> TensorStats:
        """Record one tensor. All inputs float32 on one device, same shape.

        Consumes `models`: each is turned into its task vector in place (the engine no longer needs it),
        which keeps peak memory at the engine's (T + 3) tensors.
        """
        taus = models
        for t in taus:
            t.sub_(base)
        gram = [[0.0] * self.n for _ in range(self.n)]
        for i in range(self.n):
            for j in range(i, self.n):
                v = float(torch.dot(taus[i].reshape(-1), taus[j].reshape(-1)))
                gram[i][j] = gram[j][i] = v
                self._gram[i][j] += v
                if i != j:
                    self._gram[j][i] += v
        delta = merged - base
        delta_sq = float(torch.dot(delta.reshape(-1), delta.reshape(-1)))
        self._delta_sq += delta_sq
        numel = base.numel()
        stats = TensorStats(
            name=name,
            shape=tuple(base.shape),
            numel=numel,
            task_norms=[math.sqrt(max(gram[i][i], 0.0)) for i in range(self.n)],
            delta_norm=math.sqrt(max(delta_sq, 0.0)),
            cosines=_cosines(gram),
            sign_conflict=_sign_conflict(taus, numel),
        )
        self.stats.tensors.append(stats)
        if wants_spectrum(name, base.ndim, self.spectra):
            for i, tau in enumerate(taus):
                self._spectrum(name, "task", i, tau)
            self._spectrum(name, "delta", -1, delta)
        return stats

    def _spectrum(
        self, name: str, source: Literal["task", "delta"], index: int, matrix: torch.Tensor
    ) -> None:
        sv = torch.linalg.svdvals(matrix)
        self.stats.spectra.append(
            Spectrum(name, source, index, [float(x) for x in sv.double().cpu()], effective_rank(sv))
        )

    def finish(self) -> MergeStats:
        self.stats.model_delta_norm = math.sqrt(max(self._delta_sq, 0.0))
        self.stats.model_task_norms = [math.sqrt(max(self._gram[i][i], 0.0)) for i in range(self.n)]
        self.stats.model_cosines = _cosines(self._gram)
        return self.stats


def _cosines(gram: list[list[float]]) -> list[list[float]]:
    n = len(gram)
    norms = [math.sqrt(max(gram[i][i], 0.0)) for i in range(n)]
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if norms[i] > 0 and norms[j] > 0:
                out[i][j] = max(-1.0, min(1.0, gram[i][j] / (norms[i] * norms[j])))
    return out


def _sign_conflict(taus: list[torch.Tensor], numel: int) -> float:
    if numel == 0 or len(taus) < 2:
        return 0.0
    pos = torch.zeros_like(taus[0], dtype=torch.bool)
    neg = torch.zeros_like(taus[0], dtype=torch.bool)
    for t in taus:
        pos |= t > 0
        neg |= t < 0
    return int((pos & neg).sum()) / numel
