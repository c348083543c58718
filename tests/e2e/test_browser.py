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
