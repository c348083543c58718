"""Live job list shared by Home and Jobs: progress bars, messages, cancel / retry, logs.

The list is a fragment that reruns itself every POLL_SECONDS while any job is queued or running, and
stops polling (one full rerun, so the rest of the page picks up new results) once they have all ended.
Worker threads only write job state to the store; this module only reads it, so no thread but the
script thread ever calls `st.*`.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from ui.session import get_runner, get_store, show_error

POLL_SECONDS = 1.5
ACTIVE = ("queued", "running")
STATUS_ICON = {
    "queued": ":material/schedule:",
    "running": ":material/progress_activity:",
    "done": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
    "interrupted": ":material/warning:",
}


def active_jobs(db: Any, kind: str | None = None) -> pd.DataFrame:
    """Queued or running jobs, optionally of one kind."""
    df = db.jobs_df()
    if df.empty:
        return df
    df = df[df["status"].isin(ACTIVE)]
    return df if kind is None else df[df["kind"] == kind]


def zoo_summary(manifest: Any) -> str:
    """One line about a built zoo: families, checkpoints per family, tasks and scale."""
    families = list(manifest.families)
    per_family = len(manifest.checkpoints(families[0])) if families else 0
    return (
        f"{len(families)} base model(s) ({', '.join(families)}), {per_family} checkpoints each, "
        f"{len(manifest.tasks)} benchmark tasks ({', '.join(manifest.tasks)}); scale {manifest.scale}."
    )


def describe_job(kind: str, params: dict) -> str:
    """One human line about what a job works on (which model, which method, which study)."""
    if kind == "evaluate":
        return f"{params.get('model_name') or params.get('model', '?')} on suite {params.get('suite', '?')}"
    if kind in ("merge", "merge+evaluate"):
        text = str(params.get("recipe_yaml", ""))
        method = next(
            (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("merge_method:")), "?"
        )
        n = sum(1 for ln in text.splitlines() if ln.strip().startswith("- model:"))
        suite = f", scored on {params['suite']}" if params.get("suite") else ""
        return f"{method} of {n} checkpoint(s){suite}"
    if kind == "study":
        pool = len(params.get("pool") or [])
        return f"{params.get('name', 'study')}: {pool} checkpoints, suite {params.get('suite')}"
    if kind == "build-zoo":
        return f"demo zoo ({params.get('scale', 'full')}) in {params.get('root', 'the workspace')}"
    return ""


def _job_card(row: pd.Series, key: str, show_log: bool) -> None:
    runner = get_runner()
    status = row["status"]
    with st.container(border=True):
        head, buttons = st.columns([5, 2])
        with head:
            st.markdown(f"{STATUS_ICON.get(status, '')} **{row['kind']}** · `{row['id']}` · {status}")
            try:
                params = json.loads(row.get("params_json") or "{}")
            except (TypeError, ValueError):
                params = {}
            st.caption(describe_job(str(row["kind"]), params))
            progress = float(row["progress"] or 0.0)
            if status in ACTIVE or status == "done":
                st.progress(min(max(progress, 0.0), 1.0), text=str(row["message"] or status))
            elif row["message"]:
                st.caption(str(row["message"]))
            if status in ("failed", "interrupted") and row.get("error"):
                st.error(str(row["error"]))
        with buttons:
            if status in ACTIVE:
                if st.button("Cancel", key=f"{key}:cancel:{row['id']}", icon=":material/stop:"):
                    try:
                        runner.cancel(row["id"])
                    except Exception as exc:  # noqa: BLE001 - shown to the user
                        show_error(exc, "Cancel")
            elif status in ("failed", "cancelled", "interrupted") and st.button(
                "Retry", key=f"{key}:retry:{row['id']}", icon=":material/replay:"
            ):
                try:
                    runner.retry(row["id"])
                    st.rerun()
                except Exception as exc:  # noqa: BLE001 - shown to the user
                    show_error(exc, "Retry")
        if show_log:
            with st.expander("Log"):
                log = get_store().get_job(row["id"]).log
                st.code(log or "(empty)", language="text")


def _render(limit: int | None, key: str, show_log: bool, statuses, kinds) -> bool:
    """Draw the job list; returns whether any job is still active."""
    df = get_store().jobs_df()
    if statuses:
        df = df[df["status"].isin(statuses)]
    if kinds:
        df = df[df["kind"].isin(kinds)]
    if df.empty:
        st.caption("No jobs yet.")
        return False
    if limit:
        df = df.head(limit)
    for _, row in df.iterrows():
        _job_card(row, key, show_log)
    return bool(df["status"].isin(ACTIVE).any())


def live_jobs(
    limit: int | None = None,
    key: str = "jobs",
    show_log: bool = False,
    statuses: list[str] | None = None,
    kinds: list[str] | None = None,
) -> None:
    """The job list; polls while anything is active and reruns the whole page once everything has ended."""
    active_now = not active_jobs(get_store()).empty
    flag = f"{key}:was_active"

    def body() -> None:
        active = _render(limit, key, show_log, statuses, kinds)
        if st.session_state.get(flag) and not active:
            st.session_state[flag] = False
            st.rerun(scope="app")
        st.session_state[flag] = active

    st.fragment(body, run_every=POLL_SECONDS if active_now else None)()
