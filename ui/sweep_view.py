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
from ui import data, launch, sweep_report
from ui.session import workspace_home

P = "sweep"  # session-state prefix of this view's widgets


def launcher(db: Any, runner: Any, registered: pd.DataFrame) -> None:
    """The "Sweep a hyperparameter" form: base, method, parameter, values, the pool (checkpoints of the
    base's architecture), subset size n and number of subsets, suite, and where it runs."""
    bases = data.base_refs(registered)
    if not bases or int((registered["kind"] == "checkpoint").sum()) < 2:
        st.info("Register a base and at least two checkpoints first (or build the demo zoo on Home).")
        return
    names = dict(zip(registered["ref"], registered["name"], strict=False))
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
    pool_all = data.mergeable_checkpoints(registered, base)
    pool = st.multiselect(
        "Checkpoint pool (the subsets are drawn from it)",
        pool_all,
        default=pool_all[:12],
        format_func=lambda r: names.get(r, r),
        key=f"{P}:pool:{base}",
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
    paper = sweep_report.PAPER_ABLATIONS.get((method, param))
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


def is_sweep(study: dict) -> bool:
    """Whether a stored study is a sweep (its configurations vary one parameter of one method)."""
    return jobs.sweep_axis(study["methods"]) is not None


def curve(db: Any, study_id: str, base_score: float | None, best_score: float | None) -> bool:
    """Draw the selected study as a sweep when it is one; returns whether it was."""
    view = sweep_report.build(db, study_id, base_score, best_score)
    if view is None:
        return False
    st.markdown(f"**{view.heading}**")
    st.plotly_chart(view.figures[0], key=f"{P}:curve")
    if view.paper:
        st.caption(f"The paper's ablation (its checkpoints, not yours): {view.paper}")
    for i, fig in enumerate(view.figures[1:]):
        st.plotly_chart(fig, key=f"{P}:figure:{i}")
    if len(view.table):
        st.dataframe(view.table.round(2), key=f"{P}:table")
    return True
