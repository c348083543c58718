"""`python -m jobs report`: a real small study (tiny models, one zoo-format task), read back as text and
JSON, with the numbers checked against the store's own rows."""

import json

import pytest

from jobs import JobRunner
from jobs.__main__ import main
from store import Store


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, tiny_llama_family, zoo_tasks):
    import os

    home = tmp_path_factory.mktemp("report-home")
    old = os.environ.get("MERGELAB_HOME")
    os.environ["MERGELAB_HOME"] = str(home)
    base, cks = tiny_llama_family
    db = home / "db.duckdb"
    try:
        with Store(db) as store:
            runner = JobRunner(store, workers=1)
            try:
                job_id = runner.submit(
                    "study",
                    {
                        "base": str(base),
                        "pool": [str(c) for c in cks],
                        "methods": ["TA (sum)", "TA (mean)"],
                        "sizes": [2, 3],
                        "subsets": 2,
                        "suite": "zoo",
                        "zoo_root": str(zoo_tasks),
                        "limit": 8,
                        "name": "report test",
                    },
                )
                (job,) = runner.wait([job_id], timeout=600)
                assert job.status == "done", job.error
            finally:
                runner.shutdown()
            study_id = job.result["study_id"]
    finally:
        if old is None:
            os.environ.pop("MERGELAB_HOME", None)
        else:
            os.environ["MERGELAB_HOME"] = old
    return db, study_id, base, cks


def _expected_gains(db, study_id, base):
    """Per (config, n): the mean over subsets of merged minus base score, in pp, straight from the rows."""
    with Store(db) as store:
        rows = store.eval_rows_df(suite="zoo")
        value = rows.groupby("fingerprint")["value"].mean() * 100
        merges = store.merges_df(study_id=study_id)
        base_fp = merges["base_fingerprint"].iloc[0]
        out = {}
        for (config, n), part in merges.groupby(["config", "n"]):
            gains = [value[fp] - value[base_fp] for fp in part["merged_fingerprint"]]
            out[(config, int(n))] = (sum(gains) / len(gains), 100 * sum(g > 0 for g in gains) / len(gains))
        return out, value[base_fp]


@pytest.mark.slow
def test_report_json_matches_the_stored_scores(small_study, capsys):
    db, study_id, base, cks = small_study
    assert main(["report", "--db", str(db), study_id[:6], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["study"]["id"] == study_id and report["study"]["merges_done"] == 6
    assert report["study"]["merges_planned"] == 6  # (2 subsets of 2 + the 1 of 3) x 2 configurations
    expected, base_score = _expected_gains(db, study_id, base)
    assert report["base"]["aggregate"] == pytest.approx(base_score)
    assert len(report["checkpoints"]) == len(cks) and report["singles"]["count"] == len(cks)
    table = {(r["config"], r["n"]): r for r in report["tables"]["base"]}
    for key, (gain, success) in expected.items():
        assert table[key]["gain"] == pytest.approx(gain)
        assert table[key]["success"] == pytest.approx(success)
    ones = [r for r in report["tables"]["base"] if r["n"] == 1]
    assert {r["config"] for r in ones} == {"TA (sum)", "TA (mean)"} and all(r["k"] == len(cks) for r in ones)
    singles_gain = sum(c["gain"] for c in report["checkpoints"]) / len(cks)
    assert ones[0]["gain"] == pytest.approx(singles_gain) == pytest.approx(report["singles"]["mean_gain"])
    best = max(c["aggregate"] for c in report["checkpoints"])
    pool = {(r["config"], r["n"]): r for r in report["tables"]["best_pool"]}
    for (config, n), (gain, _) in expected.items():
        assert pool[(config, n)]["gain"] == pytest.approx(gain + base_score - best)
    assert {r["config"] for r in report["tables"]["best_subset"]} == {"TA (sum)", "TA (mean)"}
    comp = report["paper_comparison"]
    assert comp["ta_reading"] == "TA (mean)" and "Figure 4" in comp["why"]
    ta_rows = [r for r in comp["rows"] if r["paper_method"] == "TA"]
    assert {r["config"] for r in ta_rows} == {"TA (mean)"}
    assert next(r for r in ta_rows if r["n"] == 4)["paper_success"] == 88.0


@pytest.mark.slow
def test_report_text_labels_both_readings_and_says_which_it_compares(small_study, capsys):
    db, study_id, _, _ = small_study
    assert main(["report", "--db", str(db), "--latest"]) == 0
    text = capsys.readouterr().out
    assert f"study {study_id}" in text and "6 of 6 merges scored" in text
    lines = text.splitlines()
    assert any(ln.startswith("TA (sum) ") for ln in lines) and any(
        ln.startswith("TA (mean) ") for ln in lines
    )
    assert "Success rate % / mean gain pp vs the base" in text
    assert "Task Arithmetic reading used for the paper's TA row: TA (mean)." in text
    assert any(ln.startswith("paper TA ") for ln in lines) and any(
        ln.startswith("study TA (mean) ") for ln in lines
    )


def test_report_errors_are_one_line(tmp_path, capsys):
    db = tmp_path / "empty.duckdb"
    assert main(["report", "--db", str(db)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: There is no study in this workspace yet; run one with `python -m jobs study`."
    )
    with Store(db) as store:
        store.create_study(
            name="s",
            base="B",
            pool=["a", "b"],
            methods=[],
            sizes=[2],
            subsets_per_size=1,
            seed=0,
            suite="zoo",
        )
    assert main(["report", "--db", str(db), "nope"]) == 2
    assert "no study match 'nope'" in capsys.readouterr().err
    assert main(["report", "--db", str(db), "--latest", "x"]) == 2
    assert main(["report", "--db", str(db), "--latest"]) == 0
    assert "The base is not scored yet" in capsys.readouterr().out
