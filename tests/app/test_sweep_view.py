"""Study → sweeps, in AppTest: empty workspace, a populated workspace whose study is not a sweep, and a
sweep launched from the page on tiny models and tiny tasks, run by the real job runner, drawn as score
against the value."""

import json
import shutil
import time

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
