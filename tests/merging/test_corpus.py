"""Every config of the corpus (mergekit YAMLs as people write them) parses, round-trips, plans and merges on
tiny models, and the merged model loads with transformers and runs forward."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from merging import DirectorySink, Recipe, RecipeError, get_method, run_merge, validate_recipe
from tests.merging.corpus_family import build_corpus_family, config_text, corpus_files

FILES = corpus_files()


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    return build_corpus_family(tmp_path_factory.mktemp("corpus-models"))


def test_corpus_is_large_enough():
    assert len(FILES) >= 40


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_corpus_config_merges(tmp_path, corpus_root, path):
    recipe = Recipe.from_yaml(config_text(path, corpus_root))
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    try:
        get_method(recipe.merge_method)
    except RecipeError:
        pytest.skip(f"method {recipe.merge_method} is not registered in this build")
    validate_recipe(recipe)
    result = run_merge(recipe, DirectorySink(tmp_path / "out"), device="cpu", spectra=None)
    out = result.output_path
    cfg = json.loads((out / "config.json").read_text())
    if recipe.slices is not None:
        assert cfg["num_hidden_layers"] == sum(s.num_layers for s in recipe.slices)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 6, 7, 8]])).logits.float()
    assert torch.isfinite(logits).all()
    assert (
        Recipe.from_yaml((out / "merge_config.yml").read_text()) == result.recipe
    )  # as written, plus the seed
