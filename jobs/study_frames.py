"""A study's scores as the frames `evaluation.metrics` reads: the one definition behind every study table.

`python -m jobs report`, the Study page and the study report export all call `study_frames`, so a study
shows the same success rates and gains wherever it is read. Which stored rows count:
- the study's suite at the study's limit (a score of 100 items per task is not the study's score on the
  whole test set, and the other way round);
- one metric per task, the one the suite declares (`evaluation.suites.declared_metrics`); for a task the
  suite cannot tell here (another lm-eval task, a task folder no longer on disk), the first of
  PREFERRED_METRICS it has, the rule of the app's other score tables (ui/data.py pick_metric);
- the latest row when a score was written twice;
- the fingerprints the study ran on: its recorded inputs, then its merge records, then the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from evaluation.suites import declared_metrics

# A task's metric when its suite does not say (the same order as ui/data.py PREFERRED_METRICS).
PREFERRED_METRICS = ("acc", "acc_norm", "exact_match", "accuracy")


def headline_rows(rows: pd.DataFrame, declared: Mapping[str, str]) -> pd.DataFrame:
    """fingerprint, task, value: each task's `declared` metric (else the first of PREFERRED_METRICS it
    has, else its first), the latest row when a score was written twice."""
    if rows.empty:
        return pd.DataFrame(columns=["fingerprint", "task", "value"])
    keep = []
    for task, part in rows.groupby("task", sort=False):
        metrics = [m for m in dict.fromkeys(part["metric"]) if not str(m).endswith("_stderr")]
        metric = declared.get(str(task))
        if metric is None:
            metric = next((m for m in PREFERRED_METRICS if m in metrics), metrics[0] if metrics else None)
        keep.append(part[part["metric"] == metric])
    out = pd.concat(keep, ignore_index=True)
    return out.drop_duplicates(["fingerprint", "task"], keep="last")[["fingerprint", "task", "value"]]


def at_limit(rows: pd.DataFrame, limit: Any) -> pd.DataFrame:
    """The rows scored at `limit` items per task (None: the whole test set)."""
    if rows.empty:
        return rows
    if limit is None or pd.isna(limit):
        return rows[rows["limit"].isna()]
    return rows[rows["limit"] == int(limit)]


def short_ref(ref: str) -> str:
    """A checkpoint's name in the tables: the last component of a path, a Hub id whole (owner/name), so
    two owners' checkpoints of one name stay apart (the same rule as ui/data.py short_name)."""
    ref = str(ref).rstrip("/")
    parts = ref.split("/")
    if len(parts) == 2 and not ref.startswith(("/", ".")):
        return ref
    return parts[-1] or ref


def _as_list(value: Any) -> list:
    """A stored list column (a numpy array, a list, or None / NA when it was never filled in) as a list."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return []
    return list(value)


def study_frames(store, study: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(merges: method, n, subset_id, task, value, members; base: task, value; singles: checkpoint, task,
    value) for `evaluation.metrics`, from the store's rows of `study` (a `store.get_study` dict). Merges
    not done, or with no score, are left out."""
    merges = store.merges_df(study_id=study["id"])
    rows = at_limit(store.eval_rows_df(suite=study["suite"]), study.get("limit"))
    scores = headline_rows(rows, declared_metrics(study["suite"]) if len(rows) else {})
    done = (
        merges[(merges["status"] == "done") & merges["merged_fingerprint"].notna()] if len(merges) else merges
    )
    # The fingerprints this study ran on: its recorded inputs, else its merge records, else the registry.
    fp_of: dict[str, str] = dict(study.get("inputs") or {})
    base_fp = fp_of.get(study["base"])
    for m in done.itertuples(index=False) if len(done) else []:
        base_fp = base_fp or m.base_fingerprint
        for ref, fp in zip(_as_list(m.checkpoint_refs), _as_list(m.checkpoint_fingerprints), strict=False):
            if fp:
                fp_of.setdefault(str(ref), str(fp))
    models = store.models_df()
    registered = dict(zip(models["ref"], models["fingerprint"], strict=False)) if len(models) else {}
    base_fp = base_fp or registered.get(study["base"])
    merged_rows = []
    by_fp = {fp: part for fp, part in scores.groupby("fingerprint")}
    for m in done.itertuples(index=False) if len(done) else []:
        part = by_fp.get(m.merged_fingerprint)
        if part is None:
            continue
        members = ",".join(short_ref(r) for r in _as_list(m.checkpoint_refs))
        for r in part.itertuples(index=False):
            merged_rows.append(
                {
                    "method": m.config or m.method,
                    "n": int(m.n),
                    "subset_id": m.subset_id or m.id,
                    "task": r.task,
                    "value": r.value,
                    "members": members,
                }
            )
    merged = pd.DataFrame(merged_rows, columns=["method", "n", "subset_id", "task", "value", "members"])
    base = by_fp[base_fp][["task", "value"]].reset_index(drop=True) if base_fp in by_fp else scores.iloc[:0]
    singles = []
    for ref in study["pool"]:
        fp = fp_of.get(ref) or registered.get(ref)
        if fp in by_fp:
            singles.append(by_fp[fp][["task", "value"]].assign(checkpoint=short_ref(ref)))
    single_df = (
        pd.concat(singles, ignore_index=True)[["checkpoint", "task", "value"]]
        if singles
        else pd.DataFrame(columns=["checkpoint", "task", "value"])
    )
    return merged, base[["task", "value"]], single_df
