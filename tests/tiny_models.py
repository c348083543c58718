"""Tiny random Llama and Qwen3 checkpoints for tests: built here with save_pretrained, never downloaded.

`make_family` gives a base plus fine-tuned-looking checkpoints (base + small seeded noise), which is what
every merge, evaluation and job test needs. Models are a few hundred KB, so building them takes well under
a second each.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

CHARS = list("0123456789abcdefghijklmnopqrstuvwxyz +-=?:.,\n")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer; ids 0..3 are specials."""
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_config(arch: str = "llama", vocab_size: int | None = None, tie: bool = False, **overrides):
    vocab_size = vocab_size or len(CHARS) + 4
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    common.update(overrides)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen3":
        return Qwen3Config(head_dim=8, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}")


def save_model(model, out: Path, tokenizer: PreTrainedTokenizerFast | None = None, **save_kwargs) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, **save_kwargs)
    (tokenizer or tiny_tokenizer()).save_pretrained(out)
    return out


def make_base(out: Path, arch: str = "llama", seed: int = 0, tie: bool = False, **cfg) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tie=tie, **cfg))
    return save_model(model, out)


def make_finetune(base_dir: Path, out: Path, seed: int, scale: float = 0.02, extra_vocab: int = 0) -> Path:
    """A 'fine-tune' of base_dir: every weight plus seeded Gaussian noise; optionally more vocab rows."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
        if extra_vocab:
            model.resize_token_embeddings(model.config.vocab_size + extra_vocab)
    return save_model(model, out)


def make_family(
    root: Path, arch: str = "llama", n: int = 3, tie: bool = False, **cfg
) -> tuple[Path, list[Path]]:
    """A base and n checkpoints fine-tuned from it, under root/."""
    base = make_base(root / f"{arch}-base", arch=arch, tie=tie, **cfg)
    cks = [make_finetune(base, root / f"{arch}-ft{i}", seed=100 + i) for i in range(n)]
    return base, cks
