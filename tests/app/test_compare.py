"""Compare: the comparison frames on hand-written stats, a real comparison run through the JobRunner (a study
of one subset: the base and checkpoints scored, three methods merged and scored on a tiny local suite), the
Compare page on an empty and on that populated workspace, and the exported report and its Parquet data."""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import zipfile

import pandas as pd
import pytest

from tests.app.conftest import app_test, errors_of
from ui import compare, report

METHODS = ["TA (sum)", "TIES", "Model Stock"]  # the study's configuration labels


# --- pure frames ------------------------------------------------------------------------------------------
def test_a_comparison_is_a_study_of_its_whole_pool():
    assert compare.is_comparison({"pool": ["a", "b", "c"], "sizes": [3]})
    assert not compare.is_comparison({"pool": ["a", "b", "c"], "sizes": [2, 3]})
    assert not compare.is_comparison({"pool": ["a"], "sizes": [1]})
    lambdas = [{"name": f"ta-{v}", "method": "task_arithmetic", "params": {"lambda": v}} for v in (0.5, 1.0)]
    assert not compare.is_comparison({"pool": ["a", "b"], "sizes": [2], "methods": lambdas})  # a sweep
    methods = [{"name": m, "method": m, "params": {}} for m in ("ties", "model_stock")]
    assert compare.is_comparison({"pool": ["a", "b"], "sizes": [2], "methods": methods})


def test_norm_of_the_sum_from_norms_and_cosines():
    # τ1 = [3, 0], τ2 = [0, 4]: orthogonal, ‖Σ‖² = 25; with cos = 1: (3 + 4)² = 49
    assert compare.sum_norm_sq([3.0, 4.0], [[1, 0], [0, 1]]) == pytest.approx(25.0)
    assert compare.sum_norm_sq([3.0, 4.0], json.dumps([[1, 1], [1, 1]])) == pytest.approx(49.0)
    assert compare.sum_norm_sq([], None) is None


def _stats(merge_id, delta, norms, cos, dots, dropped=None):
    return {
        "merge_id": merge_id,
        "model_delta_norm": delta,
        "model_task_norms": norms,
        "model_cosines_json": json.dumps(cos),
        "model_task_dots": dots,
        "mass_dropped": dropped,
        "conflict_dropped": 0.25,
        "conflict_summed": 0.5,
    }


def test_summary_and_kept_shares_from_recorded_figures():
    merges = pd.DataFrame({"method": ["sum", "mean"], "merge_id": ["m1", "m2"], "fingerprint": ["f1", "f2"]})
    # τ1 = [3, 0], τ2 = [0, 4]: the sum Δ = [3, 4] (‖Δ‖ = 5 = ‖Σ τ‖), the mean Δ = [1.5, 2]
    stats = pd.DataFrame(
        [
            _stats("m1", 5.0, [3.0, 4.0], [[1, 0], [0, 1]], [9.0, 16.0], 0.0),
            _stats("m2", 2.5, [3.0, 4.0], [[1, 0], [0, 1]], [4.5, 8.0], 0.1),
        ]
    )
    spectra = pd.DataFrame(
        {
            "merge_id": ["m1", "m1", "m1", "m2"],
            "source": ["delta", "delta", "task", "delta"],
            "effective_rank": [2.0, 4.0, 9.0, 1.5],
        }
    )
    summary = compare.method_summary(
        merges, stats, spectra, {"f1": 60.0, "f2": 50.0, "base": 55.0, "best": 58.0}
    )
    row = summary.set_index("method")
    assert row.loc["sum", "vs_base"] == 5.0 and row.loc["mean", "vs_best"] == -8.0
    assert row.loc["sum", "relative_distance"] == pytest.approx(1.0)
    assert row.loc["mean", "relative_distance"] == pytest.approx(0.5)
    assert row.loc["mean", "mass_dropped"] == pytest.approx(10.0)  # percent
    assert row.loc["sum", "conflict_summed"] == 50.0
    assert row.loc["sum", "effective_rank"] == 3.0 and row.loc["sum", "spectra"] == 2  # Δ only, not τ
    kept = compare.kept_shares(merges, stats, ["ft1", "ft2"]).set_index(["method", "checkpoint"])["kept"]
    assert kept[("sum", "ft1")] == pytest.approx(100.0) and kept[("sum", "ft2")] == pytest.approx(100.0)
    assert kept[("mean", "ft2")] == pytest.approx(50.0)
    assert row.loc["sum", "outside_span"] == pytest.approx(0.0, abs=1e-9)


def test_fitted_weights_do_not_count_correlated_task_vectors_twice():
    # τ1 = [1, 0], τ2 = [1, 1] (cos 1/√2); the sum Δ = [2, 1]: ⟨Δ, τ⟩ = [2, 3], so ⟨Δ, τ_i⟩/‖τ_i‖² would
    # say 200% and 150%; the fitted weights are exactly 1 and 1
    cos = [[1, 1 / math.sqrt(2)], [1 / math.sqrt(2), 1]]
    assert compare.fitted_weights([1.0, math.sqrt(2)], cos, [2.0, 3.0]) == pytest.approx([1.0, 1.0])
    # τ1 = [1, 0, 0], τ2 = [0, 1, 0], Δ = [1, 0, 1]: weights [1, 0], half of ‖Δ‖² lies outside their span
    eye = [[1, 0], [0, 1]]
    assert compare.fitted_weights([1.0, 1.0], eye, [1.0, 0.0]) == pytest.approx([1.0, 0.0])
    assert compare.outside_span(math.sqrt(2), [1.0, 1.0], eye, [1.0, 0.0]) == pytest.approx(50.0)


def _tensor(merge_id, tensor, layer, delta, norms, cos, dots):
    return {
        "merge_id": merge_id,
        "tensor": tensor,
        "layer": layer,
        "kind": "mlp" if layer is not None else "embed",
        "delta_norm": delta,
        "task_norms": norms,
        "cosines_json": json.dumps(cos),
        "task_dots": dots,
    }


def test_layers_and_where_methods_disagree():
    eye = [[1, 0], [0, 1]]
    rows = [
        # layer 1: both methods move like the sum (relative 1); layer 0: "a" a tenth, "b" the whole sum
        _tensor("a", "model.layers.1.mlp.w", 1, 5.0, [3.0, 4.0], eye, [9.0, 16.0]),
        _tensor("b", "model.layers.1.mlp.w", 1, 5.0, [3.0, 4.0], eye, [9.0, 16.0]),
        _tensor("a", "model.layers.0.mlp.w", 0, 0.5, [3.0, 4.0], eye, [0.9, 1.6]),
        _tensor("b", "model.layers.0.mlp.w", 0, 5.0, [3.0, 4.0], eye, [-9.0, -16.0]),
        _tensor("a", "model.embed_tokens.weight", None, 0.0, [0.0, 0.0], eye, [0.0, 0.0]),
    ]
    layers = compare.layer_frame(pd.DataFrame(rows), {"a": "ta", "b": "tsvm"})
    assert list(dict.fromkeys(layers["layer"])) == ["embed", "layer 00", "layer 01"]  # network order
    l0 = layers[layers["layer"] == "layer 00"].set_index("method")
    assert l0.loc["ta", "relative"] == pytest.approx(0.1) and l0.loc["tsvm", "relative"] == pytest.approx(1.0)
    assert l0.loc["ta", "alignment"] == pytest.approx(1.0) and l0.loc["tsvm", "alignment"] == pytest.approx(
        -1.0
    )
    # whole-model relative sizes: ta √(0.5² + 5²) / √(5² + 5²), tsvm 1; profiles = per-layer / whole
    ta_whole = math.sqrt(0.25 + 25) / math.sqrt(50)
    dis = compare.disagreement(layers).set_index("layer")
    assert list(dis.index) == ["layer 00", "layer 01"]  # embed: no task-vector mass, no profile
    assert dis.loc["layer 00", "spread"] == pytest.approx(1.0 - 0.1 / ta_whole)
    assert (dis.loc["layer 00", "low"], dis.loc["layer 00", "high"]) == ("ta", "tsvm")
    assert dis.loc["layer 01", "spread"] == pytest.approx(1.0 / ta_whole - 1.0)
    # a method that is uniformly smaller (a mean instead of a sum) does not disagree anywhere
    ta = layers[layers["method"] == "ta"]
    half = ta.assign(method="mean", delta_norm=ta["delta_norm"] / 2, relative=ta["relative"] / 2)
    same = compare.disagreement(pd.concat([ta, half]))
    assert same["spread"].abs().max() == pytest.approx(0.0, abs=1e-12)


# --- a real comparison ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compared_home(tiny_llama_family, tmp_path_factory):
    """A workspace where three methods were compared on three checkpoints by the real JobRunner."""
    from jobs import JobRunner
    from store import Store
    from tests.jobs.helpers import write_zoo_tasks
    from ui import catalog, launch

    home = tmp_path_factory.mktemp("compared")
    previous = os.environ.get("MERGELAB_HOME")
    os.environ["MERGELAB_HOME"] = str(home)
    try:
        write_zoo_tasks(home / "zoo", names=("add",))
        base, cks = tiny_llama_family
        db = Store(home / "mergelab.duckdb")
        catalog.register(db, str(base), "base")
        for c in cks:
            catalog.register(db, str(c), "checkpoint")
        runner = JobRunner(db, workers=1)
        try:
            job_id = launch.submit_comparison(
                runner,
                base=str(base),
                checkpoints=[str(c) for c in cks],
                methods=METHODS,
                suite="zoo",
                spectra=launch.default_spectra(launch.matrix_names(str(base))),
            )
            (job,) = runner.wait([job_id], timeout=600)
            assert job.status == "done", job.error
        finally:
            runner.shutdown()
        study_id = db.studies_df()["id"].iloc[0]
        db.close()
    finally:
        if previous is None:
            os.environ.pop("MERGELAB_HOME", None)
        else:
            os.environ["MERGELAB_HOME"] = previous
    return home, study_id


@pytest.fixture(scope="module")
def comparison(compared_home):
    from store import Store

    home, study_id = compared_home
    with Store(home / "mergelab.duckdb") as db:
        return compare.load_comparison(db, study_id)


@pytest.mark.slow
def test_comparison_scores_and_geometry(comparison):
    comp = comparison
    assert comp.methods == METHODS and set(comp.merge_ids) == set(METHODS)
    assert comp.method_of == {"TA (sum)": "task_arithmetic", "TIES": "ties", "Model Stock": "model_stock"}
    assert all("merge_method:" in comp.recipes[m] for m in METHODS)
    roles = set(comp.scores["role"])
    assert {"base", "best checkpoint", "merge"} <= roles
    s = comp.summary.set_index("method")
    # the view's numbers are the stored scores: vs base = merge average − base average, in pp
    base_avg = comp.scores[comp.scores["role"] == "base"]["score"].mean()
    ta_avg = comp.scores[comp.scores["model"] == "TA (sum)"]["score"].mean()
    assert s.loc["TA (sum)", "vs_base"] == pytest.approx(ta_avg - base_avg)
    # Task Arithmetic with λ = 1 and weights 1 is the plain sum: ‖Δ‖ = ‖Σ τ‖, nothing dropped
    assert s.loc["TA (sum)", "relative_distance"] == pytest.approx(1.0, rel=1e-4)
    assert s.loc["TA (sum)", "mass_dropped"] == pytest.approx(0.0, abs=1e-4)
    assert s.loc["TA (sum)", "conflict_summed"] == pytest.approx(100.0)
    # TIES at the paper's density 0.1 leaves most of the mass at the base
    assert s.loc["TIES", "mass_dropped"] > 50.0
    assert s["effective_rank"].notna().all() and (s["spectra"] > 0).all()
    assert not comp.layers.empty and not comp.disagreement.empty
    assert set(comp.kept["checkpoint"]) == set(comp.checkpoint_names)
    # the sum keeps every task vector whole; TIES keeps less of each
    kept = comp.kept.set_index(["method", "checkpoint"])["kept"]
    for name in comp.checkpoint_names:
        assert kept[("TA (sum)", name)] == pytest.approx(100.0, abs=1.0)
        assert kept[("TIES", name)] < 90.0
    assert s.loc["TA (sum)", "outside_span"] == pytest.approx(0.0, abs=0.5)


@pytest.mark.slow
def test_compare_page_on_the_populated_workspace(compared_home):
    home, _ = compared_home
    at = app_test(home, "compare")
    assert errors_of(at) == []
    summary = at.dataframe[0].value
    assert list(summary["method"]) == METHODS
    specs = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    for title in (
        "Score per task",
        "Distance, mass, conflicts, rank",
        "per layer",
        "Layers of most disagreement",
    ):
        assert title in specs, title
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download report (HTML)", "Download data (Parquet, zip)"]


@pytest.mark.slow
def test_compare_page_on_an_empty_workspace_offers_nothing_to_compare(empty_home):
    at = app_test(empty_home, "compare")
    assert errors_of(at) == []
    assert any("No comparison yet" in i.value for i in at.info)
    assert any("Register a base" in i.value for i in at.info)


@pytest.mark.slow
def test_compare_page_launches_with_the_study_configurations_by_default(compared_home):
    home, _ = compared_home
    at = app_test(home, "compare")
    methods = next(m for m in at.multiselect if m.label.startswith("Methods"))
    from jobs import PAPER_CONFIGS

    assert methods.value == [c.name for c in PAPER_CONFIGS]
    checkpoints = next(m for m in at.multiselect if m.label.startswith("Checkpoints"))
    assert len(checkpoints.value) == 3  # the first four offered; the tiny family has three


# --- the report -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_is_one_offline_file_with_charts_recipes_and_the_papers_numbers(comparison):
    rep = report.comparison_report(comparison)
    page = report.to_html(rep)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]+src=", page), "the report must not load scripts from elsewhere"
    assert not re.search(r"<link[^>]+href=", page)
    n_figures = sum(len(s.figures) for s in rep.sections)
    assert n_figures >= 6 and page.count("Plotly.newPlot(") == n_figures
    assert "merge_method: ties" in page and "merge_method: task_arithmetic" in page
    assert html.escape(report.PAPER_LABEL) in page and "Paper: vs base (Table 1)" in page
    assert comparison.suite in page and comparison.base in page
    assert rep.slug == report.file_stem("comparison", comparison.study_id)


@pytest.mark.slow
def test_report_data_round_trips_through_parquet(comparison):
    rep = report.comparison_report(comparison)
    with zipfile.ZipFile(io.BytesIO(report.to_parquet_zip(rep))) as zf:
        names = set(zf.namelist())
        assert {"scores.parquet", "summary.parquet", "layers.parquet"} <= names
        summary = pd.read_parquet(io.BytesIO(zf.read("summary.parquet")))
    pd.testing.assert_frame_equal(
        summary.reset_index(drop=True), comparison.summary.reset_index(drop=True), check_dtype=False
    )


def test_paper_section_is_labelled_and_skips_methods_the_paper_never_ran():
    section = report.paper_section(["task_arithmetic", "linear"])
    assert section.paper and section.title == report.PAPER_LABEL
    cells = [str(v) for t in section.tables for v in t.frame.to_numpy().ravel()]
    assert section.tables and all(t.frame.index.tolist() == ["TA"] for t in section.tables)
    assert any("%" in c for c in cells)
    assert "ran none" in report.paper_section(["linear"]).text


@pytest.mark.slow
def test_study_report_and_its_buttons(populated_home):
    from store import Store

    at = app_test(populated_home, "study")
    assert errors_of(at) == []
    assert [b.proto.label for b in at.get("download_button")] == [
        "Download report (HTML)",
        "Download data (Parquet, zip)",
    ]
    with Store(populated_home / "mergelab.duckdb") as db:
        study_id = db.studies_df()["id"].iloc[0]
        rep = report.study_report(db, study_id)
    page = report.to_html(rep)
    assert "MergeLab study: unit study" in page and "Figure 3)" in page and "Figure 4)" in page
    assert "50% / +0.00" in page  # the study's own table, as on the Study page
    assert "study definition" in page and "merge_method: task_arithmetic" in page
    assert html.escape(report.PAPER_LABEL) in page
    with zipfile.ZipFile(io.BytesIO(report.to_parquet_zip(rep))) as zf:
        assert "metrics_base.parquet" in zf.namelist()
