"""Reshape the store's DataFrames into the tidy frames ui.charts draws and the pages tabulate.

The store returns rows as the engine recorded them (one row per tensor with a list of per-checkpoint
norms, spectra as lists, cosines as JSON); the charts want long, tidy frames. These functions do only that
reshaping and simple aggregation of stored scalars (no tensor math), and are pure, so they are tested on
hand-written frames.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

PREFERRED_METRICS = ("acc", "acc_norm", "exact_match", "accuracy")


def short_name(ref: str | None) -> str:
    """The last path component of a checkpoint reference (a Hub id keeps its owner/name)."""
    if not ref:
        return "?"
    ref = str(ref).rstrip("/")
    parts = ref.split("/")
    if len(parts) == 2 and not ref.startswith(("/", ".")):
        return ref
    return parts[-1]


def pick_metric(metrics: Sequence[str]) -> str | None:
    """One headline metric per task: the first of PREFERRED_METRICS present, else the first listed."""
    names = [m for m in metrics if m and not str(m).endswith("_stderr")]
    for preferred in PREFERRED_METRICS:
        if preferred in names:
            return preferred
    return names[0] if names else None


def task_scores(
    eval_rows: pd.DataFrame,
    labels: Mapping[str, str] | None = None,
    declared: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Eval rows (fingerprint, task, metric, value) -> model, fingerprint, task, metric, score.

    Scores are percentage points (the stored value times 100), the unit of the Study page, the paper and
    README, so every page compares the same numbers.

    One headline metric per task so every model is compared on the same number: the suite's `declared`
    one (task -> metric, `evaluation.suites.declared_metrics`) when given, else pick_metric; `labels` maps
    fingerprints to display names (default: the stored model_name, else the fingerprint).
    """
    cols = ["model", "fingerprint", "task", "metric", "score"]
    if eval_rows is None or eval_rows.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for task, rows in eval_rows.groupby("task", sort=True):
        metric = (declared or {}).get(str(task)) or pick_metric(list(dict.fromkeys(rows["metric"])))
        chosen = rows[rows["metric"] == metric]
        for r in chosen.itertuples(index=False):
            fp = r.fingerprint
            name = (labels or {}).get(fp) or getattr(r, "model_name", None) or fp
            out.append(
                {"model": name, "fingerprint": fp, "task": task, "metric": metric, "score": 100.0 * r.value}
            )
    df = pd.DataFrame(out, columns=cols)
    return df.drop_duplicates(["fingerprint", "task"], keep="last")


def average_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Unweighted mean over tasks per model (the paper's headline): fingerprint, model, average, tasks."""
    if scores.empty:
        return pd.DataFrame(columns=["fingerprint", "model", "average", "tasks"])
    g = scores.groupby(["fingerprint", "model"], sort=False)["score"]
    return g.agg(average="mean", tasks="count").reset_index()


def best_checkpoint(averages: pd.DataFrame, checkpoint_fps: Sequence[str]) -> tuple[str, float] | None:
    """(fingerprint, average) of the best-scoring checkpoint among those given, None if none is scored."""
    rows = averages[averages["fingerprint"].isin(list(checkpoint_fps))]
    if rows.empty:
        return None
    top = rows.loc[rows["average"].idxmax()]
    return str(top["fingerprint"]), float(top["average"])


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, float) and math.isnan(value):
        return []
    return list(value)


def layer_label(layer: Any, kind: Any, tensor: str) -> str:
    """ "layer 3" for decoder layers; the tensor kind (embed, head, norm) for everything outside the stack."""
    if layer is not None and not pd.isna(layer):
        return f"layer {int(layer):02d}"
    return str(kind or tensor)


_OUTSIDE_ORDER = {"embed": 0, "norm": 2, "head": 3}


def depth_key(label: str) -> tuple[int, int, str]:
    """Network order for layer labels: embedding, decoder layers by index, final norm, head, the rest."""
    if label.startswith("layer "):
        return (1, int(label.split()[1]), label)
    return (_OUTSIDE_ORDER.get(label, 4), 0, label)


def layer_norms(tensor_stats: pd.DataFrame, checkpoints: Sequence[str]) -> pd.DataFrame:
    """Per (checkpoint, layer) task-vector L2 norm: sqrt of the sum of squared per-tensor norms.

    tensor_stats columns: tensor, layer, kind, task_norms (list, one per checkpoint in merge order).
    """
    acc: dict[tuple[str, str], float] = {}
    order: list[str] = []
    for r in tensor_stats.itertuples(index=False):
        label = layer_label(r.layer, r.kind, r.tensor)
        if label not in order:
            order.append(label)
        for i, norm in enumerate(_as_list(r.task_norms)):
            if norm is None or i >= len(checkpoints):
                continue
            key = (checkpoints[i], label)
            acc[key] = acc.get(key, 0.0) + float(norm) ** 2
    rows = [{"model": m, "layer": lay, "norm": math.sqrt(v)} for (m, lay), v in acc.items()]
    df = pd.DataFrame(rows, columns=["model", "layer", "norm"])
    if df.empty:
        return df
    df["layer"] = pd.Categorical(df["layer"], categories=sorted(order, key=depth_key), ordered=True)
    return df.sort_values(["layer", "model"], kind="stable").assign(layer=lambda d: d["layer"].astype(str))


def sign_conflicts(tensor_stats: pd.DataFrame) -> pd.DataFrame:
    """Per-layer sign-conflict rate, averaged over the layer's tensors weighted by their size."""
    rows: dict[str, list[float]] = {}
    order: list[str] = []
    for r in tensor_stats.itertuples(index=False):
        rate = r.sign_conflict
        if rate is None or pd.isna(rate):
            continue
        label = layer_label(r.layer, r.kind, r.tensor)
        if label not in rows:
            rows[label] = [0.0, 0.0]
            order.append(label)
        weight = 1.0 if r.numel is None or pd.isna(r.numel) else float(r.numel)
        rows[label][0] += weight * float(rate)
        rows[label][1] += weight
    return pd.DataFrame(
        [
            {"layer": lay, "rate": rows[lay][0] / rows[lay][1]}
            for lay in sorted(order, key=depth_key)
            if rows[lay][1] > 0
        ],
        columns=["layer", "rate"],
    )


def parse_cosines(raw: Any, names: Sequence[str]) -> pd.DataFrame:
    """Pairwise cosines stored as JSON -> long a, b, cosine.

    Accepts a square matrix ([[1, c01], [c01, 1]]), a list of {i, j, cosine} records, or a mapping
    "i,j" / "i-j" -> value; indices refer to `names` (the merge's checkpoints in order).
    """
    if isinstance(raw, str):
        raw = json.loads(raw) if raw else None
    out: list[dict[str, Any]] = []

    def name(i: Any) -> str:
        i = int(i)
        return names[i] if i < len(names) else f"#{i}"

    if raw is None:
        pass
    elif isinstance(raw, Mapping):
        for key, value in raw.items():
            i, j = str(key).replace("-", ",").split(",")
            out.append({"a": name(i), "b": name(j), "cosine": float(value)})
    elif len(raw) and isinstance(raw[0], Mapping):
        for rec in raw:
            i = rec.get("i", rec.get("a"))
            j = rec.get("j", rec.get("b"))
            out.append({"a": name(i), "b": name(j), "cosine": float(rec.get("cosine", rec.get("value")))})
    else:
        mat = np.asarray(raw, dtype=float)
        for i in range(mat.shape[0]):
            for j in range(i + 1, mat.shape[1]):
                out.append({"a": name(i), "b": name(j), "cosine": float(mat[i, j])})
    return pd.DataFrame(out, columns=["a", "b", "cosine"])


def spectra_long(spectra: pd.DataFrame, tensor: str, checkpoints: Sequence[str]) -> pd.DataFrame:
    """Spectra rows of one tensor -> source, index, value, effective_rank, with sources named after the
    checkpoints. The effective rank is the one the merge recorded (store column), not recomputed here.

    Store rows: tensor, source ('task' with idx = checkpoint position, or 'delta' for the merged update),
    singular_values (list), effective_rank.
    """
    out = []
    for r in spectra[spectra["tensor"] == tensor].itertuples(index=False):
        if r.source == "delta":
            label = "merged Δ"
        else:
            i = int(r.idx)
            label = f"τ {checkpoints[i]}" if i < len(checkpoints) else f"τ #{i}"
        erank = getattr(r, "effective_rank", None)
        erank = float(erank) if erank is not None and not pd.isna(erank) else None
        for k, v in enumerate(_as_list(r.singular_values)):
            out.append({"source": label, "index": k, "value": float(v), "effective_rank": erank})
    return pd.DataFrame(out, columns=["source", "index", "value", "effective_rank"])


def merge_table(merges: pd.DataFrame, averages: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """One row per merge for the Results page: id, method, n, score, vs base, status, base, checkpoints."""
    cols = [
        "id",
        "method",
        "n",
        "average",
        "vs_base",
        "status",
        "base",
        "checkpoints",
        "study_id",
        "started_at",
    ]
    if merges is None or merges.empty:
        return pd.DataFrame(columns=cols)
    names = (
        dict(zip(models.get("fingerprint", []), models.get("name", []), strict=False)) if len(models) else {}
    )
    avg = dict(zip(averages["fingerprint"], averages["average"], strict=False)) if len(averages) else {}
    rows = []
    for m in merges.itertuples(index=False):
        base_fp = m.base_fingerprint
        merged_fp = m.merged_fingerprint
        score = avg.get(merged_fp) if merged_fp else None
        base_score = avg.get(base_fp) if base_fp else None
        rows.append(
            {
                "id": m.id,
                "method": m.config or m.method,
                "n": int(m.n) if m.n is not None and not pd.isna(m.n) else None,
                "base": names.get(base_fp) or (base_fp or ""),
                "checkpoints": ", ".join(short_name(c) for c in _as_list(m.checkpoint_refs)),
                "status": m.status,
                "average": score,
                "vs_base": (score - base_score) if score is not None and base_score is not None else None,
                "study_id": getattr(m, "study_id", None),
                "started_at": m.started_at,
            }
        )
    return pd.DataFrame(rows, columns=cols)


def distance_per_merge(merges: pd.DataFrame, model_stats: pd.DataFrame) -> pd.DataFrame:
    """The paper's Figure 4 points: each merge's configuration (else its method), n and distance from the
    base ‖Δ‖₂ (model_stats' model_delta_norm); merges with no recorded distance are left out."""
    dist = merges.merge(model_stats, left_on="id", right_on="merge_id")
    return pd.DataFrame(
        {
            "method": dist["config"].fillna(dist["method"]),
            "n": dist["n"],
            "distance": dist["model_delta_norm"],
        }
    ).dropna()


def base_refs(registered: pd.DataFrame) -> list[str]:
    """The registered base models' refs, in registration order."""
    return list(registered.loc[registered["kind"] == "base", "ref"]) if len(registered) else []


def mergeable_checkpoints(registered: pd.DataFrame, base: str) -> list[str]:
    """The registered checkpoints of `base`'s architecture (the others refuse to merge with it), the base
    itself left out."""
    arch = dict(zip(registered["ref"], registered["architecture"], strict=False))
    return [
        r
        for r in registered.loc[registered["kind"] == "checkpoint", "ref"]
        if r != base and arch.get(r) == arch.get(base)
    ]
