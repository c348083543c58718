"""Compare: pick a base and checkpoints once, pick methods, launch; every method merges the same checkpoints
and is scored, and one view sets their scores beside the geometry that explains them. Exports as a report."""

import streamlit as st

import merging
from ui import compare, compare_view, jobs_view, launch, report, report_view
from ui.session import get_runner, get_store, guard, workspace_home

P = "compare"  # session-state prefix of this page's widgets

st.title("Compare")
st.caption(
    "Which method, on these checkpoints, and why did that one fail? Every method merges the same checkpoints "
    "into the same base and is scored on the same suite (the base and each checkpoint once); the view sets "
    "each merge's scores against the base and the best checkpoint beside the geometry of its update."
)

with guard("Compare"):
    db = get_store()
    models = db.models_df()
    registered = models[models["kind"].isin(["base", "checkpoint"])] if len(models) else models
    names = dict(zip(registered.get("ref", []), registered.get("name", []), strict=False))
    arch = dict(zip(registered.get("ref", []), registered.get("architecture", []), strict=False))
    studies = db.studies_df()
    comparisons = [
        sid for sid in (studies["id"] if len(studies) else []) if compare.is_comparison(db.get_study(sid))
    ]

    if st.session_state.get(f"{P}:launched"):
        st.success(
            f"Launched comparison job `{st.session_state.pop(f'{P}:launched')}`; its progress is below."
        )

    with st.expander("Launch a comparison", expanded=not comparisons, icon=":material/compare_arrows:"):
        bases = list(registered.loc[registered["kind"] == "base", "ref"]) if len(registered) else []
        if not bases:
            st.info("Register a base and at least two checkpoints first (or build the demo zoo on Home).")
        else:
            specs = {m.name: m for m in merging.all_methods()}
            c1, c2 = st.columns([1, 2])
            base = c1.selectbox("Base model", bases, format_func=lambda r: names.get(r, r), key=f"{P}:base")
            options = [
                r
                for r in registered.loc[registered["kind"] == "checkpoint", "ref"]
                if arch.get(r) == arch.get(base)
            ]
            key = f"{P}:checkpoints"
            if key not in st.session_state or st.session_state.get(f"{P}:base_prev") != base:
                kept = [r for r in st.session_state.get(key, []) if r in options]
                st.session_state[key] = kept or options[:4]
            st.session_state[f"{P}:base_prev"] = base
            chosen = c2.multiselect(
                "Checkpoints (every method merges all of them)",
                options,
                format_func=lambda r: names.get(r, r),
                key=key,
            )
            # Every method merges all chosen checkpoints, so only methods that take that many are offered.
            offered = [
                c
                for c in launch.study_method_choices(list(specs))
                if specs[launch.config_method(c)].accepts_models(max(2, len(chosen)))
            ]
            mkey = f"{P}:methods"
            st.session_state[mkey] = [
                m for m in st.session_state.get(mkey, launch.comparison_methods()) if m in offered
            ]
            chosen_methods = st.multiselect(
                "Methods (default: the study's configurations, with the paper's values)",
                offered,
                format_func=lambda c: f"{specs[c].title} ({c})" if c in specs else c,
                key=mkey,
            )
            suites = launch.suite_choices(workspace_home())
            c3, c4 = st.columns(2)
            suite = c3.selectbox("Benchmark suite", list(suites), format_func=suites.get, key=f"{P}:suite")
            limit = c4.number_input(
                "Items per task (empty: the suite's default)", min_value=1, value=None, key=f"{P}:limit"
            )
            st.caption(
                f"{len(chosen_methods)} merges of {len(chosen)} checkpoints, each scored, plus the base and "
                f"the {len(chosen)} checkpoints once; each merge records the singular spectra of a few "
                "matrices (the effective rank of its update)."
            )
            if st.button(
                "Launch comparison", type="primary", key=f"{P}:launch", icon=":material/rocket_launch:"
            ):
                job_id = launch.submit_comparison(
                    get_runner(),
                    base=base,
                    checkpoints=chosen,
                    methods=chosen_methods,
                    suite=suite,
                    limit=limit,
                    spectra=launch.default_spectra(launch.matrix_names(base)),
                )
                st.session_state[f"{P}:launched"] = job_id
                st.rerun()  # the sidebar counts and the list below show the new job at once

    st.subheader("Progress")
    jobs_view.live_jobs(limit=3, key="compare", kinds=["study"])

    st.subheader("Comparison")
    if not comparisons:
        st.info("No comparison yet. Launch one above; its scores and geometry appear here as merges finish.")
        st.stop()
    labels = {
        sid: (lambda s: f"{s['name']} · {s['suite']} · {s['created_at']:%Y-%m-%d %H:%M} · {s['status']}")(
            db.get_study(sid)
        )
        for sid in comparisons
    }
    study_id = st.selectbox("Comparison", comparisons, format_func=labels.get, key=f"{P}:which")
    comp = compare.load_comparison(db, study_id)
    report_view.download_buttons(
        lambda: report.comparison_report(compare.load_comparison(get_store(), study_id)),
        report.file_stem("comparison", study_id),
        key=f"{P}:export",
    )
    compare_view.render(comp, key=P)
