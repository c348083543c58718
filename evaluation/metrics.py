"""The paper's study metrics (paper.md §1.5) as plain functions over stored scores.

For each method and subset size n, over the k_n merged subsets S:

- success probability  P_n = 100 · (1/k_n) Σ_S 1[A(M_S) > R_S]          (percent)
- mean gain            G_n = (1/k_n) Σ_S (A(M_S) − R_S)                (percentage points)

where A(M) is a model's unweighted mean over the suite's tasks, in percentage points, and the reference
R_S is one of:

- ``"base"``: the base model, A(B) (Tables 1 and 3);
- ``"best_pool"``: the best single checkpoint of the whole pool by aggregate (Table 2's "best FT");
- ``"best_subset"``: the best single checkpoint among the members of S.

Per task, A is the task's value and the best checkpoint is the one best *on that task*. Each P_n and G_n
comes with a percentile bootstrap confidence interval over the k_n subsets, seeded per (method, n, task)
so adding a method never changes another's interval.

Inputs (pandas DataFrames; `value` is a fraction in [0, 1], as in `ScoreRow.value`):

- merges: ``method, n, subset_id, task, value`` and, for ``best_subset``, ``members`` (the subset's
  checkpoint names, as a list/tuple or a comma-separated string);
- base: ``task, value`` (one row per task);
- singles: ``checkpoint, task, value`` (every checkpoint of the pool).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from evaluation.errors import EvaluationError

REFERENCES = ("base", "best_pool", "best_subset")


def with_singles(
    merges: pd.DataFrame, singles: pd.DataFrame, methods: Sequence[str] | None = None
) -> pd.DataFrame:
    """Add the paper's n=1 rows: every single checkpoint counts as a size-1 "merge" of each method."""
    methods = list(methods) if methods is not None else sorted(merges["method"].unique())
    ones = [
        singles.assign(method=m, n=1, subset_id=singles["checkpoint"], members=singles["checkpoint"]).drop(
            columns="checkpoint"
        )
        for m in methods
    ]
    return pd.concat([merges, *ones], ignore_index=True)


def subset_scores(
    merges: pd.DataFrame,
    base: pd.DataFrame,
    singles: pd.DataFrame | None = None,
    *,
    reference: str = "base",
    per_task: bool = False,
) -> pd.DataFrame:
    """One row per merged subset (and per task with per_task): its score, the reference, the gain and whether
    it beats the reference. Columns: method, n, subset_id, [task], score, reference, gain, success (score,
    reference and gain in percentage points)."""
    if reference not in REFERENCES:
        raise EvaluationError(f"unknown reference {reference!r}; use one of {', '.join(REFERENCES)}")
    _require(merges, ("method", "n", "subset_id", "task", "value"), "merges")
    _require(base, ("task", "value"), "base")
    tasks = sorted(base["task"].unique())
    _check_tasks(merges.groupby(["method", "n", "subset_id"])["task"], tasks, "merge")
    keys = ["method", "n", "subset_id"] + (["task"] if per_task else [])
    scored = merges.groupby(keys, as_index=False)["value"].mean().rename(columns={"value": "score"})
    scored["score"] *= 100.0

    if reference == "base":
        ref = base.set_index("task")["value"] * 100.0
        scored["reference"] = scored["task"].map(ref) if per_task else ref.mean()
    else:
        if singles is None:
            raise EvaluationError(f"reference {reference!r} needs the single checkpoints' scores (singles)")
        _require(singles, ("checkpoint", "task", "value"), "singles")
        _check_tasks(singles.groupby("checkpoint")["task"], tasks, "checkpoint")
        table = (
            singles.pivot_table(index="checkpoint", columns="task", values="value", aggfunc="mean") * 100.0
        )
        if reference == "best_pool":
            scored["reference"] = scored["task"].map(table.max()) if per_task else table.mean(axis=1).max()
        else:
            scored["reference"] = _best_of_members(merges, table, scored, per_task)
    scored["gain"] = scored["score"] - scored["reference"]
    scored["success"] = scored["score"] > scored["reference"]
    return scored


def success_and_gain(
    scores: pd.DataFrame, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """P_n and G_n with bootstrap intervals from `subset_scores` output. Columns: method, n, [task], k,
    success, success_lo, success_hi (percent), gain, gain_lo, gain_hi (pp), reference (mean, pp)."""
    keys = ["method", "n"] + (["task"] if "task" in scores.columns else [])
    out = []
    for key, group in scores.groupby(keys, sort=True):
        success = group["success"].to_numpy(dtype=float) * 100.0
        gain = group["gain"].to_numpy(dtype=float)
        rng = np.random.default_rng([seed, zlib.crc32(repr(key).encode())])
        s_lo, s_hi = _bootstrap(success, n_boot, ci, rng)
        g_lo, g_hi = _bootstrap(gain, n_boot, ci, rng)
        out.append(
            dict(zip(keys, key, strict=True))
            | {
                "k": len(group),
                "success": success.mean(),
                "success_lo": s_lo,
                "success_hi": s_hi,
                "gain": gain.mean(),
                "gain_lo": g_lo,
                "gain_hi": g_hi,
                "reference": group["reference"].mean(),
            }
        )
    return pd.DataFrame(out)


def study_metrics(
    merges: pd.DataFrame,
    base: pd.DataFrame,
    singles: pd.DataFrame | None = None,
    *,
    reference: str = "base",
    per_task: bool = False,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """P_n and G_n per method and n (and per task) against `reference`; columns: `success_and_gain`."""
    scores = subset_scores(merges, base, singles, reference=reference, per_task=per_task)
    return success_and_gain(scores, n_boot=n_boot, ci=ci, seed=seed)


def _bootstrap(values: np.ndarray, n_boot: int, ci: float, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of the mean, resampling the subsets with replacement."""
    if len(values) < 2 or n_boot < 1:
        return float(values.mean()), float(values.mean())
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    tail = (1.0 - ci) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _best_of_members(
    merges: pd.DataFrame, table: pd.DataFrame, scored: pd.DataFrame, per_task: bool
) -> pd.Series:
    if "members" not in merges.columns:
        raise EvaluationError("reference 'best_subset' needs a `members` column in merges")
    members = merges.drop_duplicates(["method", "n", "subset_id"]).set_index(["method", "n", "subset_id"])[
        "members"
    ]
    refs = []
    for _, row in scored.iterrows():
        names = _names(members.loc[(row["method"], row["n"], row["subset_id"])])
        unknown = [m for m in names if m not in table.index]
        if unknown:
            raise EvaluationError(f"subset {row['subset_id']!r} names checkpoints without scores: {unknown}")
        sub = table.loc[names]
        refs.append(sub[row["task"]].max() if per_task else sub.mean(axis=1).max())
    return pd.Series(refs, index=scored.index)


def _names(value) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise EvaluationError(f"{what} lacks column(s) {', '.join(missing)}")


def _check_tasks(grouped, tasks: list[str], what: str) -> None:
    """Every model must be scored on the base's tasks, or its aggregate is not comparable."""
    for key, names in grouped:
        if sorted(set(names)) != tasks:
            raise EvaluationError(f"{what} {key} is scored on {sorted(set(names))}, the base on {tasks}")
