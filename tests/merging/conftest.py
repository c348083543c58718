"""Session-wide odd checkpoints for the merging tests, each derived from the tiny Llama family.

Every one is a small directory built once per session: a truncated or corrupt copy, one with a NaN, one
with a tensor removed, a pickle-only copy, other shapes, added vocabulary, and a tied-embedding family.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.tiny_models import make_base, make_family, make_finetune


def copy_with_weights(src: Path, dst: Path, edit) -> Path:
    """Copy a checkpoint directory, passing its state dict through `edit` before saving it back."""
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    sd = edit(sd) or sd
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="session")
def odd(tiny_llama_family, tmp_path_factory) -> dict[str, Path]:
    base, cks = tiny_llama_family
    root = tmp_path_factory.mktemp("odd")
    out: dict[str, Path] = {}

    def nan(sd):
        sd["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")

    def drop(sd):
        del sd["model.layers.0.self_attn.v_proj.weight"]

    out["nan"] = copy_with_weights(cks[0], root / "nan", nan)
    out["missing"] = copy_with_weights(cks[0], root / "missing", drop)

    out["truncated"] = shutil.copytree(cks[0], root / "truncated")
    raw = (cks[0] / "model.safetensors").read_bytes()
    (out["truncated"] / "model.safetensors").write_bytes(raw[: len(raw) - 1000])

    out["corrupt"] = shutil.copytree(cks[0], root / "corrupt")
    (out["corrupt"] / "model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + raw
    )

    out["bin"] = shutil.copytree(cks[1], root / "bin", ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(cks[1] / "model.safetensors"), out["bin"] / "pytorch_model.bin")

    out["other_shapes"] = make_base(root / "other-shapes", intermediate_size=48)
    out["extra_vocab"] = make_finetune(base, root / "extra-vocab", seed=7, extra_vocab=8)
    tied_base, tied_cks = make_family(root / "tied", n=2, tie=True)
    out["tied_base"] = tied_base
    out["tied_ft0"], out["tied_ft1"] = tied_cks
    return out


@pytest.fixture
def two_threads():
    """torch on two threads for the test (the lanes' tests need a count they then lower), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
