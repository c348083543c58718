"""Every page renders without an exception or error box, on an empty and on a populated workspace, and
shows what the workspace holds."""

import pytest

from tests.app.conftest import PAGES, app_test, errors_of

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_empty_workspace(empty_home, page):
    at = app_test(empty_home, page)
    assert errors_of(at) == []
    assert at.title[0].value == ("MergeLab" if page == "home" else page.capitalize())


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_populated_workspace(populated_home, page):
    at = app_test(populated_home, page)
    assert errors_of(at) == []


def test_home_offers_the_zoo_on_an_empty_workspace(empty_home):
    at = app_test(empty_home)
    assert any(b.label == "Build the demo zoo" for b in at.button)
    assert "No merges yet" in " ".join(c.value for c in at.caption)


def test_sidebar_counts_the_populated_workspace(populated_home):
    at = app_test(populated_home)
    metrics = {m.label: m.value for m in at.sidebar.metric}
    assert metrics["Models"] == "5"  # base + 3 checkpoints + the merged model the job registered
    assert metrics["Merges"] == "3"


def test_results_scores_the_merge_against_base_and_best(populated_home):
    at = app_test(populated_home, "results")
    values = {m.label: (m.value, m.delta) for m in at.metric}
    # in percentage points: the TA merge scored (55 + 45) / 2 = 50; base (50 + 40) / 2 = 45;
    # best checkpoint ft2: (50 + 42) / 2 = 46
    assert values["Merge (average)"][0] == "50.0"
    assert values["Base"] == ("45.0", "+5.0 pp merge vs base")
    assert values["Best checkpoint"] == ("46.0", "+4.0 pp merge vs best")


def test_geometry_draws_a_singular_spectrum(populated_home):
    at = app_test(populated_home, "geometry")
    spectra = [c for c in at.get("plotly_chart") if "Singular values" in c.proto.spec]
    assert spectra, "no singular-spectrum chart on the Geometry page"
    assert '"type":"log"' in spectra[0].proto.spec.replace(" ", "")


def test_study_report_tables(populated_home):
    at = app_test(populated_home, "study")
    # study merges average 0.465 and 0.435 vs base 0.45: one of two succeeds, mean gain 0.0 pp
    tables = [d.value for d in at.dataframe]
    cells = [str(v) for t in tables for v in t.to_numpy().ravel()]
    assert "50% / +0.00" in cells
