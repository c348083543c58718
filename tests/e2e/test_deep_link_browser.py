"""End to end in headless Chromium: a deep link as a fresh server's very first request gets the whole app.

Regression: with the pages in a `pages/` folder beside app.py, Streamlit took the app for an old-style
multipage app until app.py's st.navigation had run once, so opening http://…/geometry first on a freshly
started server ran the Geometry page alone: no shared sidebar, Streamlit's own file-name navigation. The
server here is started for this module alone (the app_url fixture of test_browser.py, on an empty
workspace: no zoo to build), and the deep link is the first page any browser asks it for.
"""

# ruff: noqa: F811  (the shared fixtures are imported by name, and pytest injects them by the same names)
from __future__ import annotations

import pytest

from tests.e2e.test_browser import ERRORS, _open, app_url, page  # noqa: F401  (a fresh app for this module)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAVIGATION = ["Home", "Models", "Merge", "Compare", "Jobs", "Results", "Geometry", "Study"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An empty workspace (overrides test_browser's zoo-holding one: the pages need no models here)."""
    return tmp_path_factory.mktemp("e2e-deep-link")


def test_a_deep_link_first_runs_the_page_inside_app_py(app_url, page):
    _open(page, f"{app_url}/geometry", "Geometry")  # waits for app.py's sidebar ("Workspace") too
    sidebar = page.locator('[data-testid="stSidebar"]')
    links = sidebar.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
    labels = [t.split()[-1] for t in links]  # a link's text is its icon's name, then its title
    assert labels == NAVIGATION, links  # app.py's st.navigation, not a listing of the folder's files
    assert sidebar.get_by_text("Set MERGELAB_HOME before").count() == 1
    assert page.url.rstrip("/").endswith("/geometry")
    errors = page.locator(ERRORS)
    assert errors.count() == 0, errors.first.inner_text()
