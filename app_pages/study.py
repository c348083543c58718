"""Study: run the paper's protocol (merge random subsets of a checkpoint pool with several methods at
several sizes n, score every merge) and read its report beside the paper's published numbers; or sweep one
hyperparameter on fixed subsets (ui.sweep_view) and read score against the value."""

import pandas as pd
import streamlit as st

import merging
from evaluation import metrics, paper
from jobs.study_frames import study_frames
from ui import charts, data, jobs_view, launch, report, report_view, sweep_view
from ui.session import get_runner, get_store, guard, workspace_home

P = "study"

st.title("Study")
st.caption(
    "The protocol of Hitit et al. (2025): for each method and each merge size n, merge the same uniformly "
    "sampled subsets of the pool, score every merge, and report the success rate (share of merges beating "
    "the reference) and the mean gain in percentage points."
)

with guard("Study"):
    db = get_store()
    models = db.models_df()
    registered = models[models["kind"].isin(["base", "checkpoint"])] if len(models) else models
    names = dict(zip(registered.get("ref", []), registered.get("name", []), strict=False))
    # A study merges subsets of every size n it is given, so only methods without an upper model count fit.
    methods = {m.name: m for m in merging.all_methods() if m.max_models is None}

    with st.expander(
        "Configure and launch a study", expanded=db.count("studies") == 0, icon=":material/tune:"
    ):
        bases = list(registered.loc[registered["kind"] == "base", "ref"]) if len(registered) else []
        pool_all = list(registered.loc[registered["kind"] == "checkpoint", "ref"]) if len(registered) else []
        if not bases or len(pool_all) < 2:
            st.info("Register a base and at least two checkpoints first (or build the demo zoo on Home).")
        else:
            c1, c2 = st.columns([1, 2])
            base = c1.selectbox("Base", bases, format_func=lambda r: names.get(r, r), key=f"{P}:base")
            pool = c2.multiselect(
                "Checkpoint pool",
                pool_all,
                default=pool_all[:12],
                format_func=lambda r: names.get(r, r),
                key=f"{P}:pool",
            )
            chosen_methods = st.multiselect(
                "Methods (the paper's seven by default, Task Arithmetic as a sum and as a mean)",
                launch.study_method_choices(list(methods)),
                default=list(launch.PAPER_METHODS),
                format_func=lambda m: methods[m].title if m in methods else m,
                key=f"{P}:methods",
            )
            c3, c4, c5 = st.columns(3)
            sizes = c3.multiselect(
                "Merge sizes n",
                list(range(2, max(3, len(pool) + 1))),
                default=launch.study_sizes(len(pool)),
                key=f"{P}:sizes",
            )
            subsets = c4.number_input(
                "Subsets per size", min_value=1, value=launch.PAPER_SUBSETS, key=f"{P}:k"
            )
            seed = c5.number_input("Seed", min_value=0, value=0, key=f"{P}:seed")
            suites = launch.suite_choices(workspace_home())
            c6, c7, c8 = st.columns(3)
            suite = c6.selectbox("Suite", list(suites), format_func=suites.get, key=f"{P}:suite")
            limit = c7.number_input(
                "Items per task (empty: suite default)", min_value=1, value=None, key=f"{P}:limit"
            )
            name = c8.text_input("Name", value="paper protocol", key=f"{P}:name")
            n_merges = len(chosen_methods) * sum(1 if n == len(pool) else int(subsets) for n in sizes)
            st.caption(
                f"{n_merges} merges, each scored on the suite, plus the base and the {len(pool)} checkpoints "
                "once. Parameters: each method's paper values (defaults where the paper gives none)."
            )
            if st.button("Launch study", type="primary", key=f"{P}:launch", icon=":material/rocket_launch:"):
                job_id = launch.submit_study(
                    get_runner(),
                    name=name,
                    base=base,
                    pool=pool,
                    methods=chosen_methods,
                    sizes=sizes,
                    subsets_per_size=int(subsets),
                    seed=int(seed),
                    suite=suite,
                    limit=limit,
                )
                st.success(f"Launched study job `{job_id}`; its progress is below.")

    with st.expander(
        "Sweep a hyperparameter (the paper's ablations)", expanded=False, icon=":material/tune:"
    ):
        sweep_view.launcher(db, get_runner(), registered)

    st.subheader("Progress")
    jobs_view.live_jobs(limit=3, key="study", kinds=["study", "sweep"])

    studies = db.studies_df()
    st.subheader("Report")
    if studies.empty:
        st.caption("No study yet. The paper's own numbers are below for reference.")
    else:
        label = {
            r.id: f"{r.name} · {r.suite} · {r.created_at:%Y-%m-%d %H:%M} · {r.status}"
            for r in studies.itertuples()
        }
        study_id = st.selectbox("Study", list(label), format_func=label.get, key=f"{P}:which")
        study = db.get_study(study_id)
        report_view.download_buttons(
            lambda: report.study_report(get_store(), study_id),
            report.file_stem("sweep" if sweep_view.is_sweep(study) else "study", study_id),
            key=f"{P}:export",
        )
        merges = db.merges_df(study_id=study_id)
        merged, base_rows, singles = study_frames(db, study)
        if merged.empty or base_rows.empty:
            st.info("No scored merges in this study yet; the report fills in as its merges finish.")
        else:
            base_acc = float(base_rows["value"].mean() * 100.0)
            best_acc = (
                float(singles.groupby("checkpoint")["value"].mean().max() * 100.0) if len(singles) else None
            )
            is_sweep = sweep_view.curve(db, study_id, base_acc, best_acc)
            ref_name = {
                "base": "vs the base (Tables 1 and 3)",
                "best_pool": "vs the best single checkpoint (Table 2)",
            }
            for ref, title in ref_name.items():
                if ref == "best_pool" and singles.empty:
                    continue
                table = metrics.study_metrics(
                    merged, base_rows, singles if len(singles) else None, reference=ref, n_boot=200
                )
                st.markdown(f"**Success rate / mean gain {title}**")
                st.dataframe(charts.success_gain_table(table), key=f"{P}:table:{ref}")

            # A sweep has one n: its curve above replaces Figures 3 and 4 (one point per value there).
            if not is_sweep:
                per_merge = merged.groupby(["method", "n", "subset_id"], as_index=False)["value"].mean()
                per_merge["accuracy"] = per_merge["value"] * 100.0
                st.plotly_chart(
                    charts.accuracy_vs_n(
                        per_merge[["method", "n", "accuracy"]],
                        base_score=base_acc,
                        best_score=best_acc,
                        title="Average accuracy (%) against n, min-max over subsets (the paper's Figure 3)",
                    ),
                    key=f"{P}:fig3",
                )
                fig4 = data.distance_per_merge(merges, db.model_stats_df(list(merges["id"])))
                st.plotly_chart(
                    charts.distance_vs_n(fig4, title="‖θ_merged − θ_base‖₂ against n (the paper's Figure 4)"),
                    key=f"{P}:fig4",
                )
            st.markdown("**Per task**")
            per_task = metrics.study_metrics(merged, base_rows, reference="base", per_task=True, n_boot=200)
            method = st.selectbox("Method", sorted(per_task["method"].unique()), key=f"{P}:task_method")
            rows = per_task[per_task["method"] == method]
            grid = rows.pivot_table(index="task", columns="n", values="gain", aggfunc="mean")
            grid.columns = [f"n={c}" for c in grid.columns]
            st.dataframe(grid.style.format("{:+.2f}").map(charts.gain_color), key=f"{P}:pertask")
            st.caption("Mean gain over the base per task, percentage points.")

    st.subheader("The paper's published numbers")
    st.caption(f"Source: {paper.SOURCE}. These are the paper's results on its 16 benchmarks, not yours.")
    published = paper.paper_results()
    which = st.selectbox(
        "Base model (paper)", list(dict.fromkeys(published["model"])), index=4, key=f"{P}:paper_model"
    )
    for table_no, title in (
        (1, "Table 1 (vs base)"),
        (2, "Table 2 (TA vs best checkpoint)"),
        (3, "Table 3 (vs base)"),
    ):
        part = published[(published["table"] == table_no) & (published["model"] == which)]
        st.markdown(f"**Paper {title}**")
        st.dataframe(
            charts.success_gain_table(part[["method", "n", "success", "gain"]]), key=f"{P}:paper:{table_no}"
        )
    gains = published[(published["model"] == which) & (published["table"] != 2)]
    st.plotly_chart(
        charts.accuracy_vs_n(
            pd.DataFrame(columns=["method", "n", "accuracy"]),
            paper=gains.rename(columns={"gain": "accuracy"})[["method", "n", "accuracy"]],
            title=f"Paper: mean gain over the base (pp) against n, {which}",
        ).update_layout(yaxis_title="mean gain vs base (pp)"),
        key=f"{P}:paper_fig",
    )
