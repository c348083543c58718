"""Home: what MergeLab is, the state of the workspace, the demo zoo, recent jobs and results."""

import streamlit as st

from ui import data, jobs_view
from ui.session import get_runner, get_store, guard, workspace_home

st.title("MergeLab")
st.markdown(
    "Merge fine-tuned checkpoints of one base LLM **without training**, score the merge, and see **why** "
    "it worked or failed: task-vector norms, cosines, sign conflicts and singular spectra, and the whole "
    "protocol of *A Systematic Study of Model Merging Techniques in LLMs* (Hitit et al., 2025) as a study."
)
st.markdown(
    "**First merge in four steps:** build the demo zoo below (a few minutes on CPU) → **Merge**: pick the "
    "zoo base, three checkpoints and *Task Arithmetic*, tick *evaluate*, launch → **Jobs**: watch it "
    "finish → "
    "**Results** and **Geometry**: read the scores and what the merge did to the weights."
)

with guard("Workspace"):
    import zoo

    db = get_store()
    runner = get_runner()
    zoo_root = workspace_home() / "zoo"
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Registered models", db.count("models"))
    c2.metric("Merges", db.count("merges"))
    c3.metric(
        "Scored models", int(db.table("eval_rows")["fingerprint"].nunique()) if db.count("eval_rows") else 0
    )
    c4.metric("Jobs", db.count("jobs"))

    st.subheader("Demo zoo")
    manifest = zoo.ready_manifest(zoo_root)
    building = jobs_view.active_jobs(db, kind="build-zoo")
    if manifest is not None and not manifest.pending:
        st.success(f"The demo zoo is ready in `{zoo_root}`.")
        st.caption(jobs_view.zoo_summary(manifest))
    elif manifest is not None:
        ready = ", ".join(f"`zoo-{f}`" for f in manifest.families)
        pending = ", ".join(f"`zoo-{f}`" for f in manifest.pending)
        st.success(f"{ready} is ready: merge it now on the Merge page.")
        st.caption(jobs_view.zoo_summary(manifest))
        if not building.empty:
            st.info(f"Pending: {pending} is still being built; it appears here when done.")
        else:
            st.warning(f"Pending: {pending} was not finished (the build stopped).")
            if st.button("Finish building the demo zoo", type="primary"):
                job_id = runner.submit("build-zoo", {"root": str(zoo_root), "scale": manifest.scale})
                st.toast(f"Queued zoo build {job_id}")
                st.rerun()
    elif not building.empty:
        st.info(
            "The demo zoo is being built; its first family (`zoo-llama`) can be merged as soon as it is "
            "ready, while the second builds. Follow it here or on the Jobs page."
        )
    else:
        st.write(
            "No demo zoo in this workspace yet. It is two families of tiny models, a Llama-architecture "
            "base and a Qwen3-architecture base, each with 12 fine-tuned checkpoints, and their "
            "benchmark tasks, trained here on CPU with no downloads."
        )
        if st.button("Build the demo zoo", type="primary"):
            job_id = runner.submit("build-zoo", {"root": str(zoo_root), "scale": "full"})
            st.toast(f"Queued zoo build {job_id}")
            st.rerun()

    st.subheader("Recent jobs")
    jobs_view.live_jobs(limit=5, key="home")

    st.subheader("Recent results")
    merges = db.merges_df()
    if merges.empty:
        st.caption("No merges yet. Start one on the Merge page.")
    else:
        scores = data.task_scores(db.eval_rows_df())
        table = data.merge_table(merges, data.average_scores(scores), db.models_df())
        st.dataframe(
            table.sort_values("started_at", ascending=False).head(10).drop(columns=["study_id"]),
            hide_index=True,
            column_config={
                "average": st.column_config.NumberColumn("average (%)", format="%.1f"),
                "vs_base": st.column_config.NumberColumn("vs base (pp)", format="%+.1f"),
            },
        )
