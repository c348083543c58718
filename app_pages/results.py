"""Results: every merge with filters, its per-task and average scores against the base and the best
checkpoint it was merged from, side-by-side comparison, and downloads."""

import io

import pandas as pd
import streamlit as st

from ui import charts, data
from ui.session import get_store, guard

st.title("Results")


def _download(df: pd.DataFrame, name: str, key: str) -> None:
    c1, c2 = st.columns(2)
    c1.download_button(
        "Download CSV", df.to_csv(index=False).encode(), f"{name}.csv", "text/csv", key=f"{key}:csv"
    )
    buf = io.BytesIO()
    df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(buf, index=False)
    c2.download_button(
        "Download Parquet", buf.getvalue(), f"{name}.parquet", "application/octet-stream", key=f"{key}:pq"
    )


with guard("Results"):
    db = get_store()
    merges = db.merges_df()
    models = db.models_df()
    scores = data.task_scores(
        db.eval_rows_df(), labels=dict(zip(models["fingerprint"], models["name"], strict=False))
    )
    averages = data.average_scores(scores)
    table = data.merge_table(merges, averages, models)
    if table.empty:
        st.info("No merges yet. Launch one on the Merge page; its scores appear here when its job is done.")
        st.stop()

    with st.container(border=True):
        f1, f2, f3, f4 = st.columns(4)
        bases = f1.multiselect("Base", sorted(table["base"].dropna().unique()))
        methods = f2.multiselect("Method", sorted(table["method"].dropna().unique()))
        sizes = f3.multiselect("n (checkpoints)", sorted(int(n) for n in table["n"].dropna().unique()))
        studies = f4.multiselect("Study", sorted(s for s in table["study_id"].dropna().unique()))
    view = table
    if bases:
        view = view[view["base"].isin(bases)]
    if methods:
        view = view[view["method"].isin(methods)]
    if sizes:
        view = view[view["n"].isin(sizes)]
    if studies:
        view = view[view["study_id"].isin(studies)]

    st.subheader(f"{len(view)} merge(s)")
    st.dataframe(
        view,
        hide_index=True,
        column_config={
            "average": st.column_config.NumberColumn("average (%)", format="%.1f"),
            "vs_base": st.column_config.NumberColumn("vs base (pp)", format="%+.1f"),
        },
    )
    _download(view, "mergelab_merges", "merges")

    scored = view[view["average"].notna()]
    if scored.empty:
        st.caption("None of these merges has scores yet (evaluate them from the Merge page).")
        st.stop()

    st.subheader("One merge against its base and best checkpoint")
    labels = {r.id: f"{r.method} · n={r.n} · {r.id}" for r in scored.itertuples()}
    chosen = st.selectbox("Merge", list(labels), format_func=labels.get, key="results:one")
    merge = db.get_merge(chosen)
    fps = list(merge.get("checkpoint_fingerprints") or [])
    base_fp, merged_fp = merge.get("base_fingerprint"), merge.get("merged_fingerprint")
    best = data.best_checkpoint(averages, fps)
    keep = [fp for fp in (base_fp, best[0] if best else None, merged_fp) if fp]
    subset = scores[scores["fingerprint"].isin(keep)].copy()
    names = {fp: n for fp, n in zip(averages["fingerprint"], averages["model"], strict=False)}
    merged_label = f"merge {chosen}"
    subset.loc[subset["fingerprint"] == merged_fp, "model"] = merged_label
    avg_rows = data.average_scores(subset).assign(task="average").rename(columns={"average": "score"})
    subset = pd.concat([subset, avg_rows[["model", "fingerprint", "task", "score"]]], ignore_index=True)
    base_name = names.get(base_fp) if base_fp else None
    best_name = names.get(best[0]) if best else None
    m1, m2, m3 = st.columns(3)
    merged_avg = float(averages.loc[averages["fingerprint"] == merged_fp, "average"].iloc[0])
    base_avg = averages.loc[averages["fingerprint"] == base_fp, "average"]
    m1.metric("Merge (average)", f"{merged_avg:.1f}")
    if len(base_avg):
        m2.metric(
            "Base",
            f"{float(base_avg.iloc[0]):.1f}",
            f"{merged_avg - float(base_avg.iloc[0]):+.1f} pp merge vs base",
        )
    if best:
        m3.metric("Best checkpoint", f"{best[1]:.1f}", f"{merged_avg - best[1]:+.1f} pp merge vs best")
    if not len(base_avg) or not best:
        st.caption(
            "The base or the checkpoints have no scores on this suite yet; merges launched with *Evaluate "
            "now* queue their scoring, and the comparison appears here once those jobs are done."
        )
    st.plotly_chart(
        charts.score_bars(subset, base=base_name, best=best_name, title="Score per task"), key="results:bars"
    )

    st.subheader("Side by side")
    pick = st.multiselect(
        "Merges to compare", list(labels), default=list(labels)[:3], format_func=labels.get, key="results:cmp"
    )
    if pick:
        rows = []
        for mid in pick:
            fp = db.get_merge(mid).get("merged_fingerprint")
            rows.append(scores[scores["fingerprint"] == fp].assign(model=labels[mid]))
        if base_fp:
            rows.append(scores[scores["fingerprint"] == base_fp].assign(model=f"{base_name} (base)"))
        matrix = charts.score_matrix(pd.concat(rows, ignore_index=True))
        styled = matrix.style.format("{:.1f}")
        if matrix.shape[1] > 1:
            styled = styled.highlight_max(axis=1, color="#d4edda")
        st.dataframe(styled)
        _download(matrix.reset_index(), "mergelab_comparison", "cmp")
