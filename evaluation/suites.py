"""Benchmark suites: which lm-eval tasks a score is made of, which metric each contributes, and a version.

A suite fixes, per task, the metric taken (acc or acc_norm) and the shots, and the headline score is the
unweighted mean over its tasks (paper.md §1.5). Its `version` is a content hash of exactly what decides the
numbers (task names, metrics, shots, and for local tasks the bytes of every YAML and data file), so results
of a changed suite never mix with old ones in a cache or a study.

Specs understood by `get_suite`:
- ``zoo``: the demo zoo's local tasks, ``<zoo_root>/tasks/zoo_*.yaml`` (zoo_root defaults to
  ``$MERGELAB_HOME/zoo``).
- ``paper16``: the paper's 16 benchmarks at lm-eval's default shots (needs the Hub for the data sets).
- ``quick``: four of them with a limit of 100 items per task, for a first look.
- ``arc_easy,boolq,...``: any comma-separated lm-eval task, group or tag names.
- a path to a folder of custom lm-eval task YAMLs.

Local task YAMLs name their data files relative to their own folder (lm-eval would resolve them against
the working directory). We never edit the user's files: for each YAML we write a two-key shim into
``$MERGELAB_HOME/cache/tasks/`` that ``include:``-s the original by absolute path and overrides
``dataset_kwargs`` with absolute data file paths, and hand that folder to lm-eval's TaskManager.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evaluation.errors import EvaluationError
from mergelab_home import cache_dir, zoo_dir

# Metric per paper benchmark. Rule: acc_norm where lm-eval's YAML (paper.md §1.2 table) reports acc_norm as
# its only metric (the leaderboard's gpqa and bbh), acc everywhere else. Which one the paper aggregated is
# unconfirmed; acc is the metric every one of these tasks reports, so it is the comparable default.
PAPER16: tuple[tuple[str, str], ...] = (
    ("arc_easy", "acc"),
    ("arc_challenge", "acc"),
    ("hellaswag", "acc"),
    ("winogrande", "acc"),
    ("boolq", "acc"),
    ("piqa", "acc"),
    ("openbookqa", "acc"),
    ("commonsense_qa", "acc"),
    ("headqa", "acc"),
    ("prost", "acc"),
    ("truthfulqa_mc1", "acc"),
    ("mmlu", "acc"),
    ("medmcqa", "acc"),
    ("leaderboard_gpqa", "acc_norm"),
    ("leaderboard_bbh", "acc_norm"),
    ("leaderboard_mmlu_pro", "acc"),
)
QUICK_TASKS = ("arc_easy", "boolq", "piqa", "winogrande")
QUICK_LIMIT = 100


@dataclass(frozen=True)
class SuiteTask:
    """One benchmark of a suite: an lm-eval task, group or tag name, the metric it contributes, its shots
    (None: the task's own default) and whether it is defined by a local YAML rather than lm-eval's."""

    task: str
    metric: str = "acc"
    num_fewshot: int | None = None
    local: bool = False


@dataclass(frozen=True)
class Suite:
    """A named, versioned set of tasks. `include_path` is the folder of resolved local task YAMLs (None when
    every task is one of lm-eval's); `default_limit` caps items per task when the caller gives no limit."""

    name: str
    version: str
    tasks: tuple[SuiteTask, ...]
    include_path: Path | None
    default_limit: int | None
    description: str

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]

    def task_manager(self):
        """lm-eval's TaskManager for this suite; lm-eval's own ~15k task index is only built (once per
        process, it takes seconds) when a task of the suite needs it."""
        needs_defaults = any(not t.local for t in self.tasks)
        include = str(self.include_path) if self.include_path else None
        return _task_manager(include, needs_defaults, self.version)


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None, include_defaults: bool, suite_version: str):
    """One manager per suite version (so edited task files never reuse stale tasks), which builds each
    task once per thread: a study scores hundreds of models on the same tasks, and rebuilding them (task
    objects, their datasets) cost more than scoring a tiny zoo model. Per thread, because lm-eval keeps
    a run's requests on the task object, so concurrent workers must not share one."""
    from lm_eval.tasks import TaskManager

    class ReusingTaskManager(TaskManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._built: dict[tuple, Any] = {}

        def load(self, task_list):
            if not (isinstance(task_list, list | tuple) and all(isinstance(t, str) for t in task_list)):
                return super().load(task_list)
            key = (threading.get_ident(), tuple(task_list))
            if key not in self._built:
                self._built[key] = super().load(task_list)
            return self._built[key]

    return ReusingTaskManager(include_path=include_path, include_defaults=include_defaults)


def builtin_task_manager():
    """The TaskManager over lm-eval's built-in tasks only (cached for the process)."""
    return _task_manager(None, True, "builtin")


def get_suite(spec: str, *, zoo_root: Path | None = None) -> Suite:
    """Resolve a suite spec (see the module docstring) into a Suite; raises EvaluationError for unknown
    tasks, a missing folder, or a suite without tasks."""
    spec = (spec or "").strip()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise EvaluationError(
            "the suite is empty: give `zoo`, `paper16`, `quick`, task names or a task folder"
        )
    if spec == "zoo":
        root = Path(zoo_root) if zoo_root is not None else zoo_dir()
        folder = root / "tasks"
        if not folder.is_dir():
            raise EvaluationError(
                f"zoo task folder {folder} not found; build the zoo first (`python -m zoo build`) "
                "or pass --zoo-root pointing at a built zoo"
            )
        return folder_suite(
            folder, name="zoo", pattern="zoo_*.yaml", description="the demo zoo's local tasks"
        )
    if spec == "paper16":
        return _builtin_suite(
            "paper16",
            [SuiteTask(t, m) for t, m in PAPER16],
            None,
            "the paper's 16 lm-eval benchmarks at lm-eval's default shots (paper.md §1.2)",
        )
    if spec == "quick":
        metrics = dict(PAPER16)
        return _builtin_suite(
            "quick",
            [SuiteTask(t, metrics[t]) for t in QUICK_TASKS],
            QUICK_LIMIT,
            f"{len(QUICK_TASKS)} of the paper's benchmarks, {QUICK_LIMIT} items each",
        )
    if _looks_like_path(spec):
        return folder_suite(Path(spec))
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise EvaluationError(
            "the suite is empty: give `zoo`, `paper16`, `quick`, task names or a task folder"
        )
    return _builtin_suite(spec, [SuiteTask(n, _builtin_metric(n)) for n in _validated(names)], None, spec)


def declared_metrics(spec: str) -> dict[str, str]:
    """task -> the metric a suite takes from it, for reading stored scores, told without lm-eval's task
    index (seconds to build): `paper16`, `quick` and the paper's benchmarks in a task list from PAPER16, a
    task folder (and `zoo`) from its YAMLs. A task it cannot tell (another lm-eval task, a folder no longer
    there) is left out, so the caller applies its own rule to that task."""
    spec = (spec or "").strip()
    if spec in ("paper16", "quick"):
        return {t.task: t.metric for t in get_suite(spec).tasks}
    if spec == "zoo" or _looks_like_path(spec):
        try:
            return {t.task: t.metric for t in get_suite(spec).tasks}
        except EvaluationError:
            return {}
    paper = dict(PAPER16)
    return {name: paper[name] for name in (s.strip() for s in spec.split(",")) if name in paper}


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.startswith((".", "~")) or Path(spec).is_dir()


def _builtin_suite(name: str, tasks: list[SuiteTask], default_limit: int | None, description: str) -> Suite:
    if not tasks:
        raise EvaluationError(f"suite {name!r} has no tasks")
    return Suite(name, _version(tasks, {}), tuple(tasks), None, default_limit, description)


def _validated(names: list[str]) -> list[str]:
    """Check names against lm-eval's task index; unknown ones raise with the closest known names."""
    known = set(builtin_task_manager().all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise EvaluationError(f"unknown lm-eval task {name!r}{hint}")
    if len(set(names)) != len(names):
        raise EvaluationError(f"task list names a task twice: {','.join(names)}")
    return names


def _builtin_metric(name: str) -> str:
    """The paper's metric for its benchmarks; else acc when the task reports it, else its first metric."""
    paper = dict(PAPER16)
    if name in paper:
        return paper[name]
    index = builtin_task_manager().task_index
    entry = index.get(name)
    cfg = entry.cfg if entry is not None else None
    if entry is not None and cfg is None:  # a tag: take its first member's metric
        member = next((e for e in index.values() if name in e.tags and e.cfg), None)
        cfg = member.cfg if member else None
    return _metric_of(cfg or {})


def _metric_of(cfg: dict[str, Any]) -> str:
    listed = cfg.get("metric_list") or cfg.get("aggregate_metric_list") or []
    names = [m.get("metric") for m in listed if isinstance(m, dict) and isinstance(m.get("metric"), str)]
    if not names or "acc" in names:
        return "acc"
    return names[0]


def folder_suite(
    folder: Path, *, name: str | None = None, pattern: str = "*.yaml", description: str = ""
) -> Suite:
    """A suite of every task (and group) defined by the YAMLs of a folder; tasks belonging to a group defined
    in the same folder are scored through that group."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise EvaluationError(f"task folder {folder} not found")
    from lm_eval.tasks._yaml_loader import load_yaml

    configs: dict[Path, dict[str, Any]] = {}
    for path in sorted(folder.glob(pattern)):
        try:
            cfg = load_yaml(path, resolve_func=False, recursive=True)
        except Exception as err:  # lm-eval raises plain ValueError/YAMLError for broken files
            raise EvaluationError(f"cannot read task YAML {path}: {err}") from None
        configs[path] = cfg
    grouped = {
        str(t)
        for cfg in configs.values()
        if isinstance(cfg.get("group"), str)
        for t in (cfg.get("task") or [])
    }
    tasks: list[SuiteTask] = []
    data_files: dict[Path, list[Path]] = {}
    for path, cfg in configs.items():
        if isinstance(cfg.get("group"), str):
            tasks.append(SuiteTask(cfg["group"], _metric_of(cfg), None, local=True))
        elif isinstance(cfg.get("task"), str):
            data_files[path] = _data_files(path, cfg)
            if cfg["task"] not in grouped:
                tasks.append(SuiteTask(cfg["task"], _metric_of(cfg), cfg.get("num_fewshot"), local=True))
    if not tasks:
        raise EvaluationError(f"task folder {folder} defines no tasks (no {pattern} file with a `task:` key)")
    hashes = {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    for files in data_files.values():
        hashes.update({str(f): _sha256(f) for f in files if f.parent != folder})
    version = _version(tasks, hashes)
    include = _write_shims(folder, configs, data_files, version)
    return Suite(
        name or str(folder), version, tuple(tasks), include, None, description or f"tasks in {folder}"
    )


def _data_files(yaml_path: Path, cfg: dict[str, Any]) -> list[Path]:
    """The data files a task names, resolved against the YAML's folder; each must exist."""
    spec = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if spec is None:
        return []
    found = []
    for entry in _flatten(spec):
        if "://" in entry:
            continue
        path = (yaml_path.parent / entry).resolve()
        if not path.is_file():
            raise EvaluationError(
                f"task {cfg.get('task')!r} ({yaml_path.name}) names data file {path}, which is missing"
            )
        found.append(path)
    return found


def _flatten(spec: Any) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, dict):
        return [s for v in spec.values() for s in _flatten(v)]
    if isinstance(spec, list | tuple):
        return [s for v in spec for s in _flatten(v)]
    return []


def _absolute(spec: Any, base: Path) -> Any:
    if isinstance(spec, str):
        return spec if "://" in spec else str((base / spec).resolve())
    if isinstance(spec, dict):
        return {k: _absolute(v, base) for k, v in spec.items()}
    if isinstance(spec, list | tuple):
        return [_absolute(v, base) for v in spec]
    return spec


def _write_shims(
    folder: Path, configs: dict[Path, dict], data_files: dict[Path, list[Path]], version: str
) -> Path:
    """One include-shim per YAML under the cache, keyed by version and the folder's absolute path (the shims
    point at it), written to a temporary sibling and renamed so concurrent writers never see half a folder."""
    where = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    target = cache_dir("tasks") / f"{version}-{where}"
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    for path, cfg in configs.items():
        shim: dict[str, Any] = {"include": str(path.resolve())}
        kwargs = cfg.get("dataset_kwargs")
        if path in data_files and isinstance(kwargs, dict) and "data_files" in kwargs:
            shim["dataset_kwargs"] = {**kwargs, "data_files": _absolute(kwargs["data_files"], path.parent)}
        (tmp / path.name).write_text(yaml.safe_dump(shim, sort_keys=False))
    try:
        tmp.rename(target)
    except OSError:  # another process won the race with identical content
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(tasks: list[SuiteTask], file_hashes: dict[str, str]) -> str:
    payload = {
        "tasks": [[t.task, t.metric, t.num_fewshot, t.local] for t in tasks],
        "files": dict(sorted(file_hashes.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
