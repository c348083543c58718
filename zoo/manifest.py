"""The zoo's manifest (zoo.json) and where a zoo lives.

A build rewrites zoo.json each time a family is ready: it lists only finished models, and the families still
to build under `pending`. So its presence plus every listed model directory means the listed families are
usable; `is_complete` also wants nothing pending. Readers (the app, jobs, evaluation) only need `Manifest`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mergelab_home import zoo_dir

MANIFEST_NAME = "zoo.json"
MANIFEST_VERSION = 1


class ZooError(Exception):
    """A zoo that is missing, incomplete or malformed, or a build request that cannot be honoured."""


def default_root() -> Path:
    """`$MERGELAB_HOME/zoo`, with MERGELAB_HOME defaulting to ./workspace (mergelab_home.py)."""
    return zoo_dir()


def tasks_dir(root: Path | None = None) -> Path:
    """The folder holding zoo_<task>.jsonl and zoo_<task>.yaml (data_files paths are relative to it)."""
    return Path(root if root is not None else default_root()) / "tasks"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    kind: str  # "base", "specialist", "generalist", "long", "conflict", "added-vocab", "barely", "new-skill"
    description: str
    recipe: dict
    path: str  # relative to the zoo root


@dataclass(frozen=True)
class Manifest:
    """What a built zoo holds: bases per family, their checkpoints in a stable order, and the task suite."""

    root: Path
    seed: int
    scale: str
    tasks: tuple[str, ...]
    models: tuple[ModelEntry, ...]
    extra: dict = field(default_factory=dict)
    pending: tuple[str, ...] = ()  # families a build has yet to finish (listed models are all usable)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.family for m in self.models))

    def model(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise ZooError(f"no model {name!r} in the zoo at {self.root}; it has {', '.join(self.names())}")

    def names(self, family: str | None = None) -> list[str]:
        return [m.name for m in self.models if family is None or m.family == family]

    def model_dir(self, name: str) -> Path:
        return self.root / self.model(name).path

    def base_dir(self, family: str) -> Path:
        for m in self.models:
            if m.family == family and m.kind == "base":
                return self.root / m.path
        raise ZooError(f"the zoo at {self.root} has no {family!r} family (it has {', '.join(self.families)})")

    def checkpoints(self, family: str) -> list[ModelEntry]:
        return [m for m in self.models if m.family == family and m.kind != "base"]

    def checkpoint_dirs(self, family: str) -> list[Path]:
        self.base_dir(family)  # a clear error for an unknown family
        return [self.root / m.path for m in self.checkpoints(family)]

    @property
    def tasks_dir(self) -> Path:
        return tasks_dir(self.root)

    def to_json(self) -> dict:
        return {
            "version": MANIFEST_VERSION,
            "seed": self.seed,
            "scale": self.scale,
            "tasks": list(self.tasks),
            "suite": "zoo",
            "families": {
                f: {"base": self.names(f)[0], "checkpoints": [m.name for m in self.checkpoints(f)]}
                for f in self.families
            },
            "models": [m.__dict__ for m in self.models],
            "pending": list(self.pending),
            **self.extra,
        }

    @classmethod
    def from_json(cls, root: Path, data: dict) -> Manifest:
        if data.get("version") != MANIFEST_VERSION:
            raise ZooError(f"{root / MANIFEST_NAME} has version {data.get('version')!r}; rebuild the zoo")
        try:
            models = tuple(ModelEntry(**m) for m in data["models"])
            known = {"version", "seed", "scale", "tasks", "suite", "families", "models", "pending"}
            extra = {k: v for k, v in data.items() if k not in known}
            pending = tuple(data.get("pending") or ())
            return cls(
                Path(root), int(data["seed"]), data["scale"], tuple(data["tasks"]), models, extra, pending
            )
        except (KeyError, TypeError) as e:
            raise ZooError(
                f"{root / MANIFEST_NAME} is malformed ({e}); rebuild with `python -m zoo build`"
            ) from e


def read_manifest(root: Path) -> Manifest | None:
    """The manifest at root, or None when there is none; a clear ZooError when it is unreadable."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ZooError(f"cannot read {path} ({e}); rebuild with `python -m zoo build`") from e
    return Manifest.from_json(Path(root), data)


def missing_parts(manifest: Manifest) -> list[str]:
    """Files the manifest promises that are not on disk (empty for a complete zoo)."""
    missing = []
    for m in manifest.models:
        d = manifest.root / m.path
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (d / f).is_file():
                missing.append(str(d / f))
    for t in manifest.tasks:
        for ext in ("jsonl", "yaml"):
            p = manifest.tasks_dir / f"zoo_{t}.{ext}"
            if not p.is_file():
                missing.append(str(p))
    return missing


def load_manifest(root: Path | None = None) -> Manifest | None:
    """The manifest of the zoo's ready families (`pending` names those still to build); None when no family
    was finished there; ZooError when a listed model is missing."""
    root = Path(root) if root is not None else default_root()
    manifest = read_manifest(root)
    if manifest is None:
        return None
    missing = missing_parts(manifest)
    if missing:
        raise ZooError(
            f"the zoo at {root} is incomplete ({len(missing)} missing files, e.g. {missing[0]}); "
            "run `python -m zoo build` to finish it"
        )
    return manifest


def is_complete(root: Path | None = None) -> bool:
    """Every family built: a readable manifest, no missing file, nothing pending."""
    root = Path(root) if root is not None else default_root()
    try:
        m = read_manifest(root)
    except ZooError:
        return False
    return m is not None and not m.pending and not missing_parts(m)


def ready_manifest(root: Path | None = None) -> Manifest | None:
    """The manifest when at least one family is usable (complete or not), else None; never raises."""
    try:
        return load_manifest(root)
    except ZooError:
        return None
