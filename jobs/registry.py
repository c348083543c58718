"""Job kinds: a name, the function that runs it, and an optional validator that checks parameters at submit
time (so a bad request is refused in the page, not minutes later in a worker)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.errors import JobError

if TYPE_CHECKING:
    from jobs.context import JobContext

RunFn = Callable[["JobContext", dict[str, Any]], Any]
ValidateFn = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class JobKind:
    name: str
    run: RunFn
    validate: ValidateFn | None = None
    description: str = ""


_KINDS: dict[str, JobKind] = {}


def register_kind(
    name: str, run: RunFn, *, validate: ValidateFn | None = None, description: str = ""
) -> JobKind:
    """Register (or replace) a job kind; its run function returns a JSON-serialisable result. The run
    function must be module-level: jobs run in a worker process that imports it by name."""
    check_run_function(run)
    kind = JobKind(name, run, validate, description)
    _KINDS[name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise JobError(f"Unknown job kind {name!r}; known kinds: {', '.join(sorted(_KINDS))}.") from None


def job_kinds() -> list[str]:
    return sorted(_KINDS)


def validated_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    kind = get_kind(name)
    params = dict(params)
    return kind.validate(params) if kind.validate else params


def check_run_function(run) -> tuple[str, str]:
    """(module, qualname) of a job's run function; only module-level functions can run in a worker."""
    module = getattr(run, "__module__", None)
    qualname = getattr(run, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise JobError(
            f"job run function {run!r} must be a module-level function of an importable module "
            "(jobs run in a worker process that imports it by name)"
        )
    return module, qualname
