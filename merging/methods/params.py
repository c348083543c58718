"""Validate a recipe's parameters against a method's specs and fill every default (mergekit's rules).

Kept apart from the arithmetic so the engine, the YAML importer and the app's forms share one set of
rules and one set of messages. Every refusal is a one-line RecipeError naming the method, the parameter
and, for per-model values, the model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from merging.errors import RecipeError
from merging.methods.base import MethodSpec, ParamSpec


def resolve_params(
    spec: MethodSpec,
    params: Mapping[str, Any] | None,
    model_params: Sequence[Mapping[str, Any] | None],
    model_names: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return (global params, per-model params), validated and with every default filled in.

    A per-model parameter given in `params` is the default for every model; a model's own value wins.
    `model_names` only improves messages (e.g. the checkpoint's path instead of "model 2").
    """
    params = dict(params or {})
    specs = {p.name: p for p in spec.params}
    labels = [_label(i, model_names) for i in range(len(model_params))]

    for key, value in params.items():
        p = _known(spec, specs, key, "the global parameters")
        params[key] = _coerce(spec, p, value, "in the global parameters")

    resolved_global: dict[str, Any] = {}
    for p in spec.params:
        if p.per_model:
            continue
        if p.name in params:
            resolved_global[p.name] = params[p.name]
        elif p.required:
            raise RecipeError(
                f"{spec.name} needs the global parameter '{p.name}' ({p.help}); set it in parameters"
            )
        else:
            resolved_global[p.name] = p.default

    resolved_models: list[dict[str, Any]] = []
    for label, own in zip(labels, model_params, strict=True):
        own = dict(own or {})
        values: dict[str, Any] = {}
        for key, value in own.items():
            p = _known(spec, specs, key, f"the parameters of {label}")
            if not p.per_model:
                raise RecipeError(
                    f"'{key}' is a global parameter of {spec.name}, not a per-model one: move it from "
                    f"the parameters of {label} to the top-level parameters"
                )
            values[key] = _coerce(spec, p, value, f"for {label}")
        for p in spec.params:
            if not p.per_model or p.name in values:
                continue
            if p.name in params:
                values[p.name] = params[p.name]
            elif p.required:
                raise RecipeError(
                    f"{label} has no '{p.name}', which {spec.name} requires ({p.help}); set it in that "
                    f"model's parameters, or once in the global parameters for every model"
                )
            else:
                values[p.name] = p.default
        resolved_models.append({p.name: values[p.name] for p in spec.params if p.per_model})

    if spec.check is not None:
        spec.check(resolved_global, resolved_models, labels)
    return resolved_global, resolved_models


def _label(i: int, names: Sequence[str] | None) -> str:
    if names is not None and i < len(names) and names[i]:
        return f"model {i + 1} ({names[i]})"
    return f"model {i + 1}"


def _known(spec: MethodSpec, specs: Mapping[str, ParamSpec], key: Any, where: str) -> ParamSpec:
    p = specs.get(key) if isinstance(key, str) else None
    if p is None:
        valid = ", ".join(specs) or "none"
        raise RecipeError(f"{spec.name} has no parameter '{key}' (in {where}); valid parameters: {valid}")
    return p


def _coerce(spec: MethodSpec, p: ParamSpec, value: Any, where: str) -> float | int | bool:
    """Type- and range-check one value; ints become floats for float parameters."""
    prefix = f"{spec.name} parameter '{p.name}' {where}"
    if isinstance(value, Mapping | list | tuple | set):
        raise RecipeError(
            f"{prefix} is a {type(value).__name__} (a mergekit gradient or filter); "
            f"MergeLab supports only scalar values, e.g. {p.name}: {_example(p)}"
        )
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise RecipeError(f"{prefix} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "an integer" if p.kind == "int" else "a number"
        raise RecipeError(f"{prefix} must be {kind}, got {value!r}")
    if p.kind == "int":
        if not isinstance(value, numbers.Integral):
            raise RecipeError(f"{prefix} must be an integer, got {value!r}")
        out: float | int = int(value)
    else:
        out = float(value)
        if not math.isfinite(out):
            raise RecipeError(f"{prefix} must be a finite number, got {value!r}")
    lo, hi = p.minimum, p.maximum
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise RecipeError(f"{prefix} is {value!r}, outside its allowed range {_range(lo, hi)}")
    return out


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"[{lo:g}, {hi:g}]"
    if lo is not None:
        return f">= {lo:g}"
    return f"<= {hi:g}"


def _example(p: ParamSpec) -> str:
    if p.kind == "bool":
        return "true"
    value = p.default if p.default is not None else (p.paper_value if p.paper_value is not None else 1)
    return f"{value:g}" if isinstance(value, float) else str(value)
