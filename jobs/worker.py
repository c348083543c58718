"""The job worker process: runs one job at a time for the JobRunner, isolated from the app.

A merge that runs out of memory or crashes the interpreter takes down this process, not the app. The worker
never opens DuckDB: its JobContext's store is a `StoreClient` that forwards each call over the pipe to the
runner in the app process (the only writer) and waits for the answer. It keeps the resident models of its
device between jobs. Messages:

    runner -> worker   ("run", job, (module, qualname), environ, cwd) | ("stop",)
    worker -> runner   ("call", method, args, kwargs) -> ("ok", value) | ("error", exception)
                       ("done", outcome)   outcome: status, result, error, message, residents

Cancellation arrives on a shared multiprocessing Event (the runner sets it; the job polls it between
tensors, lm-eval batches and study units); a worker that ignores it is terminated by the runner.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import threading
import time
import traceback
from typing import Any

PARENT_CHECK_S = 1.0


class StoreClient:
    """The Store, as seen from a worker: every public method call is executed by the runner in the app
    process. Values travel pickled; a store error raised there is raised here."""

    def __init__(self, conn, lock: threading.Lock) -> None:
        self._conn = conn
        self._lock = lock

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._conn.send(("call", name, args, kwargs))
                kind, value = self._conn.recv()
            if kind == "error":
                raise value
            return value

        call.__name__ = name
        return call


def resolve_run(ref: tuple[str, str]):
    """The job kind's run function from (module, qualname); importing the module registers its kinds."""
    module, qualname = ref
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def run_one(job, run_ref, conn, lock, cancel_event, residents, device: str) -> dict[str, Any]:
    """Run one job and describe how it ended (the runner records it). Temporary outputs of a job that
    did not finish are removed here; the runner removes them when this process dies instead."""
    from jobs.context import JobContext
    from jobs.outcomes import cancel_types, remove_paths, user_error_types

    store = StoreClient(conn, lock)
    ctx = JobContext(store, job, device, cancel_event, residents)
    ctx.log(f"started {job.kind} on {device} (attempt {job.attempt}, worker pid {os.getpid()})")
    try:
        run = resolve_run(run_ref)
        result = run(ctx, dict(job.params))
    except cancel_types():
        remove_paths(ctx._temp_paths)
        ctx.log("cancelled")
        return {"status": "cancelled", "message": "cancelled"}
    except user_error_types() as exc:
        remove_paths(ctx._temp_paths)
        ctx.log(f"failed: {exc}")
        return {"status": "failed", "error": str(exc), "message": "failed"}
    except Exception as exc:  # a bug or an environment problem: keep the traceback in the log
        remove_paths(ctx._temp_paths)
        ctx.log("failed with an unexpected error:\n" + traceback.format_exc())
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "message": "failed"}
    ctx.log("done")
    return {"status": "done", "result": result, "message": "done"}


WARM_IMPORTS = ("transformers", "merging", "evaluation", "jobs.kinds")


def worker_main(
    conn,
    cancel_event,
    app_pid: int,
    device: str,
    resident_capacity: int = 2,
    budget_share: float = 1.0,
    warm: bool = False,
) -> None:
    """Entry point of the worker process (module-level, so forkserver/spawn can start it)."""
    import signal

    from jobs.resident import ResidentPool

    # Ctrl-C in a terminal reaches the whole process group: the app (or CLI) decides what it means and
    # cancels through the event; a KeyboardInterrupt here would kill the job as a crash instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(app_pid)
    residents = ResidentPool(capacity=resident_capacity, budget_share=budget_share)
    if warm:  # a prewarmed worker imports what every job needs while it waits for the first one
        for module in WARM_IMPORTS:
            importlib.import_module(module)
    lock = threading.Lock()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, job, run_ref, environ, cwd = msg
        _adopt_environment(environ, cwd)
        outcome = run_one(job, run_ref, conn, lock, cancel_event, residents, device)
        outcome["residents"] = residents.loaded()
        try:
            conn.send(("done", _picklable(outcome)))
        except (EOFError, OSError):
            return


def _picklable(outcome: dict[str, Any]) -> dict[str, Any]:
    try:
        pickle.dumps(outcome)
    except Exception as exc:  # a run function returned something that cannot travel
        return {
            "status": "failed",
            "error": f"the job's result cannot be sent back to the app: {exc}",
            "message": "failed",
            "residents": outcome.get("residents", []),
        }
    return outcome


def _adopt_environment(environ: dict[str, str], cwd: str) -> None:
    """The app's environment and folder at the time of the job (a forkserver child starts with the
    server's, which may be older: MERGELAB_HOME, offline flags, budgets)."""
    os.environ.clear()
    os.environ.update(environ)
    with contextlib.suppress(OSError):
        os.chdir(cwd)


def exit_with_parent(app_pid: int) -> None:
    """Die with the app: nothing may keep writing a merge after the process that records it is gone
    (a kill -9 of the app or CLI). The kernel's parent-death signal covers a direct parent; a watcher
    thread covers the forkserver case, where the app is not our parent."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            try:
                os.kill(app_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="mergelab-parent-watch", daemon=True).start()
