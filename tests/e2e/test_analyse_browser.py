"""End to end in headless Chromium: analyse checkpoints without merging, and sweep a hyperparameter.

Uses the same app-on-a-real-port fixtures as test_browser.py (tiny demo zoo in a temporary workspace,
Debian Chromium), in a workspace of its own. First: Geometry → Analyse before merging on the zoo base and
four checkpoints, read its cosine matrix and conflict-by-layer chart, and check nothing was merged. Then:
Study → sweep lambda for Task Arithmetic (5 values, 2 subsets of 4 checkpoints) on the zoo suite, wait for
the job, read the curve on the Study page, export the report, and open the HTML offline to find the curve
there. Screenshots go to docs/screenshots/ (geometry-analyse.png; study-sweep.png, the curve on the Study
page; sweep-report.png, the report opened offline at its sweep section).
"""

# ruff: noqa: F811  (the shared fixtures are imported by name, and pytest injects them by the same names)
from __future__ import annotations

import re
import time

import pytest

from tests.e2e.test_browser import (  # noqa: F401  (module-scoped fixtures: a fresh app for this module)
    ERRORS,
    SHOTS,
    _check_and_shoot,
    _open,
    _settle,
    app_url,
    page,
    workspace,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COSINE_TITLE = "Pairwise cosine of task vectors (before merging)"
SWEEP_TITLE = "Average accuracy (%) against lambda"
SWEEP_TIMEOUT_S = 900


def _sidebar_metric(page, label: str) -> str:
    metric = page.locator('[data-testid="stSidebar"] [data-testid="stMetric"]').filter(has_text=label)
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def _analyse_tab(page):
    tab = page.get_by_role("tab", name="Analyse before merging")
    tab.click()
    return tab


def _start_at_home(page, app_url: str) -> None:
    """A fresh server learns its pages from app.py's st.navigation in the first session; a deep link as the
    very first request runs the page without app.py (no sidebar). Users arrive at Home; so do the tests."""
    _open(page, app_url, "MergeLab")


def test_analyse_checkpoints_without_merging(app_url, page):
    _start_at_home(page, app_url)
    _open(page, f"{app_url}/geometry", "Geometry")
    _analyse_tab(page)
    # Defaults: the zoo's first base and its first four checkpoints of the same architecture.
    chosen = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Checkpoints")
    assert chosen.locator("[data-tag]").count() == 4
    page.get_by_role("button", name="Analyse", exact=True).click()
    page.get_by_text("Launched analysis job").wait_for()
    deadline = time.monotonic() + 180
    while not page.get_by_text(COSINE_TITLE).count():
        assert time.monotonic() < deadline, "the analysis did not show up"
        page.wait_for_timeout(1000)
        if not page.get_by_role("tab", name="Analyse before merging", selected=True).count():
            _analyse_tab(page)  # a finished job reruns the page; keep the analysis tab in view
    _settle(page)
    _analyse_tab(page)
    page.get_by_text(COSINE_TITLE).wait_for()
    page.get_by_text("Sign-conflict rate per layer").first.wait_for()
    page.get_by_text("Layers where the checkpoints conflict most", exact=True).wait_for()
    # The cosine matrix: a 4 x 4 heatmap with 1.00 on its diagonal, drawn as text in the SVG.
    cosine = page.locator(".js-plotly-plot").filter(has_text=COSINE_TITLE)
    cells = cosine.locator("text").all_text_contents()
    assert sum(1 for t in cells if t.strip() == "1.00") >= 4, cells
    assert _sidebar_metric(page, "Merges") == "0"  # analysed, not merged
    _check_and_shoot(page, "geometry-analyse")


def _sweep_launches(page) -> int:
    """Sweep launches the Study page's job list shows ("**sweep** launched …")."""
    return page.locator('[data-testid="stMain"]').get_by_text(re.compile(r"^sweep launched")).count()


def _launch_sweep(page, button) -> None:
    """Click Launch sweep and see it launched: its confirmation, or its launch in the job list (a rerun of
    the page can replace the confirmation first). On a loaded machine a click made while the page was
    still re-running has been lost once (CI, 60 s without either); a click that launched nothing is made
    again, so the test still needs the button to launch exactly one sweep."""
    launched = page.get_by_text("Launched sweep job")
    for attempt in range(2):
        button.click()
        deadline = time.monotonic() + 60
        while not (launched.count() or _sweep_launches(page)):
            if time.monotonic() > deadline:
                _settle(page)  # a slow rerun that did launch shows it once the page has run through
                break
            page.wait_for_timeout(500)
        if launched.count() or _sweep_launches(page):
            assert _sweep_launches(page) <= 1
            return
        assert attempt == 0, "Launch sweep launched nothing, twice"


def test_lambda_sweep_curve_on_the_study_page_and_in_the_report(app_url, page, tmp_path):
    _start_at_home(page, app_url)
    _open(page, f"{app_url}/study", "Study")
    page.get_by_text("Sweep a hyperparameter").click()
    form = page.locator('[data-testid="stExpander"]').filter(has_text="Sweep a hyperparameter")
    form.get_by_text("Values (comma-separated)").wait_for()
    values = form.get_by_label("Values (comma-separated)")
    assert values.input_value() == "0.2, 0.5, 1, 1.5, 2"
    assert form.get_by_label("Checkpoints per merge (n)").input_value() == "4"
    assert form.get_by_label("Subsets (fixed across values)").input_value() == "2"
    _launch_sweep(page, form.get_by_role("button", name="Launch sweep"))

    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while True:
        text = page.locator('[data-testid="stMain"]').inner_text()
        assert "· failed" not in text and "· interrupted" not in text, f"the sweep failed: {text[-1500:]}"
        if page.get_by_text(SWEEP_TITLE).count() and "· running" not in text and "· queued" not in text:
            break
        assert time.monotonic() < deadline, f"the sweep did not finish in time: {text[-1500:]}"
        page.wait_for_timeout(2000)
    _settle(page)
    curve = page.locator(".js-plotly-plot").filter(has_text=SWEEP_TITLE)
    curve.wait_for()
    ticks = curve.locator("g.xtick text").all_text_contents()
    assert ticks == ["0.2", "0.5", "1", "1.5", "2"], ticks
    page.get_by_text("The paper's ablation (its checkpoints, not yours)").wait_for()
    errors = page.locator(ERRORS)
    assert errors.count() == 0, errors.first.inner_text()
    assert not page.get_by_text("against n (the paper's Figure 3)").count()  # one n: the curve replaces it
    SHOTS.mkdir(parents=True, exist_ok=True)
    curve.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    curve.screenshot(path=str(SHOTS / "study-sweep.png"))

    with page.expect_download() as download:
        page.get_by_role("button", name="Download report (HTML)").click()
    report = tmp_path / download.value.suggested_filename
    download.value.save_as(report)
    assert report.name.startswith("mergelab-sweep-")

    context = page.context.browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
    try:
        offline = context.new_page()
        offline.goto(report.as_uri())
        offline.get_by_role("heading", name="Sweep of lambda", exact=True).wait_for()
        offline.locator(".js-plotly-plot").first.wait_for()
        plot = offline.locator(".js-plotly-plot").filter(has_text=SWEEP_TITLE)
        assert plot.locator("g.xtick text").all_text_contents() == ["0.2", "0.5", "1", "1.5", "2"]
        assert offline.get_by_text("merge_method: task_arithmetic").count() >= 1  # the recipes
        assert not offline.get_by_text("against n (the paper's Figure 3)").count()
        offline.get_by_role("heading", name="Sweep of lambda", exact=True).scroll_into_view_if_needed()
        offline.wait_for_timeout(500)
        offline.screenshot(path=str(SHOTS / "sweep-report.png"))
    finally:
        context.close()
