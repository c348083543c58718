"""Keep freed memory in the process between tensors.

A merge allocates and frees the same few large buffers once per tensor. glibc serves big allocations
with fresh mmap'd pages and hands them back on free, so every tensor pays page faults on zeroed pages
again; on virtual machines (balloon drivers, DAMON reclaim) those faults cost more than the arithmetic.
The engine therefore reuses one workspace for its inputs, and asks glibc to serve allocations up to its
maximum mmap threshold (32 MiB) from a heap it does not trim. Process-wide and idempotent; a no-op where
glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20
_configured = False


def keep_freed_memory() -> bool:
    """Tune glibc's allocator once per process; True when it took effect."""
    global _configured
    if _configured or not sys.platform.startswith("linux"):
        return _configured
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MAX_MMAP_THRESHOLD) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    _configured = ok
    return ok


class Workspace:
    """One float32 buffer on the merge device, grown to the largest request and reused for every
    tensor: (T + 1) slots for the checkpoints' stack and the base."""

    def __init__(self, device: torch.device):
        self.device = device
        self._buf = torch.empty(0, dtype=torch.float32, device=device)

    def reserve(self, numel: int) -> None:
        if self._buf.numel() < numel:
            self._buf = torch.empty(0, dtype=torch.float32, device=self.device)  # free before growing
            self._buf = torch.empty(numel, dtype=torch.float32, device=self.device)

    def slots(self, count: int, shape: tuple[int, ...]) -> torch.Tensor:
        """A (count, *shape) view of the buffer; its contents are whatever the last tensor left."""
        numel = count * int(torch.Size(shape).numel())
        self.reserve(numel)
        return self._buf[:numel].view(count, *shape)
