"""Geometry → Analyse before merging, in AppTest: empty workspace, registered models (launch through the
real job runner), and a workspace holding an analysis (the charts carry the stored numbers)."""

import json
import shutil
import time

import pytest

from tests.app.conftest import app_test, errors_of, plot_values

pytestmark = pytest.mark.slow


def _charts(at) -> dict[str, dict]:
    """Every Plotly chart on the page by its title."""
    out = {}
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        title = (spec["layout"].get("title") or {}).get("text")
        out[title] = spec
    return out


def test_empty_workspace_explains_what_to_do(empty_home):
    at = app_test(empty_home, "geometry")
    assert errors_of(at) == []
    assert [t.label for t in at.tabs] == ["Merges", "Analyse before merging"]
    infos = " ".join(i.value for i in at.info)
    assert "Register a base and its checkpoints first" in infos
    assert "No analysis yet" in infos
    assert not [b for b in at.button if b.key == "analyse:go"]


def test_analyse_from_the_page_runs_a_job_and_shows_the_cosine_matrix(registered_home, tmp_path):
    home = tmp_path / "ws"
    shutil.copytree(registered_home, home)
    at = app_test(home, "geometry")
    assert errors_of(at) == []
    picked = at.multiselect(
        key=next(m.key for m in at.multiselect if m.key.startswith("analyse:checkpoints"))
    )
    assert len(picked.value) == 3  # every checkpoint of the base's architecture, up to four
    at.button(key="analyse:go").click().run()
    assert errors_of(at) == []
    assert any("Launched analysis job" in s.value for s in at.success)
    deadline = time.monotonic() + 120
    while "Pairwise cosine of task vectors (before merging)" not in _charts(at):
        assert time.monotonic() < deadline, "the analysis did not show up"
        time.sleep(1.0)
        at.run()
    assert errors_of(at) == []
    cos = _charts(at)["Pairwise cosine of task vectors (before merging)"]["data"][0]
    assert cos["x"] == ["llama-ft0", "llama-ft1", "llama-ft2"] and plot_values(cos["z"])[0][0] == 1.0


@pytest.fixture(scope="module")
def analysed_home(tiny_llama_family, tmp_path_factory):
    """Registered models plus one analysis run by the engine and recorded as the job records it."""
    from jobs.analyse import record_analysis
    from merging import analyse_checkpoints
    from store import Store
    from ui import catalog

    base, cks = tiny_llama_family
    home = tmp_path_factory.mktemp("analysed")
    result = analyse_checkpoints(str(base), [str(c) for c in cks], device="cpu", spectra="auto")
    with Store(home / "mergelab.duckdb") as db:
        catalog.register(db, str(base), "base")
        for c in cks:
            catalog.register(db, str(c), "checkpoint")
        record_analysis(db, result.to_dict())
    return home, result


def test_stored_analysis_draws_its_numbers(analysed_home):
    home, result = analysed_home
    at = app_test(home, "geometry")
    assert errors_of(at) == []
    charts = _charts(at)
    s = result.stats.summary()
    cos = charts["Pairwise cosine of task vectors (before merging)"]["data"][0]
    assert plot_values(cos["z"])[0][1] == pytest.approx(s["model_cosines"][0][1])
    norms = charts["Task-vector norm per layer"]["data"][0]
    assert norms["y"] == ["embed", "layer 00", "layer 01", "norm", "head"]
    layer0 = next(lay for lay in result.layers if lay.layer == "layer 00")
    assert plot_values(norms["z"])[1] == pytest.approx(layer0.task_norms)
    bars = charts["Sign-conflict rate per layer"]["data"][0]
    worst = result.most_conflicting(3)
    dark = [x for x, c in zip(bars["x"], bars["marker"]["color"], strict=True) if c == "#8b0000"]
    assert sorted(dark) == sorted(w.layer for w in worst)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Most conflicting layer"] == worst[0].layer
    assert metrics["Mean pairwise cosine"] == f"{s['mean_cosine']:.3f}"
    table = next(d.value for d in at.dataframe if "sign conflict (%)" in d.value.columns)
    assert list(table["layer"]) == [w.layer for w in result.most_conflicting()]
    spectra = [t for t in charts if t and t.startswith("Singular values of the task vectors")]
    assert spectra and '"type":"log"' in json.dumps(charts[spectra[0]]["layout"]).replace(" ", "")
