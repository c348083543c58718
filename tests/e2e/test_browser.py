"""End to end in headless Chromium: the newcomer's first merge, through the real app on a real port.

Starts `streamlit run app.py` on a free port with a temporary workspace holding the tiny demo zoo, then
drives the browser: Merge (Task Arithmetic of 3 checkpoints, evaluated) → Jobs until done → Results shows
its scores → Geometry shows a singular spectrum. No page may show an exception or an error box. A full-page
screenshot of every page, 1400 px wide, is saved to docs/screenshots/<page>.png for the README.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
JOB_TIMEOUT_S = 300
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def _chromium() -> str:
    """The system Chromium, installed with apt when missing; skip only when that is impossible."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
            shell=True,
            check=False,
            capture_output=True,
            timeout=900,
        )
    if not Path(CHROMIUM).exists():
        pytest.skip("headless Chromium is not installed at /usr/bin/chromium and cannot be installed here")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace holding the tiny demo zoo (the app registers its models on first start).

    MERGELAB_E2E_ZOO may name an already built tiny zoo to copy instead of building one (minutes on CPU).
    """
    import zoo

    home = tmp_path_factory.mktemp("e2e-ws")
    prebuilt = os.environ.get("MERGELAB_E2E_ZOO")
    if prebuilt and zoo.is_complete(Path(prebuilt)):
        shutil.copytree(prebuilt, home / "zoo")
    else:
        zoo.build_zoo(home / "zoo", scale="tiny")
    assert zoo.is_complete(home / "zoo")
    return home


@pytest.fixture(scope="module")
def app_url(workspace):
    port = _free_port()
    env = {**os.environ, "MERGELAB_HOME": str(workspace), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = open(workspace / "streamlit.log", "w")  # noqa: SIM115 - closed in teardown
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (workspace / "streamlit.log").read_text()[-2000:]
                raise RuntimeError(f"streamlit did not start: {tail}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=exe,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _settle(page) -> None:
    """Wait until the script has run through: the shared sidebar (drawn before every page body) is up,
    no script run is in progress, and charts have had a moment to draw. The first run imports torch and
    lm-eval, hence the long first timeout."""
    page.wait_for_load_state("networkidle")
    page.locator('[data-testid="stSidebar"]').get_by_text("Workspace", exact=True).wait_for(timeout=180_000)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')",
        timeout=120_000,
        polling=250,
    )
    page.wait_for_timeout(1000)


def _open(page, url: str, title: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name=title, exact=True).first.wait_for()
    _settle(page)


def _check_and_shoot(page, name: str) -> None:
    errors = page.locator(ERRORS)
    assert errors.count() == 0, f"{name}: {errors.first.inner_text()}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    # Streamlit scrolls inside its main container, so a "full page" shot needs a viewport as tall as it.
    height = page.evaluate(
        "() => Math.max(900, document.querySelector('[data-testid=\"stMain\"]').scrollHeight + 40)"
    )
    page.set_viewport_size({"width": 1400, "height": int(height)})
    page.wait_for_timeout(700)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 900})


def test_first_merge_in_the_browser(app_url, page):
    _open(page, app_url, "MergeLab")
    page.get_by_text("The demo zoo is ready").wait_for()
    _check_and_shoot(page, "home")

    _open(page, f"{app_url}/models", "Models")
    page.get_by_text("Compatibility matrix").wait_for()
    _check_and_shoot(page, "models")

    # Merge: the defaults are the zoo base, its first three checkpoints, Task Arithmetic, evaluate on zoo.
    _open(page, f"{app_url}/merge", "Merge")
    recipe = page.locator('[data-testid="stCode"]').filter(has_text="merge_method").first.inner_text()
    assert "merge_method: task_arithmetic" in recipe
    assert recipe.count("- model:") == 3
    assert page.get_by_label("Evaluate now").is_checked()
    _check_and_shoot(page, "merge")
    page.get_by_role("button", name="Launch merge").click()
    page.get_by_text("Launched job").wait_for()
    _settle(page)

    # Jobs: the list polls by itself; wait until the merge and the scoring of its base and checkpoints
    # (queued with it) are all done.
    _open(page, f"{app_url}/jobs", "Jobs")
    page.get_by_text("merge+evaluate").first.wait_for()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        text = page.locator('[data-testid="stMain"]').inner_text()
        assert "· failed" not in text and "· interrupted" not in text, f"a job failed: {text[-1500:]}"
        if "· done" in text and "· running" not in text and "· queued" not in text:
            break
        assert time.monotonic() < deadline, f"the jobs did not finish in time: {text[-1500:]}"
        page.wait_for_timeout(1000)
    _settle(page)
    _check_and_shoot(page, "jobs")

    _open(page, f"{app_url}/results", "Results")
    page.get_by_text("Merge (average)").wait_for()
    page.get_by_text("merge vs base").wait_for()
    page.get_by_text("merge vs best").wait_for()
    page.get_by_text("Score per task").wait_for()
    _check_and_shoot(page, "results")

    _open(page, f"{app_url}/geometry", "Geometry")
    page.get_by_text("Singular values ·").first.wait_for()
    assert page.locator(".js-plotly-plot").count() >= 4
    _check_and_shoot(page, "geometry")

    _open(page, f"{app_url}/study", "Study")
    page.get_by_text("The paper's published numbers").wait_for()
    _check_and_shoot(page, "study")


def _plotly_figures(page) -> list[dict]:
    """Title, trace names and x values of every Plotly chart on the page (read from the charts themselves)."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => {
            const traces = el._fullData || el.data || [];
            const title = ((el._fullLayout || el.layout || {}).title || {}).text || '';
            return {
                title: title.replace(/<[^>]+>/g, ''),
                names: traces.map(t => t.name || ''),
                x: traces.map(t => Array.from(t.x || []).map(String)),
                y: traces.map(t => Array.from(t.y || []).map(Number)),
            };
        })"""
    )


COMPARED = ["TA (sum)", "TIES", "Model Stock"]


def test_compare_three_methods_and_share_the_report(app_url, page, tmp_path):
    """Compare: three methods on four checkpoints, read scores and geometry, export the report, open the
    exported file offline in the same browser and find its charts and its recipe."""
    _open(page, app_url, "MergeLab")
    _open(page, f"{app_url}/compare", "Compare")
    # The defaults are the zoo base, its first four checkpoints and the study's configurations: keep three.
    chips = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Checkpoints (every method")
    chips.locator("[data-tag]").nth(3).wait_for()
    assert chips.locator("[data-tag]").count() == 4
    methods = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Methods (default")
    methods.locator("[data-tag]").nth(len(COMPARED)).wait_for()
    for label in [t for t in methods.locator("[data-tag]").all_inner_texts() if t not in COMPARED]:
        methods.get_by_role("button", name=f"Remove {label}", exact=True).click()
        methods.get_by_role("button", name=f"Remove {label}", exact=True).wait_for(state="detached")
        _settle(page)
    assert methods.locator("[data-tag]").all_inner_texts() == COMPARED
    page.get_by_text("3 merges of 4 checkpoints").wait_for()
    page.get_by_role("button", name="Launch comparison").click()
    page.get_by_text("Launched comparison job").wait_for()

    # The view fills in when the comparison job is done (the progress list reruns the page then).
    deadline = time.monotonic() + JOB_TIMEOUT_S
    main = page.locator('[data-testid="stMain"]')
    while "Download report (HTML)" not in main.inner_text():
        text = main.inner_text()
        assert "· failed" not in text, f"the comparison failed: {text[-1500:]}"
        assert time.monotonic() < deadline, f"the comparison did not finish in time: {text[-1500:]}"
        page.wait_for_timeout(2000)
    _settle(page)

    # Scores: one metric per method with its gain over the base, and the per-task bars with base and best.
    metrics = page.locator('[data-testid="stMetric"]')
    for method in COMPARED:
        metric = metrics.filter(has_text=method).first
        assert "pp vs base" in metric.inner_text(), metric.inner_text()
    # seven charts: scores, two gain maps, geometry, kept shares, per-layer sizes, disagreement
    page.wait_for_function(
        "() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 7", timeout=60_000
    )
    figures = {f["title"]: f for f in _plotly_figures(page)}
    assert "Score per task (%)" in figures, list(figures)
    bars = figures["Score per task (%)"]
    assert any(n.endswith("(base)") for n in bars["names"]), bars["names"]
    assert any(n.endswith("(best checkpoint)") for n in bars["names"]), bars["names"]
    assert set(COMPARED) <= set(bars["names"])
    # Geometry beside them: distance from the base, mass dropped, conflicts, effective rank, per method.
    geometry = figures["Distance, mass, conflicts, rank"]
    assert geometry["x"][0] == COMPARED and all(v > 0 for v in geometry["y"][0]), geometry
    assert "‖Δ‖ / ‖Σ τ‖ per layer" in figures and "Layers of most disagreement" in figures
    page.mouse.move(0, 0)  # no tooltip in the screenshot
    _check_and_shoot(page, "compare")

    # Export the report and open it offline in the same browser.
    with page.expect_download() as info:
        page.get_by_role("button", name="Download report (HTML)").click()
    report_file = tmp_path / info.value.suggested_filename
    info.value.save_as(report_file)
    assert report_file.suffix == ".html" and report_file.stat().st_size > 1_000_000  # plotly.js inlined
    offline = page.context.browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
    try:
        doc = offline.new_page()
        doc.goto(report_file.as_uri())
        doc.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60_000)  # drawn: plotly.js ran
        drawn = doc.evaluate("() => document.querySelectorAll('.js-plotly-plot .main-svg').length")
        assert drawn >= 6, drawn
        recipes = doc.locator("pre.recipe").all_inner_texts()
        assert any("merge_method: ties" in r for r in recipes), recipes
        assert any("merge_method: task_arithmetic" in r for r in recipes), recipes
        assert doc.get_by_text("The paper's published numbers (not computed by MergeLab)").count() == 1
        height = doc.evaluate("() => document.body.scrollHeight")
        doc.set_viewport_size({"width": 1400, "height": min(int(height) + 40, 12000)})
        doc.wait_for_timeout(700)
        doc.screenshot(path=str(SHOTS / "compare_report.png"), full_page=True)
    finally:
        offline.close()
