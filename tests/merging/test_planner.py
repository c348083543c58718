"""The recipe layer's planner: gradients, filters, the base listed again, slices and frankenmerges."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from merging import DirectorySink, ModelSink, Recipe, RecipeError, run_merge, validate_recipe
from merging.errors import CompatibilityError
from merging.planner import evaluate_setting
from tests.merging.helpers import weights
from tests.tiny_models import make_family

FILTERS = [{"filter": "self_attn", "value": 2.0}, {"filter": "mlp", "value": 0.5}, {"value": 1.0}]


@pytest.fixture(scope="module")
def family3(tmp_path_factory):
    """A 3-layer base and two fine-tunes, so gradients have a first, a middle and a last layer."""
    return make_family(tmp_path_factory.mktemp("fam3"), n=2, num_hidden_layers=3)


def sd(path):
    return load_file(path / "model.safetensors")


# ---- settings ------------------------------------------------------------------------------------


def test_gradient_interpolates_as_mergekit():
    g = [0, 0.5, 0.3, 0.7, 1]
    assert evaluate_setting(g, "x", 0.0) == 0
    assert evaluate_setting(g, "x", 1.0) == 1
    assert evaluate_setting(g, "x", 0.5) == pytest.approx(0.3)
    assert evaluate_setting(g, "x", 0.125) == pytest.approx(0.25)  # halfway between knots 0 and 0.5
    assert evaluate_setting(g, "x", 1 / 3) == pytest.approx(0.5 * (1 - 1 / 3) + 0.3 * (1 / 3))
    assert evaluate_setting([True, False], "x", 0.9) is True  # booleans pick the lower knot


def test_filter_precedence_first_match_wins():
    assert evaluate_setting(FILTERS, "model.layers.0.self_attn.q_proj.weight", 0) == 2.0
    assert evaluate_setting(FILTERS, "model.layers.0.mlp.up_proj.weight", 0) == 0.5
    assert evaluate_setting(FILTERS, "model.norm.weight", 0) == 1.0
    fallback_first = [{"value": 1.0}, {"filter": "mlp", "value": 0.5}]
    assert evaluate_setting(fallback_first, "model.layers.0.mlp.up_proj.weight", 0) == 1.0
    assert evaluate_setting([{"filter": "mlp", "value": 0.5}], "model.norm.weight", 0) is None
    nested = [{"filter": "self_attn", "value": [0, 1]}, {"value": 0.25}]
    assert evaluate_setting(nested, "a.self_attn.b", 0.5) == pytest.approx(0.5)


# ---- stored form ------------------------------------------------------------------------------------

LAZY_SLERP = """\
slices:
  - sources:
      - model: org/a
        layer_range: [0, 32]
      - model: org/b
        layer_range: [0, 32]
merge_method: slerp
base_model: org/a
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
tokenizer_source: union
chat_template: chatml
name: my-merge
"""


def test_gradients_filters_and_slices_round_trip_as_written():
    r = Recipe.from_yaml(LAZY_SLERP)
    assert r.slices[0].sources[1].layer_range == (0, 32)
    assert r.parameters["t"][0] == {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}
    assert r.to_dict() == yaml.safe_load(LAZY_SLERP)
    assert Recipe.from_yaml(r.to_yaml()) == r
    assert "value: [0, 0.5, 0.3, 0.7, 1]" in r.to_yaml()  # gradients stay on one line, as mergekit writes
    assert r.refs == ["org/a", "org/b"]


def test_validate_checks_every_gradient_knot_and_filter_value():
    text = "merge_method: ties\nbase_model: b\nmodels:\n  - model: x\n    parameters:\n      weight: 1\n"
    ok = Recipe.from_yaml(text + "      density: [0.2, 0.9]\n")
    spec, _, per_model = validate_recipe(ok)
    assert per_model == [{"weight": 1.0, "density": 0.2}]
    for bad in ("      density: [0.2, 1.5]\n", "      density: [{filter: mlp, value: 2}, {value: 0.5}]\n"):
        with pytest.raises(RecipeError, match="outside its allowed range"):
            validate_recipe(Recipe.from_yaml(text + bad))


def test_int8_mask_is_accepted_and_changes_nothing(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    doc = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [{"model": str(c), "parameters": {"weight": 0.5, "density": 0.5}} for c in cks],
        "parameters": {"int8_mask": True},
    }
    with_mask = run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "a"), device="cpu")
    doc["parameters"] = {}
    without = run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "b"), device="cpu")
    a, b = weights(with_mask.output_path), weights(without.output_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "int8_mask: true" in (tmp_path / "a" / "merge_config.yml").read_text()


# ---- engine: resolved per tensor ------------------------------------------------------------------


def test_gradient_and_filters_reach_each_tensor(tmp_path, family3):
    base, cks = family3
    doc = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [
            {"model": str(cks[0]), "parameters": {"weight": [0, 0.5, 0.3, 0.7, 1]}},
            {"model": str(cks[1]), "parameters": {"weight": FILTERS}},
        ],
    }
    result = run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "o"), device="cpu")
    out, b, m0, m1 = weights(result.output_path), sd(base), sd(cks[0]), sd(cks[1])
    for name in b:
        layer = int(name.split(".")[2]) if ".layers." in name else None
        w0 = {None: 0.0, 0: 0.0, 1: 0.3, 2: 1.0}[layer]  # first, middle, last layer; t = 0 elsewhere
        w1 = 2.0 if "self_attn" in name else 0.5 if "mlp" in name else 1.0
        expected = b[name] + w0 * (m0[name] - b[name]) + w1 * (m1[name] - b[name])
        torch.testing.assert_close(out[name], expected, rtol=1e-5, atol=1e-6, msg=name)
    uniform = run_merge(
        Recipe.from_dict({**doc, "models": [{"model": str(c), "parameters": {"weight": 1.0}} for c in cks]}),
        DirectorySink(tmp_path / "u"),
        device="cpu",
    )
    assert uniform.fingerprint != result.fingerprint


def test_base_listed_under_models_is_the_base(tmp_path, tiny_llama_family):
    """LazyMergekit lists the base again; mergekit treats it as the base (model_stock, normalized TA)."""
    base, cks = tiny_llama_family
    for method, params, per_model in [
        ("model_stock", {}, {}),
        ("task_arithmetic", {"normalize": True}, {"weight": 0.7}),
        ("ties", {}, {"weight": 0.5, "density": 0.5}),
    ]:
        listed = {
            "merge_method": method,
            "base_model": str(base),
            "parameters": params,
            "models": [{"model": str(base)}] + [{"model": str(c), "parameters": per_model} for c in cks[:2]],
        }
        plain = {**listed, "models": listed["models"][1:]}
        a = run_merge(Recipe.from_dict(listed), DirectorySink(tmp_path / f"{method}-listed"), device="cpu")
        b = run_merge(Recipe.from_dict(plain), DirectorySink(tmp_path / f"{method}-plain"), device="cpu")
        wa, wb = weights(a.output_path), weights(b.output_path)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), method
        assert a.fingerprint == b.fingerprint
        assert "model: " + str(base) in (a.output_path / "merge_config.yml").read_text()  # kept as written


def test_dtype_without_out_dtype_is_the_output_dtype(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    doc = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(c), "parameters": {"weight": 0.3}} for c in cks],
        "dtype": "bfloat16",
    }
    result = run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "o"), device="cpu")
    assert {t.dtype for t in weights(result.output_path).values()} == {torch.bfloat16}
    assert json.loads((result.output_path / "config.json").read_text())["dtype"] == "bfloat16"
    doc["out_dtype"] = "float32"
    result = run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "p"), device="cpu")
    assert {t.dtype for t in weights(result.output_path).values()} == {torch.float32}


# ---- slices ---------------------------------------------------------------------------------------


def _franken(base, cks):
    return {
        "merge_method": "linear",
        "slices": [
            {"sources": [{"model": str(cks[0]), "layer_range": [0, 3], "parameters": {"weight": 1.0}}]},
            {"sources": [{"model": str(cks[1]), "layer_range": [1, 3], "parameters": {"weight": 1.0}}]},
        ],
        "dtype": "float32",
    }


def test_frankenmerge_changes_the_layer_count_and_loads(tmp_path, family3):
    base, cks = family3
    result = run_merge(Recipe.from_dict(_franken(base, cks)), DirectorySink(tmp_path / "f"), device="cpu")
    out, a, b = weights(result.output_path), sd(cks[0]), sd(cks[1])
    cfg = json.loads((result.output_path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 5
    for k in range(3):
        torch.testing.assert_close(
            out[f"model.layers.{k}.mlp.up_proj.weight"], a[f"model.layers.{k}.mlp.up_proj.weight"]
        )
    for k, src in ((3, 1), (4, 2)):
        torch.testing.assert_close(
            out[f"model.layers.{k}.self_attn.q_proj.weight"], b[f"model.layers.{src}.self_attn.q_proj.weight"]
        )
    torch.testing.assert_close(
        out["model.embed_tokens.weight"], a["model.embed_tokens.weight"]
    )  # first slice
    torch.testing.assert_close(out["lm_head.weight"], b["lm_head.weight"])  # last slice
    model = AutoModelForCausalLM.from_pretrained(result.output_path)
    assert len(model.model.layers) == 5
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 6, 7]])).logits).all()
    again = Recipe.from_yaml((result.output_path / "merge_config.yml").read_text())
    assert again == Recipe.from_dict(_franken(base, cks))


def test_model_sink_refuses_another_layer_count(tmp_path, family3):
    base, cks = family3
    resident = AutoModelForCausalLM.from_pretrained(base)
    before = {k: v.clone() for k, v in resident.state_dict().items()}
    with pytest.raises(CompatibilityError, match="5 layers but the resident model has 3"):
        run_merge(Recipe.from_dict(_franken(base, cks)), ModelSink(resident), device="cpu")
    assert all(torch.equal(before[k], v) for k, v in resident.state_dict().items())


def test_slices_gradient_runs_over_each_slice(tmp_path, family3):
    """Within a slice t goes 0..1 over that slice's layers (mergekit), whatever the source layer index."""
    base, cks = family3
    doc = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "slices": [
            {
                "sources": [
                    {"model": str(base), "layer_range": [1, 3]},
                    {"model": str(cks[0]), "layer_range": [1, 3], "parameters": {"weight": [0, 1]}},
                ]
            }
        ],
    }
    result = run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "s"), device="cpu")
    out, b, m = weights(result.output_path), sd(base), sd(cks[0])
    n = "self_attn.o_proj.weight"
    torch.testing.assert_close(out[f"model.layers.0.{n}"], b[f"model.layers.1.{n}"])  # t = 0: weight 0
    torch.testing.assert_close(out[f"model.layers.1.{n}"], m[f"model.layers.2.{n}"])  # t = 1: weight 1
    assert json.loads((result.output_path / "config.json").read_text())["num_hidden_layers"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["slices"][1]["sources"][0].update(layer_range=[1, 4]), "goes past its 3 layers"),
        (lambda d: d.update(merge_method="ties", base_model="/elsewhere"), "not among the sources of slices"),
    ],
)
def test_slice_refusals(tmp_path, family3, change, message):
    base, cks = family3
    doc = _franken(base, cks)
    change(doc)
    with pytest.raises(RecipeError, match=message):
        run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "x"), device="cpu")
    assert not (tmp_path / "x").exists()


def test_parameters_mergekit_ignores_are_accepted_typos_are_refused(tmp_path, tiny_llama_family):
    """mergekit ignores a parameter its method does not read (configs copied between methods); a name no
    mergekit method reads is a typo and is refused with a did-you-mean."""
    base, cks = tiny_llama_family
    doc = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(c), "parameters": {"weight": 0.5, "density": 0.5}} for c in cks[:2]],
        "parameters": {"normalize": 1, "rescale": "false"},
    }
    a = run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "a"), device="cpu")
    doc2 = {
        **doc,
        "models": [{"model": str(c), "parameters": {"weight": 0.5}} for c in cks[:2]],
        "parameters": {"normalize": True, "rescale": False},
    }
    b = run_merge(Recipe.from_dict(doc2), DirectorySink(tmp_path / "b"), device="cpu")
    wa, wb = weights(a.output_path), weights(b.output_path)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    stock = {
        "merge_method": "model_stock",
        "base_model": "b",
        "models": [{"model": m, "parameters": {"weight": 1}} for m in ("x", "y")],
    }
    validate_recipe(Recipe.from_dict(stock))
    doc["models"][0]["parameters"]["desnity"] = 0.5
    with pytest.raises(RecipeError, match="no parameter 'desnity'; did you mean 'density'"):
        validate_recipe(Recipe.from_dict({**doc, "merge_method": "ties"}))


def test_slice_residual_weight_round_trips():
    text = (
        "slices:\n  - sources:\n      - model: a\n        layer_range: [0, 2]\n    residual_weight: 0.5\n"
        "merge_method: passthrough\n"
    )
    r = Recipe.from_yaml(text)
    assert r.slices[0].residual_weight == 0.5
    assert r.to_yaml() == text


def test_output_dtype_follows_mergekit():
    from merging.planner import out_dtype_name

    def r(method, **kw):
        return Recipe.from_dict({"merge_method": method, "models": [{"model": "a"}], **kw})

    assert out_dtype_name(r("ties", dtype="bf16")) == "bfloat16"
    assert out_dtype_name(r("ties", dtype="bfloat16", out_dtype="float16")) == "float16"
    assert out_dtype_name(r("ties")) is None  # the stored dtype
    assert out_dtype_name(r("arcee_fusion", dtype="bfloat16")) == "float32"  # mergekit's float32 mask


def test_linear_averages_an_unlisted_base_as_mergekit_does(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    doc = {
        "merge_method": "linear",
        "base_model": str(base),
        "models": [{"model": str(c)} for c in cks[:2]],
        "parameters": {"weight": 1.0},
    }
    out = weights(run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "o"), device="cpu").output_path)
    b, m0, m1 = sd(base), sd(cks[0]), sd(cks[1])
    for name in b:
        torch.testing.assert_close(out[name], (b[name] + m0[name] + m1[name]) / 3, rtol=1e-5, atol=1e-6)
    doc = {
        **doc,
        "parameters": {},
        "models": [{"model": str(c), "parameters": {"weight": 1.0}} for c in cks[:2]],
    }
    with pytest.raises(RecipeError, match="has no 'weight'"):
        validate_recipe(Recipe.from_dict(doc))


def test_global_parameter_in_a_models_parameters_is_not_read_there():
    """mergekit reads slerp's t only from the slice and top-level parameters; a t under a source is inert."""
    r = Recipe.from_dict(
        {
            "merge_method": "slerp",
            "base_model": "a",
            "slices": [
                {
                    "sources": [
                        {"model": "a", "layer_range": [0, 2]},
                        {"model": "b", "layer_range": [0, 2], "parameters": {"t": 0.9}},
                    ]
                }
            ],
            "parameters": {"t": 0.25},
        }
    )
    _, gp, mp = validate_recipe(r)
    assert gp["t"] == 0.25 and mp == [{}]
