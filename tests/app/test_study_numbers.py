"""A study's numbers are the same on the Study page, in its exported report, in `python -m jobs report`, on
a sweep's curve and on Compare, and they are the hand-computed ones: one metric per task (the suite's
declared one, even when a task also stored another), only rows at the study's limit, and the fingerprints
the study recorded for its inputs.

The store holds decoys for each of those rules: paper16's tasks carry a second metric (arc_easy's acc_norm,
leaderboard_gpqa's acc, which the suite does not take from it), rows scored on the whole test set (the
study ran at limit 50), and checkpoint a registered today with other content and higher scores than the
one the study merged."""

from __future__ import annotations

import pytest

from tests.app.conftest import app_test, errors_of

BASE, POOL = "/m/base", ["/m/a", "/m/b", "/m/c"]
INPUTS = {BASE: "fB", "/m/a": "fA", "/m/b": "fBb", "/m/c": "fC"}
LIMIT = 50
# fingerprint -> (arc_easy acc, leaderboard_gpqa acc_norm): the declared metrics at the study's limit.
DECLARED = {
    "fB": (0.50, 0.30),
    "fA": (0.52, 0.28),
    "fBb": (0.46, 0.36),
    "fC": (0.40, 0.30),
    "M1": (0.60, 0.34),
    "M2": (0.44, 0.28),
}
# The same rows' other metric (arc_easy acc_norm, leaderboard_gpqa acc): M2 would beat the base with them.
OTHER_METRIC = {"fB": (0.40, 0.20), "fA": (0.30, 0.20), "fBb": (0.30, 0.20), "fC": (0.30, 0.20)}
OTHER_METRIC |= {"M1": (0.50, 0.20), "M2": (0.70, 0.40), "fA-today": (0.99, 0.99)}
# Hand-computed from DECLARED (pp): base 40, merges M1 47 and M2 36, singles a 40, b 41, c 35.
EXPECTED = {
    "base": {"success": 50.0, "gain": 1.5},  # +7 and -4
    "best_pool": {"success": 50.0, "gain": 0.5},  # against b (41): +6 and -5
}


def _row(fp: str, task: str, metric: str, value: float, limit: int | None) -> dict:
    return {
        "fingerprint": fp,
        "model_name": fp,
        "suite": "paper16",
        "suite_version": "v1",
        "task": task,
        "metric": metric,
        "value": value,
        "stderr": 0.01,
        "n": limit or 500,
        "limit": limit,
        "lm_eval_version": "test",
        "seconds": 0.1,
    }


def _decoyed_study(db, methods: list, merges: list[tuple[str, list[str], str | None]]) -> str:
    """The models, a study of `methods` on paper16 at LIMIT with its recorded inputs, its `merges`
    (configuration, members, merged fingerprint or None for a failed one) and every score row above."""
    db.register_model("fB", "base", BASE, name="base")
    db.register_model("fA-today", "checkpoint", "/m/a", name="a")  # a changed after the study ran
    db.register_model("fBb", "checkpoint", "/m/b", name="b")
    db.register_model("fC", "checkpoint", "/m/c", name="c")
    sid = db.create_study(
        name="decoyed",
        base=BASE,
        pool=POOL,
        methods=methods,
        sizes=[2],
        subsets_per_size=2,
        seed=0,
        suite="paper16",
        limit=LIMIT,
    )
    db.set_study_inputs(sid, INPUTS)
    for k, (config, pair, merged) in enumerate(merges):
        mid = db.begin_merge(
            recipe_yaml="merge_method: task_arithmetic\n",
            method="task_arithmetic",
            config=config,
            base_fingerprint="fB",
            checkpoint_refs=pair,
            checkpoint_fingerprints=[INPUTS[r] for r in pair],
            study_id=sid,
            subset_id=f"n2-{k}",
        )
        db.finish_merge(mid, "done" if merged else "failed", merged_fingerprint=merged)
    rows = []
    for fp, (arc, gpqa) in DECLARED.items():
        rows += [
            _row(fp, "arc_easy", "acc", arc, LIMIT),
            _row(fp, "leaderboard_gpqa", "acc_norm", gpqa, LIMIT),
        ]
        # the whole test set: the base far below every model, so these rows would flip every gain
        low = 0.10 if fp == "fB" else 0.90
        rows += [_row(fp, "arc_easy", "acc", low, None), _row(fp, "leaderboard_gpqa", "acc_norm", low, None)]
    for fp, (arc, gpqa) in OTHER_METRIC.items():
        rows += [
            _row(fp, "arc_easy", "acc_norm", arc, LIMIT),
            _row(fp, "leaderboard_gpqa", "acc", gpqa, LIMIT),
        ]
    rows.append(_row("fA-today", "arc_easy", "acc", 0.99, LIMIT))
    rows.append(_row("fA-today", "leaderboard_gpqa", "acc_norm", 0.99, LIMIT))
    db.put_eval_rows(rows)
    return sid


@pytest.fixture(scope="module")
def decoyed_home(tmp_path_factory):
    from store import Store

    home = tmp_path_factory.mktemp("study-numbers")
    merges = [("TA", POOL[:2], "M1"), ("TA", POOL[1:], "M2"), ("TA", POOL[::2], None)]
    with Store(home / "mergelab.duckdb") as db:
        sid = _decoyed_study(db, ["TA"], merges)
    return home, sid


def _by_n(table, n: int, method_key: str) -> dict:
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    (row,) = [r for r in rows if int(r["n"]) == n and r[method_key] == "TA"]
    return {"success": row["success"], "gain": row["gain"]}


def test_the_frames_take_declared_metrics_at_the_study_limit_on_recorded_inputs(decoyed_home):
    from jobs.study_frames import study_frames
    from store import Store

    home, sid = decoyed_home
    with Store(home / "mergelab.duckdb") as db:
        merged, base, singles = study_frames(db, db.get_study(sid))
    assert sorted(base.itertuples(index=False, name=None)) == [("arc_easy", 0.50), ("leaderboard_gpqa", 0.30)]
    per_merge = merged.groupby("subset_id")["value"].mean().mul(100).round(6).to_dict()
    assert per_merge == {"n2-0": 47.0, "n2-1": 36.0}  # the failed merge n2-2 is left out
    assert set(merged["members"]) == {"a,b", "b,c"}
    per_single = singles.groupby("checkpoint")["value"].mean().mul(100).round(6).to_dict()
    assert per_single == {"a": 40.0, "b": 41.0, "c": 35.0}


@pytest.mark.slow
def test_page_export_and_cli_report_show_the_same_hand_computed_numbers(decoyed_home):
    from jobs.report import build_report
    from store import Store
    from ui import report

    home, sid = decoyed_home
    with Store(home / "mergelab.duckdb") as db:
        cli = build_report(db, sid, n_boot=50)
        exported = report.study_report(db, sid, n_boot=50)
    assert cli["base"]["aggregate"] == pytest.approx(40.0)
    for ref, expected in EXPECTED.items():
        assert _by_n(cli["tables"][ref], 2, "config") == pytest.approx(expected), ref
        assert _by_n(exported.data[f"metrics_{ref}"], 2, "method") == pytest.approx(expected), ref

    at = app_test(home, "study")
    assert errors_of(at) == []
    tables = [d.value for d in at.dataframe if list(d.value.columns) == ["n=2"]]
    # the two success/gain tables in page order (vs the base, vs the best checkpoint), as the paper prints
    assert [t.loc["TA", "n=2"] for t in tables[:2]] == ["50% / +1.50", "50% / +0.50"]


def test_a_sweep_curve_reads_the_same_scores(tmp_path):
    from jobs.sweep import sweep_curve, sweep_points
    from store import Store

    configs = [
        {"name": f"task_arithmetic lambda={v:g}", "method": "task_arithmetic", "params": {"lambda": v}}
        for v in (0.5, 1.0)
    ]
    merges = [(configs[0]["name"], POOL[:2], "M1"), (configs[1]["name"], POOL[1:], "M2")]
    with Store(tmp_path / "db.duckdb") as db:
        sid = _decoyed_study(db, configs, merges)
        points = sweep_points(db, sid)
        curve, base = sweep_curve(db, sid)
    assert points[["value", "accuracy"]].round(6).values.tolist() == [[0.5, 47.0], [1.0, 36.0]]
    assert curve["mean"].round(6).tolist() == [47.0, 36.0] and curve["merges"].tolist() == [1, 1]
    assert base == pytest.approx(40.0)


def test_compare_reads_the_same_scores(decoyed_home):
    from store import Store
    from ui.compare import load_comparison

    home, sid = decoyed_home
    with Store(home / "mergelab.duckdb") as db:
        comp = load_comparison(db, sid)
    # Compare shows a study's last merge per configuration (M2 for TA) beside the base and the pool
    averages = comp.scores.groupby("model")["score"].mean().round(6).to_dict()
    assert averages == {"base": 40.0, "a": 40.0, "b": 41.0, "c": 35.0, "TA": 36.0}
    assert comp.best_name == "b"
    assert comp.gains.groupby("method")["vs_base"].mean().round(6).to_dict() == {"TA": -4.0}
