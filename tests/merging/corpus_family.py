"""The tiny models the config corpus (tests/merging/corpus/*.yml) points at, and the placeholder rewrite.

The corpus configs are written as people write them (model cards, LazyMergekit, mergekit's examples);
`TINY/<name>` stands for a local tiny model: `base`, three fine-tunes `ft1`..`ft3`, and `chat`, a fine-tune
that added tokens to its tokenizer and embeddings. All are 4-layer float32 Llamas, so layer ranges like
[0, 4] and frankenmerges that change the depth work, and float32 parity with mergekit is meaningful.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AddedToken, AutoModelForCausalLM

from tests.tiny_models import make_base, make_finetune, save_model, tiny_tokenizer

CORPUS = Path(__file__).parent / "corpus"
LAYERS = 4
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")


def build_corpus_family(root: Path) -> Path:
    """Build (once) the models under root and return root."""
    if (root / "chat" / "config.json").is_file():
        return root
    base = make_base(root / "base", num_hidden_layers=LAYERS)
    for i in (1, 2, 3):
        make_finetune(base, root / f"ft{i}", seed=200 + i)
    model = AutoModelForCausalLM.from_pretrained(base)
    tok = tiny_tokenizer()
    tok.add_tokens([AddedToken(t, special=True) for t in CHAT_TOKENS])
    gen = torch.Generator().manual_seed(300)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        model.resize_token_embeddings(len(tok))
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            emb.weight[-len(CHAT_TOKENS) :] = torch.randn(
                len(CHAT_TOKENS), emb.weight.shape[1], generator=gen
            )
    save_model(model, root / "chat", tok)
    return root


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.yml"))


def config_text(path: Path, root: Path) -> str:
    """The config with every TINY/<name> pointed at root/<name>."""
    return path.read_text().replace("TINY/", f"{root}/")
