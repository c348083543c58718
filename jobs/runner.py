"""The JobRunner: a persisted queue served by worker threads, one per GPU (or N on CPU).

One runner per process (the app keeps it in st.cache_resource). Workers never touch Streamlit: they claim
queued jobs from DuckDB, run the job kind's function with a JobContext, and write the outcome back. On
start the runner marks jobs that a dead process left `running` as interrupted and deletes the temporary
outputs they declared, so nothing half-written survives a crash.
"""

from __future__ import annotations

import atexit
import os
import shutil
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs.context import JobContext
from jobs.errors import JobCancelled, JobError
from jobs.registry import get_kind, validated_params
from jobs.resident import ResidentPool
from store import JobRecord, Store, StoreError

_ACTIVE_OWNERS: set[str] = set()  # owner tokens of the runners alive in this process


def default_devices(workers: int | None = None) -> list[str]:
    """One worker per CUDA GPU; otherwise `workers` CPU workers (default 1)."""
    try:
        import torch

        n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a hard requirement of the project
        n_gpu = 0
    if n_gpu and workers is None:
        return [f"cuda:{i}" for i in range(n_gpu)]
    return ["cpu"] * max(1, workers or 1)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story (no traceback in the job's error)."""
    types: list[type[BaseException]] = [JobError, StoreError]
    try:
        from merging.errors import MergeError

        types.append(MergeError)
    except ImportError:
        pass
    try:
        from evaluation.errors import EvaluationError

        types.append(EvaluationError)
    except ImportError:
        pass
    return tuple(types)


def _cancel_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [JobCancelled]
    try:
        from merging.errors import MergeCancelled

        types.append(MergeCancelled)
    except ImportError:
        pass
    try:
        from evaluation.errors import EvaluationCancelled

        types.append(EvaluationCancelled)
    except ImportError:
        pass
    return tuple(types)


def remove_paths(paths: Iterable[str]) -> list[str]:
    """Delete files or folders (missing ones are fine); returns what was removed."""
    removed = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(raw)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(raw)
    return removed


_LIVE_RUNNERS: weakref.WeakSet[JobRunner] = weakref.WeakSet()


@atexit.register
def _stop_live_runners() -> None:
    """Stop every runner's workers before the interpreter finalizes. Worker threads are daemons; one still
    inside DuckDB when finalization tears the interpreter down aborts the whole process (seen at the end
    of a test session whose pages had started runners), so running jobs are cancelled and joined here."""
    for runner in list(_LIVE_RUNNERS):
        runner.shutdown(wait=True, cancel_running=True, timeout=10.0)


class JobRunner:
    """Runs queued jobs on worker threads. `devices` overrides the worker layout (one worker per entry)."""

    def __init__(
        self,
        store: Store,
        workers: int | None = None,
        devices: Sequence[str] | None = None,
        *,
        poll_interval: float = 0.2,
        resident_capacity: int = 2,
        start: bool = True,
    ) -> None:
        self.store = store
        self.devices = list(devices) if devices else default_devices(workers)
        self.owner = uuid.uuid4().hex
        self.pid = os.getpid()
        self.poll_interval = poll_interval
        self.residents = ResidentPool(capacity=resident_capacity)
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._cancel_events: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self.recovered: list[str] = []
        _ACTIVE_OWNERS.add(self.owner)
        _LIVE_RUNNERS.add(self)
        if start:
            self.start()

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self.recovered = self.recover()
        for i, device in enumerate(self.devices):
            thread = threading.Thread(
                target=self._worker, args=(device,), name=f"mergelab-job-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def recover(self) -> list[str]:
        """Mark jobs left running by a dead process (or a runner no longer alive) as interrupted."""
        interrupted = []
        for job in self.store.jobs_with_status("running"):
            mine = job.pid == self.pid and job.owner in _ACTIVE_OWNERS
            if mine and pid_alive(job.pid):
                continue
            removed = remove_paths(job.temp_paths)
            reason = f"the process running it (pid {job.pid}) ended before the job finished"
            self.store.mark_job_interrupted(job.id, reason)
            self.store.interrupt_merges_of_job(job.id, reason)
            if removed:
                self.store.append_job_log(job.id, f"removed temporary output: {', '.join(removed)}")
            interrupted.append(job.id)
        return interrupted

    def shutdown(self, wait: bool = True, cancel_running: bool = True, timeout: float | None = 30.0) -> None:
        """Stop the workers; running jobs are cancelled (or left to finish when cancel_running is False)."""
        self._stop.set()
        if cancel_running:
            for event in list(self._cancel_events.values()):
                event.set()
        with self._wake:
            self._wake.notify_all()
        if wait:
            for thread in self._threads:
                thread.join(timeout)
        _ACTIVE_OWNERS.discard(self.owner)

    # --- requests -----------------------------------------------------------------------------------
    def submit(self, kind: str, params: Mapping[str, Any] | None = None) -> str:
        """Validate and queue a job; returns its id. Raises JobError for an unknown kind or bad params."""
        clean = validated_params(kind, params or {})
        job_id = self.store.add_job(kind, clean)
        self._notify()
        return job_id

    def cancel(self, job_id: str) -> str:
        """Cancel a queued job, or signal a running one to stop; returns the status afterwards."""
        status = self.store.request_job_cancel(job_id)
        event = self._cancel_events.get(job_id)
        if event is not None:
            event.set()
        return status

    def retry(self, job_id: str) -> None:
        self.store.retry_job(job_id)
        self._notify()

    def get(self, job_id: str) -> JobRecord:
        return self.store.get_job(job_id)

    def wait(
        self, job_ids: Iterable[str], timeout: float | None = None, interval: float = 0.1
    ) -> list[JobRecord]:
        """Block until the jobs reach an end state; raises TimeoutError naming the unfinished ones."""
        ids = list(job_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            records = [self.store.get_job(i) for i in ids]
            if all(r.finished for r in records):
                return records
            if deadline is not None and time.monotonic() > deadline:
                pending = [r.id for r in records if not r.finished]
                raise TimeoutError(f"jobs still unfinished after {timeout} s: {pending}")
            time.sleep(interval)

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # --- workers ------------------------------------------------------------------------------------
    def _worker(self, device: str) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim_next_job(self.owner, self.pid)
            except StoreError:  # store closed under us during shutdown
                return
            if job is None:
                with self._wake:
                    self._wake.wait(self.poll_interval)
                continue
            self._run(job, device)

    def _run(self, job: JobRecord, device: str) -> None:
        event = threading.Event()
        self._cancel_events[job.id] = event
        ctx = JobContext(self.store, job, device, event, self.residents)
        ctx.log(f"started {job.kind} on {device} (attempt {job.attempt})")
        try:
            kind = get_kind(job.kind)
            result = kind.run(ctx, dict(job.params))
        except _cancel_types():
            remove_paths(ctx._temp_paths)
            ctx.log("cancelled")
            self.store.finish_job(job.id, "cancelled", message="cancelled")
        except _user_error_types() as exc:
            remove_paths(ctx._temp_paths)
            ctx.log(f"failed: {exc}")
            self.store.finish_job(job.id, "failed", error=str(exc), message="failed")
        except Exception as exc:  # a bug or an environment problem: keep the traceback in the log
            remove_paths(ctx._temp_paths)
            ctx.log("failed with an unexpected error:\n" + traceback.format_exc())
            self.store.finish_job(job.id, "failed", error=f"{type(exc).__name__}: {exc}", message="failed")
        else:
            ctx.log("done")
            self.store.finish_job(job.id, "done", result=result, message="done")
        finally:
            self._cancel_events.pop(job.id, None)
