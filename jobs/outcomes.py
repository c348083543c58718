"""How a job's ending is classified and cleaned up, shared by the supervisor (jobs.runner) and the worker
process (jobs.worker), which must not import each other."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from jobs.errors import JobCancelled, JobError
from store import StoreError


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story (no traceback in the job's error)."""
    types: list[type[BaseException]] = [JobError, StoreError]
    try:
        from merging.errors import MergeError

        types.append(MergeError)
    except ImportError:
        pass
    try:
        from evaluation.errors import EvaluationError

        types.append(EvaluationError)
    except ImportError:
        pass
    return tuple(types)


def cancel_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [JobCancelled]
    try:
        from merging.errors import MergeCancelled

        types.append(MergeCancelled)
    except ImportError:
        pass
    try:
        from evaluation.errors import EvaluationCancelled

        types.append(EvaluationCancelled)
    except ImportError:
        pass
    return tuple(types)


def remove_paths(paths: Iterable[str]) -> list[str]:
    """Delete files or folders (missing ones are fine); returns what was removed."""
    removed = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(raw)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(raw)
    return removed
