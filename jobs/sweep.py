"""Sweeps: one method's hyperparameter varied over a list of values on fixed checkpoint subsets (the paper's
ablations, App. C), so "was it just a bad lambda?" has an answer.

A sweep is a study whose configurations are the same method at each value of one parameter (every other
parameter at its paper value), merged on the same seeded subsets of one size n. It therefore runs, resumes
and stores exactly like a study (jobs.study_run locally, jobs.ray_backend on Ray), and `sweep_axis` reads
the axis back from any stored study's configurations, so the Study page can draw score against the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from jobs.errors import JobError
from jobs.study import StudyConfig, StudyDefinition, build_recipe, define_study, resolve_configs

if TYPE_CHECKING:
    import pandas as pd

# The parameters the paper ablates, and values that span each one's range (used as UI/CLI defaults).
SWEEP_DEFAULT_VALUES: dict[str, tuple[float, ...]] = {
    "lambda": (0.2, 0.5, 1.0, 1.5, 2.0),
    "density": (0.1, 0.3, 0.5, 0.7, 1.0),
    "svd_thresh": (0.0, 0.05, 0.1, 0.2, 0.5),
    "t": (0.0, 0.25, 0.5, 0.75, 1.0),
}
SWEEP_DEFAULT_SUBSETS = 2


@dataclass(frozen=True)
class SweepAxis:
    """What a sweep varies: `param` of `method`, one configuration name per value (in value order)."""

    method: str
    param: str
    values: tuple[float, ...]
    configs: tuple[str, ...]

    def value_of(self) -> dict[str, float]:
        """Configuration name -> swept value."""
        return dict(zip(self.configs, self.values, strict=True))


def config_name(method: str, param: str, value: float) -> str:
    return f"{method} {param}={value:g}"


def sweepable_params(method: str) -> list[str]:
    """The numeric parameters of a method (the ones a sweep can vary), paper-ablated ones first."""
    from merging import get_method

    spec = get_method(method)
    names = [p.name for p in spec.params if p.kind in ("float", "int") and p.name != "weight"]
    return sorted(names, key=lambda n: (n not in SWEEP_DEFAULT_VALUES, names.index(n)))


def parse_values(values: str | Sequence[float | int | str]) -> list[float]:
    """ "0.2, 0.5,1" or a list -> floats, each once, in the given order; a clear error for anything else."""
    items = values.split(",") if isinstance(values, str) else list(values)
    out: list[float] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise JobError(f"Sweep values must be numbers, got {item!r}.") from None
        if not math.isfinite(value):
            raise JobError(f"Sweep values must be finite numbers, got {item!r}.")
        if value not in out:
            out.append(value)
    if len(out) < 2:
        raise JobError("A sweep needs at least two distinct values.")
    return out


def sweep_configs(
    method: str, param: str, values: Sequence[float], fixed: Mapping[str, Any] | None = None
) -> list[StudyConfig]:
    """One configuration per value: the method's paper configuration (resolve_configs) with `param` set to
    the value, and `fixed` overriding any other parameter. Values outside the parameter's range are refused
    here, before anything is queued."""
    from merging import get_method

    try:
        spec = get_method(method)
    except Exception as exc:
        raise JobError(f"Unknown sweep method {method!r}: {exc}") from None
    p = spec.param(param)
    if p is None or p.kind not in ("float", "int"):
        choices = ", ".join(sweepable_params(spec.name)) or "none"
        raise JobError(f"{spec.name} has no numeric parameter {param!r} to sweep; it has: {choices}.")
    for v in values:
        if (p.minimum is not None and v < p.minimum) or (p.maximum is not None and v > p.maximum):
            lo = "-inf" if p.minimum is None else p.minimum
            hi = "inf" if p.maximum is None else p.maximum
            raise JobError(f"{spec.name} {param}={v:g} is outside its range [{lo}, {hi}].")
        if p.kind == "int" and v != int(v):
            raise JobError(f"{spec.name} {param} takes whole numbers, got {v:g}.")
    (paper,) = resolve_configs([spec.name])
    params = {**paper.params, **dict(fixed or {})}
    return [
        StudyConfig(
            config_name(spec.name, param, v), spec.name, {**params, param: int(v) if p.kind == "int" else v}
        )
        for v in values
    ]


def define_sweep(
    *,
    base: str,
    pool: Sequence[str],
    method: str,
    param: str,
    values: str | Sequence[float | int | str],
    n: int | str,
    subsets: int = SWEEP_DEFAULT_SUBSETS,
    seed: int = 0,
    suite: str = "zoo",
    limit: int | None = None,
    name: str = "",
    fixed: Mapping[str, Any] | None = None,
) -> StudyDefinition:
    """Validate a sweep request and return it as a study definition (sizes = [n]); raises JobError."""
    configs = sweep_configs(method, param, parse_values(values), fixed)
    # n = 1 is a sweep over single checkpoints (slerp's t interpolates the base and one checkpoint)
    single = str(n).strip() == "1"
    definition = define_study(
        base=base,
        pool=pool,
        methods=configs,
        sizes=[n],
        subsets=subsets,
        seed=seed,
        suite=suite,
        limit=limit,
        name=name or f"sweep of {param} for {configs[0].method}",
        single_checkpoints=single,
    )
    # Every configuration must make a valid recipe (the method's own checks, e.g. model counts).
    sample = definition.pool[: definition.sizes[0]]
    from merging import MergeError, validate_recipe

    for config in configs:
        try:
            validate_recipe(build_recipe(config, definition.base, sample, definition.seed))
        except MergeError as exc:
            raise JobError(f"{config.name}: {exc}") from None
    return definition


def sweep_axis(configs: Sequence[StudyConfig | Mapping[str, Any] | str]) -> SweepAxis | None:
    """The axis of a sweep, read back from a study's configurations: two or more configurations of one
    method whose parameters differ in exactly one numeric parameter. None for any other study."""
    if any(not isinstance(c, StudyConfig | Mapping) for c in configs):
        return None  # configurations given by name only (e.g. ["ties"]) carry no swept values
    items = [asdict(c) if isinstance(c, StudyConfig) else dict(c) for c in configs]
    if len(items) < 2 or len({c.get("method") for c in items}) != 1:
        return None
    params = [dict(c.get("params") or {}) for c in items]
    keys = set().union(*params)
    varying = [k for k in keys if len({repr(p.get(k)) for p in params}) > 1]
    if len(varying) != 1:
        return None
    (param,) = varying
    values = [p.get(param) for p in params]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    order = sorted(range(len(items)), key=lambda i: values[i])
    return SweepAxis(
        items[0]["method"],
        param,
        tuple(float(values[i]) for i in order),
        tuple(str(items[i]["name"]) for i in order),
    )


def sweep_params(definition: StudyDefinition, **extra: Any) -> dict[str, Any]:
    """The job parameters of a sweep: the study's, the axis (for the Jobs page), and backend settings."""
    axis = sweep_axis(definition.configs)
    out = definition.to_params()
    out["sweep"] = {"method": axis.method, "param": axis.param, "values": list(axis.values)}
    out.update({k: v for k, v in extra.items() if v is not None})
    out["study_id"] = definition.study_id
    return out


def sweep_points(store: Any, study_id: str) -> pd.DataFrame:
    """One row per scored merge of a sweep: config, value, subset_id, accuracy (unweighted mean over the
    suite's tasks, percentage points). Empty when the study is not a sweep or nothing is scored yet."""
    from jobs.study_frames import study_frames

    study = store.get_study(study_id)
    merged, _, _ = study_frames(store, study)
    return _points(merged, sweep_axis(study["methods"]))


def _points(merged: pd.DataFrame, axis: SweepAxis | None) -> pd.DataFrame:
    """sweep_points from a study's merge frame (jobs.study_frames: the scores every study table reads)."""
    import pandas as pd

    columns = ["config", "value", "subset_id", "accuracy"]
    if axis is None or merged.empty:
        return pd.DataFrame(columns=columns)
    value_of = axis.value_of()
    per_merge = merged.groupby(["method", "subset_id"], as_index=False)["value"].mean()
    per_merge = per_merge[per_merge["method"].isin(value_of)]
    out = pd.DataFrame(
        {
            "config": per_merge["method"],
            "value": per_merge["method"].map(value_of),
            "subset_id": per_merge["subset_id"],
            "accuracy": per_merge["value"] * 100.0,
        }
    )
    out = out.sort_values(["value", "subset_id"], kind="stable").reset_index(drop=True)
    out.attrs.update(param=axis.param, method=axis.method)
    return out


def sweep_curve(store: Any, study_id: str) -> tuple[pd.DataFrame, float | None]:
    """Per swept value: mean, min and max accuracy (%) over the subsets and the number of merges; plus the
    base model's accuracy on the same tasks, metrics and limit (None until it is scored)."""
    import pandas as pd

    from jobs.study_frames import study_frames

    study = store.get_study(study_id)
    merged, base_rows, _ = study_frames(store, study)
    points = _points(merged, sweep_axis(study["methods"]))
    if points.empty:
        curve = pd.DataFrame(columns=["value", "mean", "min", "max", "merges"])
    else:
        g = points.groupby("value", sort=True)["accuracy"]
        curve = g.agg(mean="mean", min="min", max="max", merges="count").reset_index()
    curve.attrs.update(points.attrs)
    base = float(base_rows["value"].mean() * 100.0) if len(base_rows) else None
    return curve, base
