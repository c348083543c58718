"""The study's merge-and-score units as Ray tasks (`num_gpus=1` per task when the cluster has GPUs).

Workers compute and return plain data; the driver (the job's thread) alone writes DuckDB, as soon as each
result arrives. Each Ray worker process keeps one resident base model across the tasks it runs. For a
remote cluster (`ray_address`), MergeLab and the checkpoints must be reachable at the same paths on every
node.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jobs.context import JobContext
from jobs.errors import JobCancelled, JobError
from jobs.study import build_recipe
from jobs.study_run import finish_study, merge_record, start_study
from jobs.work import record_outcome

_WORKER_RESIDENTS = None  # per Ray worker process: ResidentPool


def _worker_pool():
    global _WORKER_RESIDENTS
    if _WORKER_RESIDENTS is None:
        from jobs.resident import ResidentPool

        _WORKER_RESIDENTS = ResidentPool(capacity=1)
    return _WORKER_RESIDENTS


def _worker_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def score_task(
    ref: str, fingerprint: str, is_base: bool, suite_spec: str, zoo_root: str | None, limit: int | None
):
    """Score one model alone; returns its rows as dicts."""
    from evaluation import evaluate, load_model
    from evaluation.suites import get_suite
    from jobs.cache import row_to_store

    suite = get_suite(suite_spec, zoo_root=Path(zoo_root) if zoo_root else None)
    device = _worker_device()
    if is_base:
        with _worker_pool().use(ref, device) as rm:
            rm.restore_base()
            rows = rm.score(suite, fingerprint=fingerprint, model_name=Path(ref).name, limit=limit)
    else:
        loaded = load_model(ref, device=device)
        rows = evaluate(
            loaded.model,
            loaded.tokenizer,
            suite,
            fingerprint=fingerprint,
            model_name=Path(ref).name,
            limit=limit,
        )
    return [row_to_store(r) for r in rows]


def merge_task(recipe_yaml: str, suite_spec: str, zoo_root: str | None, limit: int | None, label: str):
    """Merge into this worker's resident base and score; returns merge_outcome data (or an error string)."""
    from evaluation.suites import get_suite
    from jobs.work import merge_and_score_resident
    from merging import MergeError, Recipe

    recipe = Recipe.from_yaml(recipe_yaml)
    suite = get_suite(suite_spec, zoo_root=Path(zoo_root) if zoo_root else None)
    device = _worker_device()
    try:
        with _worker_pool().use(recipe.base_model, device) as rm:
            return merge_and_score_resident(recipe, rm, suite, limit=limit, device=device, model_name=label)
    except MergeError as exc:
        return {"error": str(exc)}


def _init_ray(params: dict[str, Any]):
    import ray

    if ray.is_initialized():
        return ray
    root = str(Path(__file__).resolve().parent.parent)
    env = {
        k: os.environ[k]
        for k in ("MERGELAB_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
        if k in os.environ
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "include_dashboard": False,
        "log_to_driver": False,
    }
    if params.get("ray_address"):
        kwargs["address"] = params["ray_address"]
    elif params.get("ray_num_cpus"):
        kwargs["num_cpus"] = int(params["ray_num_cpus"])
    try:
        ray.init(**kwargs)
    except Exception as exc:
        raise JobError(f"Cannot start or reach Ray ({params.get('ray_address') or 'local'}): {exc}") from exc
    return ray


def run_study_ray(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    ray = _init_ray(params)
    definition, suite, plan, cks, skipped = start_study(ctx, params)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    options = {"num_cpus": 1, "num_gpus": gpus, "max_retries": 0}
    remote_score = ray.remote(score_task).options(**options)
    remote_merge = ray.remote(merge_task).options(**options)
    zoo_root = params.get("zoo_root")
    pending: dict[Any, tuple] = {}
    for ref in plan.baselines:
        fp = cks.fingerprint(ref)
        task = remote_score.remote(
            ref, fp, ref == definition.base, definition.suite, zoo_root, definition.limit
        )
        pending[task] = ("score", ref)
    for subset, config in plan.merges:
        recipe = build_recipe(config, definition.base, subset["checkpoints"], definition.seed)
        label = f"{config.name} {subset['subset_id']}"
        task = remote_merge.remote(recipe.to_yaml(), definition.suite, zoo_root, definition.limit, label)
        pending[task] = ("merge", subset, config, recipe, label)
    ctx.log(f"submitted {len(pending)} Ray tasks (num_gpus={gpus} each)")
    done, failures = skipped, []
    try:
        while pending:
            if ctx.should_cancel():
                for task in pending:
                    ray.cancel(task, force=True)
                raise JobCancelled("study cancelled")
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for task in ready:
                unit = pending.pop(task)
                try:
                    value = ray.get(task)
                except Exception as exc:  # a worker crash or an unexpected error inside the task
                    value = {"error": f"{type(exc).__name__}: {exc}"}
                if unit[0] == "score":
                    if isinstance(value, dict):
                        failures.append(f"scoring {unit[1]}: {value['error']}")
                    else:
                        ctx.store.put_eval_rows(value)
                    label = f"scored {Path(unit[1]).name}"
                else:
                    _, subset, config, recipe, label = unit
                    merge_id = merge_record(ctx, definition, plan, subset, config, cks, recipe)
                    if "error" in value:
                        ctx.store.finish_merge(merge_id, "failed", error=value["error"])
                        failures.append(f"{label}: {value['error']}")
                        ctx.log(f"FAILED {label}: {value['error']}")
                    else:
                        record_outcome(ctx.store, merge_id, value, base_ref=definition.base)
                done += 1
                ctx.log(f"{label} done")
                ctx.progress(done / plan.total_units, f"{done}/{plan.total_units}: {label}", force=True)
    finally:
        cks.close()
    return finish_study(ctx, plan, failures, done - skipped, skipped)
