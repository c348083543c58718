"""Live job list shared by Home, Study and Jobs: launches with the jobs they queued, progress, durations,
the headline result of finished jobs, cancel / retry, logs on demand.

The list is a fragment that reruns itself every POLL_SECONDS while any job is queued or running, and
stops polling (one full rerun, so the rest of the page picks up new results) once they have all ended.
Each poll reads one page of launches (two small queries) and the log of a job only while its Log toggle
is on, so a workspace with thousands of jobs polls as cheaply as an empty one. Worker threads only write
job state to the store; this module only reads it, so no thread but the script thread calls `st.*`.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from ui.data import short_name
from ui.session import get_runner, get_store, show_error

POLL_SECONDS = 1.5
PAGE_SIZE = 20  # launches per page on the Jobs page
LOG_TAIL_CHARS = 20_000  # the end of a long log is what a user reads
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
    """Queued or running jobs, optionally of one kind (one bounded query, no logs)."""
    _, df = db.job_groups_page(limit=1000, statuses=list(ACTIVE), kinds=[kind] if kind else None)
    return df[df["status"].isin(ACTIVE)] if len(df) else df


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
    if kind == "sweep":
        sweep = params.get("sweep") or params
        values = ", ".join(f"{float(v):g}" for v in sweep.get("values") or [])
        n = (params.get("sizes") or [params.get("n", "?")])[0]
        what = f"{sweep.get('param', '?')} of {sweep.get('method', '?')} at {values}"
        return f"{what}: {params.get('subsets', '?')} subsets of n={n}, suite {params.get('suite')}"
    if kind == "analyse":
        return f"{len(params.get('checkpoints') or [])} checkpoints against {short_name(params.get('base'))}"
    return ""


def format_duration(seconds: Any) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min; '' when unknown (a job that never started)."""
    if seconds is None or pd.isna(seconds):
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def headline(kind: str, result: Any) -> str:
    """The one result of a finished job worth reading in a list: a mean score in percentage points, where a
    merge went, what a study ran."""
    if not isinstance(result, dict):
        return ""
    parts = []
    if result.get("mean") is not None:
        parts.append(f"mean score {100.0 * float(result['mean']):.1f} pp")
    if result.get("output_path"):
        parts.append(f"saved to `{result['output_path']}`")
    if kind == "analyse" and result.get("most_conflicting"):
        parts.append(
            f"sign conflict {100.0 * float(result.get('sign_conflict') or 0.0):.1f}%, most in "
            + ", ".join(result["most_conflicting"][:2])
        )
    if kind in ("study", "sweep") and result.get("total") is not None:
        parts.append(
            f"{result.get('ran', 0)} units run, {result.get('skipped', 0)} reused, {result['total']} in all"
        )
    if kind == "build-zoo" and result.get("root"):
        parts.append(f"zoo in `{result['root']}`")
    if kind == "download" and result.get("path"):
        parts.append(f"downloaded to `{result['path']}`")
    return " · ".join(parts)


def _json(text: Any, default: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) and text else default
    except ValueError:
        return default


def _job_card(row: pd.Series, key: str, show_log: bool) -> None:
    runner = get_runner()
    status = row["status"]
    with st.container(border=True):
        head, buttons = st.columns([5, 2])
        with head:
            took = format_duration(row.get("duration_s"))
            timing = f" · {took}" if took else ""
            st.markdown(f"{STATUS_ICON.get(status, '')} **{row['kind']}** · `{row['id']}` · {status}{timing}")
            st.caption(describe_job(str(row["kind"]), _json(row.get("params_json"), {})))
            progress = float(row["progress"] or 0.0)
            if status in ACTIVE:
                st.progress(min(max(progress, 0.0), 1.0), text=str(row["message"] or status))
            elif status == "done":
                result = headline(str(row["kind"]), _json(row.get("result_json"), None))
                st.markdown(f":material/check: {result}" if result else "finished")
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
        # The log is read only for a job whose log is open: a toggle, not an expander (an expander's body
        # runs, and would query, even while it is collapsed).
        if show_log and st.toggle("Log", key=f"{key}:log:{row['id']}"):
            log = get_store().job_log(row["id"], tail_chars=LOG_TAIL_CHARS)
            st.code(log or "(empty)", language="text")


def _group_title(jobs: pd.DataFrame) -> str:
    first = jobs.iloc[0]
    others = len(jobs) - 1
    when = pd.Timestamp(first["created_at"]).strftime("%Y-%m-%d %H:%M")
    counts = jobs["status"].value_counts()
    state = ", ".join(f"{n} {s}" for s, n in counts.items())
    extra = f" and {others} job(s) it queued" if others else ""
    return f"**{first['kind']}** launched {when}{extra} · {state}"


def _pager(key: str, total: int, page_size: int) -> None:
    """Newer / Older under the list; the buttons move the page in a callback, before the next run reads it."""
    pages = max(1, -(-total // page_size))
    state_key = f"{key}:page"
    page = min(max(1, int(st.session_state.get(state_key, 1))), pages)
    st.session_state[state_key] = page
    if pages <= 1:
        return

    def move(step: int) -> None:
        st.session_state[state_key] = min(max(1, page + step), pages)

    left, mid, right = st.columns([1, 3, 1])
    left.button(
        "Newer",
        key=f"{key}:newer",
        disabled=page <= 1,
        icon=":material/chevron_left:",
        on_click=move,
        args=(-1,),
    )
    mid.caption(f"Page {page} of {pages} · {total} launches")
    right.button(
        "Older",
        key=f"{key}:older",
        disabled=page >= pages,
        icon=":material/chevron_right:",
        on_click=move,
        args=(1,),
    )


def _render(limit: int | None, key: str, show_log: bool, statuses, kinds, paginate: bool) -> bool:
    """Draw one page of launches (a launch and the jobs it queued, together); returns whether any job on
    the page is still active. Reads only the jobs shown, never a log unless its toggle is on."""
    db = get_store()
    page_size = limit or PAGE_SIZE
    offset = int(st.session_state.get(f"{key}:page", 1) - 1) * page_size if paginate else 0
    total, df = db.job_groups_page(offset=offset, limit=page_size, statuses=statuses, kinds=kinds)
    if paginate and df.empty and total:
        st.session_state[f"{key}:page"] = 1
        total, df = db.job_groups_page(limit=page_size, statuses=statuses, kinds=kinds)
    if df.empty:
        st.caption("No jobs yet.")
        return False
    for _, jobs in df.groupby("group_id", sort=False):
        if len(jobs) == 1:
            _job_card(jobs.iloc[0], key, show_log)
            continue
        st.markdown(_group_title(jobs))
        for _, row in jobs.iterrows():
            _job_card(row, key, show_log)
    if paginate:
        _pager(key, total, page_size)
    return bool(df["status"].isin(ACTIVE).any())


def live_jobs(
    limit: int | None = None,
    key: str = "jobs",
    show_log: bool = False,
    statuses: list[str] | None = None,
    kinds: list[str] | None = None,
    paginate: bool = False,
) -> None:
    """The job list, grouped by launch, newest first: `limit` launches (PAGE_SIZE per page when paginated).
    Polls while anything is active and reruns the whole page once everything has ended."""
    active_now = get_store().job_counts()["active"] > 0
    flag = f"{key}:was_active"

    def body() -> None:
        active = _render(limit, key, show_log, statuses, kinds, paginate)
        if st.session_state.get(flag) and not active:
            st.session_state[flag] = False
            st.rerun(scope="app")
        st.session_state[flag] = active

    st.fragment(body, run_every=POLL_SECONDS if active_now else None)()
