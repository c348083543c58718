"""MergeLab evaluation: lm-evaluation-harness on models held in memory, versioned suites, a score cache,
and the paper's study metrics. Public face for jobs and pages; see design.md for the layering."""

from evaluation.cache import DirectoryScoreCache, ScoreCache
from evaluation.errors import EvaluationCancelled, EvaluationError
from evaluation.harness import evaluate, lm_eval_version
from evaluation.home import confine_datasets_cache
from evaluation.models import LoadedModel, ResidentModel, load_model, resolve_device, resolve_dtype
from evaluation.rows import ScoreRow, aggregate
from evaluation.suites import Suite, SuiteTask, folder_suite, get_suite

# lm-eval and `datasets` are imported lazily, after this: their cache lands in the workspace.
confine_datasets_cache()

__all__ = [
    "EvaluationCancelled",
    "DirectoryScoreCache",
    "EvaluationCancelled",
    "EvaluationError",
    "LoadedModel",
    "ResidentModel",
    "ScoreCache",
    "ScoreRow",
    "Suite",
    "SuiteTask",
    "aggregate",
    "evaluate",
    "folder_suite",
    "get_suite",
    "lm_eval_version",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]
