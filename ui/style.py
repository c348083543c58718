"""App-wide CSS that Streamlit's theme options cannot express, injected once per run by app.py.

Multiselects: Streamlit lays the selected chips out on one line that scrolls sideways once they overflow,
so with more than three checkpoints chosen most of them are out of sight. Here the chips wrap onto as many
lines as they need (scrolling vertically only past ~8 lines) and the fade that hid the overflow is removed.
"""

from __future__ import annotations

import streamlit as st

MULTISELECT_WRAP = """
<style>
[data-testid="stMultiSelect"] [role="group"]:has(> [data-testid="stMultiSelectTagsContainer"]) {
    max-height: none !important;
    height: auto !important;
}
[data-testid="stMultiSelect"] [data-testid="stMultiSelectTagsContainer"] {
    flex-wrap: wrap !important;
    overflow-x: hidden !important;
    overflow-y: auto !important;
    max-height: 16rem;
    height: auto !important;
    mask-image: none !important;
    -webkit-mask-image: none !important;
}
</style>
"""


def apply() -> None:
    """Inject the app's CSS (a style-only block takes no space on the page)."""
    st.html(MULTISELECT_WRAP)
