"""Export a comparison or a study as ONE self-contained HTML report plus its data as Parquet.

The report opens offline in any browser: plotly.js is inlined once, every chart is the same interactive
Plotly figure the app draws, tables are plain HTML. It states what was merged, with which recipe (the
mergekit YAML), on which suite and when, and puts the paper's published numbers in their own section
labelled as the paper's. The data goes out as a zip of one Parquet file per table.

Other pages build a `Report` from `Section`s (figures, tables, text) and call `to_html` / `to_parquet_zip`;
`comparison_report` and `study_report` are the two built here. Nothing in this module uses Streamlit.
"""

from __future__ import annotations

import html
import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import plotly.graph_objects as go

GENERATOR = "MergeLab"
PAPER_LABEL = "The paper's published numbers (not computed by MergeLab)"

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto;
       max-width: 1280px; padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
.facts { border-collapse: collapse; margin: 0.5rem 0 1rem; }
.facts th { text-align: left; padding: 0.15rem 1rem 0.15rem 0; color: #555; font-weight: 600; }
.facts td { padding: 0.15rem 0; }
table.data { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
table.data th, table.data td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
table.data th { background: #f4f6f8; }
table.data td:first-child, table.data th:first-child { text-align: left; }
pre.recipe { background: #f6f8fa; border: 1px solid #ddd; padding: 0.75rem; overflow-x: auto; }
.paper { border-left: 4px solid #ff7f0e; padding-left: 1rem; background: #fffaf3; }
.note { color: #555; font-size: 0.9rem; }
.chart { margin: 0.5rem 0 1.5rem; }
"""


@dataclass
class Table:
    """One table of a report; `decimals` rounds numeric columns for display (Parquet keeps full values)."""

    title: str
    frame: pd.DataFrame
    note: str = ""
    decimals: int = 2
    index: bool = False


@dataclass
class Section:
    """A heading with text, figures and tables; `paper=True` marks content that is the paper's, not yours."""

    title: str
    text: str = ""
    figures: list[go.Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    paper: bool = False


@dataclass
class Report:
    """What the exported file says: what was merged (facts), the recipes, the suite, when, and the sections.
    `data` holds the tables exported as Parquet (name -> frame)."""

    title: str
    kind: str  # "comparison", "study", "sweep", …
    facts: dict[str, str]
    recipes: dict[str, str]
    suite: str
    ran_at: datetime | None
    sections: list[Section]
    data: dict[str, pd.DataFrame] = field(default_factory=dict)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def slug(self) -> str:
        """The file-name stem of this report's downloads."""
        return file_stem(self.kind, self.facts.get("id") or self.title)


def file_stem(kind: str, ident: str) -> str:
    """mergelab-<kind>-<id>: the name of a report's HTML file and (with -data.zip) of its data."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(ident).lower()).strip("-")
    return f"mergelab-{kind}-{safe[:40]}"


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{_esc(p.strip())}</p>" for p in text.split("\n\n") if p.strip())


def _table_html(table: Table) -> str:
    frame = table.frame.copy()
    for col in frame.columns:
        if pd.api.types.is_float_dtype(frame[col]):
            frame[col] = frame[col].round(table.decimals)
    body = frame.to_html(index=table.index, classes="data", border=0, na_rep="–", escape=True)
    note = f'<p class="note">{_esc(table.note)}</p>' if table.note else ""
    return f"<h3>{_esc(table.title)}</h3>{body}{note}"


def _figure_html(fig: go.Figure, div_id: str) -> str:
    inner = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )
    return f'<div class="chart">{inner}</div>'


def to_html(report: Report) -> str:
    """The whole report as one HTML document with plotly.js inlined (works offline, no external file)."""
    from plotly.offline import get_plotlyjs

    when = f"{report.ran_at:%Y-%m-%d %H:%M} UTC" if report.ran_at is not None else "unknown"
    facts = {
        **report.facts,
        "suite": report.suite,
        "run": when,
        "report generated": f"{report.generated_at:%Y-%m-%d %H:%M} UTC by {GENERATOR}",
    }
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(report.title)}</title>",
        f'<meta name="generator" content="{GENERATOR}">',
        f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{_esc(report.title)}</h1>",
        '<table class="facts">',
        *(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts.items()),
        "</table>",
    ]
    n_fig = 0
    for section in report.sections:
        css = ' class="paper"' if section.paper else ""
        parts.append(f"<section{css}><h2>{_esc(section.title)}</h2>{_paragraphs(section.text)}")
        for fig in section.figures:
            n_fig += 1
            parts.append(_figure_html(fig, f"chart-{n_fig}"))
        parts.extend(_table_html(t) for t in section.tables)
        parts.append("</section>")
    if report.recipes:
        parts.append('<section id="recipes"><h2>Recipes (mergekit YAML)</h2>')
        for label, yaml_text in report.recipes.items():
            parts.append(f'<h3>{_esc(label)}</h3><pre class="recipe">{_esc(yaml_text)}</pre>')
        parts.append("</section>")
    if report.data:
        names = ", ".join(f"{name}.parquet" for name in report.data)
        parts.append(
            f'<p class="note">The data of this report is exported beside it as Parquet: {_esc(names)}.</p>'
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _parquet_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns as strings (lists, mixed types), so every table writes to Parquet."""
    out = frame.reset_index(drop=not isinstance(frame.index, pd.MultiIndex) and frame.index.name is None)
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: None if v is None else str(v))
    out.columns = [str(c) for c in out.columns]
    return out


def to_parquet_zip(report: Report) -> bytes:
    """The report's data: a zip holding one Parquet file per table (`<name>.parquet`)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, frame in report.data.items():
            part = io.BytesIO()
            _parquet_ready(frame).to_parquet(part, index=False)
            zf.writestr(f"{name}.parquet", part.getvalue())
    return buf.getvalue()


def write(report: Report, folder: Any) -> tuple[Any, Any]:
    """Write `<slug>.html` and `<slug>-data.zip` into `folder`; returns both paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / f"{report.slug}.html"
    data = folder / f"{report.slug}-data.zip"
    page.write_text(to_html(report), encoding="utf-8")
    data.write_bytes(to_parquet_zip(report))
    return page, data


# --- the paper's numbers, labelled ------------------------------------------------------------------------
def paper_section(methods: Sequence[str], model: str = "Average") -> Section:
    """The paper's Tables 1 to 3 for the given registered methods (those the paper ran), on one of its base
    models ("Average" over its four by default), in a section marked as the paper's."""
    from evaluation import paper
    from ui import charts

    published = paper.paper_results()
    rows = published[(published["model"] == model) & published["method_id"].isin(list(methods))]
    text = (
        f"Source: {paper.SOURCE}. These are the paper's results for its base model(s) ({model}) on its 16 "
        "benchmarks, success rate (%) / mean gain (pp) per merge size n, drawn here for reference; they are "
        "not results of the merges in this report."
    )
    tables = []
    for table_no, name in (
        (1, "vs base (Table 1)"),
        (3, "vs base (Table 3)"),
        (2, "vs best checkpoint (Table 2)"),
    ):
        part = rows[rows["table"] == table_no]
        if len(part):
            tables.append(
                Table(
                    f"Paper: {name}",
                    charts.success_gain_table(part[["method", "n", "success", "gain"]]),
                    index=True,
                )
            )
    if not tables:
        text += " The paper ran none of the methods in this report."
    return Section(PAPER_LABEL, text=text, tables=tables, paper=True)


# --- a comparison -----------------------------------------------------------------------------------------
def comparison_report(comp: Any) -> Report:
    """The report of a ui.compare.Comparison: scores against base and best checkpoint, the geometry beside
    them, per-layer disagreement, the recipes, and the paper's numbers for the same methods."""
    from ui import compare_charts

    merged_what = (
        f"{len(comp.checkpoints)} checkpoints ({', '.join(comp.checkpoint_names)}) merged into "
        f"{comp.base_name} by {len(comp.methods)} methods ({', '.join(comp.methods)})"
    )
    facts = {
        "id": comp.study_id,
        "merged": merged_what,
        "base": comp.base,
        "checkpoints": ", ".join(comp.checkpoints),
        "methods": ", ".join(comp.methods),
        "items per task": str(comp.limit) if comp.limit else "the suite's default",
        "status": comp.status,
    }
    summary = comp.summary.copy()
    for col in ("vs_base", "vs_best"):  # gains read as gains: signed
        summary[col] = summary[col].map(lambda v: "–" if pd.isna(v) else f"{v:+.2f}")
    summary = summary.rename(
        columns={
            "average": "average (%)",
            "vs_base": "vs base (pp)",
            "vs_best": "vs best checkpoint (pp)",
            "distance": "‖Δ‖₂",
            "relative_distance": "‖Δ‖ / ‖Σ τ‖",
            "outside_span": "outside span of τ (%)",
            "mass_dropped": "mass dropped (%)",
            "conflict_dropped": "conflicts dropped (%)",
            "conflict_summed": "conflicts with Σ τ (%)",
            "effective_rank": "eff. rank Δ",
            "spectra": "matrices",
        }
    )
    sections = [
        Section(
            "Scores against the base and the best checkpoint",
            text=(
                "Per-task accuracy (%) of every merge beside the base and the best single checkpoint (by its "
                "average), and each merge's gain in percentage points. Every checkpoint's own scores are in "
                "the scores table of the data."
            ),
            figures=[
                compare_charts.scores_figure(
                    comp.scores, base=comp.base_name, best=comp.best_name, title="Score per task (%)"
                ),
                compare_charts.gain_heatmap(comp.gains, "vs_base", title="Gain over the base per task (pp)"),
                compare_charts.gain_heatmap(
                    comp.gains, "vs_best", title="Gain over the best checkpoint per task (pp)"
                ),
            ],
            tables=[Table("Methods: scores and geometry", summary)],
        ),
        Section(
            "The geometry that explains the difference",
            text=(
                "The paper's Figure 4 argument: methods that move the weights far from the base leave its "
                "basin and lose accuracy. Beside the distance: the share of the task vectors' mass each "
                "method left at the base, how it resolved the entries where checkpoints disagree in sign, "
                "the effective rank of its update (mean over the matrices whose spectra were recorded), and "
                "the weight each checkpoint's task vector keeps in the update (Δ fitted as Σ c_i τ_i)."
            ),
            figures=[
                compare_charts.geometry_bars(comp.summary, title="Distance, mass, conflicts, rank"),
                compare_charts.kept_heatmap(
                    comp.kept,
                    title="Share of each checkpoint's task vector kept (%)",
                    order=comp.checkpoint_names,
                ),
            ],
        ),
        Section(
            "Where the methods disagree",
            text=(
                "Relative size of the update per layer, ‖Δ‖ / ‖Σ τ_i‖ (1 is the size of a plain sum), and "
                "the layers where the methods are furthest apart."
            ),
            figures=[
                compare_charts.layer_heatmap(comp.layers, title="‖Δ‖ / ‖Σ τ‖ per layer"),
                compare_charts.disagreement_bars(comp.disagreement, title="Layers of most disagreement"),
            ],
            tables=[Table("Layers of most disagreement", comp.disagreement.head(10), decimals=3)],
        ),
        paper_section(list(dict.fromkeys(comp.method_of.get(m, m) for m in comp.methods))),
    ]
    return Report(
        title=f"MergeLab comparison: {comp.name}",
        kind="comparison",
        facts=facts,
        recipes={f"{m}": y for m, y in comp.recipes.items()},
        suite=comp.suite,
        ran_at=comp.created_at,
        sections=sections,
        data={
            "scores": comp.scores,
            "summary": comp.summary,
            "gains": comp.gains,
            "kept": comp.kept,
            "layers": comp.layers,
            "disagreement": comp.disagreement,
        },
    )


# --- a study ----------------------------------------------------------------------------------------------
def study_report(db: Any, study_id: str, paper_model: str = "Average", n_boot: int = 200) -> Report:
    """The report of a study: the paper's tables (success rate / mean gain vs the base and the best
    checkpoint), accuracy and distance against n (Figures 3 and 4), per-task gains, one recipe per method
    configuration and the study's definition, then the paper's numbers for the same methods."""
    import yaml

    from evaluation import metrics
    from jobs.study_frames import study_frames
    from ui import charts, data

    study = db.get_study(study_id)
    pool = list(study["pool"])
    merges = db.merges_df(study_id=study_id)
    merged, base_rows, singles = study_frames(db, study)
    configs = [c.get("name") if isinstance(c, Mapping) else str(c) for c in study["methods"]]
    definition = {
        "name": study["name"],
        "base": study["base"],
        "pool": pool,
        "methods": study["methods"],
        "sizes": study["sizes"],
        "subsets_per_size": study["subsets_per_size"],
        "seed": study["seed"],
        "suite": study["suite"],
        "limit": study.get("limit"),
    }
    recipes = {"study definition": yaml.safe_dump(definition, sort_keys=False, allow_unicode=True)}
    if len(merges):
        for config, rows in merges.groupby("config", sort=False):
            recipes[f"{config} (first subset)"] = rows.iloc[0]["recipe_yaml"]
    facts = {
        "id": study_id,
        "merged": (
            f"subsets of {len(pool)} checkpoints merged into {data.short_name(study['base'])} by "
            f"{len(configs)} method configurations ({', '.join(configs)}) at n = "
            f"{', '.join(str(n) for n in study['sizes'])}, {study['subsets_per_size']} subsets per size"
        ),
        "base": study["base"],
        "pool": ", ".join(pool),
        "items per task": str(study.get("limit") or "the suite's default"),
        "status": study["status"],
    }
    sections: list[Section] = []
    tables_data: dict[str, pd.DataFrame] = {"merges": merged, "base": base_rows, "singles": singles}
    from ui import sweep_report  # a sweep is a study over one hyperparameter's values

    sweep = sweep_report.build(
        db,
        study_id,
        float(base_rows["value"].mean() * 100.0) if len(base_rows) else None,
        float(singles.groupby("checkpoint")["value"].mean().max() * 100.0) if len(singles) else None,
    )
    if sweep is not None:
        facts["merged"] = (
            f"{sweep.axis.method} at {sweep.axis.param} = {', '.join(f'{v:g}' for v in sweep.axis.values)} "
            f"on {study['subsets_per_size']} subsets of n = {study['sizes'][0]} from a pool of {len(pool)} "
            f"checkpoints, merged into {data.short_name(study['base'])}"
        )
        sections.append(
            Section(
                f"Sweep of {sweep.axis.param}",
                text=sweep.heading + ". Thin lines: one subset each; bold: the mean; band: min-max.",
                figures=sweep.figures,
                tables=[Table(f"Average accuracy (%) per {sweep.axis.param}", sweep.table, index=True)],
            )
        )
        if sweep.paper:
            sections.append(
                Section(f"{PAPER_LABEL}: the ablation of {sweep.axis.param}", text=sweep.paper, paper=True)
            )
        tables_data.update(sweep.data)
    if merged.empty or base_rows.empty:
        sections.append(Section("Results", text="No scored merges in this study yet."))
    else:
        tables = []
        for ref, title in (
            ("base", "vs the base (Tables 1 and 3)"),
            ("best_pool", "vs the best checkpoint (Table 2)"),
        ):
            if ref == "best_pool" and singles.empty:
                continue
            table = metrics.study_metrics(
                merged, base_rows, singles if len(singles) else None, reference=ref, n_boot=n_boot
            )
            tables_data[f"metrics_{ref}"] = table
            tables.append(
                Table(f"Success rate / mean gain {title}", charts.success_gain_table(table), index=True)
            )
        per_merge = merged.groupby(["method", "n", "subset_id"], as_index=False)["value"].mean()
        per_merge["accuracy"] = per_merge["value"] * 100.0
        base_acc = float(base_rows["value"].mean() * 100.0)
        best_acc = (
            float(singles.groupby("checkpoint")["value"].mean().max() * 100.0) if len(singles) else None
        )
        fig4 = data.distance_per_merge(merges, db.model_stats_df(list(merges["id"])))
        tables_data["distances"] = fig4
        per_task = metrics.study_metrics(merged, base_rows, reference="base", per_task=True, n_boot=n_boot)
        tables_data["per_task"] = per_task
        grid = per_task.pivot_table(index=["method", "task"], columns="n", values="gain", aggfunc="mean")
        grid.columns = [f"n={c}" for c in grid.columns]
        sections.append(
            Section(
                "Results",
                text=(
                    "Success rate: share of merges beating the reference; mean gain in percentage points of "
                    "the suite's average accuracy. Spread bands are min-max over subsets."
                ),
                figures=[
                    charts.accuracy_vs_n(
                        per_merge[["method", "n", "accuracy"]],
                        base_score=base_acc,
                        best_score=best_acc,
                        title="Average accuracy (%) against n (the paper's Figure 3)",
                    ),
                    charts.distance_vs_n(fig4, title="‖θ_merged − θ_base‖₂ against n (the paper's Figure 4)"),
                ]
                if sweep is None  # a sweep has one n: its curves above replace Figures 3 and 4
                else [],
                tables=[*tables, Table("Mean gain over the base per task (pp)", grid, index=True)],
            )
        )
    methods = [c.get("method", c.get("name")) if isinstance(c, Mapping) else str(c) for c in study["methods"]]
    sections.append(paper_section(list(dict.fromkeys(methods)), paper_model))
    return Report(
        title=f"MergeLab {'sweep' if sweep is not None else 'study'}: {study['name']}",
        kind="sweep" if sweep is not None else "study",
        facts=facts,
        recipes=recipes,
        suite=study["suite"],
        ran_at=study.get("created_at"),
        sections=sections,
        data=tables_data,
    )
