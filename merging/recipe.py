"""Recipes: what to merge and how, in mergekit's YAML vocabulary, kept as the user wrote it.

A recipe round-trips to the YAML mergekit reads: `merge_method`, `base_model`, either `models[]` or
`slices[].sources[]` (with `layer_range`), `parameters` (global and per model, each a number, a per-layer
gradient list or a list of `filter:`/`value:` entries), `dtype`, `out_dtype`, `tokenizer_source` or a
`tokenizer:` block, `chat_template`, `name`, plus MergeLab's top-level `seed`. Parsing checks only the
shape of the document (and its size, through `safe_yaml`); gradients and filters are resolved per tensor by
`merging.planner`, whose `validate_recipe` checks the method and every value a tensor could receive.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from merging.errors import RecipeError
from merging.safe_yaml import load_yaml

DTYPES = ("float32", "float16", "bfloat16")
_DTYPE_ALIASES = {
    "fp32": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "float": "float32",
}
_TOP_KEYS = (
    "models",
    "slices",
    "merge_method",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "name",
    "seed",
)
# Keys mergekit knows that MergeLab does not implement: a clear refusal instead of a did-you-mean.
_REFUSED_KEYS = {
    "modules": "multi-module configs (modules:) are not supported; use models: or slices:",
}
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
MAX_MODELS = 256  # model entries plus slice sources: far above any real recipe, far below a Gram blow-up
TOKENIZER_SOURCES = ("base", "union")


@dataclass
class ModelEntry:
    """One checkpoint of the merge and its per-model parameters (e.g. weight, density), as written:
    a value may be a number, a gradient list or a list of filter entries."""

    model: str
    parameters: dict[str, Any] = field(default_factory=dict)
    layer_range: tuple[int, int] | None = None  # mergekit reads no layer_range under models: kept, no effect


@dataclass
class SliceSource:
    """One input of an output slice: layers [start, end) of `model`, with per-model parameters."""

    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputSlice:
    """A run of output layers, merged layer by layer from its sources (all of the same length)."""

    sources: list[SliceSource]
    parameters: dict[str, Any] = field(default_factory=dict)
    residual_weight: float | None = None  # read by mergekit 0.1.5's schema, used by none of its methods

    @property
    def num_layers(self) -> int:
        a, b = self.sources[0].layer_range
        return b - a


@dataclass
class Recipe:
    """A merge: method, base, checkpoints (or slices), parameters, dtypes, tokenizer and seed.

    `dtype` is mergekit's compute dtype; MergeLab always computes in float32, and, as in mergekit, `dtype`
    is also the output dtype when `out_dtype` is absent."""

    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    seed: int | None = None
    slices: list[OutputSlice] | None = None
    tokenizer_source: str | None = None
    tokenizer: dict[str, Any] | None = None
    chat_template: str | None = None
    name: str | None = None

    # --- dict / YAML ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """Build from a parsed mergekit document; a wrong shape is a one-line RecipeError."""
        if not isinstance(data, dict):
            raise RecipeError(f"recipe must be a mapping of keys, got {type(data).__name__}")
        for k in data:
            if k in _REFUSED_KEYS:
                raise RecipeError(_REFUSED_KEYS[k])
            if k not in _TOP_KEYS:
                close = difflib.get_close_matches(str(k), _TOP_KEYS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; supported: {', '.join(_TOP_KEYS)}"
                raise RecipeError(f"unsupported recipe key {k!r}{hint}")
        method = data.get("merge_method")
        if not isinstance(method, str) or not method.strip():
            raise RecipeError("recipe needs merge_method: a method name such as ties or task_arithmetic")
        base = _ref(data.get("base_model"), "base_model")
        raw_models, raw_slices = data.get("models"), data.get("slices")
        if raw_models is not None and raw_slices is not None:
            raise RecipeError("recipe has both models: and slices:; give exactly one of them")
        models: list[ModelEntry] = []
        slices: list[OutputSlice] | None = None
        if raw_slices is not None:
            if not isinstance(raw_slices, list) or not raw_slices:
                raise RecipeError("slices: must be a non-empty list of entries with sources:")
            slices = [_slice(i, s) for i, s in enumerate(raw_slices)]
            n = sum(len(s.sources) for s in slices)
        else:
            if not isinstance(raw_models, list) or not raw_models:
                raise RecipeError("recipe needs models: a non-empty list of entries with a 'model' key")
            n = len(raw_models)
        if n > MAX_MODELS:
            raise RecipeError(f"recipe lists {n} models, over the limit of {MAX_MODELS}")
        if raw_slices is None:
            models = [_model_entry(i, m) for i, m in enumerate(raw_models)]
        params = _params(data.get("parameters"), "parameters")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise RecipeError(f"seed must be a non-negative integer, got {seed!r}")
        tok_source = data.get("tokenizer_source")
        tokenizer = _tokenizer_block(data.get("tokenizer"))
        if tok_source is not None:
            tok_source = _ref(tok_source, "tokenizer_source")
            if tokenizer is not None:
                raise RecipeError(
                    "give either tokenizer_source or a tokenizer: block, not both (as mergekit)"
                )
        chat = data.get("chat_template")
        if chat is not None and (not isinstance(chat, str) or not chat.strip()):
            raise RecipeError("chat_template must be a template name (e.g. chatml), auto, or Jinja text")
        name = data.get("name")
        if name is not None and not isinstance(name, str | int | float):
            raise RecipeError(f"name must be text, got {type(name).__name__}")
        return cls(
            merge_method=method.strip(),
            base_model=base,
            models=models,
            parameters=params,
            dtype=_dtype_key(data.get("dtype"), "dtype"),
            out_dtype=_dtype_key(data.get("out_dtype"), "out_dtype"),
            seed=seed,
            slices=slices,
            tokenizer_source=tok_source,
            tokenizer=tokenizer,
            chat_template=chat,
            name=None if name is None else str(name),
        )

    def to_dict(self) -> dict[str, Any]:
        """mergekit's layout; absent values (None, empty parameter maps) are left out, as mergekit does."""
        out: dict[str, Any] = {}
        if self.slices is not None:
            out["slices"] = []
            for s in self.slices:
                srcs = []
                for src in s.sources:
                    e: dict[str, Any] = {"model": src.model, "layer_range": list(src.layer_range)}
                    if src.parameters:
                        e["parameters"] = _copy(src.parameters)
                    srcs.append(e)
                entry: dict[str, Any] = {"sources": srcs}
                if s.parameters:
                    entry["parameters"] = _copy(s.parameters)
                if s.residual_weight is not None:
                    entry["residual_weight"] = s.residual_weight
                out["slices"].append(entry)
        else:
            out["models"] = []
            for m in self.models:
                entry = {"model": m.model}
                if m.layer_range is not None:
                    entry["layer_range"] = list(m.layer_range)
                if m.parameters:
                    entry["parameters"] = _copy(m.parameters)
                out["models"].append(entry)
        out["merge_method"] = self.merge_method
        if self.base_model is not None:
            out["base_model"] = self.base_model
        if self.parameters:
            out["parameters"] = _copy(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.tokenizer is not None:
            out["tokenizer"] = _copy(self.tokenizer)
        for key in ("chat_template", "name", "seed"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> Recipe:
        """Parse YAML text, or read it from a file path, within safe_yaml's limits (size, aliases, nodes).
        Broken YAML is a RecipeError with its line."""
        return cls.from_dict(load_yaml(_yaml_text(text_or_path)))

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_IndentedDumper, sort_keys=False, default_flow_style=False)

    @property
    def refs(self) -> list[str]:
        """Every checkpoint the merge reads, once each: the base (when given) first, then the models or the
        slices' sources in order of appearance."""
        refs = [self.base_model] if self.base_model else []
        if self.slices is not None:
            refs += [src.model for s in self.slices for src in s.sources]
        else:
            refs += [m.model for m in self.models]
        return list(dict.fromkeys(refs))


class _IndentedDumper(yaml.SafeDumper):
    """Indents list items under their key, the way mergekit's example configs are written; lists of
    numbers (gradients, layer ranges) stay on one line, as mergekit writes them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = bool(data) and all(isinstance(e, int | float) and not isinstance(e, bool) for e in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_IndentedDumper.add_representer(list, _represent_list)


def _yaml_text(text_or_path: str | Path) -> str | bytes:
    if isinstance(text_or_path, Path) or (
        "\n" not in text_or_path and text_or_path.endswith((".yml", ".yaml")) and ":" not in text_or_path
    ):
        path = Path(text_or_path)
        try:
            return _read_limited(path)
        except FileNotFoundError:
            raise RecipeError(f"recipe file {str(path)!r} not found") from None
        except OSError as exc:
            raise RecipeError(f"cannot read recipe file {str(path)!r}: {exc}") from None
    if "\n" not in text_or_path and len(text_or_path) < 4096 and os.path.isfile(text_or_path):
        return _read_limited(Path(text_or_path))
    return text_or_path


def _read_limited(path: Path) -> bytes:
    """Refuse a file over the YAML size limit from its size alone, without reading it."""
    from merging.safe_yaml import MAX_BYTES

    size = path.stat().st_size
    if size > MAX_BYTES:
        raise RecipeError(
            f"recipe file {str(path)!r} is {size / 1e6:.1f} MB, over the {MAX_BYTES // 1024} KiB limit"
        )
    with open(path, "rb") as fh:
        return fh.read(MAX_BYTES + 1)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


def _ref(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("model"), str):
        return value["model"]  # mergekit's long form {model: path}
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{key} must be a path or Hub id, got {value!r}"[:200])
    return value


def _model_entry(i: int, entry: Any) -> ModelEntry:
    if isinstance(entry, str):
        return ModelEntry(entry)
    if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
        raise RecipeError(f"models[{i}] must be a mapping with a 'model' path or Hub id")
    extra = [k for k in entry if k not in ("model", "parameters", "layer_range")]
    if extra:
        raise RecipeError(f"models[{i}]: unsupported key {extra[0]!r} (only model and parameters)")
    lr = entry.get("layer_range")
    if lr is not None:
        lr = _layer_range(lr, f"models[{i}]")
    return ModelEntry(entry["model"], _params(entry.get("parameters"), f"models[{i}].parameters"), lr)


def _layer_range(lr: Any, where: str) -> tuple[int, int]:
    if (
        not isinstance(lr, list | tuple)
        or len(lr) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
        or not 0 <= lr[0] < lr[1]
    ):
        raise RecipeError(
            f"{where}: layer_range must be [start, end) with 0 <= start < end, got {lr!r}"[:200]
        )
    return (lr[0], lr[1])


def _slice(i: int, entry: Any) -> OutputSlice:
    where = f"slices[{i}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("sources"), list) or not entry["sources"]:
        raise RecipeError(f"{where} must be a mapping with sources: a non-empty list of model + layer_range")
    extra = [k for k in entry if k not in ("sources", "parameters", "residual_weight")]
    if extra:
        what = "a per-slice base_model" if extra[0] == "base_model" else repr(extra[0])
        raise RecipeError(f"{where}: {what} is not supported (only sources, parameters, residual_weight)")
    residual = entry.get("residual_weight")
    if residual is not None and (isinstance(residual, bool) or not isinstance(residual, int | float)):
        raise RecipeError(f"{where}.residual_weight must be a number, got {residual!r}"[:200])
    sources = []
    for j, src in enumerate(entry["sources"]):
        w = f"{where}.sources[{j}]"
        if not isinstance(src, dict) or not isinstance(src.get("model"), str):
            raise RecipeError(f"{w} must be a mapping with a 'model' path or Hub id and a layer_range")
        extra = [k for k in src if k not in ("model", "layer_range", "parameters")]
        if extra:
            raise RecipeError(f"{w}: unsupported key {extra[0]!r} (only model, layer_range and parameters)")
        lr = _layer_range(src.get("layer_range"), w)
        sources.append(SliceSource(src["model"], lr, _params(src.get("parameters"), f"{w}.parameters")))
    lengths = {s.layer_range[1] - s.layer_range[0] for s in sources}
    if len(lengths) > 1:
        raise RecipeError(f"{where}: every source must span the same number of layers, got {sorted(lengths)}")
    return OutputSlice(sources, _params(entry.get("parameters"), f"{where}.parameters"), residual)


def _scalar(v: Any, where: str) -> bool | int | float:
    if isinstance(v, bool | int | float):
        return v
    if isinstance(v, str):
        if v.strip().lower() in _BOOL_WORDS:  # what mergekit's (pydantic's) validation accepts
            return _BOOL_WORDS[v.strip().lower()]
        try:
            return float(v)  # a quoted number, as mergekit's validation reads it
        except ValueError:
            pass
    raise RecipeError(f"{where} must be a number or boolean, got {v!r}"[:200])


def _setting(v: Any, where: str) -> Any:
    """One parameter setting as mergekit accepts it: a scalar, a gradient (list of scalars), a
    {filter, value} entry, or a list of such entries. Returned in canonical plain-Python form."""
    if isinstance(v, dict):
        extra = [k for k in v if k not in ("filter", "value")]
        if extra or "value" not in v:
            raise RecipeError(
                f"{where}: a filter entry needs value: (and optionally filter:), got {sorted(v)}"
            )
        f = v.get("filter")
        if f is not None and not isinstance(f, str):
            raise RecipeError(f"{where}: filter must be text such as self_attn or mlp, got {f!r}")
        inner = v["value"]
        if isinstance(inner, dict) or (
            isinstance(inner, list) and any(isinstance(e, dict | list) for e in inner)
        ):
            raise RecipeError(f"{where}: a filter's value must be a number or a gradient list")
        out = {"filter": f, "value": _setting(inner, f"{where}.value")}
        if f is None:
            del out["filter"]
        return out
    if isinstance(v, list):
        if not v:
            raise RecipeError(f"{where}: an empty list is neither a gradient nor a filter list")
        if all(isinstance(e, dict) for e in v):
            return [_setting(e, f"{where}[{i}]") for i, e in enumerate(v)]
        if any(isinstance(e, dict | list) for e in v):
            raise RecipeError(f"{where}: mixes numbers and filter entries; give a gradient or a filter list")
        return [_scalar(e, f"{where}[{i}]") for i, e in enumerate(v)]
    return _scalar(v, where)


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{where} must be a mapping of name: value")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise RecipeError(f"{where}: parameter names must be strings, got {k!r}"[:200])
        out[k] = _setting(v, f"{where}.{k}")
    return out


def _tokenizer_block(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RecipeError("tokenizer: must be a mapping with source: (base, union or a model)")
    extra = [k for k in value if k not in ("source", "tokens", "pad_to_multiple_of")]
    if extra:
        raise RecipeError(f"tokenizer: unsupported key {extra[0]!r} (source, tokens, pad_to_multiple_of)")
    out: dict[str, Any] = {"source": _ref(value.get("source", "union"), "tokenizer.source")}
    pad = value.get("pad_to_multiple_of")
    if pad is not None:
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 1:
            raise RecipeError(f"tokenizer.pad_to_multiple_of must be a positive integer, got {pad!r}")
        out["pad_to_multiple_of"] = pad
    tokens = value.get("tokens")
    if tokens is not None:
        if not isinstance(tokens, dict):
            raise RecipeError("tokenizer.tokens must map each token to its embedding source")
        out["tokens"] = _copy(tokens)
    return out


def _dtype_key(value: Any, key: str) -> str | None:
    if value is None:
        return None
    name = _DTYPE_ALIASES.get(str(value), str(value))
    if name not in DTYPES:
        raise RecipeError(f"{key} must be one of {', '.join(DTYPES)}, got {value!r}"[:200])
    return str(value)  # kept as written (bf16 stays bf16) so the YAML round-trips; see canonical_dtype


def canonical_dtype(value: str | None) -> str | None:
    """mergekit accepts a few aliases (bf16, fp16); everything downstream sees the torch spelling."""
    return None if value is None else _DTYPE_ALIASES.get(value, value)
