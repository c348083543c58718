"""One resident model per (base, device), shared by every job that merges into that base.

A study or a run of merge+evaluate jobs on one base would otherwise load the base again for every merge.
The pool hands a job exclusive use of the resident model (the merge writes its weights into it), keeps at
most `capacity` bases per device, and drops the least recently used idle one when a new base is needed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class ResidentPool:
    def __init__(self, capacity: int = 2, factory: Callable[[str, str], Any] | None = None) -> None:
        self.capacity = max(1, capacity)
        self._factory = factory or _load_resident
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[Any, threading.Lock]] = OrderedDict()

    @contextmanager
    def use(self, base: str, device: str) -> Iterator[Any]:
        """Exclusive use of the resident model of `base` on `device`, loading it on first use."""
        key = (str(base), device)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = (None, threading.Lock())
                self._entries[key] = entry
            self._entries.move_to_end(key)
        model_lock = entry[1]
        with model_lock:
            model = self._entries[key][0]
            if model is None:
                model = self._factory(str(base), device)
                with self._lock:
                    self._entries[key] = (model, model_lock)
                    self._evict(keep=key)
            yield model

    def _evict(self, keep: tuple[str, str]) -> None:
        same_device = [k for k in self._entries if k[1] == keep[1] and k != keep]
        while len(same_device) + 1 > self.capacity and same_device:
            victim = same_device.pop(0)
            _, lock = self._entries[victim]
            if lock.locked():  # in use by another job; keep it
                continue
            del self._entries[victim]

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return [k for k, (m, _) in self._entries.items() if m is not None]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _load_resident(base: str, device: str):
    from evaluation import ResidentModel

    return ResidentModel(base, device=device)
