"""Torch thread counts for the engine's own threads.

Torch keeps an intra-op thread count per thread, but a thread that has not run a parallel op yet takes the
count last set by ANY thread. So a worker that sets its own count and leaves it changes the count of every
thread that starts later (measured: a reader thread's `set_num_threads(1)` put the engine's main thread,
and with it every subspace decomposition, on one thread). Set counts only through `torch_threads`, which
restores the previous one, and let the main thread take its count (`claim_thread_count`) before starting
workers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import torch


def claim_thread_count() -> int:
    """Fix the calling thread's count now (from the process default), before workers change the default."""
    return torch.get_num_threads()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """The calling thread's torch ops on `n` threads inside the block; the previous count (and with it the
    default new threads take) restored after."""
    previous = torch.get_num_threads()
    if previous == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_SECOND_LANE: ThreadPoolExecutor | None = None


def _no_lane_after_fork() -> None:
    """A forked child has none of its parent's threads, but an executor copied by fork believes its worker
    exists and would queue jobs for ever: the child starts its own on first use."""
    global _SECOND_LANE
    _SECOND_LANE = None


os.register_at_fork(after_in_child=_no_lane_after_fork)


def on_second_lane(fn: Callable[..., object], *args) -> Future:
    """Run fn(*args) on the engine's one worker thread with one torch thread, for work split in two halves
    so that the second core works too (each half on one thread: no per-op barriers between them). The
    worker is created on first use, so a process that never needs it has none."""
    global _SECOND_LANE
    if _SECOND_LANE is None:
        _SECOND_LANE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergelab-lane")

    def one_thread() -> object:
        with torch_threads(1):
            return fn(*args)

    return _SECOND_LANE.submit(one_thread)


# Per thread: whether it is running a lane's job (a second-lane half, or a whole tensor on a tensor lane).
# Work a lane starts runs on that lane alone: a lane never waits on another lane.
_LANE = threading.local()


@contextmanager
def own_lane() -> Iterator[None]:
    """Mark the calling thread as a lane for the block: splits it asks for run on it, one after another."""
    outer, _LANE.on = getattr(_LANE, "on", False), True
    try:
        yield
    finally:
        _LANE.on = outer


def in_lane() -> bool:
    """Whether this thread is running a lane's job (own_lane)."""
    return getattr(_LANE, "on", False)


class TensorLanes:
    """Two threads that merge whole tensors side by side (engine.py), each job on one torch thread and as
    its own lane. For methods whose linear algebra runs on one thread per op anyway (the subspace methods'
    matrices up to SINGLE_THREAD_MAX_SIDE), a tensor's bytes are the same on a lane as on the engine's
    thread, while the second core works through what one tensor's lone decompositions leave idle."""

    WIDTH = 2

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.WIDTH, thread_name_prefix="mergelab-tensor")

    def submit(self, fn: Callable[[], object]) -> Future:
        def one_thread() -> object:
            with torch_threads(1), own_lane():
                return fn()

        return self._pool.submit(one_thread)

    def close(self) -> None:
        """Drop the jobs not started, wait for the running ones (they hold the engine's buffers)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
