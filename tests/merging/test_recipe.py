import pytest
import yaml

from merging import ModelEntry, Recipe, RecipeError, validate_recipe

MERGEKIT_YAML = """\
models:
  - model: org/ft-math
    parameters:
      weight: 0.6
      density: 0.5
  - model: ./local/ft-code
    parameters:
      weight: 0.4
      density: 0.7
merge_method: ties
base_model: org/base
parameters:
  normalize: true
  lambda: 1.0
dtype: bfloat16
out_dtype: bf16
seed: 17
"""


def test_mergekit_yaml_round_trips_exactly():
    r = Recipe.from_yaml(MERGEKIT_YAML)
    assert r.merge_method == "ties" and r.base_model == "org/base" and r.seed == 17
    assert r.models[1] == ModelEntry("./local/ft-code", {"weight": 0.4, "density": 0.7})
    assert r.to_dict() == yaml.safe_load(MERGEKIT_YAML)
    assert r.to_yaml() == MERGEKIT_YAML
    assert Recipe.from_yaml(r.to_yaml()) == r
    assert Recipe.from_dict(r.to_dict()) == r


def test_minimal_recipe_leaves_absent_keys_out():
    text = "merge_method: linear\nmodels:\n  - model: a\n  - model: b\n"
    r = Recipe.from_yaml(text)
    assert r.base_model is None and r.parameters == {} and r.seed is None
    assert r.to_dict() == {"models": [{"model": "a"}, {"model": "b"}], "merge_method": "linear"}


def test_from_yaml_reads_a_file(tmp_path):
    f = tmp_path / "recipe.yml"
    f.write_text(MERGEKIT_YAML)
    assert Recipe.from_yaml(f) == Recipe.from_yaml(str(f)) == Recipe.from_yaml(MERGEKIT_YAML)
    with pytest.raises(RecipeError, match="not found"):
        Recipe.from_yaml(tmp_path / "nope.yml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [\n  - model: a\n", r"broken YAML in recipe at line \d+"),
        ("merge_method: ties\nmodels: {model: a}\n", "models: a non-empty list"),
        ("merge_method: ties\nmodels: []\n", "models: a non-empty list"),
        ("models:\n  - model: a\n", "needs merge_method"),
        ("merge_method: ties\nmodels:\n  - path: a\n", r"models\[0\] must be a mapping with a 'model'"),
        ("merge_method: ties\nslices: []\nmodels:\n  - model: a\n", "both models: and slices:"),
        (
            "merge_method: ties\nslice:\n  - sources: []\n",
            "unsupported recipe key 'slice'; did you mean 'slices'",
        ),
        (
            "merge_method: ties\nmodels:\n  - model: a\n    parameters:\n      weight: [0, {value: 1}]\n",
            "mixes numbers",
        ),
        (
            "merge_method: ties\nmodels:\n  - model: a\n    parameters:\n      weight: {filter: mlp}\n",
            "needs value",
        ),
        ("merge_method: ties\nmodules: {}\n", "multi-module configs"),
        (
            "merge_method: x\nslices:\n  - sources:\n    - model: a\n      layer_range: [4, 2]\n",
            "layer_range",
        ),
        ("merge_method: ties\nmodels:\n  - model: a\nout_dtype: int8\n", "out_dtype must be one of"),
        ("merge_method: ties\nmodels:\n  - model: a\nseed: -3\n", "seed must be a non-negative integer"),
        ("- just\n- a list\n", "recipe must be a mapping"),
    ],
)
def test_wrong_shapes_are_one_line_recipe_errors(text, message):
    with pytest.raises(RecipeError, match=message) as err:
        Recipe.from_yaml(text)
    assert "\n" not in str(err.value)


def _r(method="ties", base="b", models=("x", "y"), params=None, **per_model):
    return Recipe(method, base, [ModelEntry(m, dict(per_model)) for m in models], dict(params or {}))


def test_validate_fills_defaults():
    spec, globals_, per_model = validate_recipe(_r(weight=0.5))
    assert spec.name == "ties"
    assert globals_["lambda"] == 1.0 and globals_["normalize"] is True
    assert per_model == [{"weight": 0.5, "density": 1.0}, {"weight": 0.5, "density": 1.0}]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (_r(method="frankenmerge", weight=1.0), "unknown merge method 'frankenmerge'"),
        (_r(weight=1.0, sparsity=0.3), "has no parameter 'sparsity'"),
        (_r(weight=1.0, density=1.5), r"'density' .* outside its allowed range"),
        (_r(base=None, weight=1.0), "ties needs base_model"),
        (
            _r(method="model_stock", models=("x",)),
            "model_stock takes at least 2 checkpoints besides the base model; the recipe has 1",
        ),
    ],
)
def test_validate_refusals(recipe, message):
    with pytest.raises(RecipeError, match=message):
        validate_recipe(recipe)


def test_layer_range_under_models_is_kept_and_has_no_effect():
    """mergekit reads layer_range only under slices' sources; under models: it is accepted and inert."""
    text = "models:\n  - model: a\n    layer_range: [0, 32]\n  - model: b\nmerge_method: linear\n"
    r = Recipe.from_yaml(text)
    assert r.models[0].layer_range == (0, 32) and r.slices is None
    assert r.to_yaml() == text
    with pytest.raises(RecipeError, match="layer_range must be"):
        Recipe.from_yaml("models:\n  - model: a\n    layer_range: [3]\nmerge_method: linear\n")
