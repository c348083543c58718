"""The Compare view: one screen answering "which method, on these checkpoints, and why did that one fail?".

Scores of every merge against the base and the best checkpoint on the left, the geometry that explains them
on the right (distance from the base, mass dropped, sign conflicts resolved, effective rank, what each method
kept of every checkpoint), then the layers where the methods disagree most and the recipes. The page exports
the same content as a report (ui.report, ui.report_view).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import compare_charts
from ui.compare import Comparison

SUMMARY_COLUMNS = {
    "method": st.column_config.TextColumn("method"),
    "average": st.column_config.NumberColumn("average (%)", format="%.1f"),
    "vs_base": st.column_config.NumberColumn("vs base (pp)", format="%+.1f"),
    "vs_best": st.column_config.NumberColumn("vs best (pp)", format="%+.1f"),
    "distance": st.column_config.NumberColumn(
        "‖Δ‖₂", format="%.4g", help="Distance from the base (Figure 4)"
    ),
    "relative_distance": st.column_config.NumberColumn(
        "‖Δ‖/‖Στ‖", format="%.3f", help="1 is the size of the plain sum of the task vectors"
    ),
    "outside_span": st.column_config.NumberColumn(
        "outside span of τ (%)",
        format="%.1f",
        help="Share of ‖Δ‖² no weighted sum of the task vectors explains",
    ),
    "mass_dropped": st.column_config.NumberColumn(
        "mass dropped (%)", format="%.1f", help="Share of Σ‖τ_i‖₁ at entries the merge left at the base"
    ),
    "conflict_dropped": st.column_config.NumberColumn(
        "conflicts dropped (%)", format="%.1f", help="Sign-conflicting entries left at the base"
    ),
    "conflict_summed": st.column_config.NumberColumn(
        "conflicts → Σ τ (%)", format="%.1f", help="Sign-conflicting entries resolved with the sign of Σ τ_i"
    ),
    "effective_rank": st.column_config.NumberColumn(
        "eff. rank Δ", format="%.2f", help="Mean effective rank of the merged update over recorded matrices"
    ),
    "spectra": st.column_config.NumberColumn("matrices", help="Matrices whose spectra were recorded"),
}


def render(comp: Comparison, key: str = "cmp") -> None:
    """Draw one comparison; nothing is recomputed from weights, everything comes from the store."""
    st.markdown(
        f"**{len(comp.checkpoints)} checkpoints** ({', '.join(comp.checkpoint_names)}) merged into "
        f"**{comp.base_name}** by **{len(comp.methods)} methods**, scored on `{comp.suite}` · {comp.status}"
    )
    missing = [m for m in comp.methods if m not in comp.merge_ids]
    if missing:
        st.caption(f"Not finished yet: {', '.join(missing)}. The view fills in as their merges are scored.")
    if not comp.finished:
        st.info("No merge of this comparison has finished yet; its progress is shown above.")
        return

    cols = st.columns(min(len(comp.summary), 7) or 1)
    for i, row in enumerate(comp.summary.head(len(cols)).itertuples(index=False)):
        delta = f"{row.vs_base:+.1f} pp vs base" if pd.notna(row.vs_base) else None
        value = f"{row.average:.1f}" if pd.notna(row.average) else "–"
        cols[i].metric(str(row.method), value, delta, help="Average accuracy (%) over the suite's tasks")
    st.dataframe(comp.summary, hide_index=True, column_config=SUMMARY_COLUMNS, key=f"{key}:summary")
    scores_col, geometry_col = st.columns(2)
    with scores_col:
        st.markdown("##### Scores against the base and the best checkpoint")
        st.plotly_chart(
            compare_charts.scores_figure(
                comp.scores, base=comp.base_name, best=comp.best_name, title="Score per task (%)"
            ),
            key=f"{key}:bars",
        )
        st.plotly_chart(
            compare_charts.gain_heatmap(comp.gains, "vs_base", title="Gain over the base (pp)"),
            key=f"{key}:gain",
        )
        st.plotly_chart(
            compare_charts.gain_heatmap(comp.gains, "vs_best", title="Gain over the best checkpoint (pp)"),
            key=f"{key}:gain_best",
        )
    with geometry_col:
        st.markdown("##### The geometry beside them")
        st.plotly_chart(
            compare_charts.geometry_bars(comp.summary, title="Distance, mass, conflicts, rank"),
            key=f"{key}:geo",
        )
        st.plotly_chart(
            compare_charts.kept_heatmap(
                comp.kept,
                title="Share of each checkpoint's task vector kept (%)",
                order=comp.checkpoint_names,
            ),
            key=f"{key}:kept",
        )
        st.caption(
            "The paper's Figure 4 argument: methods that move far from the base leave its basin. Kept: the "
            "weight c_i of each task vector in the update fitted as Δ ≈ Σ c_i τ_i (100 = whole, as a sum; "
            "100/n = a mean)."
        )

    st.markdown("##### Where the methods disagree")
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(
            compare_charts.layer_heatmap(comp.layers, title="‖Δ‖ / ‖Σ τ‖ per layer"), key=f"{key}:layers"
        )
    with right:
        st.plotly_chart(
            compare_charts.disagreement_bars(comp.disagreement, title="Layers of most disagreement"),
            key=f"{key}:dis",
        )
    with st.expander("Recipes (mergekit YAML)", icon=":material/description:"):
        for method, text in comp.recipes.items():
            st.markdown(f"**{method}**")
            st.code(text, language="yaml")
