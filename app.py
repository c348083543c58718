"""MergeLab: the Streamlit entry point. `make app` (or `streamlit run app.py`) starts it on 127.0.0.1.

This file only sets the page config, draws the shared sidebar and routes between the pages with
st.navigation; every page lives in app_pages/ and uses the public faces of merging, evaluation, store, jobs
and zoo through ui/. Not pages/: Streamlit takes a pages/ folder beside the entry script for an old-style
multipage app until st.navigation has run once, so a fresh server's first request, if a deep link
(/geometry), would run that page alone, without this file's sidebar and routing.
"""

import streamlit as st

from ui import session, sidebar, style

st.set_page_config(page_title="MergeLab", page_icon=":material/merge:", layout="wide")
style.apply()

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("app_pages/merge.py", title="Merge", icon=":material/merge:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("app_pages/jobs.py", title="Jobs", icon=":material/pending_actions:"),
    st.Page("app_pages/results.py", title="Results", icon=":material/leaderboard:"),
    st.Page("app_pages/geometry.py", title="Geometry", icon=":material/scatter_plot:"),
    st.Page("app_pages/study.py", title="Study", icon=":material/science:"),
]

page = st.navigation(PAGES)
session.get_runner()  # the job runner starts with the app, whatever page is opened first
session.sync_zoo()
counters = sidebar.render()
try:
    page.run()
finally:  # drawn after the page, so what it just launched is counted
    sidebar.render_counts(counters)
