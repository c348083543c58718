"""Driving a study whose units run in other processes (a local process pool or Ray): submit every unit,
record each result in the store as it arrives, stop the units in flight on cancel.

A unit's merge record is written only with its result, so a crash or cancel loses just the units in
flight; resuming the study runs only what is missing. The executor is what differs between backends:

    submit(fn, *args) -> handle      wait(handles, timeout) -> finished handles
    result(handle) -> value          cancel(handles)           close()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from jobs.context import JobContext
from jobs.errors import JobCancelled, JobError
from jobs.study import build_recipe
from jobs.study_run import finish_study, merge_log_line, merge_record, start_study
from jobs.units import merge_task, score_task
from jobs.work import record_outcome


class UnitExecutor(Protocol):
    where: str  # what runs the units, for the job's log ("2 local processes …", "Ray …")

    def submit(self, fn, *args) -> Any: ...

    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...

    def result(self, handle: Any) -> Any: ...

    def cancel(self, handles: list[Any]) -> None: ...

    def close(self) -> None: ...


def run_study_units(ctx: JobContext, params: dict[str, Any], executor: UnitExecutor):
    definition, suite, plan, cks, skipped = start_study(ctx, params)
    zoo_root = params.get("zoo_root")
    pending: dict[Any, tuple] = {}
    try:
        for ref in plan.baselines:
            fp = cks.fingerprint(ref)
            args = (ref, fp, ref == definition.base, definition.suite, zoo_root, definition.limit)
            pending[executor.submit(score_task, *args)] = ("score", ref)
        for subset, config in plan.merges:
            recipe = build_recipe(config, definition.base, subset["checkpoints"], definition.seed)
            label = f"{config.name} {subset['subset_id']}"
            args = (recipe.to_yaml(), definition.suite, zoo_root, definition.limit, label)
            pending[executor.submit(merge_task, *args)] = ("merge", subset, config, recipe, label)
        ctx.log(f"submitted {len(pending)} units to {executor.where}")
        done, failures = skipped, []
        while pending:
            if ctx.should_cancel():
                executor.cancel(list(pending))
                raise JobCancelled("study cancelled")
            for handle in executor.wait(list(pending), timeout=1.0):
                unit = pending.pop(handle)
                try:
                    value = executor.result(handle)
                except JobError:  # the executor itself is gone (a unit process was killed): stop here
                    raise
                except Exception as exc:  # an unexpected error inside the unit
                    value = {"error": f"{type(exc).__name__}: {exc}"}
                label, line = _record(ctx, definition, plan, cks, unit, value, failures)
                done += 1
                ctx.log(line)
                ctx.progress(done / plan.total_units, f"{done}/{plan.total_units}: {label}", force=True)
    finally:
        executor.close()
        cks.close()
    return finish_study(ctx, plan, failures, done - skipped, skipped)


def _record(ctx, definition, plan, cks, unit, value, failures: list[str]) -> tuple[str, str]:
    """Store one unit's result (scores, or the merge with its geometry and scores); returns its label and
    the log line the in-job path writes for it."""
    if unit[0] == "score":
        label = f"scored {Path(unit[1]).name}"
        if isinstance(value, dict):
            failures.append(f"scoring {unit[1]}: {value['error']}")
            return label, f"FAILED {label}: {value['error']}"
        ctx.store.put_eval_rows(value)
        return label, label
    _, subset, config, recipe, label = unit
    merge_id = merge_record(ctx, definition, plan, subset, config, cks, recipe)
    if "error" in value:
        ctx.store.finish_merge(merge_id, "failed", error=value["error"])
        failures.append(f"{label}: {value['error']}")
        return label, f"FAILED {label}: {value['error']}"
    record_outcome(ctx.store, merge_id, value, base_ref=definition.base)
    return label, merge_log_line(label, value)
