"""Download buttons for an exported report (ui.report): the HTML file and its data as Parquet.

Shared by every page that exports (Compare, Study, and sweeps): pass a function that builds the Report, so
the report (plotly.js alone is megabytes) is built only when a button is pressed, not on every rerun.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from ui import report


def download_buttons(build: Callable[[], report.Report], stem: str, key: str) -> None:
    """Two buttons: `<stem>.html` (one self-contained file, opens offline) and `<stem>-data.zip` (Parquet)."""
    c1, c2 = st.columns(2)
    c1.download_button(
        "Download report (HTML)",
        lambda: report.to_html(build()).encode("utf-8"),
        f"{stem}.html",
        "text/html",
        key=f"{key}:html",
        on_click="ignore",
        icon=":material/download:",
        help="One file with the interactive charts, tables and recipes; opens offline in any browser.",
    )
    c2.download_button(
        "Download data (Parquet, zip)",
        lambda: report.to_parquet_zip(build()),
        f"{stem}-data.zip",
        "application/zip",
        key=f"{key}:parquet",
        on_click="ignore",
        icon=":material/table:",
        help="One Parquet file per table of the report.",
    )
