import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from merging import DirectorySink, ModelSink, OutputError, Recipe, open_checkpoint, run_merge
from merging.errors import MergeCancelled, NonFiniteError
from merging.plan import MergePlan, PlannedTensor
from merging.sinks import remove_stale_temps, temp_name
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
    sink.flush()  # the sink writes one tensor behind the caller
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


def test_aborted_merge_leaves_a_sibling_merge_in_a_fresh_parent_intact(tmp_path, tiny_llama_family):
    """Two merges into sibling folders of a parent neither found: the cancelled one removes only its own
    temporary folder; the other finishes and its output is intact (issue 11)."""
    base, cks = tiny_llama_family
    parent = tmp_path / "fresh" / "merges"
    r = recipe("task_arithmetic", base, cks, {"weight": 1.0})
    first, second = DirectorySink(parent / "a"), DirectorySink(parent / "b")
    ck = open_checkpoint(base)
    plan = MergePlan((PlannedTensor("x", (2,), torch.float32),), None, False)
    first.begin(ck, r, plan)
    second.begin(ck, r, plan)
    first.write("x", torch.ones(2))
    first.abort()  # the cancelled one
    assert parent.is_dir() and second.tmp_dir is not None and second.tmp_dir.is_dir()
    second.abort()
    assert list(parent.iterdir()) == []  # each removed only its own temporary folder
    done = run_merge(r, DirectorySink(parent / "b"))
    cancelled = DirectorySink(parent / "a")
    with pytest.raises(MergeCancelled):
        run_merge(r, cancelled, should_cancel=lambda: True)
    assert leftovers(parent) == [] and done.output_path == parent / "b"
    assert AutoModelForCausalLM.from_pretrained(parent / "b") is not None


def test_temp_folder_names_the_output_and_the_writer(tmp_path, tiny_llama_family):
    sink = DirectorySink(tmp_path / "o")
    plan = MergePlan((PlannedTensor("x", (2,), torch.float32),), None, False)
    sink.begin(open_checkpoint(tiny_llama_family[0]), Recipe("ties", "x", []), plan)
    assert sink.tmp_dir.name.startswith(f".o.mergelab-tmp-{os.getpid()}-")
    sink.abort()


def test_stale_temp_of_a_dead_merge_is_removed_live_one_kept(tmp_path, tiny_llama_family):
    out = tmp_path / "o"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / temp_name(out, pid=int(dead.stdout))
    live = tmp_path / temp_name(out)  # this process: alive
    other = tmp_path / temp_name(tmp_path / "other", pid=int(dead.stdout))  # another output's: not ours
    for d in (stale, live, other):
        d.mkdir()
    assert remove_stale_temps(out) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


KILLED_MERGE = """
import os, signal, sys
from merging import DirectorySink, ModelEntry, Recipe, run_merge
base, out, *cks = sys.argv[1:]
r = Recipe("task_arithmetic", base, [ModelEntry(c, {"weight": 1.0}) for c in cks])
run_merge(r, DirectorySink(out, max_shard_bytes=20_000),
          on_progress=lambda p: p.tensors_done == 3 and os.kill(os.getpid(), signal.SIGKILL))
"""


def test_kill_9_mid_write_leaves_a_temp_the_next_run_removes(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    out = tmp_path / "o"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_MERGE, str(base), str(out), *map(str, cks)],
        cwd=root,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL
    assert len(leftovers(tmp_path)) == 1 and not out.exists()  # what a kill -9 leaves
    run_merge(recipe("task_arithmetic", base, cks, {"weight": 1.0}), DirectorySink(out))
    assert leftovers(tmp_path) == [] and (out / "model.safetensors").is_file()


def test_model_sink_is_stale_after_a_refused_merge(tiny_llama_family, odd):
    base, cks = tiny_llama_family
    model = AutoModelForCausalLM.from_pretrained(base)
    sink = ModelSink(model)
    assert not sink.stale
    with pytest.raises(NonFiniteError):
        run_merge(recipe("task_arithmetic", base, [cks[0], odd["nan"]], {"weight": 1.0}), sink)
    assert sink.stale and not sink.complete
    run_merge(recipe("task_arithmetic", base, cks, {"weight": 1.0}), sink)
    assert sink.complete and not sink.stale


def test_nan_output_is_refused_before_the_sink_sees_it(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    seen: list[str] = []

    class Recording(DirectorySink):
        def write(self, name, tensor):
            seen.append(name)
            super().write(name, tensor)

    # a weighted sum with weights of 3e38 overflows float32 (norm gains are ~1): the method produces Inf
    bad = recipe("linear", None, cks, {"weight": 3e38}, parameters={"normalize": False})
    with pytest.raises(NonFiniteError, match="produced NaN/Inf") as err:
        run_merge(bad, Recording(tmp_path / "o"))
    culprit = str(err.value).split("'")[1]
    assert culprit not in seen and leftovers(tmp_path) == []


def test_abort_removes_the_parents_it_created_when_empty(tmp_path, tiny_llama_family):
    sink = DirectorySink(tmp_path / "new" / "deeper" / "o")
    plan = MergePlan((PlannedTensor("x", (2,), torch.float32),), None, False)
    sink.begin(open_checkpoint(tiny_llama_family[0]), Recipe("ties", "x", []), plan)
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def _failing_sink(tmp_path, ck, monkeypatch, fail_on: str):
    """A directory sink whose write of tensor `fail_on` hits a full disk."""
    import errno

    from merging import sinks

    plan = MergePlan(tuple(PlannedTensor(n, (2, 2), torch.float32) for n in "abc"), None, False)
    real = sinks._ShardWriter.write_bytes

    def write_bytes(self, t):
        if self.tensors[self.next].name == fail_on:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, t)

    monkeypatch.setattr(sinks._ShardWriter, "write_bytes", write_bytes)
    sink = DirectorySink(tmp_path / "o")
    sink.begin(ck, Recipe("ties", "x", []), plan)
    return sink


def test_a_failed_write_behind_is_raised_at_the_next_write_and_nothing_is_left(
    tmp_path, tiny_llama_family, monkeypatch
):
    """The sink writes one tensor behind the engine: a write that fails is raised, naming its tensor, when
    the engine hands over the next one; abort then leaves nothing behind."""
    sink = _failing_sink(tmp_path, open_checkpoint(tiny_llama_family[0]), monkeypatch, fail_on="b")
    sink.write("a", torch.ones(2, 2))
    sink.write("b", torch.ones(2, 2))  # handed over; the failure is the writer thread's
    with pytest.raises(OutputError, match="cannot write 'b' .*No space left on device"):
        sink.write("c", torch.ones(2, 2))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_last_write_is_raised_by_commit(tmp_path, tiny_llama_family, monkeypatch):
    sink = _failing_sink(tmp_path, open_checkpoint(tiny_llama_family[0]), monkeypatch, fail_on="c")
    for name in "abc":
        sink.write(name, torch.ones(2, 2))
    with pytest.raises(OutputError, match="cannot write 'c'"):
        sink.commit(None)  # type: ignore[arg-type]  # fails before the result is used
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path / "o").exists()
