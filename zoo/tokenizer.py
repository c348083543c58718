"""The zoo's character-level tokenizer: one token per character, saved as a real fast tokenizer.

A character vocabulary keeps the models tiny (about 90 rows) and makes every synthetic task's answer a
short, exactly aligned token sequence, so lm-eval's loglikelihood scoring sees the same tokens training did.
No post-processor adds BOS/EOS: lm-eval encodes causal-LM contexts without special tokens, and training
text is encoded the same way.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
CHARS = tuple(string.digits + string.ascii_lowercase + string.ascii_uppercase + " \n+-*=?:.,;!'()<>/_")
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
VOCAB_SIZE = len(VOCAB)


def build_tokenizer(added_tokens: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A fast tokenizer over VOCAB; `added_tokens` become extra whole tokens (ids after the base vocab)."""
    core = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )
    if added_tokens:
        tok.add_tokens(list(added_tokens))
    return tok


def encode(text: str, added: dict[str, int] | None = None) -> list[int]:
    """Fast encoding for training, identical to the saved tokenizer's (tested): one id per character,
    except that any of the `added` whole tokens is matched first."""
    if not added:
        return [VOCAB.get(c, UNK_ID) for c in text]
    ids: list[int] = []
    i = 0
    keys = sorted(added, key=len, reverse=True)
    while i < len(text):
        for k in keys:
            if text.startswith(k, i):
                ids.append(added[k])
                i += len(k)
                break
        else:
            ids.append(VOCAB.get(text[i], UNK_ID))
            i += 1
    return ids
