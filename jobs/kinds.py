"""The job kinds MergeLab ships: merge, evaluate, merge+evaluate, study, sweep, build-zoo, download, analyse.

Each kind validates its parameters at submit time (a bad recipe is refused before it is queued) and runs
on a worker thread with a JobContext. Heavy packages are imported inside the functions, so importing jobs
stays cheap for the app and the CLI.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.analyse import run_analyse_job, validate_analyse
from jobs.cache import StoreScoreCache
from jobs.context import JobContext
from jobs.errors import JobCancelled, JobError
from jobs.registry import register_kind
from jobs.work import (
    TrackedDirectorySink,
    merge_and_score_resident,
    record_outcome,
    register_inputs,
    run_merge_tracked,
)
from mergelab_home import cache_dir, merges_dir, zoo_dir


# --- parameter checks ---------------------------------------------------------------------------------
def _recipe(params: dict[str, Any]):
    from merging import Recipe, validate_recipe

    text = params.get("recipe_yaml")
    if not isinstance(text, str) or not text.strip():
        raise JobError("This job needs recipe_yaml: the merge recipe as mergekit YAML.")
    recipe = Recipe.from_yaml(text)
    validate_recipe(recipe)
    return recipe


def _limit(params: dict[str, Any]) -> int | None:
    limit = params.get("limit")
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise JobError(f"limit must be a positive number of items per task, got {limit!r}.")
    return limit


def _suite(params: dict[str, Any]):
    from evaluation.suites import get_suite

    spec = params.get("suite")
    if not spec:
        raise JobError("This job needs a suite (zoo, quick, paper16, task names or a task folder).")
    zoo_root = params.get("zoo_root")
    return get_suite(str(spec), zoo_root=Path(zoo_root) if zoo_root else None)


def _output_dir(params: dict[str, Any], job_id: str) -> Path:
    out = params.get("output")
    return Path(out) if out else merges_dir() / job_id


def validate_merge(params: dict[str, Any]) -> dict[str, Any]:
    _recipe(params)
    if params.get("max_memory") is not None:
        from merging.budget import parse_memory
        from merging.errors import MemoryBudgetError

        try:
            parse_memory(params["max_memory"])
        except MemoryBudgetError as exc:
            raise JobError(str(exc)) from None
    out = params.get("output")
    if out and Path(out).exists() and any(Path(out).iterdir()):
        raise JobError(f"The output folder {out} already exists and is not empty; choose another.")
    return params


def validate_evaluate(params: dict[str, Any]) -> dict[str, Any]:
    if not params.get("model"):
        raise JobError("An evaluate job needs model: a checkpoint folder or Hub id.")
    _limit(params)
    _suite(params)
    return params


def validate_merge_evaluate(params: dict[str, Any]) -> dict[str, Any]:
    recipe = _recipe(params)
    if not recipe.base_model:
        raise JobError(
            "merge+evaluate needs a recipe with base_model (the merge is scored in the base's model)."
        )
    _limit(params)
    _suite(params)
    if params.get("save") or params.get("max_memory") is not None:
        validate_merge(params)
    return params


def validate_study(params: dict[str, Any]) -> dict[str, Any]:
    from jobs.study import definition_from_params

    definition = definition_from_params(params)
    if params.get("backend", "local") not in ("local", "ray"):
        raise JobError(f"Unknown study backend {params.get('backend')!r}; use local or ray.")
    _suite(params)
    from jobs.study_pool import parse_processes

    parse_processes(params.get("processes"))
    out = definition.to_params()
    if params.get("save_merges") and params.get("backend", "local") == "ray":
        raise JobError("save_merges needs the local backend (Ray workers return scores, not folders).")
    for key in ("zoo_root", "backend", "ray_address", "ray_num_cpus", "save_merges", "spectra", "processes"):
        if params.get(key) is not None:
            out[key] = params[key]
    out["study_id"] = definition.study_id
    return out


def validate_sweep(params: dict[str, Any]) -> dict[str, Any]:
    """A sweep request (method, param, values, n, subsets on a base and pool) becomes study parameters."""
    from jobs.sweep import SWEEP_DEFAULT_SUBSETS, define_sweep, sweep_params

    if params.get("backend", "local") not in ("local", "ray"):
        raise JobError(f"Unknown sweep backend {params.get('backend')!r}; use local or ray.")
    for key in ("method", "param", "values", "n"):
        if params.get(key) in (None, "", []):
            raise JobError(f"A sweep needs {key} (method, param, values and the subset size n).")
    definition = define_sweep(
        base=params.get("base", ""),
        pool=params.get("pool") or [],
        method=params["method"],
        param=params["param"],
        values=params["values"],
        n=params["n"],
        subsets=params.get("subsets", SWEEP_DEFAULT_SUBSETS),
        seed=params.get("seed", 0),
        suite=params.get("suite", "zoo"),
        limit=params.get("limit"),
        name=params.get("name", ""),
    )
    _suite({**params, "suite": definition.suite})
    out = sweep_params(
        definition,
        zoo_root=params.get("zoo_root"),
        backend=params.get("backend"),
        ray_address=params.get("ray_address"),
        ray_num_cpus=params.get("ray_num_cpus"),
    )
    if params.get("processes") is not None:
        from jobs.study_pool import parse_processes

        parse_processes(params["processes"])
        out["processes"] = params["processes"]
    # The request itself stays in the parameters, so a retried job validates to the same sweep.
    out.update(method=params["method"], param=params["param"], values=out["sweep"]["values"])
    out["n"] = definition.sizes[0]
    return out


# --- runs ---------------------------------------------------------------------------------------------
def _merge_record(ctx: JobContext, recipe, **extra) -> str:
    return ctx.store.begin_merge(
        recipe_yaml=recipe.to_yaml(),
        method=recipe.merge_method,
        base_fingerprint=None,
        checkpoint_refs=[m.model for m in recipe.models],
        seed=recipe.seed,
        params=recipe.parameters,
        job_id=ctx.job_id,
        **extra,
    )


def _fail_merge(ctx: JobContext, merge_id: str, exc: BaseException) -> None:
    from evaluation.errors import EvaluationCancelled
    from merging import MergeCancelled

    status = "cancelled" if isinstance(exc, MergeCancelled | JobCancelled | EvaluationCancelled) else "failed"
    ctx.store.finish_merge(merge_id, status, error=None if status == "cancelled" else str(exc))


def _fill_fingerprints(ctx: JobContext, merge_id: str, recipe, outcome: dict[str, Any]) -> None:
    fps = outcome["input_fingerprints"]
    register_inputs(ctx.store, recipe.base_model, [m.model for m in recipe.models], fps)
    ctx.store.set_merge_inputs(
        merge_id,
        base_fingerprint=fps.get(recipe.base_model) if recipe.base_model else None,
        checkpoint_fingerprints=[fps.get(m.model) for m in recipe.models],
    )


def run_merge_job(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Merge to a model folder (sharded safetensors written to a temporary sibling, renamed at the end)."""
    from jobs.work import merge_outcome

    recipe = _recipe(params)
    out = _output_dir(params, ctx.job_id)
    merge_id = _merge_record(ctx, recipe)
    ctx.log(f"merge {merge_id}: {recipe.merge_method} of {len(recipe.models)} checkpoints -> {out}")
    try:
        sink = TrackedDirectorySink(out, ctx.add_temp_path, ctx.drop_temp_path)
        result, peak = run_merge_tracked(
            recipe,
            sink,
            device=ctx.device,
            should_cancel=ctx.should_cancel,
            on_progress=lambda f, m: ctx.progress(f, m),
            spectra=params.get("spectra"),
            max_memory=params.get("max_memory"),
        )
        outcome = merge_outcome(result, peak)
        _fill_fingerprints(ctx, merge_id, recipe, outcome)
        record_outcome(ctx.store, merge_id, outcome, base_ref=recipe.base_model)
    except BaseException as exc:  # merging, recording or a bug: the record is closed either way
        _fail_merge(ctx, merge_id, exc)
        raise
    ctx.drop_temp_path(out)  # recorded: from now on the folder is a result, not a leftover
    ctx.log(f"wrote {out} in {outcome['seconds']:.1f} s")
    return {"merge_id": merge_id, "output_path": str(out), "fingerprint": outcome["fingerprint"]}


def run_evaluate_job(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Score one model folder or Hub id on a suite; a stored score for the same weights is reused."""
    from evaluation import evaluate, load_model

    suite = _suite(params)
    ref = str(params["model"])
    ctx.progress(0.0, f"loading {ref}", force=True)
    loaded = load_model(ref, device=ctx.device)
    if ctx.store.get_model(loaded.fingerprint) is None:
        ctx.store.register_model(
            loaded.fingerprint, params.get("model_kind", "checkpoint"), ref, name=Path(ref).name
        )
    ctx.check_cancel()
    ctx.progress(0.0, f"scoring {ref}", force=True)
    rows = evaluate(
        loaded.model,
        loaded.tokenizer,
        suite,
        fingerprint=loaded.fingerprint,
        model_name=params.get("model_name") or Path(ref).name,
        limit=_limit(params),
        cache=StoreScoreCache(ctx.store),
        on_progress=lambda done, total, task: ctx.progress(done / max(1, total), f"scored {task}"),
        should_cancel=ctx.should_cancel,
    )
    return {
        "fingerprint": loaded.fingerprint,
        "rows": len(rows),
        "mean": sum(r.value for r in rows) / len(rows),
    }


def run_merge_evaluate_job(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Merge and score. In memory (the base's resident model, shared with other jobs on that base) unless
    save is true, in which case the merge is written to a folder and scored from there."""
    recipe = _recipe(params)
    suite = _suite(params)
    limit = _limit(params)
    if params.get("save"):
        merged = run_merge_job(ctx, params)
        scored = run_evaluate_job(ctx, {**params, "model": merged["output_path"], "model_kind": "merged"})
        return {**merged, "mean": scored["mean"]}
    merge_id = _merge_record(ctx, recipe)
    ctx.log(f"merge {merge_id}: {recipe.merge_method} of {len(recipe.models)} checkpoints, scored in memory")
    try:
        with ctx.resident(recipe.base_model) as resident:
            outcome = merge_and_score_resident(
                recipe,
                resident,
                suite,
                limit=limit,
                device=ctx.device,
                cache=StoreScoreCache(ctx.store),
                should_cancel=ctx.should_cancel,
                on_progress=lambda f, m: ctx.progress(f, m),
                spectra=params.get("spectra"),
                max_memory=params.get("max_memory"),
                model_name=params.get("model_name") or f"merge {merge_id}",
            )
        _fill_fingerprints(ctx, merge_id, recipe, outcome)
        record_outcome(ctx.store, merge_id, outcome, base_ref=recipe.base_model)
    except BaseException as exc:  # merging, scoring, recording or a bug: the record is closed either way
        _fail_merge(ctx, merge_id, exc)
        raise
    mean = sum(r["value"] for r in outcome["scores"]) / max(1, len(outcome["scores"]))
    return {"merge_id": merge_id, "fingerprint": outcome["fingerprint"], "mean": mean}


def run_study_job(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """A study (or sweep) on the chosen backend: locally (a process per core on CPU, else in this job), or on
    a Ray cluster."""
    if params.get("backend", "local") == "ray":
        from jobs.ray_backend import run_study_ray

        return run_study_ray(ctx, params)
    from jobs.study_pool import run_study_processes, study_processes

    processes = study_processes(params, ctx.device)
    if processes > 1:
        return run_study_processes(ctx, params, processes)
    from jobs.study_run import run_study

    return run_study(ctx, params)


def validate_build_zoo(params: dict[str, Any]) -> dict[str, Any]:
    if params.get("scale", "full") not in ("full", "tiny"):
        raise JobError(f"scale must be full or tiny, got {params.get('scale')!r}.")
    return params


def register_zoo_family(store, manifest, family: str) -> int:
    """Register a ready zoo family's base and checkpoints (fingerprint, architecture, size from headers) so
    the Merge and Study pages offer it at once; models the store knows are skipped. Returns how many were
    added."""
    from merging import open_checkpoint

    added = 0
    for entry in [m for m in manifest.models if m.family == family]:
        ref = str(Path(manifest.root) / entry.path)
        with open_checkpoint(ref) as ck:
            if store.get_model(ck.fingerprint) is not None:
                continue
            store.register_model(
                ck.fingerprint,
                "base" if entry.kind == "base" else "checkpoint",
                ref,
                name=entry.name,
                architecture=ck.architecture,
                num_parameters=ck.num_parameters,
                vocab_size=ck.vocab_size,
            )
            added += 1
    return added


def zoo_progress_message(name: str, models: list[str], done: int, total: int, started: float) -> str:
    """ "zoo-llama-max-specialist · model 5 of 26 · about 3 min left": which model is training, where it is
    in the build, and the time left extrapolated from the training steps done so far."""
    parts = [name]
    if name in models:
        parts.append(f"model {models.index(name) + 1} of {len(models)}")
    elapsed = time.perf_counter() - started
    if 0 < done < total and elapsed > 1.0:
        left = elapsed / done * (total - done)
        parts.append(
            f"about {round(left / 60)} min left" if left >= 90 else f"about {max(1, round(left))} s left"
        )
    return " · ".join(parts)


def run_build_zoo_job(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Train the demo zoo (base models, 12 checkpoints, task data) under root (default $MERGELAB_HOME/zoo).
    Each family is registered as soon as it is built, so the first can be merged while the next trains."""
    import zoo

    root = Path(params.get("root") or zoo_dir())
    started = time.perf_counter()
    ready: dict[str, float] = {}
    current = [""]

    models = zoo.planned_models()

    def progress(done: int, total: int, message: str) -> None:
        ctx.progress(done / max(1, total), zoo_progress_message(message, models, done, total, started))
        if message != current[0]:  # one log line per model, not per training step
            current[0] = message
            ctx.log(message)

    def family_ready(family: str, manifest) -> None:
        added = register_zoo_family(ctx.store, manifest, family)
        ready[family] = round(time.perf_counter() - started, 1)
        pending = f"; still to build: {', '.join(manifest.pending)}" if manifest.pending else ""
        ctx.log(f"family {family} ready after {ready[family]} s ({added} models registered){pending}")

    try:
        zoo.build_zoo(
            root,
            scale=params.get("scale", "full"),
            on_progress=progress,
            should_cancel=ctx.should_cancel,
            on_family_ready=family_ready,
        )
    except Exception as exc:
        if isinstance(exc, zoo.BuildCancelled):
            raise JobCancelled(str(exc)) from exc
        raise
    return {"root": str(root), "seconds": round(time.perf_counter() - started, 1), "families_ready_s": ready}


def validate_download(params: dict[str, Any]) -> dict[str, Any]:
    from merging.hub import looks_like_hub_id

    repo = params.get("repo_id")
    if not isinstance(repo, str) or not looks_like_hub_id(repo):
        raise JobError(f"repo_id must be a Hub id like owner/name, got {repo!r}.")
    return params


def run_download_job(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Download a Hub checkpoint's safetensors, configs and tokenizer into $MERGELAB_HOME/cache/hub.

    Resumable: a cancelled or broken download keeps its partial files and the next attempt continues them.
    """
    from merging import MergeCancelled
    from merging.hub import download_checkpoint

    repo = params["repo_id"]

    def progress(done: int, total: int, name: str) -> None:
        ctx.progress(done / max(1, total), f"{name}: {done / 2**20:,.0f} of {total / 2**20:,.0f} MiB")

    ctx.log(f"downloading {repo}")
    try:
        path = download_checkpoint(
            repo,
            cache_dir=cache_dir("hub"),
            revision=params.get("revision") or "main",
            progress=progress,
            should_cancel=ctx.should_cancel,
        )
    except MergeCancelled as exc:
        raise JobCancelled(str(exc)) from exc
    ctx.log(f"downloaded to {path}")
    return {"repo_id": repo, "path": str(path)}


register_kind("merge", run_merge_job, validate=validate_merge, description="merge a recipe to a model folder")
register_kind(
    "evaluate", run_evaluate_job, validate=validate_evaluate, description="score a model on a suite"
)
register_kind(
    "merge+evaluate",
    run_merge_evaluate_job,
    validate=validate_merge_evaluate,
    description="merge a recipe and score it (in memory unless save)",
)
register_kind("study", run_study_job, validate=validate_study, description="the paper's protocol on a pool")
register_kind("build-zoo", run_build_zoo_job, validate=validate_build_zoo, description="build the demo zoo")
register_kind(
    "download", run_download_job, validate=validate_download, description="download a Hub checkpoint"
)
register_kind(
    "sweep",
    run_study_job,
    validate=validate_sweep,
    description="one method's hyperparameter varied on fixed subsets (a study over values)",
)
register_kind(
    "analyse",
    run_analyse_job,
    validate=validate_analyse,
    description="stats of checkpoints' task vectors before merging (nothing written)",
)
