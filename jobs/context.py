"""What a running job sees: its parameters and device, progress and log reporting, cancellation, temporary
outputs to clean up if the process dies, and the shared resident models."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from jobs.errors import JobCancelled
from store import JobRecord, Store

if TYPE_CHECKING:
    from jobs.resident import ResidentPool

PROGRESS_INTERVAL_S = 0.25
CANCEL_POLL_S = 1.0


class JobContext:
    def __init__(
        self,
        store: Store,
        job: JobRecord,
        device: str,
        cancel_event: threading.Event,
        residents: ResidentPool,
    ) -> None:
        self.store = store
        self.job = job
        self.job_id = job.id
        self.params = job.params
        self.device = device
        self._cancel = cancel_event
        self._residents = residents
        self._last_progress = 0.0
        self._last_poll = 0.0
        self._temp_paths: list[str] = []

    # --- reporting ---------------------------------------------------------------------------------
    def progress(self, fraction: float, message: str | None = None, *, force: bool = False) -> None:
        """Record progress; writes are throttled so a per-tensor callback does not hammer the database."""
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        self.store.update_job_progress(self.job_id, fraction, message)

    def log(self, text: str) -> None:
        """Append a timestamped line to the job's log (readable by the pages at any moment)."""
        self.store.append_job_log(self.job_id, f"{time.strftime('%H:%M:%S')} {text}")

    # --- cancellation -------------------------------------------------------------------------------
    def should_cancel(self) -> bool:
        """True once the user asked to cancel (the merge engine polls this after every tensor)."""
        if self._cancel.is_set():
            return True
        now = time.monotonic()
        if now - self._last_poll >= CANCEL_POLL_S:
            self._last_poll = now
            if self.store.is_cancel_requested(self.job_id):
                self._cancel.set()
        return self._cancel.is_set()

    def check_cancel(self) -> None:
        if self.should_cancel():
            raise JobCancelled(f"job {self.job_id} cancelled")

    # --- temporary outputs --------------------------------------------------------------------------
    def add_temp_path(self, path: str | os.PathLike) -> None:
        """Declare an output being written; a restart after a crash removes it."""
        self._temp_paths.append(str(path))
        self.store.set_job_temp_paths(self.job_id, self._temp_paths)

    def drop_temp_path(self, path: str | os.PathLike) -> None:
        """The output is complete (or gone): a crash from now on must not remove it."""
        self._temp_paths = [p for p in self._temp_paths if p != str(path)]
        self.store.set_job_temp_paths(self.job_id, self._temp_paths)

    # --- shared models ------------------------------------------------------------------------------
    @contextmanager
    def resident(self, base: str) -> Iterator[Any]:
        """Exclusive use of the resident model of `base` on this job's device."""
        with self._residents.use(base, self.device) as model:
            yield model
