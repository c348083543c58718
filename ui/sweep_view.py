"""Sweeps on the Study page: launch one method's hyperparameter over a list of values on fixed subsets, and
draw a finished (or running) sweep as score against the value, the paper's ablations (App. C).

A sweep is stored as a study (jobs.sweep); this module only collects the request, submits it, and draws
what jobs.sweep reads back from the store.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

import jobs
import merging
from ui import charts, launch
from ui.session import workspace_home

P = "sweep"  # session-state prefix of this view's widgets

# What the paper reports for its own ablations (paper.md §1.4; App. C: all 12 checkpoints merged, mean over
# its 16 benchmarks). Shown as the paper's statement beside the user's curve, never mixed into it.
PAPER_ABLATIONS = {
    ("task_arithmetic", "lambda"): "λ ∈ {0.1, …, 1.9}: accuracy saturates around λ ≈ 1.0 (1.0 used).",
    ("ties", "density"): "density 10–100 %: U-shaped; 10 % chosen deliberately although 100 % scored well.",
    (
        "task_arithmetic_sb",
        "svd_thresh",
    ): "β ∈ [0, 0.5]: large gain from 0 to 0.05, flat over 0.1–0.5 (0.2 used).",
    ("ties_sb", "svd_thresh"): "β ∈ [0, 0.5]: large gain from 0 to 0.05, flat over 0.1–0.5 (0.2 used).",
}


def launcher(db: Any, runner: Any, bases: list[str], pool_all: list[str], names: dict[str, str]) -> None:
    """The "Sweep a hyperparameter" form: method, parameter, values, subset size n and number of subsets."""
    if not bases or len(pool_all) < 2:
        st.info("Register a base and at least two checkpoints first (or build the demo zoo on Home).")
        return
    methods = {m.name: m for m in merging.all_methods() if m.needs_base and jobs.sweepable_params(m.name)}
    c1, c2, c3 = st.columns([1, 1, 1])
    base = c1.selectbox("Base", bases, format_func=lambda r: names.get(r, r), key=f"{P}:base")
    method = c2.selectbox(
        "Method",
        list(methods),
        index=list(methods).index("task_arithmetic") if "task_arithmetic" in methods else 0,
        format_func=lambda m: methods[m].title,
        key=f"{P}:method",
    )
    param = c3.selectbox("Hyperparameter", jobs.sweepable_params(method), key=f"{P}:param:{method}")
    pool = st.multiselect(
        "Checkpoint pool (the subsets are drawn from it)",
        pool_all,
        default=pool_all[:12],
        format_func=lambda r: names.get(r, r),
        key=f"{P}:pool",
    )
    default_values = jobs.SWEEP_DEFAULT_VALUES.get(param, (0.5, 1.0, 1.5))
    c4, c5, c6 = st.columns([2, 1, 1])
    values = c4.text_input(
        "Values (comma-separated)",
        value=", ".join(f"{v:g}" for v in default_values),
        key=f"{P}:values:{param}",
    )
    n = c5.number_input(
        "Checkpoints per merge (n)",
        min_value=1,
        max_value=max(1, len(pool)),
        value=min(4, max(2, len(pool))),
        key=f"{P}:n",
    )
    subsets = c6.number_input(
        "Subsets (fixed across values)", min_value=1, value=jobs.SWEEP_DEFAULT_SUBSETS, key=f"{P}:subsets"
    )
    suites = launch.suite_choices(workspace_home())
    c7, c8, c9 = st.columns(3)
    suite = c7.selectbox("Suite", list(suites), format_func=suites.get, key=f"{P}:suite")
    limit = c8.number_input("Items per task (empty: all)", min_value=1, value=None, key=f"{P}:limit")
    backend = c9.radio("Run on", ["local", "ray"], horizontal=True, key=f"{P}:backend")
    paper = PAPER_ABLATIONS.get((method, param))
    if paper:
        st.caption(f"The paper's ablation: {paper}")
    if st.button("Launch sweep", type="primary", key=f"{P}:launch", icon=":material/tune:"):
        job_id = launch.submit_sweep(
            runner,
            base=base,
            pool=pool,
            method=method,
            param=param,
            values=values,
            n=int(n),
            subsets=int(subsets),
            suite=suite,
            limit=limit,
            backend=backend,
        )
        st.success(f"Launched sweep job `{job_id}`; its curve appears under Report when merges finish.")


def curve(db: Any, study_id: str, base_score: float | None, best_score: float | None) -> bool:
    """Draw the selected study as a sweep when it is one; returns whether it was."""
    study = db.get_study(study_id)
    axis = jobs.sweep_axis(study["methods"])
    if axis is None:
        return False
    st.markdown(
        f"**Sweep of {axis.param} for {axis.method}**: n = {study['sizes'][0]}, "
        f"{study['subsets_per_size']} subsets, the same checkpoints at every value"
    )
    points = jobs.sweep_points(db, study_id)
    st.plotly_chart(
        charts.sweep_curve(
            points,
            axis.param,
            base_score=base_score,
            best_score=best_score,
            title=f"Average accuracy (%) against {axis.param} (the paper's ablation, on your checkpoints)",
        ),
        key=f"{P}:curve",
    )
    paper = PAPER_ABLATIONS.get((axis.method, axis.param))
    if paper:
        st.caption(f"The paper's ablation (its checkpoints, not yours): {paper}")
    distance = _distance_points(db, study_id, axis)
    if len(distance):
        st.plotly_chart(
            charts.sweep_curve(
                distance,
                axis.param,
                y="distance",
                y_title="‖θ_merged − θ_base‖₂",
                title=f"Distance from the base against {axis.param}",
            ),
            key=f"{P}:distance",
        )
    if len(points):
        table = points.groupby("value", sort=True)["accuracy"].agg(["mean", "min", "max", "count"])
        table.index = [f"{axis.param}={v:g}" for v in table.index]
        table.columns = ["mean (%)", "min (%)", "max (%)", "merges"]
        st.dataframe(table.round(2), key=f"{P}:table")
    return True


def _distance_points(db: Any, study_id: str, axis: jobs.SweepAxis) -> pd.DataFrame:
    """value, subset_id, distance (‖θ_merged − θ_base‖₂ the merge recorded) per finished merge."""
    merges = db.merges_df(study_id=study_id, status="done")
    if merges.empty:
        return pd.DataFrame(columns=["value", "subset_id", "distance"])
    stats = db.model_stats_df(list(merges["id"]))
    joined = merges.merge(stats, left_on="id", right_on="merge_id")
    value_of = axis.value_of()
    joined = joined[joined["config"].isin(value_of) & joined["model_delta_norm"].notna()]
    return pd.DataFrame(
        {
            "value": joined["config"].map(value_of),
            "subset_id": joined["subset_id"],
            "distance": joined["model_delta_norm"],
        }
    )
