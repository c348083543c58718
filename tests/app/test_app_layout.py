"""app.py routes every page with st.navigation, and nothing beside it lets Streamlit route around it.

Streamlit (1.67) takes a `pages/` folder next to the entry script for an old-style multipage app until some
session has run st.navigation: a fresh server whose first request is a deep link (/geometry) would run that
page alone, without app.py's sidebar and routing. So the pages live in app_pages/ (the browser test
tests/e2e/test_deep_link_browser.py requests a deep link first on a real server).
"""

import ast
from pathlib import Path

from tests.app.conftest import PAGES

ROOT = Path(__file__).resolve().parents[2]


def _routed_pages() -> list[str]:
    """The file of every st.Page(...) app.py declares, as written there."""
    tree = ast.parse((ROOT / "app.py").read_text())
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "st.Page"
    ]


def test_no_pages_folder_beside_the_entry_script():
    assert not (ROOT / "pages").exists(), (
        "a pages/ folder beside app.py makes Streamlit route a fresh server's first deep link around "
        "app.py (no sidebar); put pages in app_pages/"
    )


def test_app_routes_every_page_in_app_pages_and_nothing_else():
    routed = _routed_pages()
    assert routed == [f"app_pages/{page}.py" for page in PAGES]
    assert sorted(routed) == sorted(f"app_pages/{f.name}" for f in (ROOT / "app_pages").glob("*.py"))
