"""Content fingerprints: any byte of any tensor counts, the result is cached per file version, and neither the
path nor the sharding changes it."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from merging import fingerprint as fpmod
from merging import open_checkpoint
from merging.checkpoint import read_safetensors_header


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGELAB_HOME", str(tmp_path / "home"))
    fpmod.clear_memo()
    yield
    fpmod.clear_memo()


def flip_byte_three_quarters_in(path, tensor: str) -> int:
    """Flip one bit of the byte three quarters into `tensor`'s data, in place; returns its file offset."""
    info = read_safetensors_header(path / "model.safetensors")[tensor]
    offset = info.offset + (info.nbytes * 3) // 4
    with open(path / "model.safetensors", "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x01]))
    return offset


def test_one_byte_three_quarters_into_one_tensor_changes_the_fingerprint(tmp_path, tiny_llama_family):
    _, cks = tiny_llama_family
    original = open_checkpoint(cks[0]).fingerprint
    copy = shutil.copytree(cks[0], tmp_path / "copy")
    assert open_checkpoint(copy).fingerprint == original  # same bytes elsewhere: same model
    flip_byte_three_quarters_in(copy, "model.layers.1.mlp.down_proj.weight")
    assert open_checkpoint(copy).fingerprint != original
    assert open_checkpoint(cks[0]).fingerprint == original


def test_edit_in_place_is_not_served_from_the_cache(tmp_path, tiny_llama_family):
    _, cks = tiny_llama_family
    copy = shutil.copytree(cks[0], tmp_path / "copy")
    before = open_checkpoint(copy).fingerprint
    assert any((tmp_path / "home" / "cache" / "fingerprints").glob("*.json"))
    st = os.stat(copy / "model.safetensors")
    flip_byte_three_quarters_in(copy, "model.norm.weight")
    os.utime(copy / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))  # even with mtime put back
    fpmod.clear_memo()
    assert open_checkpoint(copy).fingerprint != before


def test_cached_digests_are_reused_without_reading_tensors(tmp_path, tiny_llama_family, monkeypatch):
    _, cks = tiny_llama_family
    first = open_checkpoint(cks[1]).fingerprint
    fpmod.clear_memo()  # only the on-disk cache is left

    def fail(*_a, **_k):
        raise AssertionError("hashed again although the file did not change")

    monkeypatch.setattr(fpmod, "hash_safetensors_file", fail)
    assert open_checkpoint(cks[1]).fingerprint == first


def test_sharding_does_not_change_the_fingerprint(tmp_path, tiny_llama_family):
    from transformers import AutoModelForCausalLM

    _, cks = tiny_llama_family
    model = AutoModelForCausalLM.from_pretrained(cks[0])
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    sharded = open_checkpoint(tmp_path / "sharded")
    assert len(sharded.files) > 1
    assert sharded.fingerprint == open_checkpoint(cks[0]).fingerprint


def test_pickled_checkpoint_hashes_all_bytes(tmp_path, tiny_llama_family):
    from safetensors.torch import load_file

    _, cks = tiny_llama_family
    sd = load_file(cks[0] / "model.safetensors")
    for name, edit in (("a", False), ("b", True)):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(cks[0] / "config.json", d / "config.json")
        state = {k: v.clone() for k, v in sd.items()}
        if edit:
            t = state["model.layers.0.self_attn.q_proj.weight"].view(-1)
            t[(t.numel() * 3) // 4] += 1e-3
        torch.save(state, d / "pytorch_model.bin")
    a = open_checkpoint(tmp_path / "a", allow_bin=True).fingerprint
    b = open_checkpoint(tmp_path / "b", allow_bin=True).fingerprint
    assert a != b
    assert a == open_checkpoint(cks[0]).fingerprint  # same tensors, same model, whatever the file format


def test_the_cache_keeps_one_entry_per_weight_file(tmp_path, tiny_llama_family):
    _, cks = tiny_llama_family
    copy = shutil.copytree(cks[0], tmp_path / "copy")
    cache = tmp_path / "home" / "cache" / "fingerprints"
    seen = {open_checkpoint(copy).fingerprint}
    assert len(list(cache.glob("*.json"))) == 1
    for tensor in ("model.norm.weight", "model.layers.0.mlp.up_proj.weight"):
        flip_byte_three_quarters_in(copy, tensor)
        fpmod.clear_memo()
        seen.add(open_checkpoint(copy).fingerprint)
    assert len(seen) == 3  # three versions of the file, three models
    assert len(list(cache.glob("*.json"))) == 1  # but the older versions' entries were dropped
