"""Turning what the pages collected into jobs: suites on offer, default output folders, submission.

Pages call these instead of building job parameter dicts themselves, so the job contract (kinds and
parameter names the JobRunner understands) lives in one place on the app side.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from jobs.study import CONFIG_ALIASES, DEFAULT_CONFIG_NAMES, DEFAULT_SUBSETS, default_sizes
from mergelab_home import inside_home, safe_name

SUITE_LABELS = {
    "zoo": "zoo: the demo zoo's tasks (fast, local)",
    "quick": "quick: 4 of the paper's benchmarks, 100 items each",
    "paper16": "paper16: the paper's 16 benchmarks (slow; needs the lm-eval datasets)",
}


def suite_choices(home: Path) -> dict[str, str]:
    """Suites the user can pick, the zoo's first when this workspace has its task files."""
    choices = dict(SUITE_LABELS)
    if not (home / "zoo" / "tasks").is_dir():
        choices.pop("zoo")
    return choices


def default_output(home: Path, method: str, name: str | None = None) -> str:
    """workspace/merges/<name or method>-<timestamp>: unique per launch, inside the workspace. A recipe's
    name becomes a folder name only when it is one safe path component (mergelab_home.safe_name)."""
    try:
        stem = safe_name(name) if name else safe_name(method)
    except ValueError:
        stem = "merge"
    return str(home / "merges" / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def submit_merge(
    runner: Any,
    recipe: Any,
    *,
    save: bool,
    output: str | None = None,
    suite: str | None = None,
    limit: int | None = None,
    spectra: list[str] | None = None,
    max_memory: str | None = None,
) -> str:
    """Queue a merge (kind "merge") or a merge then evaluation ("merge+evaluate"; in memory unless saved);
    returns the job id. `spectra` names the matrices whose singular values the merge records;
    `max_memory` ("6GiB") is the merge's memory budget (None: a safe share of free memory)."""
    if not save and not suite:
        raise ValueError("Choose at least one of saving the merge to disk and evaluating it.")
    params: dict[str, Any] = {"recipe_yaml": recipe.to_yaml()}
    if max_memory:
        params["max_memory"] = str(max_memory)
    if spectra:
        params["spectra"] = list(spectra)
    if save:
        if not output:
            raise ValueError("Give an output folder to save the merged model to.")
        # the app writes only inside the workspace: `..`, absolute paths elsewhere and symlinks out refused
        params["output"] = str(inside_home(output))
        params["save"] = True
    if suite:
        params["suite"] = suite
        if limit:
            params["limit"] = int(limit)
    return runner.submit("merge+evaluate" if suite else "merge", params)


def submit_reference_scores(
    runner: Any,
    db: Any,
    refs: dict[str, str],
    kinds: dict[str, str],
    *,
    suite: str,
    limit: int | None = None,
    group_id: str | None = None,
) -> list[str]:
    """Queue "evaluate" jobs for the base and checkpoints of a merge that have no score on `suite` yet, so
    Results can set the merge against its base and its best checkpoint. Returns the job ids queued.

    `refs` maps ref -> display name and `kinds` ref -> base/checkpoint. Models already scored on the suite,
    or with an evaluate job queued or running for the same suite, are skipped. `group_id` (the merge job's
    id) files them under the merge's launch on the Jobs page.
    """
    models = db.models_df()
    fp_of = dict(zip(models["ref"], models["fingerprint"], strict=False)) if len(models) else {}
    scored = set(db.eval_rows_df(suite=suite)["fingerprint"]) if db.count("eval_rows") else set()
    pending = set()
    for job in db.jobs_with_status("queued", "running"):
        if job.kind == "evaluate" and job.params.get("suite") == suite:
            pending.add(job.params.get("model"))
    queued = []
    for ref, name in refs.items():
        if fp_of.get(ref) in scored or ref in pending:
            continue
        params: dict[str, Any] = {"model": ref, "suite": suite, "model_name": name, "model_kind": kinds[ref]}
        if limit:
            params["limit"] = int(limit)
        queued.append(runner.submit("evaluate", params, group_id=group_id))
    return queued


def default_spectra(
    tensor_names: list[str], per_layer: tuple[str, ...] = ("mlp.down_proj", "self_attn.q_proj")
) -> list[str]:
    """A few representative matrices to record spectra for (an SVD each, so not all of them): the given
    projections of the first, middle and last decoder layers."""
    from store import parse_layer

    layers = sorted({n for n in (parse_layer(t) for t in tensor_names) if n is not None})
    if not layers:
        return [t for t in tensor_names if t.endswith(".weight")][:2]
    picks = sorted({layers[0], layers[len(layers) // 2], layers[-1]})
    return [t for t in tensor_names if parse_layer(t) in picks and any(k in t for k in per_layer)]


# The study's defaults live in jobs/study.py (one place for the CLI, the job and the app); read, not copied.
PAPER_METHODS = DEFAULT_CONFIG_NAMES
PAPER_SUBSETS = DEFAULT_SUBSETS


def study_sizes(pool_size: int) -> list[int]:
    """The default merge sizes for a pool: the paper's that fit, and the pool size (the job's default)."""
    return default_sizes(pool_size) if pool_size >= 2 else []


def study_method_choices(registry: list[str]) -> list[str]:
    """What the study form offers: the default configurations (the paper's, TA in both readings), then
    every other registered method that merges any number of checkpoints (a study merges subsets of 2 to
    12; slerp, nearswap, passthrough and the like take a fixed count), run with its paper values or
    defaults."""
    import merging

    aliased = set(CONFIG_ALIASES)
    open_ended = {m for m in registry if merging.get_method(m).max_models is None}
    return list(DEFAULT_CONFIG_NAMES) + [m for m in registry if m not in aliased and m in open_ended]


def submit_study(
    runner: Any,
    *,
    name: str,
    base: str,
    pool: list[str],
    methods: list[str],
    sizes: list[int],
    subsets_per_size: int,
    seed: int,
    suite: str,
    limit: int | None,
) -> str:
    """Queue the paper's protocol as one "study" job; returns the job id."""
    if len(pool) < 2:
        raise ValueError("A study needs a pool of at least 2 checkpoints.")
    if not methods:
        raise ValueError("Choose at least one method for the study.")
    if not sizes:
        raise ValueError("Choose at least one merge size n.")
    too_big = [n for n in sizes if n > len(pool)]
    if too_big:
        raise ValueError(f"Merge size(s) {too_big} exceed the pool of {len(pool)} checkpoints.")
    params: dict[str, Any] = {
        "name": name,
        "base": base,
        "pool": list(pool),
        "methods": list(methods),
        "sizes": [int(n) for n in sizes],
        "subsets": int(subsets_per_size),
        "seed": int(seed),
        "suite": suite,
    }
    if limit:
        params["limit"] = int(limit)
    return runner.submit("study", params)


def submit_analysis(runner: Any, *, base: str, checkpoints: list[str], spectra: str = "auto") -> str:
    """Queue the stats-only pass over `checkpoints` against `base` (kind "analyse"); returns the job id."""
    if not base:
        raise ValueError("Choose the base model the checkpoints were fine-tuned from.")
    if not checkpoints:
        raise ValueError("Choose at least one checkpoint to analyse (two or more for cosines).")
    return runner.submit("analyse", {"base": base, "checkpoints": list(checkpoints), "spectra": spectra})


def submit_sweep(
    runner: Any,
    *,
    base: str,
    pool: list[str],
    method: str,
    param: str,
    values: str | list[float],
    n: int,
    subsets: int,
    suite: str,
    limit: int | None = None,
    seed: int = 0,
    backend: str = "local",
) -> str:
    """Queue a hyperparameter sweep (kind "sweep": a study over the values); returns the job id."""
    if len(pool) < 2:
        raise ValueError("A sweep needs a pool of at least 2 checkpoints.")
    if n > len(pool):
        raise ValueError(f"n = {n} exceeds the pool of {len(pool)} checkpoints.")
    params: dict[str, Any] = {
        "base": base,
        "pool": list(pool),
        "method": method,
        "param": param,
        "values": values,
        "n": int(n),
        "subsets": int(subsets),
        "seed": int(seed),
        "suite": suite,
        "backend": backend,
    }
    if limit:
        params["limit"] = int(limit)
    return runner.submit("sweep", params)


def matrix_names(ref: str) -> list[str]:
    """The 2-D tensors of a checkpoint (from its headers), the candidates for recorded spectra."""
    import merging

    try:
        ck = merging.open_checkpoint(ref, download=False)
    except merging.MergeError:
        return []
    try:
        return [
            n for n, t in ck.tensors.items() if len(t.shape) == 2 and "embed" not in n and "lm_head" not in n
        ]
    finally:
        ck.close()


def comparison_methods() -> list[str]:
    """What Compare selects by default: the study's configurations (labels from jobs.study), in its order."""
    return list(DEFAULT_CONFIG_NAMES)


def config_method(choice: str) -> str:
    """The registered method behind a study or compare choice: a configuration's method, else the name."""
    from jobs import PAPER_CONFIGS

    return next((c.method for c in PAPER_CONFIGS if c.name == choice), choice)


def submit_comparison(
    runner: Any,
    *,
    base: str,
    checkpoints: list[str],
    methods: list[str],
    suite: str,
    limit: int | None = None,
    spectra: list[str] | None = None,
    name: str | None = None,
) -> str:
    """Queue a comparison: every method merges all `checkpoints` into `base` and is scored on `suite`, with
    the base and each checkpoint scored once, as one "study" job of a single subset (the whole pool), so it
    resumes like a study and its merges share one id. `spectra` names the matrices whose singular values
    each merge records (the effective rank of the merged update). Returns the job id."""
    if len(checkpoints) < 2:
        raise ValueError("Compare needs at least 2 checkpoints to merge.")
    if len(set(checkpoints)) != len(checkpoints):
        raise ValueError("A checkpoint is listed twice; choose each checkpoint once.")
    if not methods:
        raise ValueError("Choose at least one method to compare.")
    params: dict[str, Any] = {
        "name": name or f"compare {len(methods)} methods on {len(checkpoints)} checkpoints",
        "base": base,
        "pool": list(checkpoints),
        "methods": list(methods),
        "sizes": [len(checkpoints)],
        "subsets": 1,
        "seed": 0,
        "suite": suite,
    }
    if limit:
        params["limit"] = int(limit)
    if spectra:
        params["spectra"] = list(spectra)
    return runner.submit("study", params)
