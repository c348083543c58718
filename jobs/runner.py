"""The JobRunner: a persisted queue served by supervised worker processes, one per GPU (or N on CPU).

One runner per app process (the app starts it with `st.cache_resource` when it starts). For each device a
supervisor thread claims queued jobs from DuckDB and hands each to that device's worker process
(jobs/worker.py), which runs the job kind's function with a JobContext whose store forwards every call
back here: the app process stays the only DuckDB writer, and a job that is OOM-killed or crashes takes
down only its worker. The supervisor then fails the job with a clear message, removes its temporary
output, and a fresh worker serves the next job. A job asked to cancel that has not stopped after
MERGELAB_CANCEL_GRACE_S seconds (default 10) is terminated. On start the runner marks jobs that a dead
process left `running` as interrupted and deletes the temporary outputs they declared, so nothing
half-written survives a crash.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # noqa: F401  (its exit hook must be registered before ours, see below)
import os
import signal
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobs.errors import JobError
from jobs.outcomes import remove_paths
from jobs.registry import check_run_function, get_kind, validated_params
from store import JobRecord, Store, StoreError

CANCEL_GRACE_ENV = "MERGELAB_CANCEL_GRACE_S"
PREWARM_RETRY_S = 10.0  # an idle prewarmed worker that died is replaced at most this often
START_METHOD_ENV = "MERGELAB_WORKER_START"  # forkserver (default) or spawn
# imported once by the forkserver, so a fresh worker (first job, or after a crash) starts in milliseconds
WORKER_PRELOAD = ["torch", "jobs.worker"]
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


def cancel_grace_s() -> float:
    raw = os.environ.get(CANCEL_GRACE_ENV, "10")
    try:
        value = float(raw)
    except ValueError:
        raise JobError(f"{CANCEL_GRACE_ENV} must be a number of seconds, got {raw!r}.") from None
    return max(0.0, value)


def describe_exit(exitcode: int | None) -> str:
    """How a worker process ended, in words a user can act on."""
    if exitcode is None:
        return "no exit status"
    if exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        if number == signal.SIGKILL:
            return f"signal {number}, likely out of memory"
        return f"signal {number} ({name})"
    return f"exit status {exitcode}"


def _mp_context():
    method = os.environ.get(START_METHOD_ENV, "forkserver")
    if method not in ("forkserver", "spawn"):
        raise JobError(f"{START_METHOD_ENV} must be forkserver or spawn, got {method!r}.")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_script_hidden():
    """Start a worker without re-running the parent's __main__ script in it.

    multiprocessing (spawn and forkserver alike) runs the parent's `__main__.__file__` in every new child
    before its target. Under Streamlit (and AppTest) `__main__` is app.py, so each worker would run the whole
    app, open the DuckDB file the app holds and die ("worker process died (exit status 1) while started").
    Workers need nothing from __main__; its path is hidden while a worker starts (a lock keeps concurrent
    starts from restoring it early).
    """
    with _START_LOCK:
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        if main is None or path is None:
            yield
            return
        del main.__file__
        try:
            yield
        finally:
            main.__file__ = path


class _Worker:
    """One worker process and its pipe (owned by one supervisor thread)."""

    def __init__(
        self, device: str, resident_capacity: int = 2, budget_share: float = 1.0, warm: bool = False
    ) -> None:
        from jobs.worker import worker_main

        ctx = _mp_context()
        self.conn, child = ctx.Pipe(duplex=True)
        self.cancel = ctx.Event()
        self.process = ctx.Process(
            target=worker_main,
            args=(child, self.cancel, os.getpid(), device, resident_capacity, budget_share, warm),
            name=f"mergelab-worker-{device}",
            daemon=True,
        )
        self.started = time.monotonic()
        with _main_script_hidden():
            self.process.start()
        child.close()

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the worker to exit; kill it when it does not."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop",))
        self.process.join(timeout)
        if self.process.is_alive():
            self.kill()
        self.conn.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)


@dataclass
class _Slot:
    """A device: its supervisor thread, worker process (started on demand) and the job it runs."""

    device: str
    worker: _Worker | None = None
    job_id: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    residents: list[tuple[str, str]] = field(default_factory=list)
    workers_started: int = 0


_LIVE_RUNNERS: weakref.WeakSet[JobRunner] = weakref.WeakSet()


@atexit.register
def _stop_live_runners() -> None:
    """Stop every runner before the interpreter finalizes: running jobs are cancelled, worker processes
    stopped and supervisor threads joined (a daemon thread still inside DuckDB at finalization aborts the
    whole process). Exit hooks run last-registered first, and multiprocessing's own hook terminates daemon
    children: importing multiprocessing.util above registers it before this one, so a running job is
    cancelled and recorded as such instead of failing with 'worker process died (signal 15)'."""
    for runner in list(_LIVE_RUNNERS):
        runner.shutdown(wait=True, cancel_running=True, timeout=10.0)


class JobRunner:
    """Runs queued jobs in worker processes. `devices` overrides the layout (one worker per entry)."""

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
        self.resident_capacity = resident_capacity
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._cancel_running = True
        self._prewarm = False
        self._slots = [_Slot(device) for device in self.devices]
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
        for i, slot in enumerate(self._slots):
            thread = threading.Thread(
                target=self._supervise, args=(slot,), name=f"mergelab-job-{i}", daemon=True
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
            self._close_study(job, "interrupted")
            if removed:
                self.store.append_job_log(job.id, f"removed temporary output: {', '.join(removed)}")
            interrupted.append(job.id)
        return interrupted

    def shutdown(self, wait: bool = True, cancel_running: bool = True, timeout: float | None = 30.0) -> None:
        """Stop serving; running jobs are cancelled (or left to finish when cancel_running is False), then
        the worker processes are stopped."""
        self._cancel_running = cancel_running
        self._stop.set()
        if cancel_running:
            for slot in self._slots:
                slot.cancel.set()
        self._notify()
        if wait:
            for thread in self._threads:
                thread.join(timeout)
        _ACTIVE_OWNERS.discard(self.owner)

    # --- requests -----------------------------------------------------------------------------------
    def submit(
        self, kind: str, params: Mapping[str, Any] | None = None, *, group_id: str | None = None
    ) -> str:
        """Validate and queue a job; returns its id. Raises JobError for an unknown kind or bad params.
        `group_id` (the id of the launch's first job) shows the job under that launch on the Jobs page."""
        clean = validated_params(kind, params or {})
        job_id = self.store.add_job(kind, clean, group_id=group_id)
        self._notify()
        return job_id

    def cancel(self, job_id: str) -> str:
        """Cancel a queued job, or signal a running one to stop; returns the status afterwards."""
        status = self.store.request_job_cancel(job_id)
        for slot in self._slots:
            if slot.job_id == job_id:
                slot.cancel.set()
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

    def prewarm(self) -> None:
        """Keep a worker process ready on every device, so the first job does not pay its start-up (the
        app server does this; tests and the CLI start workers on demand). A worker that died is replaced
        while idle."""
        self._prewarm = True
        self._notify()

    def loaded_residents(self) -> list[tuple[str, str]]:
        """(base, device) of the resident models the workers reported after their last job."""
        return sorted({key for slot in self._slots for key in slot.residents})

    def worker_pids(self) -> list[int]:
        """The live worker processes (for tests and diagnostics)."""
        return [s.worker.process.pid for s in self._slots if s.worker is not None and s.worker.alive()]

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # --- supervision --------------------------------------------------------------------------------
    def _supervise(self, slot: _Slot) -> None:
        """Claim and run jobs on one device until shutdown. Nothing ends this loop silently: an error
        while recording a job is logged (to the job if possible, else stderr) and the loop goes on."""
        try:
            while not self._stop.is_set():
                try:
                    job = self.store.claim_next_job(self.owner, self.pid)
                except StoreError:  # store closed under us during shutdown
                    return
                if job is None:
                    if self._prewarm and self._worker_missing(slot):
                        self._start_worker(slot)
                    with self._wake:
                        self._wake.wait(self.poll_interval)
                    continue
                try:
                    self._run(slot, job)
                except Exception:  # noqa: BLE001 - the supervisor must outlive any one job
                    self._record_failure(
                        job.id, "the job runner failed while running it", traceback.format_exc()
                    )
        finally:
            if slot.worker is not None:
                slot.worker.stop()
                slot.worker = None

    def _run(self, slot: _Slot, job: JobRecord) -> None:
        slot.job_id = job.id
        slot.cancel.clear()
        try:
            try:
                run_ref = check_run_function(get_kind(job.kind).run)
            except JobError as exc:
                self._finish(job.id, "failed", error=str(exc), message="failed")
                return
            if slot.worker is None or not slot.worker.alive():
                self._start_worker(slot)
            worker = slot.worker
            worker.cancel.clear()
            try:
                worker.conn.send(("run", job, run_ref, dict(os.environ), os.getcwd()))
            except OSError:  # it died between the liveness check and the send
                self._worker_died(slot, worker, job)
                return
            self._serve(slot, worker, job)
        finally:
            slot.job_id = None

    def _worker_missing(self, slot: _Slot) -> bool:
        """No live worker, and the last start is old enough that restarting is not a crash loop."""
        if slot.worker is not None and slot.worker.alive():
            return False
        return slot.worker is None or time.monotonic() - slot.worker.started > PREWARM_RETRY_S

    def _start_worker(self, slot: _Slot) -> None:
        """A fresh worker process for the slot (the previous one, if any, is stopped)."""
        if slot.worker is not None:
            slot.worker.stop(0)
        share = 1.0 / sum(1 for other in self._slots if other.device == slot.device)
        slot.worker = _Worker(slot.device, self.resident_capacity, share, warm=self._prewarm)
        slot.workers_started += 1

    def _serve(self, slot: _Slot, worker: _Worker, job: JobRecord) -> None:
        """Answer the worker's store calls until it reports the outcome, dies, or ignores a cancel."""
        grace = cancel_grace_s()
        cancel_sent: float | None = None
        last_flag_check = 0.0
        while True:
            try:
                ready = worker.conn.poll(self.poll_interval)
                msg = worker.conn.recv() if ready else None
            except (EOFError, OSError):
                msg, ready = None, False
                worker.process.join(2)
            if msg is not None:
                if msg[0] == "call":  # then still check liveness and cancellation below: a job that
                    self._answer(worker, msg)  # calls the store nonstop must remain cancellable
                elif msg[0] == "done":
                    outcome = msg[1]
                    slot.residents = [tuple(k) for k in outcome.get("residents", [])]
                    self._finish(
                        job.id,
                        outcome["status"],
                        error=outcome.get("error"),
                        result=outcome.get("result"),
                        message=outcome.get("message"),
                    )
                    return
            if not worker.alive():
                self._worker_died(slot, worker, job)
                return
            now = time.monotonic()
            if cancel_sent is None:
                if not slot.cancel.is_set() and now - last_flag_check >= 0.5:
                    last_flag_check = now
                    if self.store.is_cancel_requested(job.id):
                        slot.cancel.set()
                if slot.cancel.is_set():
                    worker.cancel.set()
                    cancel_sent = now
            elif now - cancel_sent > grace:
                self._terminate(slot, worker, job, grace)
                return

    def _answer(self, worker: _Worker, msg: tuple) -> None:
        """Run one store call for the worker and send back its value or its error."""
        _, name, args, kwargs = msg
        try:
            if name.startswith("_") or not callable(getattr(self.store, name, None)):
                raise StoreError(f"the store has no method {name!r}")
            reply = ("ok", getattr(self.store, name)(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - the worker decides what the error means
            reply = ("error", exc)
        try:
            worker.conn.send(reply)
        except (OSError, ValueError):
            return  # the worker is gone; the serve loop notices
        except Exception as exc:  # the value or error could not be pickled
            worker.conn.send(("error", StoreError(f"store call {name} answered unpicklable data: {exc}")))

    def _worker_died(self, slot: _Slot, worker: _Worker, job: JobRecord) -> None:
        worker.process.join(2)
        how = describe_exit(worker.process.exitcode)
        slot.worker = None
        slot.residents = []
        try:
            doing = self.store.get_job(job.id).message or "running"
        except StoreError:
            doing = "running"
        doing = "starting" if doing == "started" else doing
        reason = f"worker process died ({how}) while {doing}"
        self._abandon(job.id, reason, merge_reason=reason)
        self._finish(job.id, "failed", error=reason, message="failed")

    def _terminate(self, slot: _Slot, worker: _Worker, job: JobRecord, grace: float) -> None:
        worker.kill()
        slot.worker = None
        slot.residents = []
        reason = f"terminated: the job did not stop within {grace:g} s of the cancel request"
        self._abandon(job.id, reason, merge_reason="cancelled")
        self._finish(job.id, "cancelled", message=reason)

    def _abandon(self, job_id: str, log_line: str, *, merge_reason: str) -> None:
        """A job whose worker is gone: remove its declared temporary output, close its merge records."""
        try:
            removed = remove_paths(self.store.get_job(job_id).temp_paths)
            self.store.interrupt_merges_of_job(job_id, merge_reason)
            self.store.append_job_log(job_id, f"{time.strftime('%H:%M:%S')} {log_line}")
            if removed:
                self.store.append_job_log(job_id, f"removed temporary output: {', '.join(removed)}")
        except StoreError:
            traceback.print_exc(file=sys.stderr)

    def _finish(self, job_id: str, status: str, **fields: Any) -> None:
        """Record a job's end; if that fails (say, an unserialisable result), record the failure instead."""
        try:
            self.store.finish_job(job_id, status, **fields)
        except Exception:  # noqa: BLE001
            self._record_failure(job_id, f"could not record the job as {status}", traceback.format_exc())
            return
        if status != "done":
            try:  # no merge or study of a job that ended stays `running`
                self.store.interrupt_merges_of_job(job_id, f"its job ended {status}")
                self._close_study(self.store.get_job(job_id), status)
            except StoreError:
                traceback.print_exc(file=sys.stderr)

    def _close_study(self, job: JobRecord, status: str) -> None:
        """A study whose job ended without finishing it is marked so (not left `running`)."""
        sid = job.params.get("study_id") if job.kind == "study" else None
        if not sid:
            return
        try:
            if self.store.get_study(sid).get("status") == "running":
                self.store.set_study_status(sid, status)
        except StoreError:
            return  # the study was never created (the job failed before planning it)

    def _record_failure(self, job_id: str, what: str, details: str) -> None:
        last = details.strip().splitlines()[-1] if details.strip() else what
        try:
            self.store.append_job_log(job_id, f"{what}:\n{details}")
            self.store.finish_job(job_id, "failed", error=f"{what}: {last}", message="failed")
            self.store.interrupt_merges_of_job(job_id, f"{what}: {last}")
            self._close_study(self.store.get_job(job_id), "failed")
        except Exception:  # noqa: BLE001 - last resort: the operator's console
            print(f"mergelab: {what} (job {job_id}):\n{details}", file=sys.stderr, flush=True)
