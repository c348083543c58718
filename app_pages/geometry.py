"""Geometry: what a merge did to the weights. Task-vector norms per layer, pairwise cosines, sign
conflicts, the distance of every merge from its base against n (the paper's Figure 4), and singular
spectra of chosen matrices for each task vector and for the merged update. A second tab analyses
checkpoints before any merge (the same statistics, no merge; ui.analysis_view)."""

import pandas as pd
import streamlit as st

from ui import analysis_view, charts, data
from ui.session import get_runner, get_store, guard

st.title("Geometry")
st.caption(
    "Recorded by the merge pass itself (no second read of the weights). Large norms and low effective rank "
    "of the merged update are the paper's signature of merges that leave the base model's basin."
)


def _merge_geometry(db) -> None:
    """Geometry of finished merges: Figure 4 over all merges, then one merge in detail."""
    merges = db.merges_df(status="done")
    if merges.empty:
        st.info(
            "No finished merges yet. Launch one on the Merge page; its geometry appears here. To see "
            "whether checkpoints are likely to merge well before merging them, use Analyse before merging."
        )
        return

    stats = db.model_stats_df()
    st.subheader("Distance from the base against n (the paper's Figure 4)")
    fig4 = data.distance_per_merge(merges, stats)
    st.plotly_chart(charts.distance_vs_n(fig4, title="‖θ_merged − θ_base‖₂ per merge size"), key="geo:fig4")

    st.subheader("One merge")
    labels = {
        r.id: f"{r.config or r.method} · n={r.n} · {r.id}"
        for r in merges.sort_values("started_at").itertuples()
    }
    ids = list(labels)
    # Default: the newest ad-hoc merge (study merges are many and alike), else the newest of all.
    adhoc = [r.id for r in merges.sort_values("started_at").itertuples() if pd.isna(r.study_id)]
    default = ids.index(adhoc[-1]) if adhoc else len(ids) - 1
    chosen = st.selectbox("Merge", ids, index=default, format_func=labels.get, key="geo:merge")
    merge = db.get_merge(chosen)
    names = [data.short_name(r) for r in (merge.get("checkpoint_refs") or [])]
    row = stats[stats["merge_id"] == chosen]
    if len(row) and pd.notna(row["model_delta_norm"].iloc[0]):
        task_norms = row["model_task_norms"].iloc[0]
        cols = st.columns(1 + min(len(names), 5))
        cols[0].metric("‖θ_merged − θ_base‖₂", f"{row['model_delta_norm'].iloc[0]:.4g}")
        for i, (n, v) in enumerate(
            zip(names, list(task_norms) if task_norms is not None else [], strict=False)
        ):
            if i + 1 < len(cols):
                cols[i + 1].metric(f"‖τ‖₂ {n}", f"{v:.4g}")

    tensors = db.tensor_stats_df(chosen)
    left, right = st.columns(2)
    with left:
        st.plotly_chart(
            charts.layer_norm_heatmap(
                data.layer_norms(tensors, names), title="Task-vector norm per layer", order=names
            ),
            key="geo:norms",
        )
    with right:
        cos = data.parse_cosines(row["model_cosines_json"].iloc[0] if len(row) else None, names)
        st.plotly_chart(
            charts.cosine_heatmap(cos, title="Pairwise cosine of task vectors", order=names), key="geo:cos"
        )
    st.plotly_chart(
        charts.sign_conflict_bars(data.sign_conflicts(tensors), title="Sign-conflict rate per layer"),
        key="geo:signs",
    )

    st.subheader("Singular spectra")
    spectra = db.spectra_df(chosen)
    if spectra.empty:
        st.caption("This merge recorded no spectra (only matrices picked at merge time get them).")
    else:
        matrices = list(dict.fromkeys(spectra["tensor"]))
        default = next((i for i, t in enumerate(matrices) if "mlp" in t or "proj" in t), 0)
        tensor = st.selectbox("Matrix", matrices, index=default, key="geo:tensor")
        st.plotly_chart(
            charts.spectra_chart(
                data.spectra_long(spectra, tensor, names), title=f"Singular values · {tensor}"
            ),
            key="geo:spectra",
        )


with guard("Geometry"):
    merges_tab, analyse_tab = st.tabs(["Merges", "Analyse before merging"])
    with merges_tab, guard("Geometry"):
        _merge_geometry(get_store())
    with analyse_tab, guard("Analyse before merging"):
        analysis_view.render(get_store(), get_runner())
