"""The sidebar every page shares: which workspace is open and what it holds, at a glance."""

from __future__ import annotations

import streamlit as st

from ui.session import get_store, guard, workspace_home


def render() -> None:
    """Workspace path, model / merge / job counts; never raises (errors become a small note)."""
    with st.sidebar:
        st.caption("Workspace")
        st.code(str(workspace_home()), language=None, wrap_lines=True)
        with guard("Workspace"):
            db = get_store()
            models, merges = db.count("models"), db.count("merges")
            jobs_df = db.table("jobs")
            active = int(jobs_df["status"].isin(["queued", "running"]).sum()) if len(jobs_df) else 0
            c1, c2, c3 = st.columns(3)
            c1.metric("Models", models)
            c2.metric("Merges", merges)
            c3.metric("Active jobs", active)
        st.caption("Set MERGELAB_HOME before `make app` to open another workspace.")
