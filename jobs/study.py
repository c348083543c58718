"""The paper's study protocol (paper.md §1.3): subsets of a checkpoint pool merged with several method
configurations, every merge scored on one suite; the base and each single checkpoint scored once.

A study's identity is a hash of its definition, so running the same definition again finds the same study
and skips every merge whose scores are stored (resumable, no duplicate rows). Subsets are drawn once per
study and reused by every configuration.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.errors import JobError
from store import Store


@dataclass(frozen=True)
class StudyConfig:
    """One method configuration of a study: a label, a registered method, and its parameter values
    (per-model ones such as weight and density are applied to every checkpoint)."""

    name: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


# --- The study's defaults: the ONE place the CLI, the job and the app (ui/launch.py) read them from. ------
# The paper's configurations, labelled with the paper's own method names, with the values paper.md §1.4
# gives (α_i = 1, λ = 1, TIES density 0.1, Subspace Boosting β = 0.2; TSV-M and Iso-C at λ = 1; Model
# Stock parameter-free). Task Arithmetic comes in both readings of the paper (paper.md, "Ambiguity to
# flag"): Eq. 2 with weights 1 and λ 1 is a SUM of task vectors (mergekit's default), while Figure 4 and
# the discussion fit a MEAN (mergekit `normalize: true`). The study carries both, labelled.
TA_SUM = "TA (sum)"
TA_MEAN = "TA (mean)"
PAPER_CONFIGS: tuple[StudyConfig, ...] = (
    StudyConfig(TA_SUM, "task_arithmetic", {"weight": 1.0, "lambda": 1.0}),
    StudyConfig(TA_MEAN, "task_arithmetic", {"weight": 1.0, "lambda": 1.0, "normalize": True}),
    StudyConfig("TIES", "ties", {"weight": 1.0, "density": 0.1, "lambda": 1.0}),
    StudyConfig("Model Stock", "model_stock", {}),
    StudyConfig("TA+SB", "task_arithmetic_sb", {"weight": 1.0, "lambda": 1.0, "svd_thresh": 0.2}),
    StudyConfig("TIES+SB", "ties_sb", {"weight": 1.0, "density": 0.1, "lambda": 1.0, "svd_thresh": 0.2}),
    StudyConfig("TSV-M", "tsvm", {"lambda": 1.0}),
    StudyConfig("Iso-C", "iso_c", {"lambda": 1.0}),
)
# What a study runs when no configuration is named: all of the above.
DEFAULT_CONFIG_NAMES: tuple[str, ...] = tuple(c.name for c in PAPER_CONFIGS)
# A registry method name stands for its paper configuration (task_arithmetic: the literal Eq. 2, a sum).
CONFIG_ALIASES: dict[str, str] = {
    "task_arithmetic": TA_SUM,
    "ties": "TIES",
    "model_stock": "Model Stock",
    "task_arithmetic_sb": "TA+SB",
    "ties_sb": "TIES+SB",
    "tsvm": "TSV-M",
    "iso_c": "Iso-C",
}
# The paper's merge sizes (n=12 is "all" for its pools of 12) and subsets per size (§1.3).
DEFAULT_SIZES: tuple[int, ...] = (2, 4, 6, 8, 10, 12)
DEFAULT_SUBSETS = 15


def default_sizes(pool_size: int) -> list[int]:
    """The paper's sizes that fit a pool, plus the pool size itself (the paper's n=12 is its whole pool)."""
    return sorted({s for s in DEFAULT_SIZES if 2 <= s < pool_size} | {pool_size})


def paper_config(name: str) -> StudyConfig | None:
    """A default configuration by its label or by its method's registry name; None for anything else."""
    label = CONFIG_ALIASES.get(name, name)
    return next((c for c in PAPER_CONFIGS if c.name == label), None)


def resolve_configs(methods: Sequence[str | Mapping[str, Any] | StudyConfig] | None) -> list[StudyConfig]:
    """Method names -> configurations: a paper configuration by its name, any other registered method with
    its paper values (or defaults); dicts {name, method, params} pass through. None: DEFAULT_CONFIG_NAMES."""
    if not methods:
        return [paper_config(n) for n in DEFAULT_CONFIG_NAMES]
    from merging import get_method

    out: list[StudyConfig] = []
    for item in methods:
        if isinstance(item, StudyConfig):
            config = item
        elif isinstance(item, Mapping):
            config = StudyConfig(
                str(item["name"]), str(item.get("method", item["name"])), dict(item.get("params", {}))
            )
        elif paper_config(str(item)) is not None:
            config = paper_config(str(item))
        else:
            try:
                spec = get_method(item)
            except Exception as exc:
                raise JobError(f"Unknown study method {item!r}: {exc}") from None
            values = {}
            for p in spec.params:
                value = p.paper_value if p.paper_value is not None else p.default
                if p.required and value is None:
                    value = 1.0
                if (p.required or p.paper_value is not None) and value is not None:
                    values[p.name] = value
            config = StudyConfig(item, spec.name, values)
        try:
            get_method(config.method)
        except Exception as exc:
            raise JobError(f"Study configuration {config.name!r}: {exc}") from None
        out.append(config)
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise JobError(f"Study configurations must have distinct names, got {names}.")
    return out


def build_recipe(config: StudyConfig, base: str, checkpoints: Sequence[str], seed: int):
    """The merge recipe of one configuration on one subset (per-model values go on every model entry)."""
    from merging import ModelEntry, Recipe, get_method

    spec = get_method(config.method)
    per_model = {k: v for k, v in config.params.items() if (p := spec.param(k)) is not None and p.per_model}
    global_ = {k: v for k, v in config.params.items() if k not in per_model}
    return Recipe(
        merge_method=config.method,
        base_model=base,
        models=[ModelEntry(str(c), dict(per_model)) for c in checkpoints],
        parameters=global_,
        seed=seed,
    )


def _check_counts(configs: Sequence[StudyConfig], sizes: Sequence[int]) -> None:
    """Refuse up front a method that cannot merge some subset size (slerp takes one checkpoint)."""
    from merging import get_method

    for config in configs:
        spec = get_method(config.method)
        bad = [n for n in sizes if not spec.accepts_models(n)]
        if bad:
            raise JobError(
                f"Study configuration {config.name!r}: {spec.name} takes {spec.models_needed()}, "
                f"so it cannot merge subsets of {bad[0]}; leave it out of this study"
            )


def normalize_sizes(sizes: Sequence[int | str] | None, pool_size: int) -> list[int]:
    """Sizes 2..N (\"all\" means N); default: `default_sizes` (the paper's below N, and N itself)."""
    if pool_size < 2:
        raise JobError("A study needs a pool of at least 2 checkpoints.")
    if not sizes:
        return default_sizes(pool_size)
    out = set()
    for s in sizes:
        n = pool_size if str(s).strip().lower() == "all" else _int(s, "size")
        if not 2 <= n <= pool_size:
            raise JobError(
                f"Subset size {n} is outside 2..{pool_size} (the pool has {pool_size} checkpoints)."
            )
        out.add(n)
    return sorted(out)


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise JobError(f"The {what} must be a whole number, got {value!r}.") from None


def sample_subsets(
    pool: Sequence[str], sizes: Sequence[int], per_size: int, seed: int
) -> list[tuple[int, str, list[str]]]:
    """(n, subset_id, checkpoints) for every size: `per_size` distinct subsets drawn uniformly without
    replacement with `seed` (all of them when fewer exist; exactly one when n is the pool size).
    Checkpoints keep pool order inside a subset."""
    if per_size < 1:
        raise JobError(f"Subsets per size must be at least 1, got {per_size}.")
    out = []
    for n in sizes:
        total = math.comb(len(pool), n)
        if total <= per_size:
            chosen = list(itertools.combinations(range(len(pool)), n))
        else:
            rng = random.Random(f"mergelab-study/{seed}/{n}")
            seen: set[tuple[int, ...]] = set()
            chosen = []
            while len(chosen) < per_size:
                pick = tuple(sorted(rng.sample(range(len(pool)), n)))
                if pick not in seen:
                    seen.add(pick)
                    chosen.append(pick)
        for i, pick in enumerate(chosen):
            out.append((n, f"n{n:02d}-{i:02d}", [pool[j] for j in pick]))
    return out


@dataclass(frozen=True)
class StudyDefinition:
    base: str
    pool: list[str]
    configs: list[StudyConfig]
    sizes: list[int]
    subsets_per_size: int
    seed: int
    suite: str
    limit: int | None = None
    name: str = ""

    @property
    def study_id(self) -> str:
        """Hash of everything that decides the results (not the name): same definition, same study."""
        canon = {
            "base": self.base,
            "pool": list(self.pool),
            "configs": [asdict(c) for c in self.configs],
            "sizes": list(self.sizes),
            "subsets": self.subsets_per_size,
            "seed": self.seed,
            "suite": self.suite,
            "limit": self.limit,
        }
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:12]

    def to_params(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "pool": list(self.pool),
            "methods": [asdict(c) for c in self.configs],
            "sizes": list(self.sizes),
            "subsets": self.subsets_per_size,
            "seed": self.seed,
            "suite": self.suite,
            "limit": self.limit,
            "name": self.name,
        }


def define_study(
    *,
    base: str,
    pool: Sequence[str],
    methods: Sequence[str | Mapping[str, Any] | StudyConfig] | None = None,
    sizes: Sequence[int | str] | None = None,
    subsets: int = DEFAULT_SUBSETS,
    seed: int = 0,
    suite: str = "zoo",
    limit: int | None = None,
    name: str = "",
    single_checkpoints: bool = False,
) -> StudyDefinition:
    """Validate a study request (no tensors read); raises JobError with what to fix.

    single_checkpoints: sizes = [1], merges of the base with one checkpoint at a time (a sweep of slerp's
    t); the paper's protocol itself starts at n = 2."""
    pool = [str(p) for p in pool]
    if len(set(pool)) != len(pool):
        raise JobError("The pool lists a checkpoint twice; give each checkpoint once.")
    if not base:
        raise JobError("A study needs a base model.")
    if limit is not None and _int(limit, "limit") < 1:
        raise JobError(f"The limit must be a positive number of items per task, got {limit}.")
    configs = resolve_configs(methods)
    sizes = [1] if single_checkpoints else normalize_sizes(sizes, len(pool))
    _check_counts(configs, sizes)
    return StudyDefinition(
        base=str(base),
        pool=pool,
        configs=configs,
        sizes=sizes,
        subsets_per_size=_int(subsets, "number of subsets"),
        seed=_int(seed, "seed"),
        suite=str(suite),
        limit=None if limit is None else int(limit),
        name=name or f"study of {len(pool)} checkpoints",
    )


def definition_from_params(params: Mapping[str, Any]) -> StudyDefinition:
    return define_study(
        base=params.get("base", ""),
        pool=params.get("pool") or [],
        methods=params.get("methods"),
        sizes=params.get("sizes"),
        subsets=params.get("subsets", DEFAULT_SUBSETS),
        seed=params.get("seed", 0),
        suite=params.get("suite", "zoo"),
        limit=params.get("limit"),
        name=params.get("name", ""),
        # a sweep over single checkpoints is stored with sizes [1]; the job reads it back as such
        single_checkpoints=[str(s) for s in params.get("sizes") or []] == ["1"],
    )


def ensure_study(store: Store, definition: StudyDefinition) -> str:
    """Create the study and its subsets on first run; later runs find them (same id) unchanged."""
    sid = definition.study_id
    try:
        store.get_study(sid)
    except Exception:
        store.create_study(
            name=definition.name,
            base=definition.base,
            pool=definition.pool,
            methods=[asdict(c) for c in definition.configs],
            sizes=definition.sizes,
            subsets_per_size=definition.subsets_per_size,
            seed=definition.seed,
            suite=definition.suite,
            limit=definition.limit,
            study_id=sid,
        )
    store.add_study_subsets(
        sid, sample_subsets(definition.pool, definition.sizes, definition.subsets_per_size, definition.seed)
    )
    return sid


@dataclass
class StudyPlan:
    """What is left to do: refs to score alone (base and pool) and (subset, config) merges."""

    study_id: str
    baselines: list[str]
    merges: list[tuple[dict[str, Any], StudyConfig]]
    done_merges: int
    total_units: int


def _inputs_of(merge: Mapping[str, Any]) -> tuple[str | None, list[str | None]]:
    return merge["base_fingerprint"], list(merge["checkpoint_fingerprints"] or [])


def plan_study(
    store: Store, definition: StudyDefinition, suite_version: str, fingerprint_of: Callable[[str], str]
) -> StudyPlan:
    """Compare the study's units with what the store holds, by content: a stored merge counts only when it
    was made from the checkpoints' current fingerprints. One made from an older version of a checkpoint (a
    rebuilt zoo, an updated folder) is marked superseded and its unit runs again; incomplete records are
    discarded. Single models are looked up by fingerprint, so a changed checkpoint is scored again."""
    sid = ensure_study(store, definition)
    limit = definition.limit
    fps = {ref: fingerprint_of(ref) for ref in [definition.base, *definition.pool]}
    store.set_study_inputs(sid, fps)
    baselines = [ref for ref in fps if not store.get_eval_rows(fps[ref], suite_version, limit)]
    by_unit: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in store.find_study_merges(sid):
        by_unit.setdefault((m["subset_id"], m["config"]), []).append(m)
    todo, done = [], 0
    for subset in store.study_subsets(sid):
        for config in definition.configs:
            records = by_unit.get((subset["subset_id"], config.name), [])
            inputs = (fps[definition.base], [fps[c] for c in subset["checkpoints"]])
            for old in [m for m in records if _inputs_of(m) != inputs]:
                store.supersede_merge(old["id"], "superseded: its checkpoints changed since it ran")
                records.remove(old)
            finished = [
                m
                for m in records
                if m["status"] == "done"
                and m["merged_fingerprint"]
                and store.get_eval_rows(m["merged_fingerprint"], suite_version, limit)
            ]
            if finished:
                done += 1
                for extra in finished[1:] + [m for m in records if m not in finished]:
                    store.discard_merge(extra["id"])
                continue
            for stale in records:
                store.discard_merge(stale["id"])
            todo.append((subset, config))
    total = 1 + len(definition.pool) + done + len(todo)
    return StudyPlan(sid, baselines, todo, done, total)
