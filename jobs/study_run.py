"""Running a study: score the base and each pool checkpoint once, then every (subset, configuration)
merge in the base's resident model, writing each result as soon as it exists so a crash loses at most the
merge in flight. The Ray backend (jobs.ray_backend) runs the same units on a cluster."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from jobs.cache import StoreScoreCache
from jobs.context import JobContext
from jobs.errors import JobCancelled, JobError
from jobs.study import StudyDefinition, build_recipe, definition_from_params, plan_study
from jobs.work import merge_and_score_resident, record_outcome, register_inputs


class CheckpointCache:
    """Open each checkpoint once per study (headers and fingerprint), shared by all its merges."""

    def __init__(self) -> None:
        self.opened: dict[str, Any] = {}

    def get(self, ref: str):
        from merging import open_checkpoint

        if ref not in self.opened:
            self.opened[ref] = open_checkpoint(ref)
        return self.opened[ref]

    def fingerprint(self, ref: str) -> str:
        return self.get(ref).fingerprint

    def close(self) -> None:
        for ck in self.opened.values():
            ck.close()
        self.opened.clear()


def start_study(ctx: JobContext, params: dict[str, Any]):
    """Definition, suite, plan and opened checkpoints, with the base and pool registered as models."""
    from evaluation.suites import get_suite

    definition = definition_from_params(params)
    zoo_root = params.get("zoo_root")
    suite = get_suite(definition.suite, zoo_root=Path(zoo_root) if zoo_root else None)
    cks = CheckpointCache()
    plan = plan_study(ctx.store, definition, suite.version, cks.fingerprint)
    register_inputs(
        ctx.store,
        definition.base,
        definition.pool,
        {r: cks.fingerprint(r) for r in [definition.base, *definition.pool]},
    )
    ctx.store.set_study_status(plan.study_id, "running")
    skipped = plan.total_units - len(plan.baselines) - len(plan.merges)
    ctx.log(
        f"study {plan.study_id}: {len(plan.baselines)} single models and {len(plan.merges)} merges to run, "
        f"{skipped} units already stored"
    )
    ctx.progress(skipped / plan.total_units, f"{skipped}/{plan.total_units} done", force=True)
    return definition, suite, plan, cks, skipped


def merge_record(
    ctx: JobContext, definition: StudyDefinition, plan, subset, config, cks: CheckpointCache, recipe
):
    return ctx.store.begin_merge(
        recipe_yaml=recipe.to_yaml(),
        method=config.method,
        config=config.name,
        base_fingerprint=cks.fingerprint(definition.base),
        checkpoint_refs=subset["checkpoints"],
        checkpoint_fingerprints=[cks.fingerprint(c) for c in subset["checkpoints"]],
        seed=definition.seed,
        params=config.params,
        job_id=ctx.job_id,
        study_id=plan.study_id,
        subset_id=subset["subset_id"],
    )


def saved_merge_dir(study_id: str, config: str, subset_id: str) -> Path:
    """Where a study that saves its merges writes one: $MERGELAB_HOME/merges/study-<id>/<config>-<subset>.

    A folder already there belongs to a unit being run again, so its merge was never recorded as done
    (killed between the final rename and the record): it is removed, not trusted."""
    from mergelab_home import merges_dir

    name = re.sub(r"[^A-Za-z0-9._+-]", "_", f"{config}-{subset_id}").lstrip(".")
    out = merges_dir() / f"study-{study_id}" / name
    if out.exists():
        shutil.rmtree(out)
    return out


def merge_log_line(label: str, outcome: dict[str, Any]) -> str:
    """A finished merge in the study's log: its mean score and merge time."""
    mean = sum(r["value"] for r in outcome["scores"]) / max(1, len(outcome["scores"]))
    return f"{label}: mean {mean:.4f} ({outcome['seconds']:.2f} s merge)"


def finish_study(ctx: JobContext, plan, failures: list[str], ran: int, skipped: int) -> dict[str, Any]:
    if failures:
        ctx.store.set_study_status(plan.study_id, "failed")
        raise JobError(
            f"{len(failures)} of {len(plan.merges)} study merges failed (first: {failures[0]}); "
            "see the log. Retrying the study runs only what is missing."
        )
    ctx.store.set_study_status(plan.study_id, "done")
    return {"study_id": plan.study_id, "ran": ran, "skipped": skipped, "total": plan.total_units}


def run_study(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """The study here, unit by unit (jobs.kinds sends backend=ray studies to jobs.ray_backend instead)."""
    from evaluation import EvaluationCancelled, evaluate, load_model
    from merging import MergeCancelled, MergeError

    definition, suite, plan, cks, skipped = start_study(ctx, params)
    save = bool(params.get("save_merges"))
    cache = StoreScoreCache(ctx.store)
    done = skipped
    total = plan.total_units
    failures: list[str] = []
    try:
        for ref in plan.baselines:
            ctx.check_cancel()
            name = Path(ref).name
            if ref == definition.base:
                with ctx.resident(definition.base) as rm:
                    rm.restore_base()
                    rm.score(
                        suite,
                        fingerprint=cks.fingerprint(ref),
                        model_name=name,
                        limit=definition.limit,
                        cache=cache,
                        should_cancel=ctx.should_cancel,
                    )
            else:
                loaded = load_model(ref, device=ctx.device)
                ctx.check_cancel()
                evaluate(
                    loaded.model,
                    loaded.tokenizer,
                    suite,
                    fingerprint=cks.fingerprint(ref),
                    model_name=name,
                    limit=definition.limit,
                    cache=cache,
                    should_cancel=ctx.should_cancel,
                )
                del loaded
            done += 1
            ctx.log(f"scored {name}")
            ctx.progress(done / total, f"{done}/{total}: scored {name}", force=True)
        with ctx.resident(definition.base) as rm:
            for subset, config in plan.merges:
                ctx.check_cancel()
                label = f"{config.name} {subset['subset_id']}"
                recipe = build_recipe(config, definition.base, subset["checkpoints"], definition.seed)
                merge_id = merge_record(ctx, definition, plan, subset, config, cks, recipe)
                output = None
                try:  # from here on, whatever happens closes the merge record
                    if save:
                        output = saved_merge_dir(plan.study_id, config.name, subset["subset_id"])
                    outcome = merge_and_score_resident(
                        recipe,
                        rm,
                        suite,
                        limit=definition.limit,
                        device=ctx.device,
                        cache=cache,
                        should_cancel=ctx.should_cancel,
                        on_progress=lambda f, m, label=label, done=done: ctx.progress(
                            (done + f) / total, f"{label}: {m}"
                        ),
                        checkpoints=cks.opened,
                        model_name=label,
                        output=output,
                        on_temp=ctx.add_temp_path,
                        on_done=ctx.drop_temp_path,
                        spectra=params.get("spectra"),
                    )
                    record_outcome(ctx.store, merge_id, outcome, base_ref=definition.base)
                except (JobCancelled, MergeCancelled, EvaluationCancelled):
                    ctx.store.finish_merge(merge_id, "cancelled")
                    raise
                except MergeError as exc:
                    ctx.store.finish_merge(merge_id, "failed", error=str(exc))
                    failures.append(f"{label}: {exc}")
                    ctx.log(f"FAILED {label}: {exc}")
                except BaseException as exc:  # scoring, memory, recording, a bug: close it, stop the study
                    ctx.store.finish_merge(merge_id, "failed", error=f"{type(exc).__name__}: {exc}")
                    raise
                else:
                    if output is not None:
                        ctx.drop_temp_path(output)
                    ctx.log(merge_log_line(label, outcome))
                done += 1
                ctx.progress(done / total, f"{done}/{total}: {label}", force=True)
    finally:
        cks.close()
    return finish_study(ctx, plan, failures, done - skipped, skipped)
