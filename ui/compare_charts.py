"""Plotly figures of a comparison (ui.compare frames): per-task gains of each method, the geometry that
explains them, what each method kept of every checkpoint, and the layers where the methods disagree.

Pure functions from tidy frames to figures, like ui.charts (whose layout and colours they share), so they are
tested on hand-written frames and reused unchanged by the exported report.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui.charts import (
    BASE_COLOR,
    BEST_COLOR,
    PALETTE,
    _heatmap,
    _layout,
    _legend_below,
    _pivot,
    _require,
    empty_figure,
)


def _method_colors(methods: list[str]) -> dict[str, str]:
    """The colours score_bars gives merges (the palette without the base's grey and the best checkpoint's
    green), so a method has one colour in every chart of the view."""
    palette = [c for c in PALETTE if c not in (BASE_COLOR, BEST_COLOR)]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def scores_figure(
    scores: pd.DataFrame, base: str | None, best: str | None, title: str | None = None
) -> go.Figure:
    """Per-task scores (with an "average" group) of the base, the best checkpoint and every merge, legend
    under the plot; the other checkpoints are left out so the merges stay readable. Columns: model, role,
    task, score (ui.compare.Comparison.scores)."""
    from ui.charts import score_bars

    _require(scores, ["model", "role", "task", "score"], "scores_figure")
    shown = scores[scores["role"] != "checkpoint"]
    avg = shown.groupby(["model", "role"], as_index=False, sort=False)["score"].mean().assign(task="average")
    fig = score_bars(pd.concat([shown, avg], ignore_index=True), base=base, best=best, title=title)
    return _legend_below(fig, -0.3, bottom=140)


def gain_heatmap(gains: pd.DataFrame, value: str = "vs_base", title: str | None = None) -> go.Figure:
    """Gain of each merge per task (rows: methods, columns: tasks) in percentage points, green above the
    reference and red below, centred on zero. `gains` columns: method, task and `value`."""
    _require(gains, ["method", "task", value], "gain_heatmap")
    rows = gains.dropna(subset=[value])
    if rows.empty:
        return empty_figure("No scored merges yet", title)
    methods = list(dict.fromkeys(rows["method"]))
    tasks = list(dict.fromkeys(rows["task"]))
    grid = _pivot(rows, "method", "task", value, methods, tasks)
    grid["average"] = grid.mean(axis=1)
    bound = max(1.0, float(pd.Series(grid.to_numpy().ravel()).abs().max()))
    return _heatmap(
        grid,
        title,
        max(260, 46 * len(methods) + 150),
        colorscale="RdYlGn",
        colorbar="pp",
        hover="%{y} · %{x}<br>%{z:+.2f} pp<extra></extra>",
        cell_format="+.1f",
        zrange=(-bound, bound),
        x_title="task",
    )


def geometry_bars(summary: pd.DataFrame, title: str | None = None) -> go.Figure:
    """The geometry beside the scores, one bar per method in four panels: distance from the base ‖Δ‖₂ (the
    paper's Figure 4 argument), share of task-vector mass dropped, how sign conflicts were resolved (dropped,
    with the sign of Σ τ, against it) and the effective rank of the merged update."""
    _require(
        summary,
        ["method", "distance", "mass_dropped", "conflict_dropped", "conflict_summed", "effective_rank"],
        "geometry_bars",
    )
    if summary.empty:
        return empty_figure("No finished merges yet", title)
    methods = list(summary["method"])
    colors = _method_colors(methods)
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=(
            "distance from the base ‖Δ‖₂",
            "task-vector mass dropped (%)",
            "sign conflicts resolved (%)",
            "effective rank of Δ",
        ),
        horizontal_spacing=0.12,
        vertical_spacing=0.2,
    )
    bar_colors = [colors[m] for m in methods]
    fig.add_bar(
        x=methods,
        y=summary["distance"],
        marker_color=bar_colors,
        showlegend=False,
        hovertemplate="%{x}<br>‖Δ‖₂ = %{y:.4g}<extra></extra>",
        row=1,
        col=1,
    )
    fig.add_bar(
        x=methods,
        y=summary["mass_dropped"],
        marker_color=bar_colors,
        showlegend=False,
        hovertemplate="%{x}<br>%{y:.1f}% of Σ‖τ_i‖₁ left at the base<extra></extra>",
        row=1,
        col=2,
    )
    dropped = summary["conflict_dropped"]
    summed = summary["conflict_summed"]
    against = 100.0 - dropped.fillna(0) - summed.fillna(0)
    for label, values, color in (
        ("dropped (left at the base)", dropped, "#bbbbbb"),
        ("with the sign of Σ τ", summed, "#2ca02c"),
        ("against it", against.where(dropped.notna() | summed.notna()), "#d62728"),
    ):
        fig.add_bar(
            x=methods,
            y=values,
            name=label,
            marker_color=color,
            legendgroup="conflicts",
            hovertemplate="%{x}<br>" + label + ": %{y:.1f}%<extra></extra>",
            row=2,
            col=1,
        )
    fig.add_bar(
        x=methods,
        y=summary["effective_rank"],
        marker_color=bar_colors,
        showlegend=False,
        hovertemplate="%{x}<br>effective rank %{y:.2f}<extra></extra>",
        row=2,
        col=2,
    )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(range=[0, 100], row=1, col=2)
    fig.update_yaxes(range=[0, 100], row=2, col=1)
    return _legend_below(_layout(fig, title, height=640), -0.12)


def kept_heatmap(kept: pd.DataFrame, title: str | None = None, order: list[str] | None = None) -> go.Figure:
    """Fitted weight of each checkpoint's task vector in the merged update (Δ ≈ Σ c_i τ_i), percent, per
    method and checkpoint: 100 = kept whole, as a plain sum; 100/n = an average; 0 = dropped."""
    _require(kept, ["method", "checkpoint", "kept"], "kept_heatmap")
    if kept.dropna(subset=["kept"]).empty:
        return empty_figure("No kept shares recorded", title)
    methods = list(dict.fromkeys(kept["method"]))
    cks = [c for c in (order or []) if c in set(kept["checkpoint"])] or list(
        dict.fromkeys(kept["checkpoint"])
    )
    grid = _pivot(kept, "method", "checkpoint", "kept", methods, cks)
    return _heatmap(
        grid,
        title,
        max(260, 46 * len(methods) + 150),
        colorscale="Blues",
        colorbar="% kept",
        hover="%{y} · %{x}<br>weight %{z:.1f}% of τ in Δ<extra></extra>",
        cell_format=".0f",
        zrange=(0, max(100.0, float(pd.Series(grid.to_numpy().ravel()).max()))),
        x_title="checkpoint",
    )


def layer_heatmap(layers: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Relative size of the merged update per layer and method, ‖Δ‖ / ‖Σ τ_i‖ (1 = a plain sum's size)."""
    _require(layers, ["method", "layer", "relative"], "layer_heatmap")
    rows = layers.dropna(subset=["relative"])
    if rows.empty:
        return empty_figure("No per-layer geometry recorded", title)
    methods = list(dict.fromkeys(rows["method"]))
    order = list(dict.fromkeys(rows["layer"]))
    grid = _pivot(rows, "layer", "method", "relative", order, methods)
    return _heatmap(
        grid,
        title,
        max(320, 24 * len(order) + 160),
        colorscale="Viridis",
        colorbar="‖Δ‖/‖Στ‖",
        hover="%{x}<br>%{y}<br>‖Δ‖ / ‖Σ τ‖ = %{z:.3f}<extra></extra>",
        x_title="method",
        y_title="layer",
    )


def disagreement_bars(dis: pd.DataFrame, top: int = 8, title: str | None = None) -> go.Figure:
    """The `top` layers where the methods disagree most about where to move (ui.compare.disagreement: each
    method's ‖Δ‖/‖Σ τ‖ per layer over its whole-model value, max − min across methods), largest first; the
    hover names the methods at either end."""
    _require(dis, ["layer", "spread", "low", "high"], "disagreement_bars")
    if dis.empty:
        return empty_figure("Needs at least two finished methods", title)
    rows = dis.head(top)
    fig = go.Figure(
        go.Bar(
            x=rows["layer"],
            y=rows["spread"],
            marker_color="#9467bd",
            customdata=rows[["low", "high"]].to_numpy(),
            hovertemplate=(
                "%{x}<br>spread %{y:.3f}<br>smallest: %{customdata[0]} · largest: %{customdata[1]}"
                "<extra></extra>"
            ),
        )
    )
    fig.update_layout(xaxis_title="layer", yaxis_title="spread of the methods' layer profiles")
    return _layout(fig, title, height=360)
