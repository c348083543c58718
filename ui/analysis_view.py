"""Analyse before merging (Geometry page): pick a base and checkpoints, run the stats-only pass as a
background job, and read what it found: the cosine matrix of the task vectors, their norm per layer, the
sign-conflict rate per layer with the layers that conflict most, and singular spectra.

The numbers are the engine's (merging.analyse, stored through store.put_analysis); this module only picks
inputs, submits the job and draws stored rows with ui.charts, the same charts a merge's geometry uses.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

import merging
from ui import charts, data, jobs_view, launch

P = "analyse"  # session-state prefix of this view's widgets
SPECTRA = {
    "auto": "a few representative matrices (first, middle, last layer)",
    "all": "every matrix (an SVD per checkpoint each: slow on big models)",
    "none": "none",
}


def render(db: Any, runner: Any) -> None:
    st.caption(
        "A stats-only pass over a base and its checkpoints, before any merge: per-layer task-vector norms, "
        "pairwise cosines, sign-conflict rates and singular spectra, and the layers where the checkpoints "
        "conflict most. Nothing is merged and nothing is written but these statistics."
    )
    _launcher(db, runner)
    jobs_view.live_jobs(limit=2, key=P, kinds=["analyse"])
    analyses = db.analyses_df()
    if analyses.empty:
        st.info("No analysis yet. Pick a base and checkpoints above and press Analyse.")
        return
    _report(db, analyses)


def _launcher(db: Any, runner: Any) -> None:
    models = db.models_df()
    registered = models[models["kind"].isin(["base", "checkpoint"])] if len(models) else models
    bases = data.base_refs(registered)
    if not bases:
        st.info("Register a base and its checkpoints first (Models page), or build the demo zoo on Home.")
        return
    names = dict(zip(registered["ref"], registered["name"], strict=False))
    with st.container(border=True):
        c1, c2 = st.columns([1, 2])
        base = c1.selectbox("Base model", bases, format_func=lambda r: names.get(r) or r, key=f"{P}:base")
        options = data.mergeable_checkpoints(registered, base)
        chosen = c2.multiselect(
            "Checkpoints",
            options,
            default=options[:4],
            format_func=lambda r: names.get(r) or r,
            key=f"{P}:checkpoints:{base}",
        )
        c3, c4 = st.columns([2, 1])
        spectra = c3.selectbox("Singular spectra of", list(SPECTRA), format_func=SPECTRA.get, key=f"{P}:spec")
        c4.write("")
        if c4.button("Analyse", type="primary", key=f"{P}:go", icon=":material/query_stats:"):
            job_id = launch.submit_analysis(runner, base=base, checkpoints=chosen, spectra=spectra)
            st.success(f"Launched analysis job `{job_id}`; its result appears below when it is done.")


def _report(db: Any, analyses: pd.DataFrame) -> None:
    labels = {
        r.id: f"{r.n} checkpoints of {data.short_name(r.base_ref)} · {r.created_at:%Y-%m-%d %H:%M:%S}"
        for r in analyses.itertuples()
    }
    st.subheader("What the analysis found")
    chosen = st.selectbox("Analysis", list(labels), format_func=labels.get, key=f"{P}:which")
    row = db.get_analysis(chosen)
    names = [data.short_name(r) for r in row["checkpoint_refs"]]
    summary = row["summary"]
    layers = pd.DataFrame(summary.get("layers") or [])
    worst = list(summary.get("most_conflicting") or [])

    c1, c2, c3 = st.columns(3)
    mean_cos = summary.get("mean_cosine")
    c1.metric("Mean pairwise cosine", "n/a" if mean_cos is None else f"{mean_cos:.3f}")
    chance = 100.0 * merging.random_sign_conflict(len(names))
    c2.metric(
        "Sign-conflict rate",
        f"{100.0 * (summary.get('sign_conflict') or 0.0):.1f}%",
        help=f"Independent random signs would give {chance:.1f}% for {len(names)} checkpoints; well below "
        "that, the checkpoints' updates agree in sign.",
    )
    c3.metric("Most conflicting layer", worst[0] if worst else "n/a")

    tensors = db.tensor_stats_df(chosen)
    left, right = st.columns(2)
    with left:
        cos = data.parse_cosines(summary.get("model_cosines"), names)
        st.plotly_chart(
            charts.cosine_heatmap(cos, title="Pairwise cosine of task vectors (before merging)", order=names),
            key=f"{P}:cos",
        )
    with right:
        st.plotly_chart(
            charts.layer_norm_heatmap(
                data.layer_norms(tensors, names), title="Task-vector norm per layer", order=names
            ),
            key=f"{P}:norms",
        )
    st.plotly_chart(
        charts.sign_conflict_bars(
            data.sign_conflicts(tensors),
            title="Sign-conflict rate per layer",
            highlight=worst[:3],
        ),
        key=f"{P}:signs",
    )
    if len(layers):
        st.markdown("**Layers where the checkpoints conflict most**")
        st.dataframe(_worst_table(layers, worst), hide_index=True, key=f"{P}:worst")

    spectra = db.spectra_df(chosen)
    if spectra.empty:
        st.caption("This analysis recorded no singular spectra.")
    else:
        matrices = list(dict.fromkeys(spectra["tensor"]))
        tensor = st.selectbox("Matrix", matrices, key=f"{P}:tensor")
        st.plotly_chart(
            charts.spectra_chart(
                data.spectra_long(spectra, tensor, names),
                title=f"Singular values of the task vectors · {tensor}",
            ),
            key=f"{P}:spectra",
        )


def _worst_table(layers: pd.DataFrame, worst: list[str]) -> pd.DataFrame:
    """The engine's ranking as a table: sign conflict in percent, mean cosine, size."""
    ranked = layers.set_index("layer").loc[[w for w in worst if w in set(layers["layer"])]].reset_index()
    return pd.DataFrame(
        {
            "rank": range(1, len(ranked) + 1),
            "layer": ranked["layer"],
            "sign conflict (%)": (100.0 * ranked["sign_conflict"]).round(2),
            "mean cosine": ranked["mean_cosine"].round(4),
            "parameters": ranked["numel"],
        }
    )
