"""A study's units as plain functions that another process runs: a local process pool (jobs.study_pool) or
Ray workers (jobs.ray_backend).

Each worker process keeps one resident base model and the checkpoints it has opened across the units it
runs, computes, and returns plain data; the driver alone writes the store. A driver that wants units in
flight stopped sets the event handed to `init_worker`: scoring checks it before every forward pass and the
merge engine after every tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_RESIDENTS = None  # this process's ResidentPool
_OPENED: dict[str, Any] = {}  # checkpoints this process has opened, by reference
_CANCEL = None  # set by the driver to stop the units in flight


def init_worker(threads: int | None = None, cancel_event=None, parent_pid: int | None = None) -> None:
    """Process start-up: torch's intra-op threads (a pool of N processes on N cores runs one each, so no
    process waits on a thread another process has taken), the driver's cancel event, and death with the
    driver (a killed driver must not leave units running)."""
    global _CANCEL
    if parent_pid is not None:
        from jobs.worker import exit_with_parent

        exit_with_parent(parent_pid)
    if threads:
        import torch

        torch.set_num_threads(threads)
    _CANCEL = cancel_event


def _should_cancel() -> bool:
    return _CANCEL is not None and _CANCEL.is_set()


def _residents():
    global _RESIDENTS
    if _RESIDENTS is None:
        from jobs.resident import ResidentPool

        _RESIDENTS = ResidentPool(capacity=1)
    return _RESIDENTS


def worker_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _opened(refs: list[str]) -> dict[str, Any]:
    from merging import open_checkpoint

    for ref in refs:
        if ref not in _OPENED:
            _OPENED[ref] = open_checkpoint(ref)
    return _OPENED


def _suite(suite_spec: str, zoo_root: str | None):
    from evaluation.suites import get_suite

    return get_suite(suite_spec, zoo_root=Path(zoo_root) if zoo_root else None)


def score_task(
    ref: str, fingerprint: str, is_base: bool, suite_spec: str, zoo_root: str | None, limit: int | None
) -> list[dict]:
    """Score one model alone; returns its rows as dicts."""
    from evaluation import evaluate, load_model
    from jobs.cache import row_to_store

    suite = _suite(suite_spec, zoo_root)
    device = worker_device()
    if is_base:
        with _residents().use(ref, device) as rm:
            rm.restore_base()
            rows = rm.score(
                suite,
                fingerprint=fingerprint,
                model_name=Path(ref).name,
                limit=limit,
                should_cancel=_should_cancel,
            )
    else:
        loaded = load_model(ref, device=device)
        rows = evaluate(
            loaded.model,
            loaded.tokenizer,
            suite,
            fingerprint=fingerprint,
            model_name=Path(ref).name,
            limit=limit,
            should_cancel=_should_cancel,
        )
    return [row_to_store(r) for r in rows]


def merge_task(
    recipe_yaml: str, suite_spec: str, zoo_root: str | None, limit: int | None, label: str
) -> dict[str, Any]:
    """Merge into this process's resident base and score; returns merge_outcome data, or {"error": ...}
    for a merge the recipe makes impossible."""
    from jobs.work import merge_and_score_resident
    from merging import MergeError, Recipe

    recipe = Recipe.from_yaml(recipe_yaml)
    suite = _suite(suite_spec, zoo_root)
    device = worker_device()
    refs = [str(recipe.base_model)] + [str(m.model) for m in recipe.models]
    try:
        with _residents().use(recipe.base_model, device) as rm:
            return merge_and_score_resident(
                recipe,
                rm,
                suite,
                limit=limit,
                device=device,
                model_name=label,
                should_cancel=_should_cancel,
                checkpoints=_opened(refs),
            )
    except MergeError as exc:
        return {"error": str(exc)}
