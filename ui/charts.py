"""Plotly figures for MergeLab's pages: pure functions from small tidy DataFrames to figures.

Pages adapt whatever the store returns into the documented columns and call these; keeping the figures
pure (no Streamlit, no store) is what lets them be unit-tested on hand-written frames. Every chart is
interactive Plotly; empty input gives an empty figure with a note instead of raising, because an empty
workspace is a normal state, not an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# One colour per role, so "base" and "best checkpoint" read the same on every page.
BASE_COLOR = "#7f7f7f"
BEST_COLOR = "#2ca02c"
MERGE_COLOR = "#1f77b4"
PAPER_DASH = "dash"
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


def _require(df: pd.DataFrame, columns: Sequence[str], chart: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{chart} needs columns {list(columns)}; missing {missing}")


def empty_figure(note: str, title: str | None = None) -> go.Figure:
    """A blank figure carrying a centred note ("no data yet"), so pages never show a broken chart."""
    fig = go.Figure()
    fig.add_annotation(
        text=note, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=14)
    )
    fig.update_layout(
        title=title, xaxis=dict(visible=False), yaxis=dict(visible=False), height=260, template="plotly_white"
    )
    return fig


def _layout(fig: go.Figure, title: str | None, height: int = 420) -> go.Figure:
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=height,
        margin=dict(l=60, r=20, t=60 if title else 30, b=60),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
    )
    return fig


def _legend_below(fig: go.Figure, y: float, bottom: int | None = None) -> go.Figure:
    """Move the legend under the plot (long or many entries would cover the title above it), leaving
    `bottom` pixels of margin for it when given."""
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=y, xanchor="left", x=0))
    if bottom is not None:
        fig.update_layout(margin=dict(b=bottom))
    return fig


def _pivot(
    df: pd.DataFrame, index: str, columns: str, value: str, rows: Sequence, cols: Sequence
) -> pd.DataFrame:
    """Mean `value` per (index, columns) cell, rows and columns in the given orders (never the alphabet)."""
    grid = df.pivot_table(index=index, columns=columns, values=value, aggfunc="mean", sort=False)
    return grid.reindex(index=rows, columns=cols)


def _heatmap(
    grid: pd.DataFrame,
    title: str | None,
    height: int,
    *,
    colorscale: str,
    colorbar: str,
    hover: str,
    cell_format: str | None = None,
    zrange: tuple[float, float] | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
) -> go.Figure:
    """`grid` as a heatmap in the pages' layout: columns on x, rows on y read from the top down, each cell
    written with `cell_format` (e.g. "+.1f") when given and empty where the value is missing."""
    z = grid.to_numpy()
    cells = {}
    if cell_format is not None:
        text = [["" if pd.isna(v) else format(v, cell_format) for v in row] for row in z]
        cells = dict(text=text, texttemplate="%{text}")
    if zrange is not None:
        cells.update(zmin=zrange[0], zmax=zrange[1])
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(grid.columns),
            y=list(grid.index),
            colorscale=colorscale,
            colorbar=dict(title=colorbar),
            hovertemplate=hover,
            **cells,
        )
    )
    axes = {"xaxis_title": x_title, "yaxis_title": y_title}
    fig.update_layout(yaxis_autorange="reversed", **{k: v for k, v in axes.items() if v is not None})
    return _layout(fig, title, height=height)


def effective_rank(singular_values: Sequence[float] | np.ndarray) -> float:
    """exp(H(p)) with p = σ/Σσ (methods.md §5): 1 for a rank-one spectrum, r for r equal values."""
    s = np.asarray(singular_values, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(math.exp(-(p * np.log(p)).sum()))


def score_bars(
    scores: pd.DataFrame, base: str | None = None, best: str | None = None, title: str | None = None
) -> go.Figure:
    """Per-task scores of several models as grouped bars, base and best checkpoint in fixed colours.

    `scores` columns: model, task, score (percentage points, as ui.data.task_scores gives them).
    Include an "average" task row yourself if you want the aggregate drawn as its own group.
    """
    _require(scores, ["model", "task", "score"], "score_bars")
    if scores.empty:
        return empty_figure("No scores yet", title)
    fig = go.Figure()
    models = list(dict.fromkeys(scores["model"]))
    others = [m for m in models if m not in (base, best)]
    order = [m for m in (base, best) if m in models] + others
    others_palette = [c for c in PALETTE if c not in (BASE_COLOR, BEST_COLOR)]
    for model in order:
        rows = scores[scores["model"] == model]
        k = others.index(model) if model in others else 0
        color = (
            BASE_COLOR
            if model == base
            else BEST_COLOR
            if model == best
            else others_palette[k % len(others_palette)]
        )
        label = (
            f"{model} (base)" if model == base else f"{model} (best checkpoint)" if model == best else model
        )
        fig.add_bar(
            x=rows["task"],
            y=rows["score"],
            name=label,
            marker_color=color,
            hovertemplate="%{x}<br>%{y:.1f}<extra>" + label + "</extra>",
        )
    fig.update_layout(barmode="group", xaxis_title="task", yaxis_title="accuracy (%)")
    return _layout(fig, title)


def layer_norm_heatmap(
    norms: pd.DataFrame, title: str | None = None, order: Sequence[str] | None = None
) -> go.Figure:
    """Task-vector L2 norm per (checkpoint, layer) as a heatmap; columns: model, layer, norm.

    Layers keep their first-seen order so the y-axis follows the network's depth, not the alphabet;
    checkpoints follow `order` (the merge's order, shared with the cosine matrix) when given.
    """
    _require(norms, ["model", "layer", "norm"], "layer_norm_heatmap")
    if norms.empty:
        return empty_figure("No task-vector norms recorded", title)
    layers = list(dict.fromkeys(norms["layer"]))
    grid = _pivot(norms, "layer", "model", "norm", layers, _ordered(norms["model"], order))
    return _heatmap(
        grid,
        title,
        max(320, 22 * len(layers) + 140),
        colorscale="Viridis",
        colorbar="‖τ‖₂",
        hover="%{x}<br>%{y}<br>‖τ‖₂ = %{z:.4g}<extra></extra>",
        x_title="checkpoint",
        y_title="layer",
    )


def _ordered(names: Sequence[str], order: Sequence[str] | None) -> list[str]:
    """Distinct `names`, those listed in `order` first and in its order, the rest as first seen."""
    seen = list(dict.fromkeys(names))
    head = [n for n in dict.fromkeys(order or []) if n in seen]
    return head + [n for n in seen if n not in head]


def cosine_matrix(pairs: pd.DataFrame, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Square symmetric cosine matrix (diagonal 1) from long rows a, b, cosine; missing pairs stay NaN.
    Rows and columns follow `order` when given (the merge's checkpoint order)."""
    _require(pairs, ["a", "b", "cosine"], "cosine_matrix")
    names = _ordered(list(pairs["a"]) + list(pairs["b"]), order)
    mat = pd.DataFrame(np.nan, index=names, columns=names, dtype=float)
    for a, b, c in pairs[["a", "b", "cosine"]].itertuples(index=False):
        mat.loc[a, b] = c
        mat.loc[b, a] = c
    for n in names:
        mat.loc[n, n] = 1.0
    return mat


def cosine_heatmap(
    pairs: pd.DataFrame, title: str | None = None, order: Sequence[str] | None = None
) -> go.Figure:
    """Pairwise cosine of task vectors as a red-blue heatmap fixed to [-1, 1]; columns a, b, cosine."""
    _require(pairs, ["a", "b", "cosine"], "cosine_heatmap")
    if pairs.empty:
        return empty_figure("Need at least two checkpoints for cosines", title)
    mat = cosine_matrix(pairs, order)
    return _heatmap(
        mat,
        title,
        max(320, 40 * len(mat) + 160),
        colorscale="RdBu",
        colorbar="cos",
        hover="%{y} · %{x}<br>cos = %{z:.4f}<extra></extra>",
        cell_format=".2f",
        zrange=(-1, 1),
    )


def sign_conflict_bars(
    conflicts: pd.DataFrame, title: str | None = None, highlight: Sequence[str] | None = None
) -> go.Figure:
    """Sign-conflict rate per layer (or tensor) as bars on a 0-1 axis; columns: layer, rate.
    Layers named in `highlight` (e.g. the ones that conflict most) are drawn dark, the others light."""
    _require(conflicts, ["layer", "rate"], "sign_conflict_bars")
    if conflicts.empty:
        return empty_figure("No sign-conflict rates recorded", title)
    marked = set(highlight or ())
    colors = (
        ["#8b0000" if layer in marked else "#f4a3a3" for layer in conflicts["layer"]] if marked else "#d62728"
    )
    fig = go.Figure(
        go.Bar(
            x=conflicts["layer"],
            y=conflicts["rate"],
            marker_color=colors,
            hovertemplate="%{x}<br>%{y:.1%} of entries disagree<extra></extra>",
        )
    )
    fig.update_layout(xaxis_title="layer", yaxis_title="sign-conflict rate", yaxis=dict(range=[0, 1]))
    return _layout(fig, title)


def _mean_spread(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """Per (method, n): mean, min, max, std and count of `value`, sorted by n."""
    g = df.groupby(["method", "n"], sort=True)[value]
    out = g.agg(["mean", "min", "max", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def _method_lines(
    fig: go.Figure, stats: pd.DataFrame, unit: str, spread: bool, color_of: dict[str, str]
) -> None:
    for method, rows in stats.groupby("method", sort=False):
        color = color_of[method]
        if spread and (rows["count"] > 1).any():
            fig.add_scatter(
                x=list(rows["n"]) + list(rows["n"])[::-1],
                y=list(rows["max"]) + list(rows["min"])[::-1],
                fill="toself",
                fillcolor=color,
                opacity=0.15,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=method,
                name=f"{method} spread",
            )
        fig.add_scatter(
            x=rows["n"],
            y=rows["mean"],
            mode="lines+markers",
            name=str(method),
            legendgroup=method,
            line=dict(color=color),
            customdata=np.stack([rows["min"], rows["max"], rows["count"]], axis=-1),
            hovertemplate=(
                f"{method}<br>n=%{{x}}<br>mean %{{y:.4g}}{unit}<br>"
                "min %{customdata[0]:.4g} · max %{customdata[1]:.4g} · %{customdata[2]} merges<extra></extra>"
            ),
        )


def _colors(methods: Sequence[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


def _paper_lines(fig: go.Figure, paper: pd.DataFrame | None, value: str, color_of: dict[str, str]) -> None:
    """The paper's published numbers as dashed lines named "paper: <method>" (labelled, never mixed in)."""
    if paper is None or paper.empty:
        return
    for method, rows in paper.sort_values("n").groupby("method", sort=False):
        fig.add_scatter(
            x=rows["n"],
            y=rows[value],
            mode="lines+markers",
            name=f"paper: {method}",
            line=dict(dash=PAPER_DASH, color=color_of.get(method, BASE_COLOR)),
            marker=dict(symbol="diamond-open"),
        )


def _integer_n_axis(fig: go.Figure, *frames: pd.DataFrame | None) -> None:
    """Ticks only at the merge sizes that occur: n counts checkpoints, so 2.5 is never a tick."""
    sizes = sorted({int(n) for f in frames if f is not None and not f.empty for n in f["n"]})
    if sizes:
        fig.update_xaxes(tickmode="array", tickvals=sizes, ticktext=[str(n) for n in sizes])


def accuracy_vs_n(
    merges: pd.DataFrame,
    base_score: float | None = None,
    best_score: float | None = None,
    paper: pd.DataFrame | None = None,
    title: str | None = None,
) -> go.Figure:
    """The paper's Figure 3: mean accuracy against merge size n per method, min-max band as spread.

    `merges` columns: method, n, accuracy (one row per merged model). `paper` (optional) has method, n,
    accuracy and is drawn dashed as "paper: …". Base and best checkpoint are horizontal reference lines.
    """
    _require(merges, ["method", "n", "accuracy"], "accuracy_vs_n")
    if merges.empty and (paper is None or paper.empty):
        return empty_figure("No merges to plot yet", title)
    methods = list(dict.fromkeys(list(merges["method"]) + ([] if paper is None else list(paper["method"]))))
    color_of = _colors(methods)
    fig = go.Figure()
    if not merges.empty:
        _method_lines(fig, _mean_spread(merges, "accuracy"), "", True, color_of)
    _paper_lines(fig, paper, "accuracy", color_of)
    if base_score is not None:
        fig.add_hline(y=base_score, line=dict(color=BASE_COLOR, dash="dot"), annotation_text="base")
    if best_score is not None:
        fig.add_hline(
            y=best_score, line=dict(color=BEST_COLOR, dash="dot"), annotation_text="best checkpoint"
        )
    fig.update_layout(xaxis_title="checkpoints merged (n)", yaxis_title="average accuracy (%)")
    _integer_n_axis(fig, merges, paper)
    return _layout(fig, title)


def distance_vs_n(
    merges: pd.DataFrame, paper: pd.DataFrame | None = None, title: str | None = None
) -> go.Figure:
    """The paper's Figure 4: ‖θ_merged − θ_base‖₂ against n per method (mean line, min-max band).

    `merges` columns: method, n, distance (one row per merge).
    """
    _require(merges, ["method", "n", "distance"], "distance_vs_n")
    if merges.empty:
        return empty_figure("No merge distances recorded yet", title)
    color_of = _colors(list(dict.fromkeys(merges["method"])))
    fig = go.Figure()
    _method_lines(fig, _mean_spread(merges, "distance"), "", True, color_of)
    _paper_lines(fig, paper, "distance", color_of)
    fig.update_layout(xaxis_title="checkpoints merged (n)", yaxis_title="‖θ_merged − θ_base‖₂")
    _integer_n_axis(fig, merges, paper)
    return _layout(fig, title)


def sweep_curve(
    points: pd.DataFrame,
    param: str,
    y: str = "accuracy",
    y_title: str = "average accuracy (%)",
    base_score: float | None = None,
    best_score: float | None = None,
    title: str | None = None,
) -> go.Figure:
    """A hyperparameter sweep (the paper's ablations): `y` against the swept value. One thin line per
    subset (the same checkpoints at every value), the mean over subsets bold with its min-max band, and
    base and best checkpoint as horizontal references. `points` columns: value, subset_id, <y>."""
    _require(points, ["value", "subset_id", y], "sweep_curve")
    if points.empty:
        return empty_figure("No scored merges in this sweep yet", title)
    stats = points.groupby("value", sort=True)[y].agg(["mean", "min", "max", "count"]).reset_index()
    fig = go.Figure()
    fig.add_scatter(
        x=list(stats["value"]) + list(stats["value"])[::-1],
        y=list(stats["max"]) + list(stats["min"])[::-1],
        fill="toself",
        fillcolor=MERGE_COLOR,
        opacity=0.15,
        line=dict(width=0),
        hoverinfo="skip",
        name="min-max over subsets",
    )
    for subset, rows in points.sort_values("value").groupby("subset_id", sort=True):
        fig.add_scatter(
            x=rows["value"],
            y=rows[y],
            mode="lines+markers",
            name=f"subset {subset}",
            line=dict(width=1, color="#9ecae1"),
            marker=dict(size=5),
            hovertemplate=f"subset {subset}<br>{param} = %{{x:g}}<br>%{{y:.4g}}<extra></extra>",
        )
    fig.add_scatter(
        x=stats["value"],
        y=stats["mean"],
        mode="lines+markers",
        name="mean over subsets",
        line=dict(width=3, color=MERGE_COLOR),
        marker=dict(size=9),
        customdata=np.stack([stats["min"], stats["max"], stats["count"]], axis=-1),
        hovertemplate=(
            f"{param} = %{{x:g}}<br>mean %{{y:.4g}}<br>min %{{customdata[0]:.4g}} · "
            "max %{customdata[1]:.4g} · %{customdata[2]} merges<extra></extra>"
        ),
    )
    if base_score is not None:
        fig.add_hline(y=base_score, line=dict(color=BASE_COLOR, dash="dot"), annotation_text="base")
    if best_score is not None:
        fig.add_hline(
            y=best_score, line=dict(color=BEST_COLOR, dash="dot"), annotation_text="best checkpoint"
        )
    values = list(stats["value"])
    fig.update_xaxes(tickmode="array", tickvals=values, ticktext=[f"{v:g}" for v in values])
    fig.update_layout(xaxis_title=param, yaxis_title=y_title)
    return _layout(fig, title)


def spectra_chart(spectra: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Singular values (descending) of each task vector and of the merged update, log y-axis.

    `spectra` columns: source (e.g. a checkpoint name or "merged Δ"), index (0-based), value, and
    optionally effective_rank (as recorded by the merge; computed from the values only when absent). The
    legend carries each spectrum's effective rank, the number the paper's argument about subspaces turns on.
    """
    _require(spectra, ["source", "index", "value"], "spectra_chart")
    if spectra.empty:
        return empty_figure("No singular spectra recorded", title)
    fig = go.Figure()
    for i, (source, rows) in enumerate(spectra.sort_values("index").groupby("source", sort=False)):
        recorded = rows["effective_rank"].dropna() if "effective_rank" in rows else pd.Series(dtype=float)
        erank = float(recorded.iloc[0]) if len(recorded) else effective_rank(rows["value"])
        merged = "merge" in str(source).lower() or str(source).startswith("Δ")
        fig.add_scatter(
            x=rows["index"] + 1,
            y=rows["value"].clip(lower=1e-12),
            mode="lines+markers",
            name=f"{source} (eff. rank {erank:.1f})",
            line=dict(width=3 if merged else 1.5, color="black" if merged else PALETTE[i % len(PALETTE)]),
            marker=dict(size=4),
            hovertemplate="σ_%{x} = %{y:.4g}<extra>" + str(source) + "</extra>",
        )
    fig = _layout(fig, title, height=460)
    fig.update_layout(
        xaxis_title="singular value index",
        yaxis=dict(title="σ (log scale)", type="log", exponentformat="power", minor=dict(showgrid=False)),
    )
    return _legend_below(fig, -0.22, bottom=120)  # entries carry effective ranks and are long


def format_cell(success: float | None, gain: float | None) -> str:
    """One table cell the way the paper prints it: "80% / +0.39" (success %, mean gain in pp)."""
    if success is None or gain is None or pd.isna(success) or pd.isna(gain):
        return "–"
    return f"{success:.0f}% / {gain:+.2f}"


def success_gain_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Pivot per-(method, n) success rate (%) and mean gain (pp) into the paper's table layout.

    `rows` columns: method, n, success, gain. Result: one row per method, one column "n=…" per merge size,
    cells formatted by `format_cell`; methods keep their input order, sizes ascend.
    """
    _require(rows, ["method", "n", "success", "gain"], "success_gain_table")
    if rows.empty:
        return pd.DataFrame()
    methods = list(dict.fromkeys(rows["method"]))
    sizes = sorted({int(n) for n in rows["n"]})
    table = pd.DataFrame(
        index=pd.Index(methods, name="method"), columns=[f"n={n}" for n in sizes], dtype=object
    )
    table[:] = "–"
    for method, n, s, g in rows[["method", "n", "success", "gain"]].itertuples(index=False):
        table.loc[method, f"n={int(n)}"] = format_cell(s, g)
    return table


def score_matrix(scores: pd.DataFrame) -> pd.DataFrame:
    """Side-by-side comparison: tasks as rows, models as columns, plus an "average" row (unweighted)."""
    _require(scores, ["model", "task", "score"], "score_matrix")
    if scores.empty:
        return pd.DataFrame()
    models = list(dict.fromkeys(scores["model"]))
    tasks = list(dict.fromkeys(scores["task"]))
    mat = _pivot(scores, "task", "model", "score", tasks, models)
    mat.loc["average"] = mat.mean(axis=0)
    return mat


def gain_color(value: float) -> str:
    """CSS background for a gain cell (pp): green above zero, red below, stronger with size (cap at 5 pp)."""
    if value is None or pd.isna(value) or value == 0:
        return ""
    alpha = min(abs(float(value)) / 5.0, 1.0) * 0.6 + 0.1
    rgb = "44, 160, 44" if value > 0 else "214, 39, 40"
    return f"background-color: rgba({rgb}, {alpha:.2f})"
