import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging import CheckpointError, open_checkpoint
from merging.checkpoint import read_safetensors_header
from tests.merging.conftest import copy_with_weights

ROOT = Path(__file__).resolve().parents[2]


def test_header_parsed_without_loading(tmp_path):
    f = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(5, dtype=torch.bfloat16)}, f)
    infos = read_safetensors_header(f)
    assert infos["a"].shape == (2, 3) and infos["a"].dtype == "float32" and infos["a"].nbytes == 24
    assert infos["b"].shape == (5,) and infos["b"].dtype == "bfloat16" and infos["b"].nbytes == 10
    (n,) = struct.unpack("<Q", f.read_bytes()[:8])
    # data starts right after the header; offsets are absolute, so the bytes there are the tensor's
    raw = f.read_bytes()
    assert min(infos["a"].offset, infos["b"].offset) == 8 + n
    b = infos["b"]
    assert (
        raw[b.offset : b.offset + b.nbytes]
        == torch.ones(5, dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes()
    )


def test_open_tiny_llama(tiny_llama_family):
    base, _ = tiny_llama_family
    with open_checkpoint(base) as ck:
        assert ck.architecture == "LlamaForCausalLM" and ck.model_type == "llama"
        assert ck.vocab_size == 49 and not ck.tied_embeddings
        stored = load_file(base / "model.safetensors")
        assert set(ck.tensors) == set(stored)
        assert ck.num_parameters == sum(t.numel() for t in stored.values())
        name = "model.layers.0.mlp.down_proj.weight"
        assert ck.tensors[name].shape == (32, 64)
        assert torch.equal(ck.read(name), stored[name])
        with pytest.raises(CheckpointError, match="no tensor 'nope'"):
            ck.read("nope")


def test_tied_qwen3(odd, tiny_qwen3_family):
    with open_checkpoint(odd["tied_base"]) as ck:
        assert ck.tied_embeddings and "lm_head.weight" not in ck.tensors
    with open_checkpoint(tiny_qwen3_family[0]) as ck:
        assert ck.architecture == "Qwen3ForCausalLM" and not ck.tied_embeddings


def test_truncated_and_corrupt_files_named(odd):
    with pytest.raises(CheckpointError, match=r"truncated safetensors file .*truncated/model\.safetensors"):
        open_checkpoint(odd["truncated"])
    with pytest.raises(CheckpointError, match=r"corrupt safetensors file .*corrupt/model\.safetensors"):
        open_checkpoint(odd["corrupt"])


def test_missing_path_and_offline_hub_id(tmp_path):
    with pytest.raises(CheckpointError, match="not found: no such directory"):
        open_checkpoint(tmp_path / "does-not-exist")
    # HF_HUB_OFFLINE=1 (tests/conftest.py) and an empty cache: a clear error, not a traceback
    with pytest.raises(CheckpointError, match="not found locally and the Hub cannot be reached"):
        open_checkpoint("mergelab-test/not-a-real-model", cache_dir=tmp_path / "hub-cache")


def test_directory_without_weights_or_config(tmp_path, tiny_llama_family):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        open_checkpoint(tmp_path / "empty")
    shutil.copy(tiny_llama_family[0] / "config.json", tmp_path / "empty")
    with pytest.raises(CheckpointError, match="has no weights"):
        open_checkpoint(tmp_path / "empty")


def test_pickle_only_refused_unless_allowed(odd, tiny_llama_family):
    with pytest.raises(CheckpointError, match="only pickled .bin weights.*--allow-bin"):
        open_checkpoint(odd["bin"])
    with open_checkpoint(odd["bin"], allow_bin=True) as ck:
        ref = load_file(tiny_llama_family[1][1] / "model.safetensors")
        assert set(ck.tensors) == set(ref)
        name = "model.layers.1.self_attn.q_proj.weight"
        assert ck.tensors[name].shape == (32, 32) and torch.equal(ck.read(name), ref[name])


def test_sharded_checkpoint(tmp_path, tiny_llama_family):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_family[0])
    out = tmp_path / "sharded"
    model.save_pretrained(out, max_shard_size="30KB")
    shutil.copy(tiny_llama_family[0] / "config.json", out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    with open_checkpoint(out) as ck:
        assert len(ck.files) == len(shards)
        assert set(ck.tensors) == set(index["weight_map"])
        name = "model.layers.1.mlp.gate_proj.weight"
        assert torch.equal(ck.read(name), model.state_dict()[name])
    (out / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match=f"shard {shards[-1]} .* is missing"):
        open_checkpoint(out)


def _fingerprint_in_subprocess(path: Path) -> str:
    code = f"import merging; print(merging.open_checkpoint({str(path)!r}).fingerprint)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.slow
def test_fingerprint_stable_across_processes_and_paths(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    fp = open_checkpoint(cks[0]).fingerprint
    assert len(fp) == 32
    assert _fingerprint_in_subprocess(cks[0]) == fp
    assert open_checkpoint(shutil.copytree(cks[0], tmp_path / "copy")).fingerprint == fp


def test_fingerprint_tells_fine_tunes_apart(tmp_path, tiny_llama_family):
    base, cks = tiny_llama_family
    fps = {open_checkpoint(p).fingerprint for p in [base, *cks]}
    assert len(fps) == 4  # same headers and file sizes, different bytes

    def nudge(sd):  # one value in the middle of one tensor, like a fine-tune touching few weights
        t = sd["model.layers.0.self_attn.o_proj.weight"]
        t.view(-1)[t.numel() // 2] += 1.0

    changed = copy_with_weights(cks[0], tmp_path / "nudged", nudge)
    assert open_checkpoint(changed).fingerprint != open_checkpoint(cks[0]).fingerprint
