"""A study's report, headless: `python -m jobs report [STUDY_ID|--latest] [--json]`.

The same numbers as the Study page and its export (all three read `jobs.study_frames`), computed with
`evaluation.metrics`: success rate and mean gain per configuration and n against the base (Tables 1 and
3), the best checkpoint of the pool (Table 2) and the best checkpoint of each subset; the base's and each
checkpoint's aggregate; and the study beside the paper's Table 1 and 3 (their "Average" rows), with the
Task Arithmetic reading that comparison uses and why. Scores are the unweighted mean over the suite's
tasks, in percentage points.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from typing import Any

import pandas as pd

from jobs.errors import JobError
from jobs.study import TA_MEAN, TA_SUM
from jobs.study_frames import short_ref, study_frames

REFERENCES = {
    "base": "vs the base (the paper's Tables 1 and 3)",
    "best_pool": "vs the best single checkpoint of the pool (Table 2)",
    "best_subset": "vs the best checkpoint in each merged subset",
}
# The study's configuration compared with each paper method (Table 1: TA, TIES, Model Stock; Table 3: rest).
PAPER_COUNTERPART = {
    "TA": TA_MEAN,
    "Model Stock": "Model Stock",
    "TIES": "TIES",
    "TA+SB": "TA+SB",
    "TIES+SB": "TIES+SB",
    "TSV-M": "TSV-M",
    "Iso-C": "Iso-C",
}
TA_READING_WHY = (
    "The paper's Eq. 2 with alpha_i = 1 and lambda = 1 literally sums the task vectors (TA (sum)), but its "
    "Figure 4 keeps TA's distance from the base below 50 and below TIES at every n, its discussion says TA "
    "'effectively averages task vectors' and stays close to the base, and its lambda sweep up to 1.9 on all "
    "12 checkpoints does not collapse: all of which fits a mean of the task vectors (mergekit "
    "normalize: true) and not a sum of 12 full fine-tuning deltas. So the paper's TA row is set beside "
    "TA (mean); TA (sum) is reported too, as the literal reading (paper.md, 'Ambiguity to flag')."
)


def resolve_study_id(store, study_id: str | None) -> str:
    """A full id, a unique prefix of one, or None for the latest study; JobError when none matches."""
    studies = store.studies_df()
    if studies.empty:
        raise JobError("There is no study in this workspace yet; run one with `python -m jobs study`.")
    if study_id is None:
        return str(studies.iloc[0]["id"])  # studies_df is newest first
    matches = [s for s in studies["id"] if str(s).startswith(study_id)]
    if len(matches) != 1:
        what = "no study" if not matches else f"{len(matches)} studies"
        raise JobError(f"{what} match {study_id!r}; `python -m jobs report --latest` reads the newest one.")
    return str(matches[0])


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in df.to_dict(orient="records"):
        out.append(
            {k: (None if isinstance(v, float) and math.isnan(v) else _plain(v)) for k, v in row.items()}
        )
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def build_report(store, study_id: str | None = None, *, n_boot: int = 1000) -> dict[str, Any]:
    """The study's report as plain data (what `--json` prints); JobError when it cannot be made."""
    from evaluation import metrics, paper

    sid = resolve_study_id(store, study_id)
    study = store.get_study(sid)
    configs = [c["name"] if isinstance(c, dict) else str(c) for c in study["methods"]]
    merged, base, singles = study_frames(store, study)
    merges = store.merges_df(study_id=sid)
    n_done = (
        int(((merges["status"] == "done") & merges["merged_fingerprint"].notna()).sum()) if len(merges) else 0
    )
    subsets = store.study_subsets(sid)
    report: dict[str, Any] = {
        "study": {
            "id": sid,
            "name": study["name"],
            "status": study["status"],
            "base": study["base"],
            "pool": list(study["pool"]),
            "configs": list(study["methods"]),
            "sizes": list(study["sizes"]),
            "subsets_per_size": int(study["subsets_per_size"]),
            "seed": int(study["seed"]),
            "suite": study["suite"],
            "limit": None if study.get("limit") is None or pd.isna(study["limit"]) else int(study["limit"]),
            "merges_done": n_done,
            "merges_planned": len(subsets) * len(configs),
        },
        "units": "success: percent of merges above the reference; gain: mean difference in percentage "
        "points of the unweighted task mean",
        "base": None,
        "checkpoints": [],
        "singles": None,
        "tables": {},
        "paper_comparison": None,
    }
    if base.empty:
        return report
    base_acc = float(base["value"].mean() * 100)
    report["base"] = {
        "name": short_ref(study["base"]),
        "aggregate": base_acc,
        "tasks": {r.task: float(r.value * 100) for r in base.itertuples(index=False)},
    }
    if len(singles):
        per = singles.groupby("checkpoint", sort=False)
        aggregates = per["value"].mean() * 100
        for name, agg in aggregates.items():
            tasks = per.get_group(name)
            report["checkpoints"].append(
                {
                    "name": name,
                    "aggregate": float(agg),
                    "gain": float(agg - base_acc),
                    "tasks": {r.task: float(r.value * 100) for r in tasks.itertuples(index=False)},
                }
            )
        gains = aggregates - base_acc
        report["singles"] = {
            "count": len(gains),
            "mean_gain": float(gains.mean()),
            "beat_base": int((gains > 0).sum()),
            "best": str(aggregates.idxmax()),
            "best_aggregate": float(aggregates.max()),
        }
    if merged.empty:
        return report
    with_ones = metrics.with_singles(merged, singles, configs) if len(singles) else merged
    for ref in REFERENCES:
        if ref != "base" and singles.empty:
            continue
        source = with_ones if ref != "best_subset" else merged
        table = metrics.study_metrics(
            source, base, singles if len(singles) else None, reference=ref, n_boot=n_boot
        )
        order = {c: i for i, c in enumerate(configs)}
        table = table.sort_values(["method", "n"], key=lambda s: s.map(order) if s.name == "method" else s)
        report["tables"][ref] = _records(table.rename(columns={"method": "config"}))
    report["paper_comparison"] = _paper_comparison(report["tables"]["base"], configs, paper.paper_results())
    return report


def _paper_comparison(ours: list[dict], configs: Sequence[str], published: pd.DataFrame) -> dict[str, Any]:
    """The paper's Average rows of Tables 1 and 3 beside this study's counterpart configurations."""
    ta = TA_MEAN if TA_MEAN in configs else TA_SUM if TA_SUM in configs else None
    why = (
        TA_READING_WHY
        if ta == TA_MEAN
        else (
            "This study has no TA (mean) configuration, so the paper's TA row is set beside TA (sum), the "
            "literal Eq. 2; the paper's Figure 4 suggests it ran a mean (paper.md, 'Ambiguity to flag')."
        )
    )
    avg = published[(published["model"] == "Average") & (published["table"] != 2)]
    rows = []
    for method, counterpart in PAPER_COUNTERPART.items():
        config = ta if method == "TA" else counterpart
        if config not in configs:
            continue
        part = avg[avg["method"] == method]
        mine = {r["n"]: r for r in ours if r["config"] == config}
        for p in part.itertuples(index=False):
            m = mine.get(int(p.n))
            rows.append(
                {
                    "paper_method": method,
                    "config": config,
                    "table": int(p.table),
                    "n": int(p.n),
                    "paper_success": float(p.success),
                    "paper_gain": float(p.gain),
                    "success": None if m is None else m["success"],
                    "gain": None if m is None else m["gain"],
                }
            )
    return {"ta_reading": ta, "why": why, "paper_rows": "Average over the paper's four bases", "rows": rows}


# --- text ----------------------------------------------------------------------------------------------
def _cell(success: float | None, gain: float | None) -> str:
    return "-" if success is None or gain is None else f"{success:.0f}/{gain:+.2f}"


def _grid(rows: list[dict], key: str, labels: Sequence[str]) -> list[str]:
    ns = sorted({int(r["n"]) for r in rows})
    width = max([len(x) for x in labels] + [10])
    lines = [" " * width + "".join(f"{'n=' + str(n):>13}" for n in ns)]
    for label in labels:
        mine = {int(r["n"]): r for r in rows if r[key] == label}
        if not mine:
            continue
        cells = "".join(f"{_cell(mine[n]['success'], mine[n]['gain']) if n in mine else '-':>13}" for n in ns)
        lines.append(f"{label:<{width}}{cells}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    s = report["study"]
    out = [
        f'study {s["id"]} "{s["name"]}" ({s["status"]}): base {short_ref(s["base"])}, {len(s["pool"])} '
        f"checkpoints, sizes {', '.join(map(str, s['sizes']))}, {s['subsets_per_size']} subsets per size, "
        f"suite {s['suite']}" + (f" (limit {s['limit']})" if s["limit"] else ""),
        f"{s['merges_done']} of {s['merges_planned']} merges scored",
    ]
    if report["base"] is None:
        out.append("The base is not scored yet; the tables fill in as the study runs.")
        return "\n".join(out) + "\n"
    b = report["base"]
    out += [
        "",
        f"Aggregates (mean over {len(b['tasks'])} tasks, %)",
        f"  {'base ' + b['name']:<40}{b['aggregate']:6.2f}",
    ]
    for c in report["checkpoints"]:
        out.append(f"  {c['name']:<40}{c['aggregate']:6.2f}  {c['gain']:+6.2f}")
    if report["singles"]:
        g = report["singles"]
        out.append(
            f"  single checkpoints: mean {g['mean_gain']:+.2f} pp vs the base, {g['beat_base']} of "
            f"{g['count']} above it; best {g['best']} ({g['best_aggregate']:.2f})"
        )
    configs = [c["name"] if isinstance(c, dict) else str(c) for c in s["configs"]]
    for ref, title in REFERENCES.items():
        rows = report["tables"].get(ref)
        if not rows:
            continue
        out += ["", f"Success rate % / mean gain pp {title}", *_grid(rows, "config", configs)]
    comp = report["paper_comparison"]
    if comp:
        out += [
            "",
            f"Beside the paper ({comp['paper_rows']}; Table 1: TA, Model Stock, TIES; Table 3: the rest)",
        ]
        ns = sorted({r["n"] for r in comp["rows"]})
        methods = list(dict.fromkeys(r["paper_method"] for r in comp["rows"]))
        labels = [f"{w} {m}" for m in methods for w in ("paper", "study")]
        width = max(len(x) for x in labels) + 2
        out.append(" " * width + "".join(f"{'n=' + str(n):>11}" for n in ns))
        for method in methods:
            mine = {r["n"]: r for r in comp["rows"] if r["paper_method"] == method}
            paper_cells = "".join(
                f"{_cell(mine[n]['paper_success'], mine[n]['paper_gain']) if n in mine else '-':>11}"
                for n in ns
            )
            study_cells = "".join(
                f"{_cell(mine[n]['success'], mine[n]['gain']) if n in mine else '-':>11}" for n in ns
            )
            config = next(iter(mine.values()))["config"]
            out.append(f"{'paper ' + method:<{width}}{paper_cells}")
            out.append(f"{'study ' + config:<{width}}{study_cells}")
        out += ["", f"Task Arithmetic reading used for the paper's TA row: {comp['ta_reading']}."]
        out += textwrap.wrap(comp["why"], 110)
    return "\n".join(out) + "\n"


def print_report(store, study_id: str | None, *, as_json: bool) -> str:
    report = build_report(store, study_id)
    return json.dumps(report, indent=2) + "\n" if as_json else format_report(report)
