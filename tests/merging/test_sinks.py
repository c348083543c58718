import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from merging import DirectorySink, ModelSink, OutputError, Recipe, open_checkpoint, run_merge
from merging.plan import MergePlan, PlannedTensor
from tests.merging.helpers import leftovers, recipe, weights


def test_tiny_shards_give_index_and_load_back(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    result = run_merge(
        recipe("ties", base, cks, {"weight": 1.0}), DirectorySink(tmp_path / "o", max_shard_bytes=20_000)
    )
    out = result.output_path
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    b = load_file(base / "model.safetensors")
    assert set(index["weight_map"]) == set(b) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in b.values())
    for shard in shards:  # every shard within the limit unless it holds a single larger tensor
        sd = load_file(out / shard)
        assert sum(t.numel() * 4 for t in sd.values()) <= 20_000 or len(sd) == 1
    model = AutoModelForCausalLM.from_pretrained(out)
    merged = weights(out)
    assert all(torch.equal(model.state_dict()[n], merged[n]) for n in merged)


def test_single_shard_output_directory_contents(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    r = recipe("ties", base, cks, {"weight": 1.0, "density": 0.5}, seed=4)
    out = run_merge(r, DirectorySink(tmp_path / "o")).output_path
    names = {p.name for p in out.iterdir()}
    assert names == {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "merge_config.yml",
        "README.md",
    }
    assert Recipe.from_yaml(out / "merge_config.yml") == r
    card = (out / "README.md").read_text()
    assert "merge_method: ties" in card and "sign-conflict rate" in card
    assert (
        AutoTokenizer.from_pretrained(out)("1+2").input_ids
        == AutoTokenizer.from_pretrained(base)("1+2").input_ids
    )
    assert leftovers(tmp_path) == []


def test_empty_existing_directory_is_accepted(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    (tmp_path / "o").mkdir()
    out = run_merge(recipe("ties", base, cks, {"weight": 1.0}), DirectorySink(tmp_path / "o")).output_path
    assert (out / "model.safetensors").is_file()


def test_bfloat16_bytes_written_exactly(tmp_path, tiny_llama_family):
    ck = open_checkpoint(tiny_llama_family[0])
    plan = MergePlan(
        (PlannedTensor("a", (3, 2), torch.bfloat16), PlannedTensor("b", (4,), torch.float32)), None, False
    )
    sink = DirectorySink(tmp_path / "o")
    sink.begin(ck, Recipe("ties", "x", []), plan)
    a, b = torch.randn(3, 2).to(torch.bfloat16), torch.arange(4.0)
    sink.write("a", a)
    with pytest.raises(OutputError, match="out of plan order"):
        sink.write("a", a)
    sink.write("b", b)
    sd = load_file(sink.tmp_dir / "model.safetensors")
    assert torch.equal(sd["a"], a) and torch.equal(sd["b"], b)
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_model_sink_equals_directory_sink(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    r = recipe("dare_linear", base, cks, {"weight": 0.7, "density": 0.5}, seed=9)
    on_disk = AutoModelForCausalLM.from_pretrained(
        run_merge(r, DirectorySink(tmp_path / "o"), device="cpu").output_path
    )
    resident = AutoModelForCausalLM.from_pretrained(base)
    sink = ModelSink(resident)
    result = run_merge(r, sink, device="cpu")
    assert result.output_path is None and sink.complete
    disk_sd, res_sd = on_disk.state_dict(), resident.state_dict()
    assert set(disk_sd) == set(res_sd)
    assert all(torch.equal(disk_sd[n], res_sd[n]) for n in disk_sd)
    # reusable: a second merge into the same resident model replaces the first
    run_merge(recipe("task_arithmetic", base, cks[:1], {"weight": 1.0}), sink, device="cpu")
    ft0 = load_file(cks[0] / "model.safetensors")
    assert all(torch.allclose(resident.state_dict()[n], ft0[n]) for n in ft0)


def test_model_sink_tied_model(odd):
    resident = AutoModelForCausalLM.from_pretrained(odd["tied_base"])
    r = recipe("ties", odd["tied_base"], [odd["tied_ft0"], odd["tied_ft1"]], {"weight": 1.0})
    run_merge(r, ModelSink(resident), device="cpu")
    assert resident.lm_head.weight.data_ptr() == resident.model.embed_tokens.weight.data_ptr()
    base_embed = load_file(odd["tied_base"] / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(resident.model.embed_tokens.weight, base_embed)


def test_model_sink_refuses_a_model_of_other_shape(tiny_llama_family, odd):
    base, cks = tiny_llama_family
    other = AutoModelForCausalLM.from_pretrained(odd["other_shapes"])
    with pytest.raises(
        Exception,
        match=r"resident model's 'model.layers.0.mlp.down_proj.weight' has shape \(32, 48\), "
        r"the merge gives \(32, 64\)",
    ):
        run_merge(recipe("ties", base, cks, {"weight": 1.0}), ModelSink(other))
