"""Chart builders: the figures carry exactly the numbers handed in, in the layout the pages rely on."""

import math

import pandas as pd
import pytest

from ui import charts


def test_effective_rank_hand_values():
    assert charts.effective_rank([1.0, 1.0]) == pytest.approx(2.0)
    assert charts.effective_rank([3.0, 0.0, 0.0]) == pytest.approx(1.0)
    # p = (0.75, 0.25): H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335
    assert charts.effective_rank([3.0, 1.0]) == pytest.approx(math.exp(0.5623351446188083))
    assert charts.effective_rank([]) == 0.0


def test_score_bars_orders_base_and_best_first_with_fixed_colours():
    df = pd.DataFrame(
        {
            "model": ["merge", "merge", "base", "base", "ft1", "ft1"],
            "task": ["a", "b", "a", "b", "a", "b"],
            "score": [0.5, 0.6, 0.4, 0.3, 0.45, 0.7],
        }
    )
    fig = charts.score_bars(df, base="base", best="ft1")
    names = [t.name for t in fig.data]
    assert names == ["base (base)", "ft1 (best checkpoint)", "merge"]
    assert fig.data[0].marker.color == charts.BASE_COLOR
    assert fig.data[1].marker.color == charts.BEST_COLOR
    assert list(fig.data[2].y) == [0.5, 0.6]
    assert fig.data[2].marker.color not in (charts.BASE_COLOR, charts.BEST_COLOR)
    assert fig.layout.barmode == "group"


def test_layer_norm_heatmap_keeps_depth_order():
    df = pd.DataFrame(
        {
            "model": ["ft0", "ft0", "ft1", "ft1"],
            "layer": ["layers.10", "layers.2", "layers.10", "layers.2"],
            "norm": [1.0, 2.0, 3.0, 4.0],
        }
    )
    fig = charts.layer_norm_heatmap(df)
    hm = fig.data[0]
    assert list(hm.y) == ["layers.10", "layers.2"]
    assert list(hm.x) == ["ft0", "ft1"]
    assert hm.z.tolist() == [[1.0, 3.0], [2.0, 4.0]]


def test_cosine_matrix_is_symmetric_with_unit_diagonal():
    pairs = pd.DataFrame({"a": ["x", "x", "y"], "b": ["y", "z", "z"], "cosine": [0.5, -0.25, 0.1]})
    mat = charts.cosine_matrix(pairs)
    assert mat.loc["y", "x"] == 0.5 and mat.loc["x", "y"] == 0.5
    assert mat.loc["z", "x"] == -0.25
    assert [mat.loc[n, n] for n in "xyz"] == [1.0, 1.0, 1.0]
    fig = charts.cosine_heatmap(pairs)
    assert (fig.data[0].zmin, fig.data[0].zmax) == (-1, 1)
    assert fig.data[0].text[0][1] == "0.50"


def test_sign_conflicts_on_unit_axis():
    fig = charts.sign_conflict_bars(pd.DataFrame({"layer": ["l0", "l1"], "rate": [0.25, 0.5]}))
    assert list(fig.data[0].y) == [0.25, 0.5]
    assert tuple(fig.layout.yaxis.range) == (0, 1)


def test_accuracy_vs_n_means_spread_and_paper_lines():
    merges = pd.DataFrame(
        {"method": ["ta", "ta", "ta", "ties"], "n": [2, 2, 4, 2], "accuracy": [0.5, 0.7, 0.65, 0.4]}
    )
    paper = pd.DataFrame({"method": ["ta", "ta"], "n": [2, 4], "accuracy": [0.55, 0.6]})
    fig = charts.accuracy_vs_n(merges, base_score=0.5, best_score=0.62, paper=paper)
    by_name = {t.name: t for t in fig.data}
    # ta at n=2: mean of 0.5, 0.7 = 0.6; band spans min 0.5 .. max 0.7
    assert list(by_name["ta"].y) == pytest.approx([0.6, 0.65])
    band = by_name["ta spread"]
    assert list(band.y) == pytest.approx([0.7, 0.65, 0.65, 0.5])
    assert "ties spread" not in by_name  # one merge per size: no band to draw
    assert by_name["paper: ta"].line.dash == "dash"
    assert len(fig.layout.shapes) == 2  # base and best reference lines


def test_distance_vs_n_and_empty_input():
    merges = pd.DataFrame({"method": ["ties", "ties"], "n": [4, 2], "distance": [30.0, 10.0]})
    fig = charts.distance_vs_n(merges)
    line = [t for t in fig.data if t.name == "ties"][0]
    assert list(line.x) == [2, 4] and list(line.y) == [10.0, 30.0]
    empty = charts.distance_vs_n(merges.iloc[0:0])
    assert empty.layout.annotations[0].text == "No merge distances recorded yet"


def test_spectra_chart_log_axis_and_effective_rank_in_legend():
    df = pd.DataFrame(
        {
            "source": ["ft0", "ft0", "merged Δ", "merged Δ"],
            "index": [0, 1, 0, 1],
            "value": [1.0, 1.0, 3.0, 1.0],
        }
    )
    fig = charts.spectra_chart(df)
    assert fig.layout.yaxis.type == "log"
    assert fig.data[0].name == "ft0 (eff. rank 2.0)"
    assert fig.data[1].name == "merged Δ (eff. rank 1.8)"
    assert list(fig.data[0].x) == [1, 2]


def test_success_gain_table_layout():
    rows = pd.DataFrame(
        {
            "method": ["TA", "TA", "TIES"],
            "n": [2, 4, 2],
            "success": [20.0, 80.0, 13.3],
            "gain": [-0.27, 0.39, -1.2],
        }
    )
    table = charts.success_gain_table(rows)
    assert list(table.columns) == ["n=2", "n=4"]
    assert table.loc["TA", "n=4"] == "80% / +0.39"
    assert table.loc["TIES", "n=2"] == "13% / -1.20"
    assert table.loc["TIES", "n=4"] == "–"


def test_score_matrix_adds_unweighted_average():
    df = pd.DataFrame(
        {"model": ["m", "m", "b", "b"], "task": ["t1", "t2", "t1", "t2"], "score": [0.2, 0.6, 0.5, 0.5]}
    )
    mat = charts.score_matrix(df)
    assert list(mat.columns) == ["m", "b"]
    assert mat.loc["average", "m"] == pytest.approx(0.4)


def test_missing_columns_raise_a_clear_error():
    with pytest.raises(ValueError, match="missing"):
        charts.spectra_chart(pd.DataFrame({"source": []}))


def test_norm_heatmap_and_cosine_matrix_share_the_merge_order():
    order = ["zeta", "alpha", "mid"]
    norms = pd.DataFrame(
        {"model": ["alpha", "mid", "zeta"], "layer": ["layer 00"] * 3, "norm": [1.0, 2.0, 3.0]}
    )
    heat = charts.layer_norm_heatmap(norms, order=order)
    assert list(heat.data[0].x) == order
    pairs = pd.DataFrame(
        {"a": ["alpha", "alpha", "mid"], "b": ["mid", "zeta", "zeta"], "cosine": [0.1, 0.2, 0.3]}
    )
    mat = charts.cosine_matrix(pairs, order)
    assert list(mat.columns) == order and list(mat.index) == order
    assert mat.loc["zeta", "alpha"] == 0.2


def test_merge_size_axes_tick_only_at_whole_sizes():
    merges = pd.DataFrame({"method": ["ta"] * 3, "n": [2, 3, 4], "accuracy": [50.0, 51.0, 52.0]})
    fig = charts.accuracy_vs_n(merges)
    assert list(fig.layout.xaxis.tickvals) == [2, 3, 4]
    dist = pd.DataFrame({"method": ["ta"] * 2, "n": [2, 12], "distance": [1.0, 2.0]})
    assert list(charts.distance_vs_n(dist).layout.xaxis.tickvals) == [2, 12]


def test_sign_conflict_bars_highlight_the_named_layers():
    df = pd.DataFrame({"layer": ["layer 00", "layer 01", "head"], "rate": [0.7, 0.2, 0.5]})
    fig = charts.sign_conflict_bars(df, highlight=["layer 00", "head"])
    assert list(fig.data[0].marker.color) == ["#8b0000", "#f4a3a3", "#8b0000"]
    assert charts.sign_conflict_bars(df).data[0].marker.color == "#d62728"


def test_sweep_curve_draws_mean_band_subsets_and_references():
    points = pd.DataFrame(
        {
            "value": [0.5, 1.0, 0.5, 1.0, 2.0],
            "subset_id": ["n4-00", "n4-00", "n4-01", "n4-01", "n4-00"],
            "accuracy": [40.0, 50.0, 44.0, 46.0, 30.0],
        }
    )
    fig = charts.sweep_curve(points, "lambda", base_score=45.0, best_score=48.0, title="t")
    by_name = {t.name: t for t in fig.data}
    mean = by_name["mean over subsets"]
    assert list(mean.x) == [0.5, 1.0, 2.0] and list(mean.y) == [42.0, 48.0, 30.0]
    assert list(by_name["subset n4-01"].y) == [44.0, 46.0]
    band = by_name["min-max over subsets"]
    assert list(band.y) == [44.0, 50.0, 30.0, 30.0, 46.0, 40.0]
    assert list(fig.layout.xaxis.ticktext) == ["0.5", "1", "2"] and fig.layout.xaxis.title.text == "lambda"
    assert sorted(s.y0 for s in fig.layout.shapes) == [45.0, 48.0]
    empty = charts.sweep_curve(points.iloc[0:0], "lambda")
    assert "No scored merges" in empty.layout.annotations[0].text


def test_heatmap_helper_writes_cells_orders_axes_and_lays_out_like_the_pages():
    long = pd.DataFrame({"r": ["y", "x", "y"], "c": ["b", "a", "b"], "v": [1.0, 2.0, 3.0]})
    grid = charts._pivot(long, "r", "c", "v", rows=["y", "x"], cols=["b", "a"])
    assert grid.loc["y", "b"] == 2.0 and pd.isna(grid.loc["y", "a"])  # mean of the two (y, b) rows
    fig = charts._heatmap(
        grid, "T", 300, colorscale="Blues", colorbar="u", hover="h", cell_format="+.1f", zrange=(-3, 3)
    )
    heat = fig.data[0]
    assert list(heat.x) == ["b", "a"] and list(heat.y) == ["y", "x"]
    assert [list(row) for row in heat.text] == [["+2.0", ""], ["", "+2.0"]]
    assert (heat.zmin, heat.zmax, heat.colorbar.title.text) == (-3, 3, "u")
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.height == 300
    assert fig.layout.title.text == "T" and fig.layout.xaxis.title.text is None
    plain = charts._heatmap(grid, None, 300, colorscale="Blues", colorbar="u", hover="h", x_title="c")
    assert plain.data[0].text is None and plain.data[0].zmin is None
    assert plain.layout.xaxis.title.text == "c" and plain.layout.margin.t == 30
