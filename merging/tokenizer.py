"""The output tokenizer of a merge and how embedding rows map to it (mergekit's `tokenizer_source`,
`tokenizer:` block and `chat_template`).

- `base` keeps the base's vocabulary, `MODEL` takes that model's, `union` adds every token any input has
  (ordinary tokens in id order, then added tokens, as mergekit's union does).
- Every input's vocabulary rows are permuted to the output vocabulary by token text. A token an input lacks
  gets, in that input, mergekit's default: the base's row if the base has it, else the only input that has
  it, else the mean of the inputs that have it (zero when none does). With `pad_to_multiple_of`, padding
  rows are the mean of the real rows.
- `chat_template` (a name, `auto` for the inputs' most common template, or Jinja text) is set on the output
  tokenizer and written into its tokenizer_config.json.
The planner attaches a `VocabMap` to each vocabulary tensor and a `row_map` to each input's source; the
engine calls `apply_vocab` after loading a tensor's inputs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merging.checkpoint import Checkpoint
from merging.errors import RecipeError

# The chat formats mergekit users name, written here to render exactly as mergekit 0.1.5's named templates
# do under transformers' template environment (checked side by side in tests/merging/test_tokenizer.py).
CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
        "{% endif %}"
    ),
    "llama3": (
        "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
        "'<|eot_id|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "mistral": (
        "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
        "{{ bos_token }}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant after an optional system message') }}"
        "{% endif %}{% if message['role'] == 'user' %}{{ ' [INST] ' + "
        "(system_message + '\n\n' if loop.first and system_message is defined else '') + "
        "message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'] + eos_token }}{% else %}"
        "{{ raise_exception('only user and assistant messages, after an optional system message') }}"
        "{% endif %}{% endfor %}"
    ),
    "alpaca": (
        "{% set system = messages | selectattr('role', 'equalto', 'system') | list %}"
        "{{ (system | last).content | trim if system else '' }}{{ '\n\n' }}"
        "{% for message in messages %}{% set head = {'user': '### Instruction:\n', "
        "'assistant': '### Response:\n', 'user_context': '### Input:\n'}.get(message['role']) %}"
        "{% if head %}{{ head + message['content'] | trim }}{% if not loop.last %}{{ '\n\n' }}{% endif %}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{ '### Response:\n' }}"
        "{% endif %}"
    ),
}


@dataclass(frozen=True)
class VocabMap:
    """How one vocabulary tensor's rows are completed after each input's rows are permuted.

    `defaults`: for each output row some input lacks (or that is forced), the (member, row) pairs averaged
    into it, members being 0 = base when the tensor has one, then the inputs in order (empty: zeros).
    `forced`: rows every member takes from its default, even a member that has the token (the
    `tokenizer: tokens: {T: {force: true}}` setting). `real_rows`: rows past it are padding, set to the
    mean of the real rows."""

    defaults: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]
    real_rows: int
    forced: frozenset[int] = frozenset()


@dataclass
class TokenizerPlan:
    """The built output tokenizer (saved under `directory`), its size in embedding rows, and for each
    checkpoint ref the output-row → stored-row map (-1: the input lacks that token). `row_maps` is empty
    when the vocabulary is the base's own, unchanged (a chat template alone). `tokens` holds the
    `tokenizer: tokens:` settings; `vocab` the output vocabulary and `originals` each ref's own."""

    directory: Path
    vocab_size: int
    row_maps: dict[str, tuple[int, ...]]
    base_ref: str | None
    real_rows: int = 0  # rows that are tokens; the rest, up to vocab_size, are padding
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    vocab: dict[str, int] = field(default_factory=dict)
    originals: dict[str, dict[str, int]] = field(default_factory=dict)

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def vocab_map(self, members: Sequence[str]) -> VocabMap:
        """mergekit's per-token defaults for a tensor whose members are `members` (refs, base first)."""
        maps = [self.row_maps[m] for m in members]
        has_base = self.base_ref is not None and bool(members) and members[0] == self.base_ref
        defaults: list[tuple[int, tuple[tuple[int, int], ...]]] = []
        forced: set[int] = set()
        configured = {self.vocab[t]: (t, cfg) for t, cfg in self.tokens.items() if t in self.vocab}
        for row in range(self.real_rows):
            present = [i for i, mp in enumerate(maps) if mp[row] >= 0]
            token, cfg = configured.get(row, (None, None))
            force = bool(cfg and cfg.get("force"))
            if not force and len(present) == len(maps):
                continue
            if cfg is not None and cfg.get("source") is not None:
                donors = self._configured_donor(token, cfg["source"], members, maps, row)
            elif cfg is not None and force:
                raise RecipeError(f"tokenizer.tokens[{token!r}] sets force without a source")
            elif len(present) == 1:
                donors = ((present[0], row),)
            elif not present:
                donors = ()
            elif has_base and 0 in present:
                donors = ((0, row),)
            else:
                donors = tuple((i, row) for i in present)
            if force:
                forced.add(row)
            defaults.append((row, donors))
        return VocabMap(tuple(defaults), self.real_rows, frozenset(forced))

    def _configured_donor(self, token, source, members, maps, row) -> tuple[tuple[int, int], ...]:
        """A `tokens:` source: zero, a model's own row of this token, or a model's row of another token."""
        if isinstance(source, dict) and source.get("kind") == "zero":
            return ()
        ref = source.get("model") if isinstance(source, dict) else source
        if ref not in members:
            raise RecipeError(
                f"tokenizer.tokens[{token!r}] takes its embedding from {ref!r}, which is not merged here"
            )
        m = members.index(ref)
        if not isinstance(source, dict):
            if maps[m][row] < 0:
                raise RecipeError(f"tokenizer.tokens[{token!r}]: {ref!r} has no token {token!r}")
            return ((m, row),)
        stored = source.get("token_id")
        if stored is None:
            stored = self.originals.get(ref, {}).get(source.get("token"), -1)
            if stored < 0:
                raise RecipeError(
                    f"tokenizer.tokens[{token!r}]: {ref!r} has no token {source.get('token')!r}"
                )
        where = [r for r, s in enumerate(maps[m]) if s == stored]
        if not where:
            raise RecipeError(
                f"tokenizer.tokens[{token!r}]: row {stored} of {ref!r} is no token of the output vocabulary"
            )
        return ((m, where[0]),)


def _load(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:  # transformers raises many kinds
        raise RecipeError(
            f"cannot load the tokenizer of {str(path)!r}: {' '.join(str(exc).split())[:200]}"
        ) from None


def resolve_chat_template(value: str, tokenizers: Sequence[Any]) -> str | None:
    """A template name, `auto` (the inputs' most common template; None when none has one) or Jinja text."""
    if value == "auto":
        found = [
            t.chat_template.strip() for t in tokenizers if isinstance(getattr(t, "chat_template", None), str)
        ]
        return Counter(found).most_common(1)[0][0] if found else None
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    if len(value) < 20 or "{" not in value:
        names = ", ".join(["auto", *CHAT_TEMPLATES])
        raise RecipeError(f"chat_template {value!r} is neither a known name ({names}) nor Jinja text")
    return value


def build_tokenizer(
    source: str | None,
    base_ref: str | None,
    refs: Sequence[str],
    get: Callable[[str], Checkpoint],
    chat_template: str | None = None,
    pad_to_multiple_of: int | None = None,
    tokens: dict[str, Any] | None = None,
) -> TokenizerPlan | None:
    """Build the output tokenizer; None when the recipe asks for nothing (the base's files are copied).
    `tokens` (the tokenizer block's per-token settings) adds each token the vocabulary lacks."""
    if source is None and chat_template is None:
        return None
    donor = base_ref or refs[0]
    donor_ck = get(donor)
    base_tok = _load(donor_ck.path)
    rows = donor_ck.vocab_size or len(base_tok)
    beyond = [t for t, i in base_tok.get_vocab().items() if i >= rows]
    if beyond and source is not None:
        raise RecipeError(
            f"the tokenizer of {donor!r} has {len(beyond)} tokens beyond its {rows} embedding rows "
            f"(e.g. {beyond[0]!r}); remove them from its tokenizer before a tokenizer merge"
        )
    toks = {donor: base_tok}
    for ref in refs:
        if ref not in toks:
            toks[ref] = _load(get(ref).path)
    if source is None or source == "base":
        out = base_tok
    elif source == "union":
        out = _union(base_tok, [(ref, toks[ref], get(ref).vocab_size or len(toks[ref])) for ref in toks])
    else:
        if source not in toks:
            toks[source] = _load(get(source).path)
        out = toks[source]
    token_cfg = _token_settings(tokens)
    if token_cfg:
        have = set(out.get_vocab())
        for tok in token_cfg:
            if tok not in have:
                out.add_tokens(tok)
                have.add(tok)
    template = None
    if chat_template is not None:
        template = resolve_chat_template(chat_template, list(toks.values()))
        if template is not None:
            out.chat_template = template
    directory = Path(tempfile.mkdtemp(prefix="mergelab-tokenizer-"))
    try:
        out.save_pretrained(str(directory))
        if template is not None:
            cfg_file = directory / "tokenizer_config.json"
            cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
            cfg["chat_template"] = template
            cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    vocab = out.get_vocab()
    size = len(vocab)
    if pad_to_multiple_of and size % pad_to_multiple_of:
        size += pad_to_multiple_of - size % pad_to_multiple_of
    row_maps: dict[str, tuple[int, ...]] = {}
    if source is not None:
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        for ref in refs:
            theirs = toks[ref].get_vocab()
            limit = get(ref).vocab_size or len(theirs)
            mp = [-1] * size
            for tok, new_id in by_id:
                old = theirs.get(tok, -1)
                mp[new_id] = old if 0 <= old < limit else -1
            row_maps[ref] = tuple(mp)
    return TokenizerPlan(
        directory,
        size if source is not None else rows,
        row_maps,
        base_ref,
        len(vocab),
        token_cfg,
        dict(vocab),
        {ref: toks[ref].get_vocab() for ref in refs} if token_cfg else {},
    )


def _token_settings(tokens: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """`tokenizer: tokens:` as {token: {source, force}}; a source is a model ref, {kind: zero} or
    {kind: model_token, model, token | token_id}."""
    out: dict[str, dict[str, Any]] = {}
    for tok, cfg in (tokens or {}).items():
        cfg = cfg or {}
        if not isinstance(cfg, dict) or set(cfg) - {"source", "force"}:
            raise RecipeError(f"tokenizer.tokens[{tok!r}] takes source: and force:, got {cfg!r}"[:200])
        src = cfg.get("source")
        if isinstance(src, dict):
            kind = src.get("kind")
            if kind == "model_token":
                if not isinstance(src.get("model"), str) or ("token" in src) == ("token_id" in src):
                    raise RecipeError(
                        f"tokenizer.tokens[{tok!r}]: a model_token source needs model and token or token_id"
                    )
            elif kind != "zero":
                raise RecipeError(f"tokenizer.tokens[{tok!r}]: source kind must be zero or model_token")
        elif src is not None and not isinstance(src, str):
            raise RecipeError(f"tokenizer.tokens[{tok!r}]: source must be a model, zero or model_token")
        out[str(tok)] = {"source": src, "force": bool(cfg.get("force", False))}
    return out


def _union(base_tok, tokenizers: Sequence[tuple[str, Any, int]]):
    """mergekit's union: the base's tokenizer plus every other token of the inputs (below their embedding
    rows): ordinary tokens first (each input's in id order), then added tokens with their settings."""
    import copy

    added: dict[str, Any] = {}
    ordinary: dict[str, None] = {}
    for _, tok, rows in tokenizers:
        decoder = tok.added_tokens_decoder
        added_text = {info.content for info in decoder.values()}
        for text, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if idx < rows and text not in added_text:
                ordinary.setdefault(text)
        for idx, info in sorted(decoder.items()):
            if idx < rows:
                added.setdefault(info.content, info)
    out = copy.deepcopy(base_tok)
    have = set(out.get_vocab())
    new = [t for t in ordinary if t not in have and t not in added]
    if new:
        out.add_tokens(new)
    for info in added.values():
        if info.content not in out.get_vocab():
            out.add_tokens([info])
    return out


@torch.no_grad()
def apply_vocab(planned: Any, base: torch.Tensor | None, stacked: torch.Tensor) -> None:
    """Complete a vocabulary tensor's permuted rows in place, as mergekit does: the members are the base
    (when given) then the inputs; a member lacking a token gets the VocabMap's default for that row, and
    padding rows get the mean of the real rows."""
    vocab: VocabMap | None = planned.vocab
    if vocab is None:
        return
    members = ([base] if base is not None else []) + list(stacked.unbind(0))
    sources = ([planned.base] if base is not None else []) + [i.source for i in planned.inputs]
    if vocab.defaults:
        fills = {
            row: torch.stack([members[m][r] for m, r in donors]).mean(0) if donors else None
            for row, donors in vocab.defaults
        }
        for m, src in zip(members, sources, strict=True):
            if src.row_map is None:
                continue
            for row, fill in fills.items():
                if src.row_map[row] < 0 or row in vocab.forced:
                    m[row] = 0 if fill is None else fill
    if vocab.real_rows < members[0].shape[0]:
        for m in members:
            m[vocab.real_rows :] = m[: vocab.real_rows].mean(0)
