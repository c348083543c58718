"""Study metrics against hand-computed values and a re-computation of a row of the paper's Table 1."""

from __future__ import annotations

import pandas as pd
import pytest

from evaluation import EvaluationError
from evaluation.metrics import study_metrics, subset_scores, with_singles
from evaluation.paper import paper_results

TASKS = ["t1", "t2"]


def _frame(rows, cols):
    return pd.DataFrame(rows, columns=cols)


@pytest.fixture
def example():
    """Base 0.50/0.60 (aggregate 55 pp). Checkpoints a: 0.40/0.80 (60), b: 0.70/0.50 (60), c: 0.50/0.50 (50).
    TA merges at n=2: {a,b} 0.60/0.60 (60), {a,c} 0.50/0.58 (54), {b,c} 0.56/0.62 (59)."""
    base = _frame([("t1", 0.50), ("t2", 0.60)], ["task", "value"])
    singles = _frame(
        [
            ("a", "t1", 0.40),
            ("a", "t2", 0.80),
            ("b", "t1", 0.70),
            ("b", "t2", 0.50),
            ("c", "t1", 0.50),
            ("c", "t2", 0.50),
        ],
        ["checkpoint", "task", "value"],
    )
    merges = _frame(
        [
            ("TA", 2, "ab", "a,b", "t1", 0.60),
            ("TA", 2, "ab", "a,b", "t2", 0.60),
            ("TA", 2, "ac", "a,c", "t1", 0.50),
            ("TA", 2, "ac", "a,c", "t2", 0.58),
            ("TA", 2, "bc", "b,c", "t1", 0.56),
            ("TA", 2, "bc", "b,c", "t2", 0.62),
        ],
        ["method", "n", "subset_id", "members", "task", "value"],
    )
    return merges, base, singles


def test_against_base_by_hand(example):
    merges, base, _ = example
    out = study_metrics(merges, base).iloc[0]
    # aggregates 60, 54, 59 vs base 55: successes 1,0,1 → 66.67 %; gains +5, −1, +4 → mean 2.667 pp
    assert out["k"] == 3 and out["reference"] == pytest.approx(55.0)
    assert out["success"] == pytest.approx(200 / 3)
    assert out["gain"] == pytest.approx(8 / 3)
    assert out["gain_lo"] <= out["gain"] <= out["gain_hi"] and out["success_lo"] <= out["success_hi"]
    assert (
        out["gain_lo"] >= -1.0 and out["gain_hi"] <= 5.0
    )  # a bootstrap mean stays within the sample's range


def test_against_best_checkpoints_by_hand(example):
    merges, base, singles = example
    pool = study_metrics(merges, base, singles, reference="best_pool").iloc[0]
    # best of the pool: a or b at 60 → gains 0, −6, −1; none strictly beats it
    assert pool["reference"] == pytest.approx(60.0)
    assert pool["success"] == 0.0 and pool["gain"] == pytest.approx(-7 / 3)
    sub = subset_scores(merges, base, singles, reference="best_subset").set_index("subset_id")
    # best member: ab → 60, ac → a 60, bc → b 60 (c is 50)
    assert sub["reference"].tolist() == pytest.approx([60.0, 60.0, 60.0])
    three = with_singles(merges, singles.query("checkpoint == 'c'"))
    sub2 = subset_scores(three, base, singles, reference="best_subset").set_index("subset_id")
    assert sub2.loc["c", "reference"] == pytest.approx(50.0) and sub2.loc["c", "gain"] == pytest.approx(0.0)


def test_per_task_by_hand(example):
    merges, base, singles = example
    per = study_metrics(merges, base, per_task=True).set_index("task")
    # t1: 60, 50, 56 vs 50 → successes 2/3, gains +10, 0, +6; t2: 60, 58, 62 vs 60 → 1/3, gains 0, −2, +2
    assert per.loc["t1", "success"] == pytest.approx(200 / 3) and per.loc["t1", "gain"] == pytest.approx(
        16 / 3
    )
    assert per.loc["t2", "success"] == pytest.approx(100 / 3) and per.loc["t2", "gain"] == pytest.approx(0.0)
    best = study_metrics(merges, base, singles, reference="best_pool", per_task=True).set_index("task")
    # best on t1 is b (70), on t2 is a (80)
    assert best.loc["t1", "reference"] == pytest.approx(70.0) and best.loc[
        "t2", "reference"
    ] == pytest.approx(80.0)


def test_bootstrap_is_seeded(example):
    _, base, _ = example
    rows = [("TA", 4, f"s{i}", t, 0.5 + 0.013 * ((7 * i) % 11) - 0.05) for i in range(12) for t in TASKS]
    merges = _frame(rows, ["method", "n", "subset_id", "task", "value"])
    a = study_metrics(merges, base, seed=1, n_boot=300)
    assert a.equals(study_metrics(merges, base, seed=1, n_boot=300))
    assert not a.equals(study_metrics(merges, base, seed=2, n_boot=300))
    assert a.iloc[0]["gain_lo"] < a.iloc[0]["gain"] < a.iloc[0]["gain_hi"]


def _paper_like_scores(base_acc: float, row: pd.DataFrame, tasks: int = 16):
    """Per-subset, per-task accuracies consistent with one paper row: for each n, round(P·k/100) subsets beat
    the base, and their aggregate gains average G. Tasks spread ±d around the subset's aggregate."""
    base_tasks = [base_acc / 100 + (0.02 if i % 2 else -0.02) for i in range(tasks)]
    base = pd.DataFrame({"task": [f"task{i:02d}" for i in range(tasks)], "value": base_tasks})
    merges = []
    for _, cell in row.iterrows():
        k, wins, gain = int(cell["k"]), round(cell["success"] * cell["k"] / 100), cell["gain"]
        if wins in (0, k):
            gains = [gain] * k
        else:
            neg = max(0.5, 0.5 - k * gain / (k - wins))  # losers at −neg, winners make up the mean
            gains = [(k * gain + (k - wins) * neg) / wins] * wins + [-neg] * (k - wins)
        for s, g in enumerate(gains):
            for i, b in enumerate(base_tasks):
                spread = 0.01 * ((i % 4) - 1.5)  # zero-mean over the 16 tasks
                merges.append(
                    ("TA", int(cell["n"]), f"n{cell['n']}-{s}", f"task{i:02d}", b + g / 100 + spread)
                )
    return pd.DataFrame(merges, columns=["method", "n", "subset_id", "task", "value"]), base


def test_recomputes_table1_llama8b_task_arithmetic():
    paper = paper_results()
    row = paper.query("table == 1 and model == 'Llama-8B' and method == 'TA'")
    assert row[["n", "success", "gain"]].values.tolist()[2] == [4, 93.0, 1.05]
    merges, base = _paper_like_scores(56.9, row)
    ours = study_metrics(merges, base).set_index("n")
    for _, cell in row.iterrows():
        got = ours.loc[cell["n"]]
        assert got["k"] == cell["k"]
        assert round(got["success"]) == cell["success"]
        assert got["gain"] == pytest.approx(cell["gain"], abs=1e-9)
        assert got["reference"] == pytest.approx(56.9)


def test_bad_inputs(example):
    merges, base, singles = example
    with pytest.raises(EvaluationError, match="unknown reference"):
        study_metrics(merges, base, reference="best")
    with pytest.raises(EvaluationError, match="needs the single checkpoints"):
        study_metrics(merges, base, reference="best_pool")
    with pytest.raises(EvaluationError, match="needs a `members` column"):
        study_metrics(merges.drop(columns="members"), base, singles, reference="best_subset")
    with pytest.raises(EvaluationError, match="is scored on"):
        study_metrics(merges[merges["task"] == "t1"], base)
    with pytest.raises(EvaluationError, match="lacks column"):
        study_metrics(merges.drop(columns="value"), base)
