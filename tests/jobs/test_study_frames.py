"""jobs.study_frames' row rules on hand-written rows: which metric a task contributes and which limit counts
(the store-backed agreement of every study view is tests/app/test_study_numbers.py)."""

import pandas as pd

from jobs.study_frames import at_limit, headline_rows, short_ref


def _rows(*rows):
    return pd.DataFrame(rows, columns=["fingerprint", "task", "metric", "value", "limit"])


def test_the_declared_metric_wins_else_the_preferred_order_else_the_first():
    rows = _rows(
        ("F", "x", "exact_match", 0.1, None),
        ("F", "x", "acc_norm", 0.2, None),
        ("F", "x", "acc_norm_stderr", 0.01, None),
        ("F", "y", "f1_stderr", 0.02, None),
        ("F", "y", "f1", 0.3, None),
    )
    picked = headline_rows(rows, {})
    assert sorted(picked.itertuples(index=False, name=None)) == [("F", "x", 0.2), ("F", "y", 0.3)]
    declared = headline_rows(rows, {"x": "exact_match"})
    assert sorted(declared.itertuples(index=False, name=None)) == [("F", "x", 0.1), ("F", "y", 0.3)]
    # a task the suite declares but whose metric was never stored contributes nothing, not another metric
    assert list(headline_rows(rows, {"x": "acc", "y": "f1"})["task"]) == ["y"]


def test_a_score_written_twice_counts_once_the_latest():
    rows = _rows(("F", "x", "acc", 0.1, None), ("G", "x", "acc", 0.5, None), ("F", "x", "acc", 0.4, None))
    assert sorted(headline_rows(rows, {}).itertuples(index=False, name=None)) == [
        ("F", "x", 0.4),
        ("G", "x", 0.5),
    ]


def test_only_the_rows_at_the_studys_limit_count():
    rows = _rows(("F", "x", "acc", 0.1, None), ("F", "x", "acc", 0.2, 50), ("F", "x", "acc", 0.3, 100))
    assert at_limit(rows, None)["value"].tolist() == [0.1]
    assert at_limit(rows, float("nan"))["value"].tolist() == [0.1]
    assert at_limit(rows, 50)["value"].tolist() == [0.2]
    assert at_limit(rows.iloc[:0], 50).empty


def test_checkpoint_names_keep_hub_owners_apart():
    assert short_ref("/zoo/llama/ft1/") == "ft1"
    assert short_ref("alice/model") != short_ref("bob/model")
