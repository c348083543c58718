"""Scoring an in-memory model with lm-evaluation-harness.

The model object itself goes into lm-eval's HFLM (never a path), so a merge written into a resident model
by the engine's model sink is scored without touching disk, and a model loaded from its directory is
scored through exactly the same code: the two give identical numbers.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from typing import Any

from evaluation.cache import ScoreCache
from evaluation.devices import resolve_device
from evaluation.errors import EvaluationCancelled, EvaluationError
from evaluation.prepared import prepared_suite, wrap_model
from evaluation.rows import ScoreRow
from evaluation.suites import Suite

ProgressFn = Callable[[int, int, str], None]
"""on_progress(tasks_done, tasks_total, task_name), called after each task of the suite."""

CancelFn = Callable[[], bool]
"""should_cancel(): polled before every forward pass or generation lm-eval makes (one batch)."""


def lm_eval_version() -> str:
    return metadata.version("lm_eval")


_CPU_LOGITS_BYTES = 1 << 30  # float32 logits of one CPU batch at a 256-token padded length


def cpu_batch_size(model) -> int:
    """lm-eval's automatic batch size probes for CUDA out-of-memory, which does not exist on CPU; there we
    size the batch so its full-vocabulary logits stay near 1 GiB (a tiny zoo model gets large batches,
    hence few forward passes; a 128k-vocabulary model a handful) and cap it by model size."""
    params = sum(p.numel() for p in model.parameters())
    vocab = int(getattr(model.config, "vocab_size", 0) or 32_000)
    by_logits = max(1, _CPU_LOGITS_BYTES // (4 * vocab * 256))
    by_params = 256 if params < 50_000_000 else 16 if params < 1_000_000_000 else 4
    return int(min(by_logits, by_params))


def evaluate(
    model,
    tokenizer,
    suite: Suite,
    *,
    fingerprint: str,
    model_name: str,
    limit: int | None = None,
    batch_size: int | str = "auto",
    device: str | None = None,
    cache: ScoreCache | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> list[ScoreRow]:
    """Score `model` on every task of `suite`, one row per task, in suite order.

    limit caps items per task (None: the suite's default_limit, else all). With a cache, a stored result for
    (fingerprint, suite.version, limit, dtype, device) is returned without running anything, and fresh
    results are stored.
    device moves the model first (None: leave it where it is). The suite's requests are built and tokenized
    once per (suite, limit) and reused for every later model (evaluation/prepared.py); the whole suite runs
    in one lm-eval call so batches span tasks. should_cancel is polled before every forward pass; when it
    returns True, EvaluationCancelled is raised and nothing is cached.
    """
    if tokenizer is None:
        raise EvaluationError(f"model {model_name} has no tokenizer; lm-eval needs one to build its prompts")
    if not suite.tasks:
        raise EvaluationError(f"suite {suite.name!r} has no tasks")
    limit = limit if limit is not None else suite.default_limit
    if limit is not None and int(limit) < 1:
        raise EvaluationError(f"limit must be a positive number of items per task, not {limit}")
    run_dtype, run_device = _how_it_runs(model, device)
    if cache is not None:
        hit = cache.get(fingerprint, suite.version, limit, dtype=run_dtype, device=run_device)
        if hit is not None and [r.task for r in hit] == suite.task_names:
            if on_progress:
                on_progress(len(hit), len(hit), hit[-1].task)
            return [replace(r, model=model_name) for r in hit]

    if device is not None:
        model.to(resolve_device(device))
    model.eval()
    if should_cancel is not None and should_cancel():
        raise EvaluationCancelled(f"scoring {model_name} cancelled before task {suite.tasks[0].task!r}")
    _speed_up_lm_eval()
    prepared = prepared_suite(suite, limit)
    lm = wrap_model(model, tokenizer, _batch_size(model, batch_size), should_cancel)
    start = time.perf_counter()
    with prepared.lock:
        result = prepared.run(lm)
    elapsed = time.perf_counter() - start
    version = lm_eval_version()
    rows = []
    for i, task in enumerate(suite.tasks):
        value, stderr, n = _extract(prepared.view(result, task.task), task.task, task.metric)
        share = sum(len(prepared.task_dict["tasks"][t].instances) for t in prepared.leaves[task.task])
        rows.append(
            ScoreRow(
                model=model_name,
                fingerprint=fingerprint,
                suite=suite.name,
                suite_version=suite.version,
                task=task.task,
                metric=task.metric,
                value=value,
                stderr=stderr,
                n=n,
                limit=limit,
                lm_eval_version=version,
                seconds=round(elapsed * share / max(1, prepared.n_requests), 4),
                dtype=run_dtype,
                device=run_device,
            )
        )
        if on_progress:
            on_progress(i + 1, len(suite.tasks), task.task)
    if cache is not None:
        cache.put(rows)
    return rows


def torch_device_type(device: str) -> str:
    return device.split(":", 1)[0]


def _how_it_runs(model, device: str | None) -> tuple[str, str]:
    """(dtype, device type) the model is scored in, e.g. ("float32", "cpu"): part of the score cache key,
    since a bfloat16 GPU run and a float32 CPU run of one model give different numbers."""
    param = next(model.parameters())
    where = torch_device_type(resolve_device(device)) if device is not None else param.device.type
    return str(param.dtype).removeprefix("torch."), str(where)


def _batch_size(model, batch_size: int | str) -> int | str:
    on_gpu = next(model.parameters()).device.type == "cuda"
    if batch_size == "auto":
        return "auto" if on_gpu else cpu_batch_size(model)
    try:
        batch = int(batch_size)
    except (TypeError, ValueError):
        raise EvaluationError(
            f"batch size must be 'auto' or a positive integer, not {batch_size!r}"
        ) from None
    if batch < 1:
        raise EvaluationError(f"batch size must be a positive integer, not {batch}")
    return batch


@functools.cache
def _speed_up_lm_eval() -> None:
    """Two per-call costs of lm-eval 0.4, removed once per process without changing any result:
    simple_evaluate re-collects torch's environment report and the git hash on every call (subprocesses,
    about a second; we call it once per task), and `utils.apply_template` compiles the Jinja template
    from its source for every document (12k compilations, over half of scoring a zoo model). The
    environment is computed once; templates are compiled once, in lm-eval's own Jinja environment."""
    import lm_eval.evaluator as ev
    import lm_eval.utils as lm_utils

    env: dict[str, Any] = {}
    ev.add_env_info(env)
    git_hash = ev.get_git_commit_hash()
    ev.add_env_info = lambda storage: storage.update(env)
    ev.get_git_commit_hash = lambda: git_hash

    compiled = functools.lru_cache(maxsize=4096)(lm_utils.env.from_string)
    lm_utils.apply_template = lambda template, doc: compiled(template).render(**doc)


def _extract(result: dict[str, Any], name: str, metric: str) -> tuple[float, float | None, int]:
    """(value, stderr, items) of one suite task. A group reports its own aggregate; a tag (e.g. headqa,
    which lm-eval expands to headqa_en and headqa_es without an aggregate) is combined here as the
    size-weighted mean of its members, the same rule lm-eval groups use."""
    results = result["results"]
    counts = {
        k: int(v.get("effective", v.get("original", 0))) for k, v in (result.get("n-samples") or {}).items()
    }
    total = sum(counts.values())
    if name in results and _metric_key(results[name], metric):
        entry = results[name]
        return float(entry[_metric_key(entry, metric)]), _stderr(entry, metric), total
    members = [(k, v) for k, v in results.items() if k in counts and _metric_key(v, metric)]
    if not members:
        reported = sorted(
            {k.split(",")[0] for v in results.values() for k in v if "," in k and "stderr" not in k}
        )
        raise EvaluationError(
            f"task {name!r} does not report metric {metric!r} (it reports {', '.join(reported)})"
        )
    n = sum(counts[k] for k, _ in members)
    value = sum(counts[k] * float(v[_metric_key(v, metric)]) for k, v in members) / n
    errs = [_stderr(v, metric) for _, v in members]
    stderr = (
        None
        if any(e is None for e in errs)
        else math.sqrt(sum((counts[k] * e) ** 2 for (k, _), e in zip(members, errs, strict=True))) / n
    )
    return value, stderr, n


def _metric_key(entry: dict[str, Any], metric: str) -> str | None:
    return next((k for k in entry if k.split(",")[0] == metric and "," in k), None)


def _stderr(entry: dict[str, Any], metric: str) -> float | None:
    key = next((k for k in entry if k.split(",")[0] == f"{metric}_stderr"), None)
    try:
        value = float(entry[key]) if key else None
    except (TypeError, ValueError):  # lm-eval writes "N/A" when it has none
        return None
    return None if value is None or math.isnan(value) else value
