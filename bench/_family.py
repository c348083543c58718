"""Synthetic model families for benchmarks and parity checks, built once and cached on disk.

A family is a random Llama base plus checkpoints = base + seeded dense noise (like full fine-tunes),
saved with save_pretrained so every tool reads the same files. Building is skipped when the cached copy is
complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

CACHE = Path(__file__).resolve().parent / ".cache"


def build_family(
    name: str,
    *,
    hidden: int,
    layers: int,
    intermediate: int,
    vocab: int,
    checkpoints: int,
    dtype: torch.dtype,
    noise: float = 0.01,
    seed: int = 0,
    root: Path = CACHE,
) -> tuple[Path, list[Path]]:
    """Return (base_dir, checkpoint_dirs); reuse the cached family if its marker file exists."""
    fam = root / name
    names = ["base"] + [f"ft{i}" for i in range(checkpoints)]
    marker = fam / "complete.json"
    if marker.exists():
        return fam / "base", [fam / n for n in names[1:]]
    shutil.rmtree(fam, ignore_errors=True)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(cfg).to(dtype)
    base.save_pretrained(fam / "base")
    params = {k: v.clone() for k, v in base.state_dict().items()}
    for i in range(checkpoints):
        gen = torch.Generator().manual_seed(seed + 1 + i)
        with torch.no_grad():
            for k, p in base.state_dict().items():
                p.copy_(params[k] + (torch.randn(p.shape, generator=gen) * noise).to(dtype))
        base.save_pretrained(fam / f"ft{i}")
    marker.write_text(json.dumps({"params": sum(p.numel() for p in params.values())}))
    return fam / "base", [fam / n for n in names[1:]]


def bench_family(checkpoints: int = 4) -> tuple[Path, list[Path]]:
    """The CPU speed benches' family: a 133M-parameter bf16 Llama (hidden 1024, 8 layers, MLP 2816, vocab
    20000) with `checkpoints` fine-tunes, cached as llama130m-<checkpoints>."""
    return build_family(
        f"llama130m-{checkpoints}",
        hidden=1024,
        layers=8,
        intermediate=2816,
        vocab=20000,
        checkpoints=checkpoints,
        dtype=torch.bfloat16,
    )
