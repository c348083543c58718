"""A study's units on a local pool of processes, one per CPU core, each with its own resident base.

Scoring a small model is many small forward passes: one process with torch's N intra-op threads waits at
every operator for its slowest thread, and when anything else runs on the machine that thread is often
descheduled (measured on 2 cores under load: 5-10x slower). N processes with one thread each keep every
core busy on whole units instead. Used on CPU when the pool has more than one process: as many as cores,
and as many residents as the resident budget holds; a GPU, or a study that saves merges or spectra, runs
unit by unit in the job itself (jobs.study_run).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
from typing import Any

from jobs.context import JobContext
from jobs.errors import JobError
from jobs.unit_driver import run_study_units
from jobs.units import init_worker


def study_processes(params: dict[str, Any], device: str) -> int:
    """How many processes run this study's units: `processes` when given (1 = in the job itself), else
    one per core that the resident budget can hold a base for; always 1 on a GPU or when the study saves
    merges or singular spectra (only the in-job path writes those)."""
    requested = parse_processes(params.get("processes"))
    if not device.startswith("cpu") or params.get("save_merges") or params.get("spectra"):
        return 1
    if requested is not None:
        return requested
    from jobs.resident import estimated_resident_bytes, resident_budget_bytes

    cores = len(os.sched_getaffinity(0))
    size = estimated_resident_bytes(str(params["base"]), "cpu")
    fit = resident_budget_bytes("cpu") // size if size else cores
    return max(1, min(cores, fit))


def parse_processes(value: Any) -> int | None:
    """A study's `processes` parameter: a positive count, or None for "auto" (or not given)."""
    if value in (None, "auto"):
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or str(count) != str(value).strip():
        raise JobError(f"processes must be a positive integer or 'auto', not {value!r}.")
    return count


class ProcessExecutor:
    """jobs.unit_driver's executor on local processes (spawned: a clean interpreter, one torch thread each
    when there are as many processes as cores)."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.cancel_event = context.Event()
        threads = max(1, len(os.sched_getaffinity(0)) // processes)
        self.where = f"{processes} local processes ({threads} torch thread{'s' * (threads > 1)} each)"
        with _children_allowed():
            self.pool = cf.ProcessPoolExecutor(
                max_workers=processes,
                mp_context=context,
                initializer=init_worker,
                initargs=(threads, self.cancel_event, os.getpid()),
            )

    def submit(self, fn, *args):
        with _children_allowed():  # processes start on demand, from submit
            return self.pool.submit(fn, *args)

    def wait(self, handles, timeout: float):
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, handle):
        try:
            return handle.result()
        except cf.process.BrokenProcessPool as exc:
            raise JobError(
                "a study process died (killed, likely out of memory); the units in flight were not stored, "
                "run the study again to finish it"
            ) from exc

    def cancel(self, handles) -> None:
        self.cancel_event.set()  # units in flight stop at their next forward pass or tensor
        for handle in handles:
            handle.cancel()

    def close(self) -> None:
        """After a cancel the job returns at once: the processes stop their cancelled unit and exit on
        their own (nothing they do is recorded any more); otherwise they are joined."""
        self.pool.shutdown(wait=not self.cancel_event.is_set(), cancel_futures=True)


@contextlib.contextmanager
def _children_allowed():
    """The job worker is a daemon process (it must die with the app), and multiprocessing refuses children
    to daemons because nothing would join them. Here the pool itself joins them (close) and each pool
    process dies with this one (jobs.units.init_worker), so the refusal is lifted while processes start."""
    me = multiprocessing.current_process()
    was = me.daemon
    me.daemon = False
    try:
        yield
    finally:
        me.daemon = was


def run_study_processes(ctx: JobContext, params: dict[str, Any], processes: int) -> dict[str, Any]:
    executor = ProcessExecutor(processes)
    return run_study_units(ctx, params, executor)
