"""A sweep's figures and tables, shared by the Study page (ui.sweep_view) and the exported report
(ui.report.study_report): score against the swept value, distance from the base against it, a per-value
table, and the paper's own ablation statement, labelled as the paper's. No Streamlit here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

import jobs
from ui import charts

# What the paper reports for its own ablations (paper.md §1.4; App. C: all 12 checkpoints merged, mean over
# its 16 benchmarks). Shown as the paper's statement beside the user's curve, never mixed into it.
PAPER_ABLATIONS = {
    ("task_arithmetic", "lambda"): "λ ∈ {0.1, …, 1.9}: accuracy saturates around λ ≈ 1.0 (1.0 used).",
    ("ties", "density"): "density 10–100 %: U-shaped; 10 % chosen deliberately although 100 % scored well.",
    (
        "task_arithmetic_sb",
        "svd_thresh",
    ): "β ∈ [0, 0.5]: large gain from 0 to 0.05, flat over 0.1–0.5 (0.2 used).",
    ("ties_sb", "svd_thresh"): "β ∈ [0, 0.5]: large gain from 0 to 0.05, flat over 0.1–0.5 (0.2 used).",
}


@dataclass
class SweepView:
    """Everything drawn for one sweep: its axis, the figures, the per-value table and the raw frames."""

    axis: Any
    heading: str
    figures: list[go.Figure]
    table: pd.DataFrame
    paper: str | None
    data: dict[str, pd.DataFrame] = field(default_factory=dict)


def curve_title(param: str) -> str:
    return f"Average accuracy (%) against {param} (the paper's ablation, on your checkpoints)"


def build(db: Any, study_id: str, base_score: float | None, best_score: float | None) -> SweepView | None:
    """The sweep view of a stored study, None when the study is not a sweep."""
    study = db.get_study(study_id)
    axis = jobs.sweep_axis(study["methods"])
    if axis is None:
        return None
    points = jobs.sweep_points(db, study_id)
    figures = [
        charts.sweep_curve(
            points, axis.param, base_score=base_score, best_score=best_score, title=curve_title(axis.param)
        )
    ]
    distance = distance_points(db, study_id, axis)
    if len(distance):
        figures.append(
            charts.sweep_curve(
                distance,
                axis.param,
                y="distance",
                y_title="‖θ_merged − θ_base‖₂",
                title=f"Distance from the base against {axis.param}",
            )
        )
    heading = (
        f"Sweep of {axis.param} for {axis.method}: n = {study['sizes'][0]}, {study['subsets_per_size']} "
        "subsets, the same checkpoints at every value"
    )
    return SweepView(
        axis,
        heading,
        figures,
        value_table(points, axis.param),
        PAPER_ABLATIONS.get((axis.method, axis.param)),
        {"sweep_points": points, "sweep_distances": distance},
    )


def value_table(points: pd.DataFrame, param: str) -> pd.DataFrame:
    """Per value: mean, min and max accuracy (%) over the subsets and the number of merges."""
    if points.empty:
        return pd.DataFrame(columns=["mean (%)", "min (%)", "max (%)", "merges"])
    table = points.groupby("value", sort=True)["accuracy"].agg(["mean", "min", "max", "count"])
    table.index = [f"{param}={v:g}" for v in table.index]
    table.columns = ["mean (%)", "min (%)", "max (%)", "merges"]
    return table


def distance_points(db: Any, study_id: str, axis: Any) -> pd.DataFrame:
    """value, subset_id, distance (‖θ_merged − θ_base‖₂ the merge recorded) per finished merge."""
    merges = db.merges_df(study_id=study_id, status="done")
    if merges.empty:
        return pd.DataFrame(columns=["value", "subset_id", "distance"])
    stats = db.model_stats_df(list(merges["id"]))
    joined = merges.merge(stats, left_on="id", right_on="merge_id")
    value_of = axis.value_of()
    joined = joined[joined["config"].isin(value_of) & joined["model_delta_norm"].notna()]
    return pd.DataFrame(
        {
            "value": joined["config"].map(value_of),
            "subset_id": joined["subset_id"],
            "distance": joined["model_delta_norm"],
        }
    )
