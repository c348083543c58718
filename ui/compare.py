"""A comparison: several methods merging the same checkpoints into the same base, each merge scored on one
suite, read back from the store as the frames the Compare view and the exported report draw.

A comparison runs as a study of exactly one subset, all of its checkpoints (the study protocol in jobs: the
base and every checkpoint scored once, every method merged in the resident base, resumable), so it needs no
job kind or table of its own; `is_comparison` tells such studies apart. Everything here is reshaping and
simple arithmetic on stored scalars (norms, dot products, effective ranks the merge recorded), no tensor math.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from ui.data import average_scores, depth_key, layer_label, short_name, task_scores

ROLES = ("base", "best checkpoint", "checkpoint", "merge")


def is_comparison(study: Mapping[str, Any]) -> bool:
    """A study whose only merge size is its whole pool (one subset: every method on the same checkpoints),
    and not a sweep (one method at several values of one hyperparameter, which the Study page draws)."""
    from jobs import sweep_axis

    pool = study.get("pool") or []
    sizes = study.get("sizes") or []
    if len(pool) < 2 or [int(s) for s in sizes] != [len(pool)]:
        return False
    return sweep_axis(study.get("methods") or []) is None


@dataclass
class Comparison:
    """What was compared and what came out; scores in percentage points, geometry as recorded."""

    study_id: str
    name: str
    created_at: datetime | None
    status: str
    suite: str
    limit: int | None
    base: str
    base_name: str
    checkpoints: list[str]
    checkpoint_names: list[str]
    methods: list[str]  # configuration labels, as the study names them ("TA (sum)", "TIES", …)
    method_of: dict[str, str] = field(default_factory=dict)  # label -> registered merge method
    recipes: dict[str, str] = field(default_factory=dict)  # label -> mergekit YAML of its merge
    merge_ids: dict[str, str] = field(default_factory=dict)  # method -> merge id (finished merges only)
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)  # model, role, task, score
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per method
    gains: pd.DataFrame = field(default_factory=pd.DataFrame)  # method, task, vs_base, vs_best
    kept: pd.DataFrame = field(default_factory=pd.DataFrame)  # method, checkpoint, kept
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)  # method, layer, relative, alignment
    disagreement: pd.DataFrame = field(default_factory=pd.DataFrame)  # layer, spread, low, high
    best_name: str | None = None

    @property
    def finished(self) -> bool:
        return bool(self.merge_ids)


def _list(value: Any) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value)


def _json(raw: Any) -> Any:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    return json.loads(raw) if isinstance(raw, str) else raw


def sum_norm_sq(task_norms: Sequence[float], cosines: Any) -> float | None:
    """‖Σ_i τ_i‖² from the recorded norms and pairwise cosines: Σ_ij cos_ij ‖τ_i‖ ‖τ_j‖."""
    norms = [float(x) for x in task_norms]
    cos = _json(cosines)
    if not norms or cos is None:
        return None
    total = 0.0
    for i, ni in enumerate(norms):
        for j, nj in enumerate(norms):
            c = 1.0 if i == j else float(cos[i][j])
            total += c * ni * nj
    return max(total, 0.0)


def method_summary(
    merges: pd.DataFrame, model_stats: pd.DataFrame, spectra: pd.DataFrame, averages: Mapping[str, float]
) -> pd.DataFrame:
    """One row per method: average score and its gain over the base and the best checkpoint (pp), then the
    geometry: ‖Δ‖ (the paper's Figure 4), ‖Δ‖ / ‖Σ τ_i‖, the share of Δ outside the task vectors' span, the
    share of task-vector mass dropped, how the sign
    conflicts were resolved, and the mean effective rank of Δ over the matrices whose spectra were recorded.

    merges: method, merge_id, fingerprint; averages: fingerprint or "base" / "best" -> average (pp).
    """
    rows = []
    stats = {r.merge_id: r for r in model_stats.itertuples(index=False)} if len(model_stats) else {}
    for m in merges.itertuples(index=False):
        st_row = stats.get(m.merge_id)
        avg = averages.get(m.fingerprint)
        base, best = averages.get("base"), averages.get("best")
        row: dict[str, Any] = {
            "method": m.method,
            "average": avg,
            "vs_base": avg - base if avg is not None and base is not None else None,
            "vs_best": avg - best if avg is not None and best is not None else None,
        }
        distance = getattr(st_row, "model_delta_norm", None) if st_row is not None else None
        row["distance"] = distance
        sq = (
            sum_norm_sq(_list(st_row.model_task_norms), st_row.model_cosines_json)
            if st_row is not None
            else None
        )
        row["relative_distance"] = distance / math.sqrt(sq) if distance is not None and sq else None
        row["outside_span"] = (
            outside_span(
                distance,
                st_row.model_task_norms,
                st_row.model_cosines_json,
                getattr(st_row, "model_task_dots", None),
            )
            if st_row is not None
            else None
        )
        for col in ("mass_dropped", "conflict_dropped", "conflict_summed"):
            value = getattr(st_row, col, None) if st_row is not None else None
            row[col] = None if value is None or pd.isna(value) else 100.0 * float(value)
        delta = (
            spectra[(spectra["merge_id"] == m.merge_id) & (spectra["source"] == "delta")]
            if len(spectra)
            else spectra
        )
        ranks = delta["effective_rank"].dropna() if len(delta) else pd.Series(dtype=float)
        row["effective_rank"] = float(ranks.mean()) if len(ranks) else None
        row["spectra"] = int(len(ranks))
        rows.append(row)
    cols = [
        "method",
        "average",
        "vs_base",
        "vs_best",
        "distance",
        "relative_distance",
        "outside_span",
        "mass_dropped",
        "conflict_dropped",
        "conflict_summed",
        "effective_rank",
        "spectra",
    ]
    return pd.DataFrame(rows, columns=cols)


def fitted_weights(task_norms: Sequence[float], cosines: Any, dots: Sequence[float]) -> list[float] | None:
    """The weights c with Δ ≈ Σ_i c_i τ_i (least squares: Gram c = ⟨Δ, τ⟩, the Gram matrix from the recorded
    norms and cosines): 1 each for a plain sum, 1/n for a mean, smaller where a method dropped a checkpoint's
    share. Unlike ⟨Δ, τ_i⟩ / ‖τ_i‖² this does not count the overlap of correlated task vectors twice."""
    norms = [float(x) for x in task_norms]
    cos = _json(cosines)
    if not norms or cos is None or len(dots) != len(norms):
        return None
    n = len(norms)
    gram = np.array(
        [[(1.0 if i == j else float(cos[i][j])) * norms[i] * norms[j] for j in range(n)] for i in range(n)]
    )
    coef = np.linalg.lstsq(gram, np.asarray(dots, dtype=float), rcond=1e-9)[0]
    return [float(c) for c in coef]


def kept_shares(
    merges: pd.DataFrame, model_stats: pd.DataFrame, checkpoint_names: Sequence[str]
) -> pd.DataFrame:
    """Per (method, checkpoint): the fitted weight of the checkpoint's task vector in the merged update, in
    percent (fitted_weights): 100 keeps it whole as a sum does, 100/n averages it, 0 drops it."""
    rows = []
    stats = {r.merge_id: r for r in model_stats.itertuples(index=False)} if len(model_stats) else {}
    for m in merges.itertuples(index=False):
        st_row = stats.get(m.merge_id)
        if st_row is None:
            continue
        dots = [float(d) for d in _list(getattr(st_row, "model_task_dots", None))]
        weights = fitted_weights(_list(st_row.model_task_norms), st_row.model_cosines_json, dots)
        for i, w in enumerate(weights or []):
            name = checkpoint_names[i] if i < len(checkpoint_names) else f"#{i}"
            rows.append({"method": m.method, "checkpoint": name, "kept": 100.0 * w})
    return pd.DataFrame(rows, columns=["method", "checkpoint", "kept"])


def outside_span(distance: float | None, task_norms: Any, cosines: Any, dots: Any) -> float | None:
    """Share (%) of ‖Δ‖² outside the span of the task vectors: 0 for any weighted sum of them (TA, TIES
    without trimming), larger for methods that add directions of their own (subspace methods, trimming)."""
    dots = [float(d) for d in _list(dots)]
    weights = fitted_weights(_list(task_norms), cosines, dots)
    if weights is None or not distance:
        return None
    inside = sum(w * d for w, d in zip(weights, dots, strict=True))
    return 100.0 * min(1.0, max(0.0, 1.0 - inside / float(distance) ** 2))


def layer_frame(tensor_stats: pd.DataFrame, method_of: Mapping[str, str]) -> pd.DataFrame:
    """Per (method, layer): ‖Δ‖, ‖Σ τ_i‖, their ratio (the relative size of the update) and the cosine
    between Δ and Σ τ_i (1: the update points where plain summation would go), in network order."""
    acc: dict[tuple[str, str], list[float]] = {}
    for r in tensor_stats.itertuples(index=False):
        method = method_of.get(r.merge_id)
        if method is None:
            continue
        label = layer_label(r.layer, r.kind, r.tensor)
        a = acc.setdefault((method, label), [0.0, 0.0, 0.0, 0.0])
        delta = 0.0 if r.delta_norm is None or pd.isna(r.delta_norm) else float(r.delta_norm)
        a[0] += delta**2
        sq = sum_norm_sq(_list(r.task_norms), r.cosines_json)
        a[1] += sq or 0.0
        dots = _list(getattr(r, "task_dots", None))
        if dots:
            a[2] += sum(float(d) for d in dots)
            a[3] = 1.0
    rows = []
    for (method, label), (d2, s2, dot, has_dots) in acc.items():
        d, s = math.sqrt(d2), math.sqrt(s2)
        rows.append(
            {
                "method": method,
                "layer": label,
                "delta_norm": d,
                "sum_norm": s,
                "relative": d / s if s else None,
                "alignment": dot / (d * s) if has_dots and d and s else None,
            }
        )
    df = pd.DataFrame(rows, columns=["method", "layer", "delta_norm", "sum_norm", "relative", "alignment"])
    if df.empty:
        return df
    order = sorted(dict.fromkeys(df["layer"]), key=depth_key)
    methods = list(dict.fromkeys(method_of.values()))
    df["_l"] = df["layer"].map({lay: i for i, lay in enumerate(order)})
    df["_m"] = df["method"].map({m: i for i, m in enumerate(methods)})
    return df.sort_values(["_l", "_m"]).drop(columns=["_l", "_m"]).reset_index(drop=True)


def disagreement(layers: pd.DataFrame) -> pd.DataFrame:
    """Layers ranked by where the methods disagree most about WHERE to move, with the methods at either end.

    Each method's relative update size per layer (‖Δ‖/‖Σ τ‖) is divided by its whole-model value, so a method
    that is uniformly smaller (a mean instead of a sum) does not count as disagreeing; the spread (max − min
    across methods) of these profiles is large where one method concentrates or spares a layer unlike the
    others. `profile` columns carry the normalised values per method."""
    cols = ["layer", "spread", "low", "high"]
    rel = layers.dropna(subset=["relative"]) if len(layers) else layers
    if rel is None or rel.empty or rel["method"].nunique() < 2:
        return pd.DataFrame(columns=cols)
    whole = {
        method: math.sqrt((part["delta_norm"] ** 2).sum()) / math.sqrt((part["sum_norm"] ** 2).sum())
        for method, part in layers.groupby("method", sort=False)
        if (part["sum_norm"] ** 2).sum() > 0
    }
    rel = rel[rel["method"].map(lambda m: bool(whole.get(m)))].reset_index(drop=True)
    rel["profile"] = rel["relative"] / rel["method"].map(whole)
    rows = []
    for label, part in rel.groupby("layer", sort=False):
        if len(part) < 2:
            continue
        lo, hi = part.loc[part["profile"].idxmin()], part.loc[part["profile"].idxmax()]
        rows.append(
            {
                "layer": label,
                "spread": float(hi["profile"] - lo["profile"]),
                "low": lo["method"],
                "high": hi["method"],
            }
        )
    return (
        pd.DataFrame(rows, columns=cols)
        .sort_values("spread", ascending=False, kind="stable")
        .reset_index(drop=True)
    )


def task_gains(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (merge, task): gain over the base and over the best checkpoint, percentage points."""
    cols = ["method", "task", "score", "vs_base", "vs_best"]
    merged = scores[scores["role"] == "merge"]
    if merged.empty:
        return pd.DataFrame(columns=cols)
    base = scores[scores["role"] == "base"].set_index("task")["score"]
    best = scores[scores["role"] == "best checkpoint"].set_index("task")["score"]
    out = merged.rename(columns={"model": "method"})[["method", "task", "score"]].copy()
    out["vs_base"] = out["score"] - out["task"].map(base) if len(base) else None
    out["vs_best"] = out["score"] - out["task"].map(best) if len(best) else None
    return out[cols].reset_index(drop=True)


def _limit_matches(rows: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    if rows.empty or "limit" not in rows:
        return rows
    if limit is None:
        return rows[rows["limit"].isna()]
    return rows[rows["limit"] == int(limit)]


def load_comparison(db: Any, study_id: str) -> Comparison:
    """Everything the Compare view and the report show about one comparison, from the store."""
    from evaluation.suites import declared_metrics  # what each task contributes, as the study tables read

    study = db.get_study(study_id)
    models = db.models_df()
    by_ref = {r.ref: (r.fingerprint, r.name) for r in models.itertuples(index=False)} if len(models) else {}

    def name(ref: str) -> str:
        return (by_ref.get(ref, (None, None))[1]) or short_name(ref)

    pool = [str(r) for r in study["pool"]]
    methods = [str(c.get("name") if isinstance(c, Mapping) else c) for c in study["methods"]]
    method_of = {
        str(c.get("name")): str(c.get("method") or c.get("name")) if isinstance(c, Mapping) else str(c)
        for c in study["methods"]
        if isinstance(c, Mapping)
    }
    comp = Comparison(
        study_id=study_id,
        name=study["name"],
        created_at=study.get("created_at"),
        status=study["status"],
        suite=study["suite"],
        limit=study.get("limit"),
        base=study["base"],
        base_name=name(study["base"]),
        checkpoints=pool,
        checkpoint_names=[name(r) for r in pool],
        methods=methods,
        method_of={m: method_of.get(m, m) for m in methods},
    )
    merges = db.merges_df(study_id=study_id)
    done = merges[merges["status"] == "done"] if len(merges) else merges
    chosen = []
    for method in methods:
        rows = done[done["config"] == method] if len(done) else done
        if len(rows):
            m = rows.iloc[-1]
            comp.merge_ids[method] = m["id"]
            comp.recipes[method] = m["recipe_yaml"]
            chosen.append({"method": method, "merge_id": m["id"], "fingerprint": m["merged_fingerprint"]})
    if not comp.recipes and len(merges):  # the recipe is known even before any merge finished
        for m in merges.itertuples(index=False):
            comp.recipes.setdefault(m.config or m.method, m.recipe_yaml)
    chosen_df = pd.DataFrame(chosen, columns=["method", "merge_id", "fingerprint"])

    # the fingerprints the comparison ran on (its recorded inputs), else the registered ones
    inputs = {**{ref: fp for ref, (fp, _) in by_ref.items()}, **dict(study.get("inputs") or {})}
    base_fp = inputs.get(comp.base)
    ck_fps = {inputs[r]: name(r) for r in pool if r in inputs}
    labels = {base_fp: comp.base_name, **ck_fps}
    labels.update({r.fingerprint: r.method for r in chosen_df.itertuples(index=False)})
    fps = [fp for fp in labels if fp]
    rows = _limit_matches(
        db.eval_rows_df(fingerprints=fps, suite=comp.suite) if fps else pd.DataFrame(), comp.limit
    )
    scores = task_scores(rows, labels=labels, declared=declared_metrics(comp.suite) if len(rows) else {})
    averages = average_scores(scores)
    avg_of = dict(zip(averages["fingerprint"], averages["average"], strict=False))
    ck_avgs = {fp: avg_of[fp] for fp in ck_fps if fp in avg_of}
    best_fp = max(ck_avgs, key=ck_avgs.get) if ck_avgs else None
    comp.best_name = ck_fps.get(best_fp) if best_fp else None

    def role(fp: str) -> str:
        if fp == base_fp:
            return "base"
        if fp == best_fp:
            return "best checkpoint"
        return "checkpoint" if fp in ck_fps else "merge"

    scores = scores.assign(role=scores["fingerprint"].map(role))
    comp.scores = scores[["model", "role", "task", "score"]].reset_index(drop=True)
    lookup = {fp: avg_of[fp] for fp in avg_of}
    if base_fp in avg_of:
        lookup["base"] = avg_of[base_fp]
    if best_fp:
        lookup["best"] = avg_of[best_fp]

    ids = list(chosen_df["merge_id"])
    model_stats = db.model_stats_df(ids) if ids else pd.DataFrame()
    spectra = pd.concat([db.spectra_df(i) for i in ids], ignore_index=True) if ids else pd.DataFrame()
    comp.summary = method_summary(chosen_df, model_stats, spectra, lookup)
    comp.gains = task_gains(comp.scores)
    comp.kept = kept_shares(chosen_df, model_stats, comp.checkpoint_names)
    comp.layers = layer_frame(
        db.tensor_stats_df(ids) if ids else pd.DataFrame(), dict(zip(ids, chosen_df["method"], strict=True))
    )
    comp.disagreement = disagreement(comp.layers)
    return comp
