"""Merge: choose base, checkpoints and method, set its parameters (generated from the method's spec),
preview / import / export the mergekit YAML, and launch the merge (saved and/or evaluated) as a job."""

import streamlit as st

import merging
from ui import forms, launch
from ui.session import get_runner, get_store, guard, workspace_home


@st.cache_data(show_spinner=False, max_entries=64)
def _estimate(recipe_yaml: str, max_memory: str | None) -> tuple[str, list[str]] | None:
    """The engine's time and memory estimate for this recipe (headers only), or None when it cannot be
    planned yet (the launch reports why)."""
    from merging.estimate import estimate_recipe

    try:
        est = estimate_recipe(merging.Recipe.from_yaml(recipe_yaml), device="auto", max_memory=max_memory)
    except merging.errors.MergeError:
        return None
    return est.line(), list(est.warnings)


P = "merge"  # session-state prefix of this page's widgets

st.title("Merge")


def _import_recipe() -> None:
    """Callback of "Load recipe": parse the pasted or uploaded YAML into the page's fields."""
    st.session_state[f"{P}:import_error"] = None
    upload = st.session_state.get(f"{P}:upload")
    text = upload.getvalue().decode("utf-8", errors="replace") if upload is not None else ""
    text = text or st.session_state.get(f"{P}:yaml_in", "")
    try:
        if not text.strip():
            raise merging.errors.RecipeError("Paste a mergekit YAML or upload a .yml file first.")
        recipe = merging.Recipe.from_yaml(text)
        spec = merging.get_method(recipe.merge_method)
    except merging.errors.MergeError as exc:
        st.session_state[f"{P}:import_error"] = str(exc)
        return
    if recipe.slices is not None:
        refs = list(dict.fromkeys(src.model for sl in recipe.slices for src in sl.sources))
    else:
        refs = [m.model for m in recipe.models]
    base_ref = recipe.base_model or (refs[0] if recipe.slices is not None else None)
    refs = [r for r in refs if r != base_ref] or refs
    st.session_state[f"{P}:extra_refs"] = list(
        dict.fromkeys(st.session_state.get(f"{P}:extra_refs", []) + refs + [base_ref or ""])
    )
    st.session_state[f"{P}:method"] = spec.name
    if base_ref:
        st.session_state[f"{P}:base"] = base_ref
        st.session_state[f"{P}:base_prev"] = base_ref
    st.session_state[f"{P}:checkpoints"] = refs
    st.session_state[f"{P}:seed"] = recipe.seed if recipe.seed is not None else 0
    st.session_state[f"{P}:out_dtype"] = merging.recipe.canonical_dtype(recipe.out_dtype) or ""
    forms.load_recipe_into_state(P, spec, recipe)
    st.session_state[f"{P}:imported"] = f"Loaded a {spec.title} recipe with {len(refs)} checkpoint(s)."


def _show_carried(carried: dict) -> None:
    """What the imported YAML holds beyond the form, kept in the recipe as written (slices as a table)."""
    with st.container(border=True):
        st.markdown("**Kept from the imported YAML**")
        slices = carried.get("slices")
        if slices:
            rows = [
                {
                    "slice": i,
                    "model": src.model,
                    "layers": f"[{src.layer_range[0]}, {src.layer_range[1]})",
                    "parameters": ", ".join(f"{k}={v}" for k, v in src.parameters.items()),
                }
                for i, sl in enumerate(slices)
                for src in sl.sources
            ]
            st.dataframe(rows, hide_index=True)
            st.caption(
                f"The output has {sum(sl.num_layers for sl in slices)} layers, built slice by slice; the "
                "checkpoint list above does not change the slices."
            )
        hidden = ("slices", "base_entry", "no_base", "keep_base", "model_ranges")
        other = {k: v for k, v in carried.items() if k not in hidden}
        if "base_entry" in carried:
            other["base listed under models"] = "yes (treated as the base, as mergekit does)"
        if "model_ranges" in carried:
            other["layer_range under models"] = "kept, no effect (mergekit reads it only in slices)"
        if other:
            st.caption("; ".join(f"{k}: {v}" for k, v in other.items()))
        st.button(
            "Forget these", key=f"{P}:forget", on_click=lambda: st.session_state.pop(f"{P}:carried", None)
        )


with guard("Merge"):
    db = get_store()
    models = db.models_df()
    registered = models[models["kind"].isin(["base", "checkpoint"])] if len(models) else models
    names = dict(zip(registered.get("ref", []), registered.get("name", []), strict=False))
    extra = [r for r in st.session_state.get(f"{P}:extra_refs", []) if r and r not in names]

    with st.expander("Import a mergekit YAML", icon=":material/upload:"):
        st.text_area(
            "Paste YAML", key=f"{P}:yaml_in", height=160, placeholder="merge_method: ties\nmodels: …"
        )
        st.file_uploader("…or upload a .yml / .yaml file", type=["yml", "yaml"], key=f"{P}:upload")
        st.button("Load recipe", on_click=_import_recipe, key=f"{P}:load")
        if st.session_state.get(f"{P}:import_error"):
            st.error(st.session_state[f"{P}:import_error"])
        elif st.session_state.get(f"{P}:imported"):
            st.success(st.session_state[f"{P}:imported"])

    if registered.empty and not extra:
        st.info(
            "No models registered yet. Build the demo zoo on the Home page, or register a base and "
            "checkpoints on the Models page (or import a mergekit YAML above)."
        )
        st.stop()

    bases = list(registered.loc[registered["kind"] == "base", "ref"]) + extra
    checkpoints = list(registered.loc[registered["kind"] == "checkpoint", "ref"]) + extra
    label = {r: names.get(r) or r for r in bases + checkpoints}
    methods = {m.name: m for m in merging.all_methods()}

    c1, c2 = st.columns([1, 2])
    with c1:
        if bases and f"{P}:base" not in st.session_state:
            st.session_state[f"{P}:base"] = bases[0]
        base = st.selectbox("Base model", bases, format_func=lambda r: label.get(r, r), key=f"{P}:base")
    # Only checkpoints of the base's architecture are offered (the Models page shows why others refuse).
    arch = dict(zip(registered.get("ref", []), registered.get("architecture", []), strict=False))
    options = [r for r in checkpoints if r != base and (r in extra or arch.get(r) == arch.get(base))]
    key = f"{P}:checkpoints"
    if key not in st.session_state or st.session_state.get(f"{P}:base_prev") != base:
        kept = [r for r in st.session_state.get(key, []) if r in options]
        st.session_state[key] = kept or options[:3]
    st.session_state[f"{P}:base_prev"] = base
    with c2:
        chosen = st.multiselect(
            "Checkpoints to merge", options, format_func=lambda r: label.get(r, r), key=key
        )
    if f"{P}:method" not in st.session_state:
        st.session_state[f"{P}:method"] = "task_arithmetic"
    method = st.selectbox(
        "Method",
        list(methods),
        format_func=lambda m: f"{methods[m].title} ({m}): {methods[m].summary}",
        key=f"{P}:method",
    )
    spec = methods[method]
    takes = "Takes " + spec.models_needed() + (" and a base model" if spec.needs_base else "") + "."
    st.markdown(f"{spec.summary}. {takes}  \n*Reference:* {spec.reference}")

    carried = st.session_state.get(f"{P}:carried") or {}
    if carried:
        _show_carried(carried)

    with st.container(border=True):
        st.markdown("**Parameters**")
        params, model_params = forms.render_params(P, spec, chosen, forms.num_layers_of(base))

    st.markdown("**Output**")
    for key, value in (("save", False), ("evaluate", True), ("out_dtype", ""), ("seed", 0), ("limit", None)):
        st.session_state.setdefault(f"{P}:{key}", value)
    o1, o2, o3, o4 = st.columns(4)
    save = o1.checkbox("Save to disk", key=f"{P}:save")
    evaluate = o2.checkbox("Evaluate now", key=f"{P}:evaluate")
    out_dtype = o3.selectbox(
        "Output dtype",
        ["", *merging.recipe.DTYPES],
        format_func=lambda d: d or "dtype if set, else the base's",
        key=f"{P}:out_dtype",
    )
    seed = o4.number_input("Seed", min_value=0, step=1, key=f"{P}:seed", disabled=not spec.randomized)
    suite, limit, output = None, None, None
    if evaluate:
        e1, e2 = st.columns(2)
        suites = launch.suite_choices(workspace_home())
        suite = e1.selectbox("Benchmark suite", list(suites), format_func=suites.get, key=f"{P}:suite")
        limit = e2.number_input(
            "Items per task (empty: the suite's default)", min_value=1, step=10, key=f"{P}:limit"
        )
    spectra_options = launch.matrix_names(base) if base else []
    if spectra_options:
        st.session_state.setdefault(f"{P}:spectra", launch.default_spectra(spectra_options))
        spectra = st.multiselect(
            "Record singular spectra of",
            spectra_options,
            key=f"{P}:spectra",
            help="One SVD per matrix and checkpoint; shown on the Geometry page.",
        )
    else:
        spectra = []
    st.session_state.setdefault(f"{P}:max_memory", 0.0)
    max_memory_gib = st.number_input(
        "Memory budget for the merge (GiB; 0: a safe share of free memory)",
        min_value=0.0,
        step=1.0,
        key=f"{P}:max_memory",
        help="Tensors that do not fit are merged in row blocks, with the same result.",
    )
    max_memory = f"{max_memory_gib:g}GiB" if max_memory_gib else None
    if save:
        st.session_state.setdefault(f"{P}:out", launch.default_output(workspace_home(), method))
        output = st.text_input("Output folder (must not exist yet)", key=f"{P}:out")
    if not save and not evaluate:
        st.warning(
            "Choose at least one of *Save to disk* and *Evaluate now*; otherwise the merge is discarded."
        )

    recipe, problem = None, None
    if not chosen:
        st.info("Choose the checkpoints to merge.")
    else:
        try:
            recipe = forms.build_recipe(
                spec,
                base,
                chosen,
                params,
                model_params,
                out_dtype=out_dtype,
                seed=int(seed) if spec.randomized else None,
                carried=carried,
            )
        except merging.errors.MergeError as exc:
            problem = str(exc)
            st.error(problem)

    if recipe is not None:
        estimate = _estimate(recipe.to_yaml(), max_memory)
        if estimate is not None:
            st.caption(estimate[0])
            for w in estimate[1]:
                st.warning(w)
        with st.expander("Recipe (mergekit YAML)", expanded=True, icon=":material/description:"):
            text = recipe.to_yaml()
            st.code(text, language="yaml")
            st.download_button(
                "Export YAML", text, file_name=f"{method}.yml", mime="text/yaml", key=f"{P}:export"
            )

    go = st.button(
        "Launch merge",
        type="primary",
        disabled=recipe is None or not (save or evaluate),
        icon=":material/rocket_launch:",
        key=f"{P}:launch",
    )
    if go and recipe is not None:
        job_id = launch.submit_merge(
            get_runner(),
            recipe,
            save=save,
            output=output,
            suite=suite,
            limit=limit,
            spectra=spectra,
            max_memory=max_memory,
        )
        st.session_state[f"{P}:last_job"] = job_id
        st.session_state[f"{P}:ref_jobs"] = []
        if suite:
            refs = {r: label.get(r, r) for r in [base, *chosen]}
            kinds = {r: ("base" if r == base else "checkpoint") for r in refs}
            st.session_state[f"{P}:ref_jobs"] = launch.submit_reference_scores(
                get_runner(), db, refs, kinds, suite=suite, limit=limit, group_id=job_id
            )
    if st.session_state.get(f"{P}:last_job"):
        st.success(f"Launched job `{st.session_state[f'{P}:last_job']}`.")
        if st.session_state.get(f"{P}:ref_jobs"):
            n = len(st.session_state[f"{P}:ref_jobs"])
            st.caption(
                f"Also queued {n} evaluation(s) of the base and checkpoints not yet scored on this suite."
            )
        st.page_link(
            "app_pages/jobs.py", label="Follow it on the Jobs page", icon=":material/pending_actions:"
        )
