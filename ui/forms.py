"""Render a merge method's parameter specs as form fields and turn what the user typed into a Recipe.

The form is generated from `MethodSpec.params`, so a new method in `merging` gets its UI for free: global
parameters become one field each, per-model parameters get one field per checkpoint (in an expander per
checkpoint), and "Use the paper's values" fills every field whose spec carries a `paper_value`. Widgets
carry no bounds on purpose: `merging.resolve_params` is the single validator, and its RecipeError message
(naming the parameter and the allowed range) is what the user sees.

A number parameter can also be given as a per-layer gradient (a list, drawn as a small curve over the base's
layers) or as a filter table (self_attn / mlp / the rest, each a number or a gradient), as mergekit allows.
Whatever the form does not edit (slices, tokenizer keys, chat_template, name, dtype, int8_mask, the base
listed again under models) is carried from an imported YAML into the recipe unchanged, so the preview shows
the imported YAML back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

import merging
from merging.methods.base import MethodSpec, ParamSpec

DTYPES = ("float32", "bfloat16", "float16")
FORMS = ("number", "gradient", "filters")
REST = "(rest)"  # the filter table's row without a filter: every other tensor
DEFAULT_FILTERS = ("self_attn", "mlp", REST)
CARRIED = ("slices", "tokenizer_source", "tokenizer", "chat_template", "name", "dtype")


def format_gradient(values: Sequence[Any]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def parse_value(text: Any) -> Any:
    """A table cell or text field: a number, or a gradient written as `0, 0.5, 1` (brackets optional).
    Returns None for an empty cell; text that is neither is returned as is (the validator names it)."""
    if text is None:
        return None
    if isinstance(text, int | float) and not isinstance(text, bool):
        return text
    raw = str(text).strip().strip("[]").strip()
    if not raw:
        return None
    parts = [x.strip() for x in raw.split(",") if x.strip()]
    try:
        values = [float(x) for x in parts]
    except ValueError:
        return str(text)
    return values[0] if len(values) == 1 and "," not in raw else values


def layer_curve(setting: Any, num_layers: int) -> list[float] | None:
    """The value at each layer of a gradient (None for a plain number), as the planner resolves it."""
    from merging.planner import evaluate_setting

    if not isinstance(setting, list) or not setting or isinstance(setting[0], dict):
        return None
    n = max(1, num_layers)
    return [float(evaluate_setting(setting, "", i / (n - 1) if n > 1 else 1.0)) for i in range(n)]


def num_layers_of(ref: str | None, default: int = 32) -> int:
    """The base's layer count from its config.json (a local folder); `default` when unknown."""
    import json
    from pathlib import Path

    try:
        cfg = json.loads((Path(ref) / "config.json").read_text()) if ref else {}
        cfg = cfg.get("text_config") or cfg
        return int(cfg.get("num_hidden_layers") or default)
    except (OSError, ValueError, TypeError):
        return default


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
    nothing typed before the import leaks into the imported recipe. Gradients and filter lists open their
    form; keys the form does not edit are kept under `{prefix}:carried` for build_recipe.
    """
    for k in [k for k in st.session_state if str(k).startswith(f"{prefix}:{spec.name}:")]:
        del st.session_state[k]
    for p in spec.params:  # what the YAML leaves out stays out (defaults are not written back)
        st.session_state[field_key(prefix, spec.name, p.name)] = _initial(p)
    st.session_state[field_key(prefix, spec.name, "__explicit")] = sorted(recipe.parameters)
    for p in spec.params:
        if p.name in recipe.parameters:
            _set_setting(field_key(prefix, spec.name, p.name), p, recipe.parameters[p.name])
    base = recipe.base_model
    entries = list(recipe.models)
    if recipe.slices is not None:  # per-model values of slices stay in the carried slices
        entries = []
    for entry in entries:
        if entry.model == base:
            continue
        for p in spec.params:
            if p.per_model and p.name in (entry.parameters or {}):
                _set_setting(field_key(prefix, spec.name, p.name, entry.model), p, entry.parameters[p.name])
    carried = {k: getattr(recipe, k) for k in CARRIED if getattr(recipe, k) is not None}
    extra = {k: v for k, v in recipe.parameters.items() if spec.param(k) is None}
    if extra:
        carried["parameters"] = extra  # int8_mask and the like: no field, kept as written
    if base is None and not spec.needs_base:
        carried["no_base"] = True
    elif base is not None and spec.name == "linear":
        carried["keep_base"] = True  # mergekit averages an unlisted base into a linear merge
    ranges = {m.model: m.layer_range for m in recipe.models if m.layer_range is not None}
    if ranges:
        carried["model_ranges"] = ranges  # layer_range under models: inert in mergekit, kept as written
    listed = [i for i, m in enumerate(recipe.models) if base and m.model == base]
    if listed and recipe.slices is None:
        carried["base_entry"] = (listed[0], dict(recipe.models[listed[0]].parameters))
    st.session_state[f"{prefix}:carried"] = carried


def _set_setting(key: str, p: ParamSpec, value: Any) -> None:
    """Put an imported setting into a field's session state, choosing its form."""
    if p.kind == "float" and isinstance(value, list | dict):
        rows = value if isinstance(value, list) else [value]
        if rows and all(isinstance(r, dict) for r in rows):
            st.session_state[f"{key}:form"] = "filters"
            st.session_state[f"{key}:table"] = [
                {
                    "filter": r.get("filter") or REST,
                    "value": format_gradient(r["value"]) if isinstance(r["value"], list) else r["value"],
                }
                for r in rows
            ]
        else:
            st.session_state[f"{key}:form"] = "gradient"
            st.session_state[f"{key}:gradient"] = format_gradient(rows)
        return
    st.session_state[key] = _coerce(p, value)


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


def _number_field(p: ParamSpec, key: str, label: str, initial: Any) -> Any:
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


def _field(p: ParamSpec, key: str, label: str, initial: Any, num_layers: int = 32) -> Any:
    """A parameter field: a number, or (float parameters) a per-layer gradient or a filter table."""
    if p.kind != "float":
        return _number_field(p, key, label, initial)
    st.session_state.setdefault(f"{key}:form", "number")
    form = (
        st.segmented_control(f"{label} given as", FORMS, key=f"{key}:form", label_visibility="collapsed")
        or "number"
    )
    if form == "number":
        return _number_field(p, key, label, initial)
    if form == "gradient":
        st.session_state.setdefault(f"{key}:gradient", "")
        text = st.text_input(
            f"{label}: gradient over layers",
            key=f"{key}:gradient",
            placeholder="0, 0.5, 0.3, 0.7, 1",
            help="Values spread evenly from the first to the last layer, interpolated in between "
            "(mergekit's gradients). " + _help(p),
        )
        value = parse_value(text)
        curve = layer_curve(value if isinstance(value, list) else None, num_layers)
        if curve:
            st.line_chart({label: curve}, height=120, x_label="layer")
        return value
    st.session_state.setdefault(f"{key}:table", [{"filter": f, "value": None} for f in DEFAULT_FILTERS])
    table = st.data_editor(
        pd.DataFrame(st.session_state[f"{key}:table"], columns=["filter", "value"]).astype(object),
        key=f"{key}:editor",
        num_rows="dynamic",
        column_config={
            "filter": st.column_config.TextColumn(
                "filter", help=f"substring of the tensor name; {REST}: all"
            ),
            "value": st.column_config.TextColumn("value", help="a number or a gradient such as 0, 0.5, 1"),
        },
    )
    rows = []
    for row in table.to_dict("records"):
        value = parse_value(None if pd.isna(row.get("value")) else row.get("value"))
        if value is None:
            continue
        f = "" if pd.isna(row.get("filter")) else str(row.get("filter")).strip()
        rows.append({"value": value} if f in ("", REST, "*") else {"filter": f, "value": value})
    return rows or None


def render_params(
    prefix: str, spec: MethodSpec, checkpoints: Sequence[str], num_layers: int = 32
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
    explicit = set(st.session_state.get(field_key(prefix, spec.name, "__explicit"), []))
    if spec.params:
        cols = st.columns(min(2, len(spec.params)))  # two: room for the number / gradient / filters switch
        for i, p in enumerate(spec.params):
            label = f"{p.name} (every checkpoint)" if p.per_model else p.name
            with cols[i % len(cols)]:
                value = _field(p, field_key(prefix, spec.name, p.name), label, _initial_global(p), num_layers)
            if value is not None and (value != p.default or p.name in explicit):
                params[p.name] = value  # a default nobody typed is left out, as mergekit configs do
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
                        value = _field(p, field_key(prefix, spec.name, p.name, ck), p.name, None, num_layers)
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
    carried: Mapping[str, Any] | None = None,
) -> Any:
    """Build the Recipe the job runner and the YAML export take, then validate it with
    `merging.validate_recipe` (raises RecipeError with the user-facing reason). `carried` holds what an
    imported YAML had beyond the form (slices, tokenizer keys, chat_template, name, dtype, int8_mask, the
    base listed under models); it goes back into the recipe unchanged."""
    carried = dict(carried or {})
    if carried.get("no_base") and not spec.needs_base:
        base = None
    if spec.name == "linear" and not carried.get("keep_base"):
        base = None  # the page's base is a reference only; in the YAML mergekit would average it in
    if spec.needs_base and not base:
        raise merging.errors.RecipeError(f"{spec.title} needs a base model; choose one.")
    slices = carried.get("slices")
    if slices is None and not spec.accepts_models(len(checkpoints)):
        raise merging.errors.RecipeError(
            f"{spec.title} takes {spec.models_needed()}; {len(checkpoints)} chosen."
        )
    ranges = carried.get("model_ranges", {})
    models = [
        merging.ModelEntry(model=ck, parameters=dict(mp), layer_range=ranges.get(ck))
        for ck, mp in zip(checkpoints, model_params, strict=False)
    ]
    if slices is not None:
        models = []
    elif "base_entry" in carried and base:
        index, base_params = carried["base_entry"]
        entry = merging.ModelEntry(model=base, parameters=dict(base_params), layer_range=ranges.get(base))
        models.insert(min(index, len(models)), entry)
    recipe = merging.Recipe(
        merge_method=spec.name,
        base_model=base,
        models=models,
        parameters={**dict(params), **carried.get("parameters", {})},
        dtype=dtype or carried.get("dtype"),
        out_dtype=out_dtype or None,
        seed=seed,
        slices=slices,
        tokenizer_source=carried.get("tokenizer_source"),
        tokenizer=carried.get("tokenizer"),
        chat_template=carried.get("chat_template"),
        name=carried.get("name"),
    )
    merging.validate_recipe(recipe)
    return recipe
