"""Errors a user can cause. Each carries a message the user can act on; the CLI prints it as one line."""


class MergeError(Exception):
    """Base of every user-facing merge error (bad recipe, incompatible checkpoints, unreadable files)."""


class RecipeError(MergeError):
    """The recipe is malformed: unknown method or parameter, out-of-range value, broken YAML."""


class CheckpointError(MergeError):
    """A checkpoint cannot be found, downloaded or read (missing path, corrupt safetensors, pickle-only)."""


class CompatibilityError(MergeError):
    """Checkpoints cannot be merged with the base: other architecture, tensor set or shapes."""


class NonFiniteError(MergeError):
    """An input tensor holds NaN or Inf."""


class OutputExistsError(MergeError):
    """The output directory exists and is not empty; MergeLab never overwrites it."""


class MergeCancelled(Exception):
    """Raised inside the engine when the caller cancels; no output is left behind. Not an error."""


class OutputError(MergeError):
    """The merged model cannot be written (disk full, permission denied, a tensor the sink cannot place)."""


class DeviceError(MergeError):
    """The requested compute device is not available on this machine."""


class MemoryBudgetError(MergeError):
    """The memory budget cannot hold the smallest unit of work (one row, or a tensor a method needs whole).
    `needed` is the budget in bytes that unit needs, when known."""

    def __init__(self, *args: object) -> None:
        self.needed: int | None = args[0] if len(args) > 1 and isinstance(args[0], int) else None
        super().__init__(*(args[1:] if self.needed is not None else args))
