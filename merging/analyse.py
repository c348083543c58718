"""Analyse before merging: a stats-only pass over a base and checkpoints, nothing written.

Streams the same tensors a merge would read (same compatibility checks, same vocabulary fitting, same
plan) and hands every tensor's task vectors to the merge's own GeometryRecorder, so an analysis and a merge
report identical norms, cosines, sign conflicts and spectra for the same checkpoints. On top of the
recorder's per-tensor rows it groups tensors by decoder layer and ranks the layers where the checkpoints
conflict most (highest sign-conflict rate, then lowest mean pairwise cosine): the answer to "were these
checkpoints ever going to merge?" before any merge is run.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from merging.checkpoint import Checkpoint, open_checkpoint
from merging.compat import adjust_rows, check_compatibility
from merging.engine import resolve_device
from merging.errors import MergeCancelled, RecipeError
from merging.geometry import GeometryRecorder, MergeStats, wants_spectrum
from merging.memory import Workspace
from merging.plan import plan_uniform
from merging.progress import Progress

# The same rule as store.parse_layer (the store derives its layer column with it; a test keeps both equal).
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
REPRESENTATIVE = ("mlp.down_proj", "self_attn.q_proj")


def layer_label(name: str) -> str:
    """ "layer 03" for a decoder layer's tensor; embed, head, norm or the name itself outside the stack
    (the labels the Geometry page uses, so CLI and page name layers alike)."""
    match = _LAYER.search(name)
    if match:
        return f"layer {int(match.group(1)):02d}"
    parts = name.lower().split(".")
    if any(p in ("embed_tokens", "wte", "wpe", "embeddings", "embed") for p in parts):
        return "embed"
    if "lm_head" in parts:
        return "head"
    if any("norm" in p for p in parts):
        return "norm"
    return name


def random_sign_conflict(n_checkpoints: int) -> float:
    """The sign-conflict rate of n task vectors whose entries have independent random signs, 1 − 2^(1−n):
    the yardstick for a measured rate (0 for one checkpoint, 0.5 for two, 0.875 for four)."""
    return 0.0 if n_checkpoints < 2 else 1.0 - 2.0 ** (1 - n_checkpoints)


def _depth(label: str) -> tuple[int, int, str]:
    if label.startswith("layer "):
        return (1, int(label.split()[1]), label)
    return ({"embed": 0, "norm": 2, "head": 3}.get(label, 4), 0, label)


def representative_matrices(names: Sequence[str], ndims: Mapping[str, int]) -> list[str]:
    """The default matrices to take spectra of (an SVD per checkpoint each, so not every matrix): the
    down and query projections of the first, middle and last decoder layers; the first two matrices when
    the model has no decoder stack."""
    layers = sorted({int(m.group(1)) for n in names if (m := _LAYER.search(n))})
    if not layers:
        return [n for n in names if ndims.get(n) == 2][:2]
    picks = {layers[0], layers[len(layers) // 2], layers[-1]}
    out = []
    for n in names:
        m = _LAYER.search(n)
        if m and int(m.group(1)) in picks and ndims.get(n) == 2 and any(k in n for k in REPRESENTATIVE):
            out.append(n)
    return out


@dataclass(frozen=True)
class LayerConflict:
    """One layer's geometry over all its tensors: size, each checkpoint's task-vector norm, the mean
    pairwise cosine of the task vectors (None with fewer than two checkpoints) and the size-weighted
    sign-conflict rate."""

    layer: str
    numel: int
    task_norms: list[float]
    mean_cosine: float | None
    sign_conflict: float

    def to_row(self) -> dict:
        return asdict(self)


@dataclass
class AnalysisResult:
    """What an analysis found. `stats` is the recorder's MergeStats (merged-update fields None);
    `layers` are in network order; `most_conflicting()` ranks them."""

    base: str
    checkpoints: list[str]
    stats: MergeStats
    layers: list[LayerConflict]
    seconds: float
    device: str
    input_fingerprints: dict[str, str] = field(default_factory=dict)

    def most_conflicting(self, k: int = 5) -> list[LayerConflict]:
        """The k layers where the checkpoints disagree most: highest sign-conflict rate, ties broken by
        the lower mean cosine."""
        ranked = sorted(
            self.layers,
            key=lambda lay: (-lay.sign_conflict, 2.0 if lay.mean_cosine is None else lay.mean_cosine),
        )
        return ranked[:k]

    def summary(self) -> dict:
        """Whole-model figures plus the layer ranking (the part the store keeps beside the stats rows)."""
        return {
            **self.stats.summary(),
            "layers": [lay.to_row() for lay in self.layers],
            "most_conflicting": [lay.layer for lay in self.most_conflicting()],
        }

    def to_dict(self) -> dict:
        """Plain JSON-ready data: inputs, timings, summary, per-tensor rows and spectra."""
        return {
            "base": self.base,
            "checkpoints": list(self.checkpoints),
            "input_fingerprints": dict(self.input_fingerprints),
            "seconds": self.seconds,
            "device": self.device,
            "summary": self.summary(),
            "tensors": self.stats.tensor_rows(),
            "spectra": self.stats.spectrum_rows(),
        }


def layer_conflicts(stats: MergeStats) -> list[LayerConflict]:
    """Group the per-tensor stats by layer. Each tensor's Gram matrix is rebuilt from its norms and
    cosines (G_ij = cos_ij · ‖τ_i‖ · ‖τ_j‖) and summed, so the layer's cosines are those of the layer's
    concatenated task vectors, exactly as the whole-model cosines are."""
    groups: dict[str, list] = {}
    for t in stats.tensors:
        groups.setdefault(layer_label(t.name), []).append(t)
    out = []
    for label in sorted(groups, key=_depth):
        tensors = groups[label]
        n = len(tensors[0].task_norms)
        gram = [[0.0] * n for _ in range(n)]
        numel = sum(t.numel for t in tensors)
        conflict = sum(t.sign_conflict * t.numel for t in tensors) / numel if numel else 0.0
        for t in tensors:
            for i in range(n):
                for j in range(n):
                    gram[i][j] += t.cosines[i][j] * t.task_norms[i] * t.task_norms[j]
        norms = [math.sqrt(max(gram[i][i], 0.0)) for i in range(n)]
        pairs = [
            gram[i][j] / (norms[i] * norms[j]) if norms[i] > 0 and norms[j] > 0 else 0.0
            for i in range(n)
            for j in range(i + 1, n)
        ]
        out.append(LayerConflict(label, numel, norms, sum(pairs) / len(pairs) if pairs else None, conflict))
    return out


def analyse_checkpoints(
    base: str,
    checkpoints: Sequence[str],
    *,
    device: str = "auto",
    allow_bin: bool = False,
    spectra: str | Sequence[str] | None = "auto",
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    opened: Mapping[str, Checkpoint] | None = None,
) -> AnalysisResult:
    """Stats of the checkpoints' task vectors against `base`, tensor by tensor; writes nothing.

    `spectra`: "auto" (a few representative matrices), "all", names or fnmatch patterns, or None.
    Raises the merge's own errors (CheckpointError, CompatibilityError, NonFiniteError, DeviceError) and
    RecipeError for a bad request; MergeCancelled when `should_cancel()` turns true.
    """
    started = time.perf_counter()
    refs = [str(c) for c in checkpoints]
    if not base:
        raise RecipeError("an analysis needs a base model: task vectors are measured from it")
    if not refs:
        raise RecipeError("give at least one checkpoint to analyse")
    twice = sorted({r for r in refs if refs.count(r) > 1})
    if twice:
        raise RecipeError(f"checkpoint {twice[0]!r} is listed twice; give each checkpoint once")
    if isinstance(spectra, str) and spectra not in ("auto", "all"):
        raise RecipeError(f"spectra must be 'auto', 'all', a list of tensor names, or None; got {spectra!r}")
    dev = resolve_device(device)
    given = dict(opened or {})
    mine: list[Checkpoint] = []

    def get(ref: str) -> Checkpoint:
        if ref not in given:
            given[ref] = open_checkpoint(ref, allow_bin=allow_bin)
            mine.append(given[ref])
        return given[ref]

    try:
        base_ck = get(str(base))
        models = [get(r) for r in refs]
        report = check_compatibility(base_ck, models)
        report.raise_if_refused()
        names = report.tensor_names
        ndims = {n: len(base_ck.tensors[n].shape) for n in names}
        chosen = _spectra(spectra, names, ndims)
        plan = plan_uniform(report, base_ck, refs, True, {}, [{} for _ in refs], None)
        by_ref = dict(zip(refs, models, strict=True))
        sizes = {
            p.name: base_ck.tensors[p.name].nbytes
            + sum(by_ref[i.checkpoint].tensors[i.source.name].nbytes for i in p.inputs)
            for p in plan
        }
        bytes_total, bytes_done = sum(sizes.values()), 0
        recorder = GeometryRecorder(len(refs), chosen, labels=refs, base_label=base_ck.ref)
        workspace = Workspace(dev)
        for done, planned in enumerate(plan, start=1):
            if should_cancel is not None and should_cancel():
                raise MergeCancelled(f"analysis cancelled before tensor {planned.name!r}")
            slots = workspace.slots(len(refs) + 1, planned.shape)
            taus, base_t = slots[:-1], slots[-1]
            base_t.copy_(base_ck.read(planned.name))
            for row, item in zip(taus, planned.inputs, strict=True):
                t = by_ref[item.checkpoint].read(item.source.name)
                row.copy_(adjust_rows(t, item.source.rows) if item.source.rows is not None else t)
            taus.sub_(base_t)
            recorder.record_task_vectors(planned.name, base_t, taus)
            bytes_done += sizes[planned.name]
            if on_progress is not None:
                on_progress(Progress(done, len(plan), bytes_done, bytes_total, planned.name))
        stats = recorder.finish()
        fingerprints = {ck.ref: ck.fingerprint for ck in [base_ck, *models]}
    finally:
        for ck in mine:
            ck.close()
    return AnalysisResult(
        base=str(base),
        checkpoints=refs,
        stats=stats,
        layers=layer_conflicts(stats),
        seconds=time.perf_counter() - started,
        device=str(dev),
        input_fingerprints=fingerprints,
    )


def _spectra(spectra: str | Sequence[str] | None, names: list[str], ndims: Mapping[str, int]):
    """Resolve the spectra request against the tensor names; a pattern that picks no matrix is refused."""
    if not spectra:
        return None
    if spectra == "auto":
        return representative_matrices(names, ndims) or None
    if spectra == "all":
        return "all"
    patterns = [str(p) for p in spectra]
    for pat in patterns:
        if not any(wants_spectrum(n, ndims[n], [pat]) for n in names):
            raise RecipeError(f"spectra: no 2-D tensor matches {pat!r}")
    return patterns


def format_report(result: AnalysisResult, top: int = 5, short: Callable[[str], str] | None = None) -> str:
    """The CLI's text tables: whole-model norms and cosines, per-layer norms and conflicts, the layers
    that conflict most and the spectra's effective ranks."""
    short = short or (lambda r: r.rstrip("/").split("/")[-1])
    names = [short(r) for r in result.checkpoints]
    tags = [f"#{i + 1}" for i in range(len(names))]
    width = max(14, *(len(t) + 1 + len(n) for t, n in zip(tags, names, strict=True)))
    s = result.stats.summary()
    lines = [
        f"analysed {len(names)} checkpoints against {short(result.base)}: {s['tensors']} tensors in "
        f"{result.seconds:.2f} s on {result.device}; nothing written",
        "",
        "task vectors, whole model: norm and pairwise cosines",
        f"{'checkpoint':<{width}}  {'‖τ‖₂':>10}  " + "  ".join(f"{t:>6}" for t in tags),
    ]
    for i, (t, n) in enumerate(zip(tags, names, strict=True)):
        cos = "  ".join(f"{c:>6.3f}" for c in s["model_cosines"][i])
        lines.append(f"{t + ' ' + n:<{width}}  {s['model_task_norms'][i]:>10.4g}  {cos}")
    mean_cos = "n/a" if s["mean_cosine"] is None else f"{s['mean_cosine']:.4f}"
    lines += [
        f"mean pairwise cosine {mean_cos}; sign conflict {s['sign_conflict']:.4f} "
        f"(independent random signs: {random_sign_conflict(len(names)):.4f})",
        "",
    ]
    lines.append("per layer: ‖τ‖₂ of each checkpoint, mean cosine, sign-conflict rate")
    lines.append(
        f"{'layer':<10}  " + "  ".join(f"{t:>8}" for t in tags) + f"  {'mean cos':>8}  {'conflict':>8}"
    )
    for lay in result.layers:
        cos = "n/a" if lay.mean_cosine is None else f"{lay.mean_cosine:.3f}"
        lines.append(
            f"{lay.layer[:10]:<10}  "
            + "  ".join(f"{v:>8.4g}" for v in lay.task_norms)
            + f"  {cos:>8}  {lay.sign_conflict:>8.4f}"
        )
    lines += ["", f"layers where the checkpoints conflict most (top {top})"]
    for rank, lay in enumerate(result.most_conflicting(top), start=1):
        cos = "n/a" if lay.mean_cosine is None else f"{lay.mean_cosine:.3f}"
        lines.append(f"{rank}. {lay.layer}: sign conflict {lay.sign_conflict:.4f}, mean cosine {cos}")
    if result.stats.spectra:
        lines += ["", "singular spectra: effective rank of each task vector"]
        for sp in result.stats.spectra:
            top_sv = sp.singular_values[0] if sp.singular_values else 0.0
            lines.append(f"{sp.tensor} · {tags[sp.index]}: {sp.effective_rank:.2f} (σ₁ {top_sv:.4g})")
    return "\n".join(lines)


__all__ = [
    "AnalysisResult",
    "LayerConflict",
    "analyse_checkpoints",
    "format_report",
    "layer_conflicts",
    "layer_label",
    "representative_matrices",
]
