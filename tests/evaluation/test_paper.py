"""The paper's published numbers, as data."""

from evaluation.paper import paper_accuracies, paper_results


def test_paper_tables_are_complete_and_labelled():
    df = paper_results()
    assert (df["source"] == "paper").all()
    assert df.groupby("table").size().to_dict() == {1: 15 * 7, 2: 5 * 7, 3: 20 * 7}
    assert not df.duplicated(["table", "model", "method", "n"]).any()
    assert set(df["k"]) == {1, 12, 15}
    cell = df.query("table == 1 and model == 'Llama-8B' and method == 'TA' and n == 10").iloc[0]
    assert (cell["success"], cell["gain"], cell["reference_accuracy"]) == (100.0, 1.62, 56.9)
    worst = df.query("table == 3 and model == 'Llama-8B' and method == 'TIES+SB' and n == 12").iloc[0]
    assert (worst["success"], worst["gain"], worst["method_id"]) == (0.0, -14.65, "ties_sb")
    t2 = df.query("table == 2 and model == 'Qwen-4B' and n == 1").iloc[0]
    assert (t2["reference"], t2["reference_accuracy"], t2["success"]) == ("best_ft", 54.5, 75.0)


def test_paper_average_base_is_the_mean_of_the_four():
    acc = paper_accuracies().set_index("model")
    four = acc.drop(index="Average")["base"].mean()
    assert round(four, 1) == acc.loc["Average", "base"] == 55.3
