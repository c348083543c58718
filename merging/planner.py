"""The recipe layer's planner: from a recipe and the checkpoints' headers to a `MergePlan` (plan.py).

This is the one place where mergekit's config semantics become per-tensor facts, before any tensor is read:
- which checkpoints feed each output tensor: `models:` (every model, whole depth) or `slices:` (layer
  ranges, renumbered into the output's layers, so a passthrough frankenmerge may change the layer count);
- which input is the base: a `models:`/`sources:` entry equal to `base_model` IS the base (LazyMergekit
  writes it that way), except for methods that treat the base as an ordinary input (linear, passthrough,
  karcher), exactly as mergekit 0.1.5 decides it;
- the parameters of every tensor: gradients (`[0, 0.5, 1]`, interpolated linearly over the layers of a
  slice, t = i / (n − 1); tensors outside the layers get t = 0) and filter lists (`- filter: self_attn`,
  first entry whose filter is a substring of the tensor name wins, an entry without filter matches all),
  resolved with mergekit's precedence (source > slice > global for per-model values; slice > global for
  global ones) and then validated and defaulted by `methods.resolve_params`;
- the output dtype (`out_dtype`, else `dtype`, else the stored dtype) and layer count.
The engine, the methods, the geometry and the fingerprint only ever see the resolved numbers.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from merging.checkpoint import Checkpoint, parse_dtype
from merging.compat import CompatIssue, CompatReport, TensorSource, check_compatibility, is_vocab_tensor
from merging.errors import CompatibilityError, RecipeError
from merging.methods.base import MethodSpec
from merging.plan import MergePlan, PlannedTensor, TensorInput
from merging.recipe import OutputSlice, Recipe, canonical_dtype
from merging.tokenizer import TokenizerPlan, build_tokenizer

# Methods for which mergekit treats the base as one more ordinary input (its BasePolicy.IGNORED).
BASE_IS_ORDINARY_INPUT = frozenset({"linear", "passthrough", "karcher"})
# Methods whose result mergekit 0.1.5 returns in float32 (arcee_fusion multiplies by a float32 mask), so
# without out_dtype its output is float32 even from 16-bit inputs.
FLOAT32_RESULT = frozenset({"arcee_fusion"})
# Parameters mergekit accepts that change no value in MergeLab (documented in README).
NO_EFFECT_PARAMS = frozenset({"int8_mask"})
# Every parameter name some mergekit 0.1.5 method reads. mergekit ignores a name its method does not read
# (configs copied between methods carry `density` into task_arithmetic or `weight` into model_stock), so
# MergeLab accepts these with no effect too; any other unknown name is a typo and is refused.
MERGEKIT_PARAMS = frozenset(
    {
        "weight", "density", "gamma", "epsilon", "lambda", "normalize", "rescale", "int8_mask", "t",
        "filter_wise", "select_topk", "scale", "nuslerp_flatten", "nuslerp_row_wise", "normalize_weights",
        "eps", "max_iter", "tol",
    }
)  # fmt: skip

_LAYER_RE = re.compile(r"^(.*?)\.(\d+)\.(.+)$")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_PRE_KEYS = ("embed", "wte", "wpe")


# ---- parameter settings ---------------------------------------------------------------------------


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """mergekit's evaluation of one parameter setting for one tensor at layer position t in [0, 1].

    A scalar is itself; a list of numbers is a gradient, interpolated linearly (booleans pick the nearest
    lower knot); a filter entry or list of entries gives the first whose filter is in the tensor name (no
    filter, or "*", matches every tensor). None when no entry matches (the next scope decides)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, bool | int | float | str):
        return setting
    if not isinstance(setting, list) or not setting:
        return None
    if all(not isinstance(e, dict) for e in setting):
        if not all(isinstance(e, int | float) and not isinstance(e, bool) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or (tensor_name and f in tensor_name):
            return evaluate_setting(cond["value"], tensor_name, t)
    return None


def _resolve_chain(scopes: Sequence[Mapping[str, Any]], keys: Iterable[str], name: str, t: float) -> dict:
    out = {}
    for key in keys:
        for scope in scopes:
            if key in scope:
                value = evaluate_setting(scope[key], name, t)
                if value is not None:
                    out[key] = value
                    break
    return out


def _keys(scopes: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for s in scopes for k in s if k not in NO_EFFECT_PARAMS))


def is_plain(setting: Any) -> bool:
    return isinstance(setting, bool | int | float)


def recipe_is_uniform(recipe: Recipe) -> bool:
    """True when every parameter is one number (no gradient, no filter) and there are no slices."""
    scopes = [recipe.parameters, *(m.parameters for m in recipe.models)]
    return recipe.slices is None and all(is_plain(v) for s in scopes for v in s.values())


# ---- groups: which checkpoints feed a run of layers ---------------------------------------------


@dataclass(frozen=True)
class Member:
    """One non-base input of a group: its checkpoint, first layer, and its per-model parameter scopes
    (highest precedence first)."""

    ref: str
    start: int
    scopes: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Group:
    """A run of output layers merged from the same inputs: a slice, or the whole model for `models:`.
    `base_start` is the base's first layer (None: no base in this group)."""

    num_layers: int
    base_ref: str | None
    base_start: int | None
    members: tuple[Member, ...]
    global_scopes: tuple[Mapping[str, Any], ...]


def _base_is_input(spec: MethodSpec) -> bool:
    return spec.name in BASE_IS_ORDINARY_INPUT


def groups_of(recipe: Recipe, spec: MethodSpec, layers_of: Callable[[str], int] | None = None) -> list[Group]:
    """The recipe's groups with the base decided as mergekit decides it. `layers_of(ref)` gives a
    checkpoint's layer count (needed for `models:`; without it the count is left 0)."""
    base = recipe.base_model
    ordinary = _base_is_input(spec)
    groups: list[Group] = []
    if recipe.slices is None:
        n = layers_of(base or recipe.models[0].model) if layers_of else 0
        members = tuple(
            Member(m.model, 0, (m.parameters, recipe.parameters))
            for m in recipe.models
            if ordinary or m.model != base
        )
        # An ordinary-input method that lists the base already has it among its inputs; mergekit adds the
        # base as one more input only when it is not listed, and the method sees it as `base` then.
        if ordinary and base is not None and any(m.ref == base for m in members):
            base = None
        elif spec.name == "linear" and base is not None:
            # linear averages only its inputs, so the added base is averaged like any model (its weight from
            # the global parameters; none there is mergekit's "missing weight" refusal too)
            members = (*members, Member(base, 0, (recipe.parameters,)))
        groups.append(Group(n, base, 0 if base else None, members, (recipe.parameters,)))
    else:
        for i, s in enumerate(recipe.slices):
            groups.append(_slice_group(i, s, recipe, ordinary))
    for i, g in enumerate(groups):
        where = f" in slices[{i}]" if recipe.slices is not None else ""
        if spec.needs_base and g.base_ref is None:
            if recipe.slices is not None and base:
                raise RecipeError(
                    f"{spec.name}: base_model {base!r} is not among the sources of slices[{i}]; list it "
                    "there with the same layer_range as the others (mergekit requires it)"
                )
            raise RecipeError(f"{spec.name} needs base_model: the checkpoint the fine-tunes started from")
        spec.check_model_count(len(g.members), f"slices[{i}]" if recipe.slices is not None else "the recipe")
        if not g.members:
            raise RecipeError(f"{spec.name}: nothing to merge{where}: the only model listed is the base")
    return groups


def _slice_group(i: int, s: OutputSlice, recipe: Recipe, ordinary: bool) -> Group:
    base_src = None
    members = []
    seen: set[str] = set()
    for src in s.sources:
        if src.model in seen:
            raise RecipeError(f"slices[{i}] lists {src.model!r} twice; each source must be another model")
        seen.add(src.model)
        if not ordinary and recipe.base_model is not None and src.model == recipe.base_model:
            base_src = src
            continue
        members.append(
            Member(src.model, src.layer_range[0], (src.parameters, s.parameters, recipe.parameters))
        )
    return Group(
        s.num_layers,
        base_src.model if base_src else None,
        base_src.layer_range[0] if base_src else None,
        tuple(members),
        (s.parameters, recipe.parameters),
    )


class ParamResolver:
    """Resolves a group's settings for one tensor, validating each distinct combination once."""

    def __init__(self, spec: MethodSpec):
        from merging.methods import resolve_params

        self.spec = spec
        self._resolve = resolve_params
        self._per_model = {p.name for p in spec.params if p.per_model}
        self._cache: dict[str, tuple[dict, list[dict]]] = {}

    def _ignored(self, group: Group) -> set[str]:
        """Names mergekit would ignore for this method; refuses a name no mergekit method reads."""
        known = {p.name for p in self.spec.params}
        ignored = set(NO_EFFECT_PARAMS)
        for scope in [*group.global_scopes, *(s for m in group.members for s in m.scopes)]:
            for key in scope:
                if key in known or key in ignored:
                    continue
                if key not in MERGEKIT_PARAMS:
                    close = difflib.get_close_matches(key, sorted(known), n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise RecipeError(
                        f"{self.spec.name} has no parameter {key!r}; {hint}valid parameters: "
                        f"{', '.join(sorted(known)) or 'none'}"
                    )
                ignored.add(key)
        return ignored

    def __call__(self, group: Group, out_name: str, in_names: Sequence[str], t: float):
        ignored = self._ignored(group)
        gscopes = group.global_scopes
        gkeys = [k for k in _keys(gscopes) if k not in self._per_model and k not in ignored]
        graw = self._typed(_resolve_chain(gscopes, gkeys, out_name, t))
        # a per-model parameter given only globally still resolves per model, through each model's chain
        mraws = [
            self._typed(_resolve_chain(m.scopes, [k for k in _keys(m.scopes) if k not in ignored], name, t))
            for m, name in zip(group.members, in_names, strict=True)
        ]
        # a global parameter written in a model's own parameters is not read there (mergekit resolves
        # global parameters from the slice and top-level parameters only), so it is left out
        mraws = [{k: v for k, v in raw.items() if k in self._per_model} for raw in mraws]
        key = json.dumps([graw, mraws], sort_keys=True, default=str)
        hit = self._cache.get(key)
        if hit is None:
            try:
                hit = self._resolve(self.spec, graw, mraws, [m.ref for m in group.members])
            except RecipeError as exc:
                if recipe_scopes_vary(group):
                    raise RecipeError(f"{exc} (at tensor {out_name!r})") from None
                raise
            self._cache[key] = hit
        return hit

    def _typed(self, values: dict[str, Any]) -> dict[str, Any]:
        """mergekit's lax typing: 0/1 for a boolean, an integral float (a gradient's knot) for an int."""
        for key, v in values.items():
            p = self.spec.param(key)
            if p is None or isinstance(v, bool):
                continue
            if p.kind == "bool" and isinstance(v, int | float) and v in (0, 1):
                values[key] = bool(v)
            elif p.kind == "int" and isinstance(v, float) and v.is_integer():
                values[key] = int(v)
        return values


def recipe_scopes_vary(group: Group) -> bool:
    scopes = [*group.global_scopes, *(s for m in group.members for s in m.scopes)]
    return any(not is_plain(v) for s in scopes for v in s.values())


# ---- validation without checkpoints --------------------------------------------------------------

_PROBE_NAMES = (
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.embed_tokens.weight",
    "lm_head.weight",
)


def _knots(group: Group) -> list[float]:
    """Layer positions at which every gradient of the group takes a knot value (plus both ends): values
    between knots are convex combinations, so checking the knots checks every layer."""
    ts = {0.0, 1.0}

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            walk(v.get("value"))
        elif isinstance(v, list):
            if v and not isinstance(v[0], dict) and len(v) > 1:
                ts.update(k / (len(v) - 1) for k in range(len(v)))
            else:
                for e in v:
                    walk(e)

    for s in [*group.global_scopes, *(s for m in group.members for s in m.scopes)]:
        for v in s.values():
            walk(v)
    return sorted(ts)


def check_recipe(recipe: Recipe):
    """Method, base, model counts and every parameter value a tensor could receive; no checkpoint opened.

    Returns (MethodSpec, global params, per-model params) resolved for the first group's attention
    tensors at the first layer (all of them, when the recipe is uniform). Raises RecipeError."""
    from merging.methods import all_methods, get_method

    try:
        spec = get_method(recipe.merge_method)
    except (KeyError, ValueError):
        names = ", ".join(sorted(m.name for m in all_methods()))
        raise RecipeError(f"unknown merge_method {recipe.merge_method!r}; available: {names}") from None
    groups = groups_of(recipe, spec)
    resolve = ParamResolver(spec)
    first = None
    for g in groups:
        for t in _knots(g):
            for name in _PROBE_NAMES:
                got = resolve(g, name, [name] * len(g.members), t)
                if first is None:
                    first = got
    assert first is not None
    return spec, first[0], first[1]


def validate_recipe(recipe: Recipe):
    """Check the method exists, the base and model counts fit it, and every parameter value a tensor could
    receive (gradient knots, filter entries) is known and in range, via the method registry.

    Returns (MethodSpec, global params, per-model params), all defaults filled in, as resolved for the
    first layer's attention tensors (per-model params follow the models other than the base). Raises
    RecipeError.
    """
    return check_recipe(recipe)


# ---- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerLayout:
    """Where a checkpoint keeps its layers: `prefix.{i}.{suffix}`; the rest are pre (before the layers:
    embeddings) or post (final norm, head) tensors, in stored order."""

    prefix: str
    num_layers: int
    suffixes: tuple[str, ...]
    pre: tuple[str, ...]
    post: tuple[str, ...]

    def layer_of(self, name: str) -> int | None:
        m = _LAYER_RE.match(name)
        if m and m.group(1) == self.prefix:
            return int(m.group(2))
        return None


def layer_layout(ck: Checkpoint) -> LayerLayout:
    names = sorted(ck.tensors, key=lambda n: (str(ck.tensors[n].file), ck.tensors[n].offset, n))
    counts: dict[str, set[int]] = {}
    for n in names:
        m = _LAYER_RE.match(n)
        if m:
            counts.setdefault(m.group(1), set()).add(int(m.group(2)))
    cfg = ck.config.get("text_config") or ck.config
    declared = next((cfg[k] for k in _LAYER_KEYS if isinstance(cfg.get(k), int)), None)
    if not counts:
        return LayerLayout("", 0, (), tuple(names), ())
    prefix = max(counts, key=lambda p: len(counts[p]))
    n_layers = max(counts[prefix]) + 1
    if declared is not None and declared != n_layers:
        raise CompatibilityError(
            f"checkpoint {ck.ref!r}: config says {declared} layers, its tensors hold {n_layers}"
        )
    suffixes: list[str] = []
    for n in names:
        m = _LAYER_RE.match(n)
        if m and m.group(1) == prefix and m.group(2) == "0":
            suffixes.append(m.group(3))
    pre, post = [], []
    for n in names:  # as mergekit's architectures: embeddings before the layers, norm and head after
        m = _LAYER_RE.match(n)
        if m and m.group(1) == prefix:
            continue
        (pre if any(k in n for k in _PRE_KEYS) else post).append(n)
    return LayerLayout(prefix, n_layers, tuple(suffixes), tuple(pre), tuple(post))


@dataclass
class RecipePlan:
    """Everything the engine needs besides the recipe: the plan, the opened checkpoints, the reference
    checkpoint the output's config and files come from, the compatibility report, the digest of the plan
    (part of the merge fingerprint) and which models the geometry compares."""

    plan: MergePlan
    reference: Checkpoint
    base: Checkpoint | None
    checkpoints: dict[str, Checkpoint]
    report: CompatReport
    geometry_refs: tuple[str, ...]
    digest: str
    global_params: dict[str, Any] = field(default_factory=dict)
    model_params: list[dict[str, Any]] = field(default_factory=list)
    tokenizer: TokenizerPlan | None = None

    def cleanup(self) -> None:
        """Remove the built tokenizer's temporary folder (the sink has copied it by now)."""
        if self.tokenizer is not None:
            self.tokenizer.cleanup()


def out_dtype_name(recipe: Recipe) -> str | None:
    """mergekit writes `out_dtype`, else what its method returns: the compute `dtype` (else the stored
    dtype), except for methods whose result mergekit keeps in float32 whatever the inputs."""
    if recipe.out_dtype is not None:
        return canonical_dtype(recipe.out_dtype)
    if recipe.merge_method in FLOAT32_RESULT:
        return "float32"
    return canonical_dtype(recipe.dtype)


def plan_recipe(recipe: Recipe, spec: MethodSpec, get: Callable[[str], Checkpoint]) -> RecipePlan:
    """Open every referenced checkpoint (through `get`), check them, and plan every output tensor."""
    for ref in recipe.refs:
        get(ref)
    base = get(recipe.base_model) if recipe.base_model else None
    first_ref = recipe.models[0].model if recipe.slices is None else recipe.slices[0].sources[0].model
    reference = base or get(first_ref)
    ref_layout = layer_layout(reference)
    groups = groups_of(recipe, spec, lambda r: layer_layout(get(r)).num_layers)
    out_name = out_dtype_name(recipe)
    out_dt = parse_dtype(out_name) if out_name else None
    resolve = ParamResolver(spec)
    if recipe.slices is None:
        tensors, report = _plan_models(recipe, groups[0], reference, ref_layout, get, resolve, out_dt)
        num_layers = ref_layout.num_layers
    else:
        tensors, report = _plan_slices(recipe, groups, reference, ref_layout, get, resolve, out_dt)
        num_layers = sum(g.num_layers for g in groups)
    report.raise_if_refused()
    tok = _build_tokenizer(recipe, get)
    try:
        if tok is not None and tok.row_maps:
            tensors = [
                _with_vocab(t, tok, recipe.base_model) if is_vocab_tensor(t.name) else t for t in tensors
            ]
        plan = MergePlan(
            tuple(tensors),
            out_name,
            reference.tied_embeddings,
            num_layers=num_layers,
            vocab_size=tok.vocab_size if tok is not None and tok.row_maps else None,
            tokenizer_dir=tok.directory if tok is not None else None,
            chat_template=recipe.chat_template,
        )
        digest = plan_digest(plan, {r: get(r).fingerprint for r in recipe.refs})
    except BaseException:
        if tok is not None:
            tok.cleanup()
        raise
    first_layer = next((t for t in tensors if ref_layout.layer_of(t.name) is not None), tensors[0])
    gp, mp = dict(first_layer.params), [dict(i.params) for i in first_layer.inputs]
    return RecipePlan(
        plan,
        reference,
        base,
        {r: get(r) for r in recipe.refs},
        report,
        tuple(i.checkpoint for i in first_layer.inputs),
        digest,
        gp,
        mp,
        tok,
    )


def _build_tokenizer(recipe: Recipe, get: Callable[[str], Checkpoint]) -> TokenizerPlan | None:
    block = recipe.tokenizer or {}
    source = recipe.tokenizer_source or block.get("source")
    return build_tokenizer(
        source,
        recipe.base_model,
        recipe.refs,
        get,
        recipe.chat_template,
        block.get("pad_to_multiple_of"),
        block.get("tokens"),
    )


def _with_vocab(t: PlannedTensor, tok: TokenizerPlan, base_ref: str | None) -> PlannedTensor:
    """A vocabulary tensor re-planned onto the merged tokenizer's rows."""
    members = ([base_ref] if t.base is not None and base_ref else []) + [i.checkpoint for i in t.inputs]

    def remap(src: TensorSource, ref: str) -> TensorSource:
        return replace(src, rows=None, row_map=tok.row_maps[ref])

    return replace(
        t,
        shape=(tok.vocab_size, *t.shape[1:]),
        base=remap(t.base, base_ref) if t.base is not None and base_ref else t.base,
        inputs=tuple(replace(i, source=remap(i.source, i.checkpoint)) for i in t.inputs),
        vocab=tok.vocab_map(members),
    )


def _t(layer: int | None, n: int) -> float:
    if layer is None:
        return 0.0
    return layer / (n - 1) if n > 1 else 1.0


def _plan_models(recipe, group, reference, layout, get, resolve, out_dt):
    """`models:`: every tensor of the reference, each fed by the same checkpoints (compat decides rows)."""
    members = [get(m.ref) for m in group.members]
    report = check_compatibility(reference, members)
    if not report.ok:
        return [], report
    tensors = []
    for name in report.tensor_names:
        info = reference.tensors[name]
        t = _t(layout.layer_of(name), layout.num_layers)
        gp, mps = resolve(group, name, [report.sources[i][name].name for i in range(len(members))], t)
        inputs = tuple(
            TensorInput(m.ref, report.sources[i][name], mp)
            for i, (m, mp) in enumerate(zip(group.members, mps, strict=True))
        )
        base_src = TensorSource(name) if group.base_ref is not None else None
        tensors.append(
            PlannedTensor(name, tuple(info.shape), out_dt or parse_dtype(info.dtype), base_src, inputs, gp)
        )
    return tensors, report


def _plan_slices(recipe, groups, reference, ref_layout, get, resolve, out_dt):
    """`slices:`: the reference's pre tensors (from the first slice's inputs), then each slice's layers
    renumbered from 0, then the post tensors (from the last slice's inputs)."""
    refs = list(
        dict.fromkeys([m.ref for g in groups for m in g.members] + [g.base_ref for g in groups if g.base_ref])
    )
    report = CompatReport(reference.ref, refs, "base", [], [])
    issues = report.issues
    for ref in refs:
        ck = get(ref)
        if (ck.architecture, ck.model_type) != (reference.architecture, reference.model_type):
            issues.append(
                CompatIssue(
                    ref,
                    refs.index(ref),
                    "refusal",
                    "architecture",
                    None,
                    f"checkpoint {ref!r} is {ck.architecture or ck.model_type}, {reference.ref!r} is "
                    f"{reference.architecture or reference.model_type}: other architecture",
                )
            )
    if issues:
        return [], report
    tensors: list[PlannedTensor] = []

    def source(ref: str, name: str, shape: tuple[int, ...]) -> TensorSource | None:
        ck = get(ref)
        stored = name
        if name not in ck.tensors:
            embed = next((n for n in ck.tensors if "embed_tokens" in n), None)
            if "lm_head" in name and ck.tied_embeddings and embed is not None:
                stored = embed
            else:
                issues.append(
                    CompatIssue(
                        ref,
                        refs.index(ref),
                        "refusal",
                        "missing_tensor",
                        name,
                        f"checkpoint {ref!r} has no tensor {name!r}: other tensor set",
                        shape,
                    )
                )
                return None
        have = tuple(ck.tensors[stored].shape)
        if have == shape:
            return TensorSource(stored)
        if is_vocab_tensor(name) and have[1:] == shape[1:]:
            issues.append(
                CompatIssue(
                    ref,
                    refs.index(ref),
                    "adjustment",
                    "vocab_rows",
                    name,
                    f"checkpoint {ref!r}: {name!r} has {have[0]} vocabulary rows, fitted to {shape[0]}",
                    shape,
                    have,
                )
            )
            return TensorSource(stored, shape[0])
        issues.append(
            CompatIssue(
                ref,
                refs.index(ref),
                "refusal",
                "shape",
                name,
                f"checkpoint {ref!r}: tensor {name!r} has shape {have}, the output needs {shape}",
                shape,
                have,
            )
        )
        return None

    def add(
        group: Group, out_name: str, in_offset: int | None, t: float, shape_from: Checkpoint, shape_name: str
    ):
        info = shape_from.tensors[shape_name]
        shape = tuple(info.shape)

        def in_name(start: int | None) -> str:
            if in_offset is None:
                return out_name
            suffix = _LAYER_RE.match(out_name).group(3)
            return f"{ref_layout.prefix}.{start + in_offset}.{suffix}"

        names = [in_name(m.start) for m in group.members]
        srcs = [source(m.ref, n, shape) for m, n in zip(group.members, names, strict=True)]
        base_src = source(group.base_ref, in_name(group.base_start), shape) if group.base_ref else None
        if any(s is None for s in srcs) or (group.base_ref and base_src is None):
            return
        gp, mps = resolve(group, out_name, names, t)
        inputs = tuple(TensorInput(m.ref, s, mp) for m, s, mp in zip(group.members, srcs, mps, strict=True))
        tensors.append(
            PlannedTensor(out_name, shape, out_dt or parse_dtype(info.dtype), base_src, inputs, gp)
        )

    for name in ref_layout.pre:
        add(groups[0], name, None, 0.0, reference, name)
    out_layer = 0
    for g in groups:
        first = g.base_ref or g.members[0].ref
        first_start = g.base_start if g.base_ref else g.members[0].start
        first_layout = layer_layout(get(first))
        for ref, start in [
            *((m.ref, m.start) for m in g.members),
            *([(g.base_ref, g.base_start)] if g.base_ref else []),
        ]:
            have = layer_layout(get(ref)).num_layers
            if start + g.num_layers > have:
                raise RecipeError(
                    f"layer_range [{start}, {start + g.num_layers}] of {ref!r} goes past its {have} layers"
                )
        for k in range(g.num_layers):
            for suffix in first_layout.suffixes:
                out = f"{ref_layout.prefix}.{out_layer}.{suffix}"
                add(
                    g,
                    out,
                    k,
                    _t(k, g.num_layers),
                    get(first),
                    f"{first_layout.prefix}.{first_start + k}.{suffix}",
                )
            out_layer += 1
    for name in ref_layout.post:
        add(groups[-1], name, None, 0.0, reference, name)
    report.tensor_names = [t.name for t in tensors]
    return tensors, report


def plan_digest(plan: MergePlan, fingerprints: Mapping[str, str]) -> str:
    """Identity of the plan: every output tensor, where its inputs come from (by content) and its
    resolved parameters. Part of the merge fingerprint, so two recipes that resolve alike share results."""
    h = hashlib.sha256(b"mergelab-plan-v1\0")
    for t in plan.tensors:
        row = [
            t.name,
            list(t.shape),
            str(t.dtype),
            [t.base.name, t.base.rows] if t.base else None,
            [
                [
                    fingerprints[i.checkpoint],
                    i.source.name,
                    i.source.rows,
                    dict(i.params),
                    _rows_key(i.source),
                ]
                for i in t.inputs
            ],
            dict(t.params),
        ]
        h.update(json.dumps(row, sort_keys=True, default=str, separators=(",", ":")).encode())
    h.update(json.dumps([plan.out_dtype, plan.num_layers, plan.vocab_size, plan.chat_template]).encode())
    return h.hexdigest()[:32]


def _rows_key(src: TensorSource) -> str | None:
    if src.row_map is None:
        return None
    return hashlib.sha256(json.dumps(src.row_map).encode()).hexdigest()[:16]
