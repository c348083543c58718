"""The unit of work shared by the thread runner and the Ray backend: merge a recipe (into a directory or a
resident model), score it, and describe the outcome as plain data; plus writing that outcome to the store.

Computing and recording are separate so Ray workers can compute and return, while only the driver writes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jobs.cache import row_to_store
from store import Store


def peak_memory_probe(device: str) -> Callable[[], int | None]:
    """A callable returning peak memory so far: CUDA allocator peak on a GPU, sampled process RSS on CPU."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return lambda: int(torch.cuda.max_memory_allocated(device))
    import psutil

    proc = psutil.Process(os.getpid())
    peak = [proc.memory_info().rss]

    def sample() -> int:
        peak[0] = max(peak[0], proc.memory_info().rss)
        return peak[0]

    return sample


class TrackedDirectorySink:
    """A DirectorySink that declares what it writes to the job, so a crash is cleaned up on the next
    start: the temporary folder as soon as it exists, and the final folder from just before the rename
    until the caller has recorded the merge (then the caller drops it with on_done). A folder on disk
    thus always has a merge record that is done."""

    def __init__(self, out_dir: str | Path, on_temp: Callable[[str], None], on_done: Callable[[str], None]):
        from merging import DirectorySink

        self._sink = DirectorySink(out_dir)
        self.out_dir = Path(out_dir)
        self._on_temp, self._on_done = on_temp, on_done

    def begin(self, base, recipe, plan) -> None:
        self._sink.begin(base, recipe, plan)
        if self._sink.tmp_dir is not None:
            self._on_temp(str(self._sink.tmp_dir))

    def write(self, name, tensor) -> None:
        self._sink.write(name, tensor)

    def write_rows(self, name, start, rows) -> None:
        self._sink.write_rows(name, start, rows)

    def commit(self, result):
        tmp = self._sink.tmp_dir
        self._on_temp(str(self.out_dir))  # until recorded; DirectorySink refuses a non-empty out_dir
        out = self._sink.commit(result)
        if tmp is not None:
            self._on_done(str(tmp))
        return out

    def abort(self) -> None:
        tmp = self._sink.tmp_dir
        self._sink.abort()
        if tmp is not None:
            self._on_done(str(tmp))


class TeeSink:
    """One merge written to several sinks at once (the resident model and a folder on disk): every tensor
    goes to each; a failure in any aborts them all, so a folder is complete or absent."""

    def __init__(self, *sinks) -> None:
        self.sinks = sinks

    def begin(self, base, recipe, plan) -> None:
        begun = []
        try:
            for sink in self.sinks:
                sink.begin(base, recipe, plan)
                begun.append(sink)
        except BaseException:
            for sink in begun:
                with contextlib.suppress(Exception):
                    sink.abort()
            raise

    def write(self, name, tensor) -> None:
        for sink in self.sinks:
            sink.write(name, tensor)

    def write_rows(self, name, start, rows) -> None:
        """A row block of a tensor merged under the memory budget, to every sink (all have write_rows)."""
        for sink in self.sinks:
            sink.write_rows(name, start, rows)

    def commit(self, result):
        outputs = [sink.commit(result) for sink in self.sinks]
        return next((out for out in outputs if out is not None), None)

    def abort(self) -> None:
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.abort()


def run_merge_tracked(
    recipe,
    sink,
    *,
    device: str,
    should_cancel: Callable[[], bool] | None = None,
    on_progress: Callable[[float, str], None] | None = None,
    spectra: Any = None,
    checkpoints: Mapping[str, Any] | None = None,
    max_memory: str | int | None = None,
):
    """run_merge with peak-memory tracking; returns (MergeResult, peak bytes). `max_memory` is the merge's
    memory budget ("6GiB" or bytes; None: the engine's default share of free memory)."""
    from merging import run_merge

    probe = peak_memory_probe(device)

    def progress(p) -> None:
        probe()
        if on_progress is not None:
            on_progress(p.fraction, f"merging {p.tensor_name} ({p.tensors_done}/{p.tensors_total})")

    result = run_merge(
        recipe,
        sink,
        device=device,
        spectra=spectra,
        on_progress=progress,
        should_cancel=should_cancel,
        checkpoints=checkpoints,
        max_memory=max_memory,
    )
    return result, probe()


def merge_outcome(
    result, peak: int | None, scores: list | None = None, eval_seconds: float | None = None
) -> dict:
    """A finished merge (and its scores) as plain, picklable, JSON-friendly data."""
    return {
        "recipe_yaml": result.recipe.to_yaml(),
        "method": result.recipe.merge_method,
        "fingerprint": result.fingerprint,
        "input_fingerprints": dict(result.input_fingerprints),
        "seconds": float(result.seconds),
        "device": str(result.device),
        "peak_memory_bytes": peak,
        "output_path": str(result.output_path) if result.output_path else None,
        "stats": result.stats.to_rows(),
        "scores": [row_to_store(r) for r in scores or []],
        "eval_seconds": eval_seconds,
    }


def merge_and_score_resident(
    recipe,
    resident,
    suite,
    *,
    limit: int | None,
    device: str,
    cache=None,
    should_cancel: Callable[[], bool] | None = None,
    on_progress: Callable[[float, str], None] | None = None,
    spectra: Any = None,
    checkpoints: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    output: str | Path | None = None,
    on_temp: Callable[[str], None] | None = None,
    on_done: Callable[[str], None] | None = None,
    max_memory: str | int | None = None,
) -> dict:
    """Merge into the resident model of the base and score it; returns merge_outcome data. With `output`
    the merge is also written to that folder (temporary sibling declared through on_temp/on_done)."""
    from merging import ModelSink

    sink = ModelSink(resident.model)
    if output is not None:
        noop = lambda _path: None  # noqa: E731
        folder = TrackedDirectorySink(output, on_temp or noop, on_done or noop)
        sink = TeeSink(sink, folder)

    def merging_progress(frac: float, msg: str) -> None:
        if on_progress:
            on_progress(0.5 * frac, msg)

    try:
        result, peak = run_merge_tracked(
            recipe,
            sink,
            device=device,
            should_cancel=should_cancel,
            on_progress=merging_progress,
            spectra=spectra,
            checkpoints=checkpoints,
            max_memory=max_memory,
        )
    except BaseException:
        # a refused or cancelled merge may have overwritten part of the resident: put the base back
        # (or, if even that fails, leave it marked unknown so nothing is scored under a wrong name)
        resident.fingerprint = None
        with contextlib.suppress(Exception):
            resident.restore_base()
        raise
    resident.fingerprint = result.fingerprint
    if should_cancel and should_cancel():
        from jobs.errors import JobCancelled

        raise JobCancelled("cancelled before scoring")
    started = time.perf_counter()

    def eval_progress(done: int, total: int, task: str) -> None:
        if on_progress:
            on_progress(0.5 + 0.5 * done / max(1, total), f"scored {task} ({done}/{total})")

    rows = resident.score(
        suite,
        fingerprint=result.fingerprint,
        model_name=model_name or result.fingerprint[:12],
        limit=limit,
        cache=cache,
        on_progress=eval_progress,
        should_cancel=should_cancel,
    )
    return merge_outcome(result, peak, rows, time.perf_counter() - started)


def register_inputs(
    store: Store, base_ref: str | None, refs: list[str], fingerprints: Mapping[str, str]
) -> None:
    """Register the base and checkpoints a merge read (architecture, size and vocabulary from headers)."""
    from merging import open_checkpoint

    for ref, kind in [(base_ref, "base")] + [(r, "checkpoint") for r in refs]:
        if ref is None or ref not in fingerprints:
            continue
        if store.get_model(fingerprints[ref]) is not None:
            continue
        with open_checkpoint(ref) as ck:
            store.register_model(
                ck.fingerprint,
                kind,
                str(ref),
                name=Path(str(ref)).name,
                architecture=ck.architecture,
                num_parameters=ck.num_parameters,
                vocab_size=ck.vocab_size,
            )


def record_outcome(store: Store, merge_id: str, outcome: Mapping[str, Any], *, base_ref: str | None) -> None:
    """Write a finished merge's geometry, scores and record (status done) to the store."""
    stats = outcome["stats"]
    store.put_merge_stats(merge_id, tensors=stats["tensors"], spectra=stats["spectra"], model=stats["model"])
    if outcome["scores"]:
        store.put_eval_rows(outcome["scores"])
    base_fp = outcome["input_fingerprints"].get(base_ref) if base_ref else None
    store.register_model(
        outcome["fingerprint"],
        "merged",
        outcome["output_path"] or f"memory:{merge_id}",
        name=f"merge {merge_id}",
        architecture=(store.get_model(base_fp) or {}).get("architecture") if base_fp else None,
    )
    store.finish_merge(
        merge_id,
        "done",
        seconds=outcome["seconds"],
        output_path=outcome["output_path"],
        peak_memory_bytes=outcome["peak_memory_bytes"],
        merged_fingerprint=outcome["fingerprint"],
    )
