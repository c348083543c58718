"""One resident model per (base, device), shared by every job that merges into that base.

A study or a run of merge+evaluate jobs on one base would otherwise load the base again for every merge.
The pool hands a job exclusive use of the resident model (the merge writes its weights into it) and keeps
the residents of a device within a memory budget: before a base is loaded, the least recently used idle
residents are dropped until it fits; when the residents in use leave no room, the job gets a clear error
instead of two models silently exceeding memory. A resident keeps no copy of its base (it restores from
the memory-mapped checkpoint files) and uses bfloat16 on a GPU, so its cost is one model in the device's
evaluation dtype.

The budget is MERGELAB_RESIDENT_BUDGET_GB when set, else half of the available RAM on CPU or 80% of the
free memory of the GPU (counting what the residents already hold as available to them).
"""

from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jobs.errors import JobError

BUDGET_ENV = "MERGELAB_RESIDENT_BUDGET_GB"
GIB = 1024**3


class ResidentBudgetError(JobError):
    """The resident model a job needs does not fit the device's resident budget."""


@dataclass
class _Entry:
    model: Any = None
    nbytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ResidentPool:
    def __init__(
        self,
        capacity: int = 2,
        factory: Callable[[str, str], Any] | None = None,
        *,
        budget_bytes: Callable[[str, int], int] | int | None = None,
        size_of: Callable[[str, str], int] | None = None,
        budget_share: float = 1.0,
    ) -> None:
        """budget_share: this pool's part of MERGELAB_RESIDENT_BUDGET_GB when several worker processes
        share one device (two CPU workers get half each, so together they stay within the budget)."""
        self.capacity = max(1, capacity)
        self._factory = factory or _load_resident
        share = max(0.0, min(1.0, budget_share))
        self._budget = (
            budget_bytes
            if budget_bytes is not None
            else lambda device, held: resident_budget_bytes(device, held, share=share)
        )
        self._size_of = size_of or estimated_resident_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    @contextmanager
    def use(self, base: str, device: str) -> Iterator[Any]:
        """Exclusive use of the resident model of `base` on `device`, loading it on first use."""
        key = (str(base), device)
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            self._entries.move_to_end(key)
        with entry.lock:
            if entry.model is None:
                needed = self._size_of(str(base), device)
                self._make_room(key, needed)
                entry.model = self._factory(str(base), device)
                entry.nbytes = int(getattr(entry.model, "nbytes", needed) or needed)
                with self._lock:
                    self._entries[key] = entry
            yield entry.model

    def _make_room(self, key: tuple[str, str], needed: int) -> None:
        """Drop idle residents of this device (least recently used first) until `needed` bytes fit the
        budget and the count fits capacity; raise ResidentBudgetError when residents in use leave no room."""
        device = key[1]
        evicted = False
        with self._lock:
            others = [(k, e) for k, e in self._entries.items() if k[1] == device and k != key and e.model]
            held = sum(e.nbytes for _, e in others)
            budget = self._budget(device, held) if callable(self._budget) else int(self._budget)
            for victim, entry in others:  # oldest first
                if held + needed <= budget and len(others) + 1 <= self.capacity:
                    break
                if entry.lock.locked():  # another job is using it
                    continue
                del self._entries[victim]
                held -= entry.nbytes
                others = [(k, e) for k, e in others if k != victim]
                entry.model = None
                evicted = True
        if evicted:
            _release_memory(device)
        if held + needed > budget:
            in_use = ", ".join(k[0] for k, _ in others)
            raise ResidentBudgetError(
                f"the resident model of {key[0]} needs {needed / GIB:.2f} GiB on {device}, but only "
                f"{max(0, budget - held) / GIB:.2f} GiB of the {budget / GIB:.2f} GiB resident budget is "
                "free "
                f"({held / GIB:.2f} GiB held by residents in use: {in_use}); wait for those jobs or raise "
                f"{BUDGET_ENV}."
            )

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return [k for k, e in self._entries.items() if e.model is not None]

    def held_bytes(self, device: str | None = None) -> int:
        with self._lock:
            return sum(e.nbytes for k, e in self._entries.items() if e.model and device in (None, k[1]))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def resident_budget_bytes(device: str, held: int = 0, share: float = 1.0) -> int:
    """Bytes the residents of `device` may occupy: `share` of MERGELAB_RESIDENT_BUDGET_GB, else a safe
    share of what is free (residents already held count as free to themselves; what other workers hold
    is already gone from what is free)."""
    raw = os.environ.get(BUDGET_ENV)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise JobError(f"{BUDGET_ENV} must be a number of GiB, got {raw!r}.") from None
        if value <= 0:
            raise JobError(f"{BUDGET_ENV} must be positive, got {raw!r}.")
        return int(value * GIB * share)
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(0.8 * (free + held))
    import psutil

    return int(0.5 * (psutil.virtual_memory().available + held))


def estimated_resident_bytes(base: str, device: str) -> int:
    """The resident's size before loading it: parameters from the checkpoint headers times the element
    size of the evaluation dtype on `device` (bfloat16/float16 on a GPU, float32 on CPU)."""
    from evaluation.models import resolve_dtype
    from merging import MergeError, open_checkpoint

    try:
        with open_checkpoint(base) as ck:
            n = ck.num_parameters
    except MergeError:
        return 0  # load_model reports the real problem with this base
    import torch

    dtype = resolve_dtype("auto", device) if device.startswith("cuda") else torch.float32
    return n * torch.empty((), dtype=dtype).element_size()


def _release_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _load_resident(base: str, device: str):
    from evaluation import ResidentModel

    return ResidentModel(base, device=device)
