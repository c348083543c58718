"""MergeLab's background work: a JobRunner with a DuckDB-persisted queue, the job kinds (merge, evaluate,
merge+evaluate, study, build-zoo), the paper's study protocol and its Ray backend.

    from store import Store
    from jobs import JobRunner
    runner = JobRunner(Store(), workers=1)        # one per process; one worker per GPU when there are GPUs
    job_id = runner.submit("merge+evaluate", {"recipe_yaml": ..., "suite": "zoo"})
    runner.get(job_id).progress, runner.get(job_id).log
    runner.cancel(job_id); runner.retry(job_id)
"""

from jobs import kinds as _kinds  # noqa: F401  (registers the built-in job kinds)
from jobs.cache import StoreScoreCache
from jobs.context import JobContext
from jobs.errors import JobCancelled, JobError
from jobs.registry import JobKind, get_kind, job_kinds, register_kind
from jobs.runner import JobRunner, default_devices
from jobs.study import PAPER_CONFIGS, StudyConfig, StudyDefinition, define_study, sample_subsets
from jobs.sweep import (
    SWEEP_DEFAULT_SUBSETS,
    SWEEP_DEFAULT_VALUES,
    SweepAxis,
    define_sweep,
    sweep_axis,
    sweep_curve,
    sweep_points,
    sweepable_params,
)

__all__ = [
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobKind",
    "JobRunner",
    "PAPER_CONFIGS",
    "StudyConfig",
    "StudyDefinition",
    "StoreScoreCache",
    "SWEEP_DEFAULT_SUBSETS",
    "SWEEP_DEFAULT_VALUES",
    "SweepAxis",
    "default_devices",
    "define_study",
    "define_sweep",
    "sample_subsets",
    "sweep_axis",
    "sweep_curve",
    "sweep_points",
    "sweepable_params",
    "get_kind",
    "job_kinds",
    "register_kind",
]
