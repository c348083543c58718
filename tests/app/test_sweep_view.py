"""Study → sweeps, in AppTest: empty workspace, a populated workspace whose study is not a sweep, a sweep
launched from the page on tiny models and tiny tasks (run by the real job runner) drawn as score against
the value, and a stored sweep in the page and in the exported report (HTML and Parquet)."""

import html
import io
import json
import re
import shutil
import time
import zipfile

import pandas as pd
import pytest

from tests.app.conftest import app_test, errors_of, plot_values
from tests.jobs.helpers import write_zoo_tasks

pytestmark = pytest.mark.slow
CURVE = "Average accuracy (%) against lambda"


def _titles(at) -> list[str]:
    return [
        (json.loads(c.proto.spec)["layout"].get("title") or {}).get("text") or ""
        for c in at.get("plotly_chart")
    ]


def test_empty_workspace_offers_no_sweep_form(empty_home):
    at = app_test(empty_home, "study")
    assert errors_of(at) == []
    assert any(e.label.startswith("Sweep a hyperparameter") for e in at.expander)
    assert any("Register a base and at least two checkpoints" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "sweep:launch"]


def test_an_ordinary_study_is_not_drawn_as_a_sweep(populated_home):
    at = app_test(populated_home, "study")
    assert errors_of(at) == []
    assert not [t for t in _titles(at) if "the paper's ablation" in t]
    assert any(t.startswith("Average accuracy (%) against n") for t in _titles(at))  # Figure 3 stays
    assert [b for b in at.button if b.key == "sweep:launch"]  # models are registered: the form is there


def test_sweep_launched_from_the_page_draws_its_curve(registered_home, tmp_path):
    home = tmp_path / "ws"
    shutil.copytree(registered_home, home)
    write_zoo_tasks(home / "zoo", names=("add",))
    at = app_test(home, "study")
    assert errors_of(at) == []
    assert at.selectbox(key="sweep:method").value == "task_arithmetic"
    assert at.selectbox(key="sweep:param:task_arithmetic").value == "lambda"
    at.text_input(key="sweep:values:lambda").set_value("0, 1")
    at.number_input(key="sweep:n").set_value(2)
    at.number_input(key="sweep:subsets").set_value(1)
    at.selectbox(key="sweep:suite").set_value("zoo")
    at.button(key="sweep:launch").click().run()
    assert errors_of(at) == []
    assert any("Launched sweep job" in s.value for s in at.success)
    deadline = time.monotonic() + 300
    while True:
        at.run()
        charts = {
            json.loads(c.proto.spec)["layout"]["title"]["text"]: c
            for c in at.get("plotly_chart")
            if json.loads(c.proto.spec)["layout"].get("title")
        }
        curve = next((json.loads(c.proto.spec) for t, c in charts.items() if t.startswith(CURVE)), None)
        if curve is not None:
            mean = next(d for d in curve["data"] if d.get("name") == "mean over subsets")
            if len(plot_values(mean["x"])) == 2:
                break
        assert time.monotonic() < deadline, "the sweep's curve did not appear"
        time.sleep(2.0)
    assert errors_of(at) == []
    assert curve["layout"]["xaxis"]["ticktext"] == ["0", "1"]
    # lambda = 0 is the base itself, so its point sits exactly on the base line
    base_y = next(a["y"] for a in curve["layout"]["annotations"] if a["text"] == "base")
    assert plot_values(mean["y"])[0] == pytest.approx(base_y)
    assert any(t.startswith("Distance from the base against lambda") for t in charts)
    table = next(d.value for d in at.dataframe if "mean (%)" in d.value.columns)
    assert list(table.index) == ["lambda=0", "lambda=1"] and list(table["merges"]) == [1, 1]


@pytest.fixture(scope="module")
def swept_home(tiny_llama_family, tmp_path_factory):
    """Registered tiny models plus a finished lambda sweep (0, 1, 2 on two subsets of n = 2), run by the
    real "sweep" job on a one-task zoo suite."""
    from jobs import JobRunner
    from store import Store
    from ui import catalog

    home = tmp_path_factory.mktemp("swept")
    write_zoo_tasks(home / "zoo", names=("add",))
    base, cks = str(tiny_llama_family[0]), [str(c) for c in tiny_llama_family[1]]
    with Store(home / "mergelab.duckdb") as db:
        catalog.register(db, base, "base")
        pool = [catalog.register(db, c, "checkpoint")["ref"] for c in cks]
        runner = JobRunner(db, devices=["cpu"])
        try:
            params = {"base": base, "pool": pool, "method": "task_arithmetic", "param": "lambda"}
            params |= {"values": "0,1,2", "n": 2, "subsets": 2, "suite": "zoo", "zoo_root": str(home / "zoo")}
            (job,) = runner.wait([runner.submit("sweep", params)], timeout=600)
        finally:
            runner.shutdown()
        assert job.status == "done", job.error
        return home, job.params["study_id"]


def test_stored_sweep_on_the_study_page(swept_home):
    home, study_id = swept_home
    at = app_test(home, "study")
    assert errors_of(at) == []
    assert at.selectbox(key="study:which").value == study_id
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    curve = next(s for s in specs if (s["layout"].get("title") or {}).get("text", "").startswith(CURVE))
    subsets = [d for d in curve["data"] if str(d.get("name", "")).startswith("subset ")]
    assert len(subsets) == 2 and all(plot_values(d["x"]) == [0.0, 1.0, 2.0] for d in subsets)
    table = next(d.value for d in at.dataframe if "mean (%)" in d.value.columns)
    assert list(table.index) == ["lambda=0", "lambda=1", "lambda=2"] and list(table["merges"]) == [2, 2, 2]
    assert any("The paper's ablation" in c.value and "saturates" in c.value for c in at.caption)
    buttons = at.get("download_button")
    assert [b.label for b in buttons][:2] == ["Download report (HTML)", "Download data (Parquet, zip)"]


def test_exported_report_holds_the_sweep_curve(swept_home):
    from store import Store
    from ui import report

    home, study_id = swept_home
    with Store(home / "mergelab.duckdb") as db:
        rep = report.study_report(db, study_id)
        points = db.study_results_df(study_id)
    assert rep.kind == "sweep" and rep.title.startswith("MergeLab sweep: sweep of lambda for task_arithmetic")
    assert "lambda = 0, 1, 2 on 2 subsets of n = 2" in rep.facts["merged"]
    page = report.to_html(rep)
    assert not re.search(r"<script[^>]+src=", page)  # offline: nothing loaded from elsewhere
    assert html.escape(CURVE) in page and "Distance from the base against lambda" in page
    assert html.escape("saturates around λ ≈ 1.0") in page  # the paper's statement, in its own section
    with zipfile.ZipFile(io.BytesIO(report.to_parquet_zip(rep))) as zf:
        sweep = pd.read_parquet(io.BytesIO(zf.read("sweep_points.parquet")))
    assert sorted(sweep["value"].unique()) == [0.0, 1.0, 2.0] and len(sweep) == 6
    # the exported points are the stored scores: per merge, the mean over the suite's tasks in percent
    expected = points.groupby(["config", "subset_id"])["value"].mean().mul(100).sort_values().tolist()
    assert sorted(sweep["accuracy"]) == pytest.approx(expected)
