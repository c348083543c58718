"""Render a merge method's parameter specs as form fields and turn what the user typed into a Recipe.

The form is generated from `MethodSpec.params`, so a new method in `merging` gets its UI for free: global
parameters become one field each, per-model parameters get one field per checkpoint (in an expander per
checkpoint), and "Use the paper's values" fills every field whose spec carries a `paper_value`. Widgets
carry no bounds on purpose: `merging.resolve_params` is the single validator, and its RecipeError message
(naming the parameter and the allowed range) is what the user sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

import merging
from merging.methods.base import MethodSpec, ParamSpec

DTYPES = ("float32", "bfloat16", "float16")


def field_key(prefix: str, method: str, param: str, model: str | None = None) -> str:
    """Session-state key of one field; the method is part of it so switching methods never leaks values."""
    return f"{prefix}:{method}:{param}" if model is None else f"{prefix}:{method}:{model}:{param}"


def _range_text(p: ParamSpec) -> str:
    if p.minimum is not None and p.maximum is not None:
        return f" Allowed: {p.minimum:g} to {p.maximum:g}."
    if p.minimum is not None:
        return f" Allowed: at least {p.minimum:g}."
    if p.maximum is not None:
        return f" Allowed: at most {p.maximum:g}."
    return ""


def _help(p: ParamSpec) -> str:
    paper = f" The paper used {p.paper_value}." if p.paper_value is not None else ""
    required = " Required." if p.required else ""
    return f"{p.help}{_range_text(p)}{paper}{required}"


def _initial(p: ParamSpec) -> Any:
    if p.default is None:
        return None
    if p.kind == "bool":
        return bool(p.default)
    if p.kind == "int":
        return int(p.default)
    return float(p.default)


def paper_values(spec: MethodSpec) -> dict[str, Any]:
    """{param: paper_value} for every parameter the paper fixed (empty when it fixed none)."""
    return {p.name: p.paper_value for p in spec.params if p.paper_value is not None}


def apply_paper_values(prefix: str, spec: MethodSpec, checkpoints: Sequence[str]) -> None:
    """Button callback: write the paper's values into the fields' session state before they render; a
    per-model value goes into the every-checkpoint field and clears the per-checkpoint overrides."""
    for p in spec.params:
        if p.paper_value is None:
            continue
        st.session_state[field_key(prefix, spec.name, p.name)] = _coerce(p, p.paper_value)
        if p.per_model:
            for ck in checkpoints:
                st.session_state[field_key(prefix, spec.name, p.name, ck)] = None


def load_recipe_into_state(prefix: str, spec: MethodSpec, recipe: Any) -> None:
    """Prefill the fields from an imported recipe (mergekit YAML), so the user can review and edit it.

    Every field of the method is reset first (global fields to their defaults, overrides to empty), so
    nothing typed before the import leaks into the imported recipe.
    """
    for k in [k for k in st.session_state if str(k).startswith(f"{prefix}:{spec.name}:")]:
        del st.session_state[k]
    for p in spec.params:
        st.session_state[field_key(prefix, spec.name, p.name)] = _initial_global(p)
    for p in spec.params:
        if p.name in recipe.parameters:
            st.session_state[field_key(prefix, spec.name, p.name)] = _coerce(p, recipe.parameters[p.name])
    for entry in recipe.models:
        for p in spec.params:
            if p.per_model and p.name in (entry.parameters or {}):
                key = field_key(prefix, spec.name, p.name, entry.model)
                st.session_state[key] = _coerce(p, entry.parameters[p.name])


def _coerce(p: ParamSpec, value: Any) -> Any:
    """Best-effort cast of an imported value for the widget; anything odd is left to resolve_params."""
    try:
        if p.kind == "bool":
            return bool(value)
        if p.kind == "int":
            return int(value)
        return float(value)
    except (TypeError, ValueError):
        return value


def _field(p: ParamSpec, key: str, label: str, initial: Any) -> Any:
    """One widget for one ParamSpec; returns its current value (None when left empty)."""
    if key not in st.session_state:
        st.session_state[key] = initial
    if p.kind == "bool" and initial is None and p.per_model:
        return st.selectbox(
            label,
            [None, True, False],
            key=key,
            help=_help(p),
            format_func=lambda v: "(as above)" if v is None else str(v),
        )
    if p.kind == "bool":
        return st.checkbox(label, key=key, help=_help(p))
    if p.kind == "int":
        return st.number_input(label, key=key, step=1, help=_help(p), placeholder="(not set)")
    return st.number_input(label, key=key, step=0.01, format="%.4f", help=_help(p), placeholder="(not set)")


def render_params(
    prefix: str, spec: MethodSpec, checkpoints: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Draw the method's fields; returns (global params, per-checkpoint params), unset fields omitted.

    A per-model parameter gets a global field (mergekit's semantics: the default for every checkpoint)
    prefilled with its default or the paper's value, plus an optional override per checkpoint.
    """
    per_model = [p for p in spec.params if p.per_model]
    if paper_values(spec):
        st.button(
            "Use the paper's values",
            key=f"{prefix}:{spec.name}:paper",
            on_click=apply_paper_values,
            args=(prefix, spec, list(checkpoints)),
            help="Sets " + ", ".join(f"{k} = {v}" for k, v in paper_values(spec).items()),
            icon=":material/article:",
        )
    params: dict[str, Any] = {}
    if spec.params:
        cols = st.columns(min(3, len(spec.params)))
        for i, p in enumerate(spec.params):
            label = f"{p.name} (every checkpoint)" if p.per_model else p.name
            with cols[i % len(cols)]:
                value = _field(p, field_key(prefix, spec.name, p.name), label, _initial_global(p))
            if value is not None:
                params[p.name] = value
    else:
        st.caption("This method has no hyperparameters.")
    model_params: list[dict[str, Any]] = []
    if per_model and checkpoints:
        st.caption("Per-checkpoint overrides: leave empty to use the value above.")
    for ck in checkpoints:
        entry: dict[str, Any] = {}
        if per_model:
            with st.expander(f"{_short(ck)} · per-checkpoint parameters", expanded=False):
                cols = st.columns(min(3, len(per_model)))
                for i, p in enumerate(per_model):
                    with cols[i % len(cols)]:
                        value = _field(p, field_key(prefix, spec.name, p.name, ck), p.name, None)
                    if value is not None:
                        entry[p.name] = value
        model_params.append(entry)
    return params, model_params


def _short(ref: str) -> str:
    return ref.rstrip("/").split("/")[-1] if ref.startswith(("/", ".")) else ref


def _initial_global(p: ParamSpec) -> Any:
    """Default, else the paper's value for a required parameter (so Task Arithmetic starts at weight 1)."""
    if p.default is not None:
        return _initial(p)
    if p.required and p.paper_value is not None:
        return _coerce(p, p.paper_value)
    return None


def build_recipe(
    spec: MethodSpec,
    base: str | None,
    checkpoints: Sequence[str],
    params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
    dtype: str | None = None,
    out_dtype: str | None = None,
    seed: int | None = None,
) -> Any:
    """Validate with `merging.resolve_params` (raises RecipeError with the user-facing reason) and build
    the Recipe the job runner and the YAML export take."""
    if spec.needs_base and not base:
        raise merging.errors.RecipeError(f"{spec.title} needs a base model; choose one.")
    if not spec.accepts_models(len(checkpoints)):
        raise merging.errors.RecipeError(
            f"{spec.title} takes {spec.models_needed()}; {len(checkpoints)} chosen."
        )
    merging.resolve_params(spec, dict(params), [dict(m) for m in model_params], list(checkpoints))
    models = [
        merging.ModelEntry(model=ck, parameters=dict(mp))
        for ck, mp in zip(checkpoints, model_params, strict=False)
    ]
    return merging.Recipe(
        merge_method=spec.name,
        base_model=base,
        models=models,
        parameters=dict(params),
        dtype=dtype,
        out_dtype=out_dtype or None,
        seed=seed,
    )
