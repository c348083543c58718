"""tokenizer_source (base, union, a model), the tokenizer: block and chat_template."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AddedToken, AutoModelForCausalLM, AutoTokenizer

from merging import DirectorySink, Recipe, RecipeError, run_merge
from merging.tokenizer import CHAT_TEMPLATES
from tests.merging.helpers import weights
from tests.tiny_models import make_base, make_finetune, save_model, tiny_tokenizer

NEW = ["<tool>", "<|im_end|>"]


def finetune_with_tokens(base, out, seed, tokens):
    """A fine-tune that adds tokens to its tokenizer and rows to its embeddings (as chat fine-tunes do)."""
    model = AutoModelForCausalLM.from_pretrained(base)
    tok = tiny_tokenizer()
    tok.add_tokens([AddedToken(t, special=True) for t in tokens])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        model.resize_token_embeddings(len(tok))
        model.get_input_embeddings().weight[-len(tokens) :] = torch.randn(len(tokens), 32, generator=gen)
        model.get_output_embeddings().weight[-len(tokens) :] = torch.randn(len(tokens), 32, generator=gen)
    return save_model(model, out, tok)


@pytest.fixture(scope="module")
def vocab_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    base = make_base(root / "base")
    plain = make_finetune(base, root / "plain", seed=3)
    chat = finetune_with_tokens(base, root / "chat", 4, NEW)
    return base, plain, chat


def _doc(base, models, **kw):
    return {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": 0.5}} for m in models],
        **kw,
    }


def test_union_tokenizer_maps_rows_as_mergekit(tmp_path, vocab_family):
    base, plain, chat = vocab_family
    result = run_merge(
        Recipe.from_dict(_doc(base, [plain, chat], tokenizer_source="union")),
        DirectorySink(tmp_path / "u"),
        device="cpu",
    )
    out_dir = result.output_path
    tok = AutoTokenizer.from_pretrained(out_dir)
    base_tok = AutoTokenizer.from_pretrained(base)
    assert len(tok) == len(base_tok) + 2
    assert all(t in tok.get_vocab() for t in NEW)
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["vocab_size"] == len(tok)
    out, b, p, c = weights(out_dir), *(load_file(d / "model.safetensors") for d in (base, plain, chat))
    embed = "model.embed_tokens.weight"
    n = len(base_tok)
    # an ordinary token: every input has it, plain task arithmetic on that row
    torch.testing.assert_close(
        out[embed][5], b[embed][5] + 0.5 * (p[embed][5] - b[embed][5]) + 0.5 * (c[embed][5] - b[embed][5])
    )
    # a token only `chat` has: every member takes chat's row (the only donor), so the merge keeps it
    for t in NEW:
        new_id, old_id = tok.get_vocab()[t], AutoTokenizer.from_pretrained(chat).get_vocab()[t]
        assert new_id >= n
        torch.testing.assert_close(out[embed][new_id], c[embed][old_id], rtol=1e-5, atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    with torch.no_grad():
        ids = tok("ab<tool>", return_tensors="pt").input_ids
        assert torch.isfinite(model(ids).logits).all()


def test_base_and_model_tokenizer_sources(tmp_path, vocab_family):
    base, plain, chat = vocab_family
    r = run_merge(
        Recipe.from_dict(_doc(base, [plain, chat], tokenizer={"source": "base"})),
        DirectorySink(tmp_path / "b"),
        device="cpu",
    )
    assert len(AutoTokenizer.from_pretrained(r.output_path)) == len(AutoTokenizer.from_pretrained(base))
    assert weights(r.output_path)["lm_head.weight"].shape[0] == len(AutoTokenizer.from_pretrained(base))
    r = run_merge(
        Recipe.from_dict(_doc(base, [plain, chat], tokenizer_source=str(chat))),
        DirectorySink(tmp_path / "m"),
        device="cpu",
    )
    tok = AutoTokenizer.from_pretrained(r.output_path)
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(chat).get_vocab()
    # a row the base and `plain` lack: base has no row, so the donor is the only input that has it
    out, c = weights(r.output_path), load_file(chat / "model.safetensors")
    i = tok.get_vocab()["<tool>"]
    torch.testing.assert_close(out["lm_head.weight"][i], c["lm_head.weight"][i], rtol=1e-5, atol=1e-6)


def test_pad_to_multiple_of(tmp_path, vocab_family):
    base, plain, chat = vocab_family
    doc = _doc(base, [plain, chat], tokenizer={"source": "union", "pad_to_multiple_of": 8})
    r = run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "p"), device="cpu")
    emb = weights(r.output_path)["model.embed_tokens.weight"]
    real = len(AutoTokenizer.from_pretrained(r.output_path))
    assert emb.shape[0] % 8 == 0 and emb.shape[0] > real
    torch.testing.assert_close(emb[-1], emb[:real].mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("template", ["chatml", "{% for m in messages %}{{ m['content'] }}|{% endfor %}"])
def test_chat_template_is_written_into_tokenizer_config(tmp_path, vocab_family, template):
    base, plain, _ = vocab_family
    r = run_merge(
        Recipe.from_dict(_doc(base, [plain], chat_template=template)),
        DirectorySink(tmp_path / "c"),
        device="cpu",
    )
    expected = CHAT_TEMPLATES.get(template, template)
    assert json.loads((r.output_path / "tokenizer_config.json").read_text())["chat_template"] == expected
    tok = AutoTokenizer.from_pretrained(r.output_path)
    assert tok.chat_template == expected
    assert len(tok) == len(AutoTokenizer.from_pretrained(base))
    assert "chat_template: " in (r.output_path / "merge_config.yml").read_text()


def test_unknown_chat_template_name_is_refused(tmp_path, vocab_family):
    base, plain, _ = vocab_family
    with pytest.raises(RecipeError, match="neither a known name"):
        run_merge(
            Recipe.from_dict(_doc(base, [plain], chat_template="vicuna9")),
            DirectorySink(tmp_path / "x"),
            device="cpu",
        )
    assert not (tmp_path / "x").exists()


CONVERSATION = [
    {"role": "system", "content": "be nice"},
    {"role": "user", "content": " hi "},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "q"},
]
# What mergekit 0.1.5's named templates render for CONVERSATION with a generation prompt (bos <s>, eos </s>).
RENDERED = {
    "chatml": "<|im_start|>system\nbe nice<|im_end|>\n<|im_start|>user\n hi <|im_end|>\n"
    "<|im_start|>assistant\nok<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nbe nice<|eot_id|>\n<|start_header_id|>user"
    "<|end_header_id|>\n\nhi<|eot_id|>\n<|start_header_id|>assistant<|end_header_id|>\n\nok<|eot_id|>\n"
    "<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>\n<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s> [INST] be nice\n\n hi  [/INST] ok</s> [INST] q [/INST]",
    "alpaca": "be nice\n\n### Instruction:\nhi\n\n### Response:\nok\n\n### Instruction:\nq### Response:\n",
}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_named_chat_templates_render_as_mergekits(name):
    tok = tiny_tokenizer()
    got = tok.apply_chat_template(
        CONVERSATION, chat_template=CHAT_TEMPLATES[name], tokenize=False, add_generation_prompt=True
    )
    assert got == RENDERED[name]


def test_tokenizer_tokens_block_sets_per_token_sources(tmp_path, vocab_family):
    base, plain, chat = vocab_family
    tokens = {
        "<|im_end|>": {"source": {"kind": "model_token", "model": str(base), "token": "</s>"}, "force": True},
        "<tool>": {"source": str(chat)},
        "<new>": {"source": {"kind": "zero"}},
    }
    doc = _doc(base, [plain, chat], tokenizer={"source": "union", "tokens": tokens})
    r = run_merge(Recipe.from_dict(doc), DirectorySink(tmp_path / "t"), device="cpu")
    tok = AutoTokenizer.from_pretrained(r.output_path)
    out, b, c = (
        weights(r.output_path),
        load_file(base / "model.safetensors"),
        load_file(chat / "model.safetensors"),
    )
    emb, vocab, chat_vocab = (
        "model.embed_tokens.weight",
        tok.get_vocab(),
        AutoTokenizer.from_pretrained(chat).get_vocab(),
    )
    eos = AutoTokenizer.from_pretrained(base).get_vocab()["</s>"]
    # forced: every member takes the base's </s> row, so the merge is that row
    torch.testing.assert_close(out[emb][vocab["<|im_end|>"]], b[emb][eos], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[emb][vocab["<tool>"]], c[emb][chat_vocab["<tool>"]], rtol=1e-5, atol=1e-6)
    assert "<new>" in vocab and torch.count_nonzero(out[emb][vocab["<new>"]]) == 0
    bad = _doc(base, [plain], tokenizer={"source": "union", "tokens": {"<tool>": {"source": str(chat)}}})
    with pytest.raises(RecipeError, match="is not merged here"):
        run_merge(Recipe.from_dict(bad), DirectorySink(tmp_path / "x"), device="cpu")
