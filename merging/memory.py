"""A reused float32 workspace for the merge engine's per-tensor inputs.

A merge needs the same (T + 1) input slots for every tensor. Allocating them afresh per tensor makes the
allocator hand pages back to the OS and fault zeroed ones in again each time, which on virtual machines
costs more than the arithmetic; one buffer, grown to the largest tensor and reused, avoids it. Peak memory
is unchanged: the largest tensor needs that much anyway.
"""

from __future__ import annotations

import torch


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
