"""Recipes: what to merge and how, in mergekit's YAML vocabulary.

A recipe round-trips to the YAML mergekit reads (`merge_method`, `base_model`, `models[].model`,
`models[].parameters`, `parameters`, `dtype`, `out_dtype`), plus MergeLab's top-level `seed`. Parsing checks
only the shape of the document; `validate_recipe` checks the method and its parameters against the registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from merging.errors import MergeError, RecipeError

DTYPES = ("float32", "float16", "bfloat16")
_DTYPE_ALIASES = {
    "fp32": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "float": "float32",
}
_TOP_KEYS = ("models", "merge_method", "base_model", "parameters", "dtype", "out_dtype", "seed")


@dataclass
class ModelEntry:
    """One checkpoint of the merge and its per-model parameters (e.g. weight, density)."""

    model: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """A merge: method, base, checkpoints, parameters, dtypes and seed. `dtype` is mergekit's compute
    dtype, kept for round-tripping; MergeLab always computes in float32."""

    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    seed: int | None = None

    # --- dict / YAML ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """Build from a parsed mergekit document; a wrong shape is a one-line RecipeError."""
        if not isinstance(data, dict):
            raise RecipeError(f"recipe must be a mapping of keys, got {type(data).__name__}")
        unknown = [k for k in data if k not in _TOP_KEYS]
        if unknown:
            raise RecipeError(f"unsupported recipe key {unknown[0]!r}; supported: {', '.join(_TOP_KEYS)}")
        method = data.get("merge_method")
        if not isinstance(method, str) or not method.strip():
            raise RecipeError("recipe needs merge_method: a method name such as ties or task_arithmetic")
        base = data.get("base_model")
        if base is not None and not isinstance(base, str):
            raise RecipeError(f"base_model must be a path or Hub id, got {type(base).__name__}")
        raw_models = data.get("models")
        if not isinstance(raw_models, list) or not raw_models:
            raise RecipeError("recipe needs models: a non-empty list of entries with a 'model' key")
        models = [_model_entry(i, m) for i, m in enumerate(raw_models)]
        params = _params(data.get("parameters"), "parameters")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise RecipeError(f"seed must be a non-negative integer, got {seed!r}")
        return cls(
            merge_method=method.strip(),
            base_model=base,
            models=models,
            parameters=params,
            dtype=_dtype_key(data.get("dtype"), "dtype"),
            out_dtype=_dtype_key(data.get("out_dtype"), "out_dtype"),
            seed=seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """mergekit's layout; absent values (None, empty parameter maps) are left out, as mergekit does."""
        out: dict[str, Any] = {"models": []}
        for m in self.models:
            entry: dict[str, Any] = {"model": m.model}
            if m.parameters:
                entry["parameters"] = dict(m.parameters)
            out["models"].append(entry)
        out["merge_method"] = self.merge_method
        if self.base_model is not None:
            out["base_model"] = self.base_model
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        for key in ("dtype", "out_dtype", "seed"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> Recipe:
        """Parse YAML text, or read it from a file path. Broken YAML is a RecipeError with its line."""
        text = _yaml_text(text_or_path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise RecipeError(f"broken YAML in recipe{where}: {problem}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_IndentedDumper, sort_keys=False, default_flow_style=False)

    @property
    def refs(self) -> list[str]:
        """Every checkpoint the merge reads: the base (when given) first, then the models."""
        return ([self.base_model] if self.base_model else []) + [m.model for m in self.models]


class _IndentedDumper(yaml.SafeDumper):
    """Indents list items under their key, the way mergekit's example configs are written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


def _yaml_text(text_or_path: str | Path) -> str:
    if isinstance(text_or_path, Path) or (
        "\n" not in text_or_path and text_or_path.endswith((".yml", ".yaml")) and ":" not in text_or_path
    ):
        path = Path(text_or_path)
        try:
            return path.read_text()
        except FileNotFoundError:
            raise RecipeError(f"recipe file {str(path)!r} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"cannot read recipe file {str(path)!r}: {exc}") from None
    if "\n" not in text_or_path and os.path.isfile(text_or_path):
        return Path(text_or_path).read_text()
    return text_or_path


def _model_entry(i: int, entry: Any) -> ModelEntry:
    if isinstance(entry, str):
        return ModelEntry(entry)
    if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
        raise RecipeError(f"models[{i}] must be a mapping with a 'model' path or Hub id")
    extra = [k for k in entry if k not in ("model", "parameters")]
    if extra:
        raise RecipeError(f"models[{i}]: unsupported key {extra[0]!r} (only model and parameters)")
    return ModelEntry(entry["model"], _params(entry.get("parameters"), f"models[{i}].parameters"))


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{where} must be a mapping of name: value")
    for k, v in value.items():
        if not isinstance(k, str):
            raise RecipeError(f"{where}: parameter names must be strings, got {k!r}")
        if isinstance(v, list | dict):
            raise RecipeError(
                f"{where}.{k}: per-tensor filters and gradients are not supported; give one number or boolean"
            )
        if not isinstance(v, bool | int | float):
            raise RecipeError(f"{where}.{k} must be a number or boolean, got {v!r}")
    return dict(value)


def _dtype_key(value: Any, key: str) -> str | None:
    if value is None:
        return None
    name = _DTYPE_ALIASES.get(str(value), str(value))
    if name not in DTYPES:
        raise RecipeError(f"{key} must be one of {', '.join(DTYPES)}, got {value!r}")
    return str(value)  # kept as written (bf16 stays bf16) so the YAML round-trips; see canonical_dtype


def canonical_dtype(value: str | None) -> str | None:
    """mergekit accepts a few aliases (bf16, fp16); everything downstream sees the torch spelling."""
    return None if value is None else _DTYPE_ALIASES.get(value, value)


def validate_recipe(recipe: Recipe):
    """Check the method exists and its parameters are known and in range, via the method registry.

    Returns (MethodSpec, global params, per-model params), all defaults filled in. Raises RecipeError.
    """
    from merging.methods import all_methods, get_method, resolve_params

    try:
        spec = get_method(recipe.merge_method)
    except MergeError:
        raise
    except (KeyError, ValueError):
        names = ", ".join(sorted(m.name for m in all_methods()))
        raise RecipeError(f"unknown merge_method {recipe.merge_method!r}; available: {names}") from None
    if spec.needs_base and not recipe.base_model:
        raise RecipeError(f"{spec.name} needs base_model: the checkpoint the fine-tunes started from")
    if len(recipe.models) < spec.min_models:
        raise RecipeError(
            f"{spec.name} needs at least {spec.min_models} models, the recipe has {len(recipe.models)}"
        )
    globals_, per_model = resolve_params(
        spec, recipe.parameters, [m.parameters for m in recipe.models], [m.model for m in recipe.models]
    )
    return spec, globals_, per_model
