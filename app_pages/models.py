"""Models: register a base and checkpoints (local folder or Hub id), inspect them, and see before any
merge which checkpoints a base would refuse or adjust, and why."""

import pandas as pd
import streamlit as st

import merging
from ui import catalog
from ui.session import get_runner, get_store, guard

st.title("Models")

with guard("Models"):
    db = get_store()

    with st.form("register", clear_on_submit=False, border=True):
        st.markdown("**Register a model**: a local folder with `config.json` and safetensors, or a Hub id.")
        c1, c2, c3 = st.columns([4, 2, 2])
        ref = c1.text_input("Folder or Hub id", placeholder="/path/to/model or owner/name")
        kind = c2.radio("Role", catalog.KINDS, horizontal=True, index=1)
        name = c3.text_input("Display name (optional)")
        if st.form_submit_button("Register", type="primary"):
            with guard("Could not register"), st.spinner("Reading headers…"):
                info = catalog.register(db, ref, kind, name)
                size = f"{info['num_parameters']:,} parameters"
                st.success(f"Registered {info['name']} ({info['architecture']}, {size}).")

    models = db.models_df()
    registered = models[models["kind"].isin(catalog.KINDS)] if len(models) else models
    if registered.empty:
        st.info(
            "No models registered yet. Register a base and its fine-tuned checkpoints above, or build the "
            "demo zoo from the Home page."
        )
        st.stop()

    st.subheader("Registered")
    st.dataframe(
        registered[
            ["name", "kind", "architecture", "num_parameters", "vocab_size", "dtype", "ref", "fingerprint"]
        ],
        hide_index=True,
        column_config={"num_parameters": st.column_config.NumberColumn("parameters", format="localized")},
    )

    label = {r.ref: f"{r.name} ({r.kind})" for r in registered.itertuples()}
    st.subheader("Inspect")
    ref = st.selectbox("Model", list(label), format_func=label.get, key="models:inspect")
    with guard("Could not open"):
        ck = merging.open_checkpoint(ref, download=False)
        try:
            info = catalog.describe(ck)
            table = catalog.tensor_table(ck)
        finally:
            ck.close()
        c = st.columns(5)
        c[0].markdown(f"Architecture  \n**{info['architecture'] or '?'}**")
        c[1].metric("Parameters", f"{info['num_parameters']:,}")
        c[2].metric("dtype", info["dtype"] or "?")
        c[3].metric("Vocabulary", info["vocab_size"] or "?")
        c[4].metric("Tensors", info["tensors"])
        if info["tied_embeddings"]:
            st.caption("Tied embeddings: the output head reuses the input embedding.")
        if info["remote"]:
            st.caption(
                "Read from the Hub's safetensors headers; no weights downloaded. A merge downloads them, or "
                "fetch them now as a background job (resumable, into the workspace)."
            )
            if st.button("Download weights", key=f"models:download:{ref}"):
                job = get_runner().submit("download", {"repo_id": ref})
                st.success(f"Download queued as job {job}; follow it on the Jobs page.")
        st.dataframe(table, hide_index=True, height=300)

    st.subheader("Compatibility matrix")
    st.caption("Checks headers only: architecture, tensor names and shapes, vocabulary. Nothing is merged.")
    bases = [r for r in label if registered.set_index("ref").loc[r, "kind"] == "base"] or list(label)
    c1, c2 = st.columns([1, 2])
    base_ref = c1.selectbox("Base", bases, format_func=label.get, key="models:compat_base")
    others = [r for r in label if r != base_ref]
    chosen = c2.multiselect(
        "Checkpoints", others, default=others[:12], format_func=label.get, key="models:compat"
    )
    if chosen:
        with guard("Compatibility check"):
            matrix, issues = catalog.compatibility(base_ref, chosen)
            matrix.insert(0, "name", [label.get(r, r) for r in matrix["checkpoint"]])
            matrix = matrix.drop(columns=["checkpoint"])
            colors = {"ok": "#d4edda", "adjusted": "#fff3cd", "refused": "#f8d7da"}
            st.dataframe(
                matrix.style.map(lambda v: f"background-color: {colors.get(v, '')}", subset=["status"]),
                hide_index=True,
            )
            if not issues.empty:
                with st.expander(f"All {len(issues)} findings"):
                    st.dataframe(pd.DataFrame(issues), hide_index=True)
