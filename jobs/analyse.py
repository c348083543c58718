"""The "analyse" job: the stats-only pass over a base and checkpoints (merging.analyse_checkpoints), run in
the background and recorded in the store like a merge's stats. Nothing is written to disk.

Computing and recording are separate (as for merges in jobs.work), so the pass can run wherever the
tensors are while only the app process writes DuckDB.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs.context import JobContext
from jobs.errors import JobError
from jobs.work import register_inputs
from store import Store

SPECTRA_CHOICES = ("auto", "all", "none")


def validate_analyse(params: dict[str, Any]) -> dict[str, Any]:
    """A base, at least one checkpoint, each once, and a spectra choice; refused before queueing."""
    base = params.get("base")
    if not isinstance(base, str) or not base.strip():
        raise JobError("An analysis needs base: the model the checkpoints were fine-tuned from.")
    checkpoints = params.get("checkpoints")
    if isinstance(checkpoints, str) or not checkpoints:
        raise JobError("An analysis needs checkpoints: a list of one or more checkpoint folders or Hub ids.")
    checkpoints = [str(c) for c in checkpoints]
    twice = sorted({c for c in checkpoints if checkpoints.count(c) > 1})
    if twice:
        raise JobError(f"Checkpoint {twice[0]} is listed twice; give each checkpoint once.")
    if base in checkpoints:
        raise JobError("The base is also listed as a checkpoint; its task vector would be zero.")
    spectra = params.get("spectra", "auto")
    if isinstance(spectra, str) and spectra not in SPECTRA_CHOICES:
        raise JobError(f"spectra must be one of {', '.join(SPECTRA_CHOICES)} or a list of tensor names.")
    return {**params, "base": base, "checkpoints": checkpoints, "spectra": spectra}


def record_analysis(store: Store, outcome: Mapping[str, Any], *, job_id: str | None = None) -> str:
    """Write an AnalysisResult.to_dict() to the store (record, summary, stats rows); returns its id."""
    summary = outcome["summary"]
    return store.put_analysis(
        base_ref=outcome["base"],
        checkpoint_refs=outcome["checkpoints"],
        fingerprints=outcome["input_fingerprints"],
        summary=summary,
        tensors=outcome["tensors"],
        spectra=outcome["spectra"],
        seconds=outcome["seconds"],
        device=outcome["device"],
        job_id=job_id,
    )


def run_analyse_job(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    from merging import analyse_checkpoints

    params = validate_analyse(params)
    spectra = None if params["spectra"] == "none" else params["spectra"]
    base, checkpoints = params["base"], params["checkpoints"]
    ctx.log(f"analysing {len(checkpoints)} checkpoints against {base} (stats only, nothing written)")
    result = analyse_checkpoints(
        base,
        checkpoints,
        device=ctx.device,
        spectra=spectra,
        on_progress=lambda p: ctx.progress(
            p.fraction, f"analysing {p.tensor_name} ({p.tensors_done}/{p.tensors_total})"
        ),
        should_cancel=ctx.should_cancel,
    )
    register_inputs(ctx.store, base, checkpoints, result.input_fingerprints)
    analysis_id = record_analysis(ctx.store, result.to_dict(), job_id=ctx.job_id)
    summary = result.summary()
    worst = summary["most_conflicting"][:3]
    ctx.log(
        f"analysis {analysis_id}: {summary['tensors']} tensors in {result.seconds:.2f} s; "
        f"sign conflict {summary['sign_conflict']:.3f}; most conflicting: {', '.join(worst)}"
    )
    return {
        "analysis_id": analysis_id,
        "mean_cosine": summary["mean_cosine"],
        "sign_conflict": summary["sign_conflict"],
        "most_conflicting": worst,
    }
