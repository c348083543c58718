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
from jobs.sweep import sweep_axis

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
    "default_devices",
    "define_study",
    "sample_subsets",
    "get_kind",
    "job_kinds",
    "register_kind",
    "sweep_axis",
]
