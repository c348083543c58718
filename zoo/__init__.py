"""The MergeLab demo zoo: two tiny base models (Llama and Qwen3 architectures), 12 heterogeneous
checkpoints fine-tuned from each, and the `zoo` benchmark suite, all built offline on CPU.

Public face (imports no other project package):
    build_zoo(root=None, *, seed=0, families=("llama", "qwen3"), scale="full", on_progress=None,
              should_cancel=None, on_family_ready=None) -> Manifest
    load_manifest(root=None) -> Manifest | None     is_complete(root=None) -> bool
    ready_manifest(root=None) -> Manifest | None    (a family usable while the next one builds)
    default_root() -> Path                           tasks_dir(root=None) -> Path
    planned_models(families) -> list[str]            (the models a build makes, in order)
    TASKS                                            Manifest, ModelEntry, ZooError, BuildCancelled
"""

from zoo.build import build_zoo, planned_models
from zoo.manifest import (
    Manifest,
    ModelEntry,
    ZooError,
    default_root,
    is_complete,
    load_manifest,
    ready_manifest,
    tasks_dir,
)
from zoo.tasks import TASKS
from zoo.train import FAMILIES, BuildCancelled

__all__ = [
    "FAMILIES",
    "TASKS",
    "BuildCancelled",
    "Manifest",
    "ModelEntry",
    "ZooError",
    "build_zoo",
    "default_root",
    "is_complete",
    "load_manifest",
    "planned_models",
    "ready_manifest",
    "tasks_dir",
]
