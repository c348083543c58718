"""Progress of a running merge, as the engine reports it after every tensor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Counts after `tensor_name` was merged; bytes are input bytes read (base plus every checkpoint)."""

    tensors_done: int
    tensors_total: int
    bytes_done: int
    bytes_total: int
    tensor_name: str

    @property
    def fraction(self) -> float:
        """Share of the work done, by bytes read (tensors differ wildly in size)."""
        if self.bytes_total <= 0:
            return 1.0 if self.tensors_done >= self.tensors_total else 0.0
        return min(1.0, self.bytes_done / self.bytes_total)
