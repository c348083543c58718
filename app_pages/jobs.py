"""Jobs: every background job with live progress and messages; cancel, retry, read the log."""

import streamlit as st

from store import JOB_STATES
from ui import jobs_view
from ui.session import guard

st.title("Jobs")
st.caption(
    "Merges, evaluations, studies and zoo builds run in the background; this list refreshes itself while "
    "anything is queued or running. Each launch is shown with the jobs it queued (a merge and the reference "
    "evaluations it asked for), newest first. A failed job shows its error; fix the cause and press Retry."
)
with guard("Jobs"):
    statuses = st.multiselect("Show", list(JOB_STATES), default=[], placeholder="all statuses")
    jobs_view.live_jobs(key="jobs", show_log=True, statuses=statuses or None, paginate=True)
