"""Memory the merge engine hands back: a reused float32 workspace for per-tensor inputs, and the C
allocator's policy for large blocks.

A merge needs the same (T + 1) input slots for every tensor. Allocating them afresh per tensor makes the
allocator hand pages back to the OS and fault zeroed ones in again each time, which on virtual machines
costs more than the arithmetic; one buffer, grown to the largest tensor and reused, avoids it. Peak memory
is unchanged: the largest tensor needs that much anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
# Allocations at least this large get their own mapping, returned to the OS when freed.
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_frees_to_os() -> bool:
    """Make glibc map every allocation of MMAP_THRESHOLD_BYTES or more on its own (and unmap it when freed).

    By default glibc raises its mmap threshold to the size of each mapped block freed (up to 32 MiB), after
    which blocks of that size come from the heap; a few small long-lived allocations (a block's row sums)
    then land in the freed holes, so the next block's masks and copies cannot reuse them and the heap grows
    by about one block per task per pass: dare_ties at 12 checkpoints of 8B shapes went past 10 GiB under a
    5.5 GiB budget, with no tensor alive to account for it. A fixed threshold disables that adjustment.
    Returns False where the C library is not glibc (nothing changed)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError, TypeError):
        return False


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
