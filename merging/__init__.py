"""MergeLab's merge engine: checkpoints, compatibility, recipes, methods, streaming merge, sinks, geometry.

This is the package's public face; pages, jobs and evaluation import from here. `merging` imports no other
package of the project.
"""

from merging import errors, recipe
from merging.analyse import AnalysisResult, LayerConflict, analyse_checkpoints, random_sign_conflict
from merging.checkpoint import Checkpoint, RemoteCheckpoint, TensorInfo, open_checkpoint
from merging.compat import CompatIssue, CompatReport, TensorSource, check_compatibility
from merging.engine import MergeResult, merge_fingerprint, resolve_device, run_merge, tensor_seed
from merging.errors import (
    CheckpointError,
    CompatibilityError,
    DeviceError,
    MergeCancelled,
    MergeError,
    NonFiniteError,
    OutputError,
    OutputExistsError,
    RecipeError,
)
from merging.geometry import MergeStats, Spectrum, TensorStats
from merging.hub import download_checkpoint
from merging.methods import MethodSpec, ParamSpec, TensorInputs, all_methods, get_method, resolve_params
from merging.plan import MergePlan, PlannedTensor, TensorInput
from merging.planner import validate_recipe
from merging.progress import Progress
from merging.recipe import DTYPES, ModelEntry, Recipe
from merging.sinks import DirectorySink, ModelSink, Sink

__all__ = [
    "DTYPES",
    "AnalysisResult",
    "CheckpointError",
    "Checkpoint",
    "CompatIssue",
    "CompatReport",
    "CompatibilityError",
    "DeviceError",
    "DirectorySink",
    "MergeCancelled",
    "MergeError",
    "MergePlan",
    "MergeResult",
    "MergeStats",
    "MethodSpec",
    "ModelEntry",
    "ModelSink",
    "NonFiniteError",
    "OutputError",
    "OutputExistsError",
    "ParamSpec",
    "PlannedTensor",
    "Progress",
    "Recipe",
    "RemoteCheckpoint",
    "RecipeError",
    "Sink",
    "Spectrum",
    "TensorInfo",
    "TensorInput",
    "TensorInputs",
    "TensorSource",
    "TensorStats",
    "LayerConflict",
    "all_methods",
    "analyse_checkpoints",
    "random_sign_conflict",
    "check_compatibility",
    "download_checkpoint",
    "errors",
    "get_method",
    "merge_fingerprint",
    "open_checkpoint",
    "recipe",
    "resolve_device",
    "resolve_params",
    "run_merge",
    "tensor_seed",
    "validate_recipe",
]
