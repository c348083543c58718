"""The sidebar every page shares: which workspace is open and what it holds, at a glance.

The counters come from one count query and are drawn after the page has run (app.py), so a job launched
on this run is already counted; while jobs are active they refresh themselves like the job list does.
"""

from __future__ import annotations

import streamlit as st

from ui.session import get_store, guard, workspace_home

POLL_SECONDS = 1.5
_FRESH = "_sidebar_counts"  # the counts this run already read, for the fragment's first draw


def render():
    """The workspace path, and an empty slot for the counters; pass the slot to `render_counts` once the
    page has run. Never raises (errors become a small note)."""
    with st.sidebar:
        st.caption("Workspace")
        st.code(str(workspace_home()), language=None, wrap_lines=True)
        slot = st.empty()
        st.caption("Set MERGELAB_HOME before `make app` to open another workspace.")
    return slot


def _draw(counts: dict[str, int]) -> None:
    c1, c2, c3 = st.columns(3)
    c1.metric("Models", counts["models"])
    c2.metric("Merges", counts["merges"])
    c3.metric("Active jobs", counts["active"])


def render_counts(slot) -> None:
    """Fill the counters slot from one count query; while jobs are active the counters poll on their own
    (a fragment), so a running study's counts stay current."""
    with slot.container(), guard("Workspace"):
        counts = get_store().job_counts()
        if not counts["active"]:  # nothing can change them until the next run: plain elements
            _draw(counts)
            return
        st.session_state[_FRESH] = counts

        def body() -> None:
            with guard("Workspace"):
                _draw(st.session_state.pop(_FRESH, None) or get_store().job_counts())

        st.fragment(body, run_every=POLL_SECONDS)()
